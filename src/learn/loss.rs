//! The learning objective: per-token advantages (Binary RL + hindsight OPD) and the PPO clipped
//! surrogate taken against the behaviour log-probs logged at serving time.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How much each signal counts and how far one step may move the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// Weight of the judge's reward r ∈ {+1, −1} on every response token.
    pub w_rl: f64,
    /// Weight of the per-token OPD advantage `log π_T − log π_old`.
    pub w_opd: f64,
    /// The OPD advantage is clipped to [−C, C].
    pub opd_clip: f64,
    pub eps_low: f64,
    pub eps_high: f64,
    /// Dual-clip bound: for negative advantages the ratio's weight is truncated at this value,
    /// so a stale sample whose ratio drifted far above 1 cannot produce an unbounded loss.
    pub ratio_cap: f64,
    /// Coefficient of the k3 KL estimate to the base model (0 = off, the paper's default).
    pub kl_coef: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            w_rl: 1.0,
            w_opd: 1.0,
            opd_clip: 5.0,
            eps_low: 0.2,
            eps_high: 0.28,
            ratio_cap: 3.0,
            kl_coef: 0.0,
        }
    }
}

/// Per-token advantages, [B, R]: `w_rl·r + w_opd·clip(lp_teacher − lp_old, −C, C)` on real
/// tokens. `rewards[i]` is 0 when sample i has no reward; `teacher[i]` is None without a hint.
pub fn advantages(
    config: &LossConfig,
    rewards: &[f64],
    teacher_lp: &Tensor,
    has_teacher: &[bool],
    old_lp: &Tensor,
    mask: &Tensor,
) -> Tensor {
    let device = old_lp.device();
    let rows = rewards.len() as i64;
    let r = Tensor::from_slice(rewards)
        .to_kind(Kind::Float)
        .to_device(device)
        .view([rows, 1]);
    let teacher_on: Vec<f32> = has_teacher.iter().map(|&t| f32::from(t)).collect();
    let teacher_on = Tensor::from_slice(&teacher_on)
        .to_device(device)
        .view([rows, 1]);
    let opd = (teacher_lp - old_lp).clamp(-config.opd_clip, config.opd_clip) * teacher_on;
    (r * config.w_rl + opd * config.w_opd) * mask
}

/// The loss of one step and what it says about the update.
pub struct PolicyLoss {
    /// Scalar to minimise (token mean within a sample, mean over samples).
    pub loss: Tensor,
    /// Share of real tokens whose ratio fell outside [1 − eps_low, 1 + eps_high].
    pub clip_fraction: f64,
    /// Mean over real tokens of `lp_old − lp_new` (approximate KL to the behaviour policy).
    pub approx_kl: f64,
    /// Mean k3 KL to the base over real tokens, when a base is given.
    pub kl_to_base: Option<f64>,
}

/// PPO clipped surrogate, `ratio = exp(lp_new − lp_old)` with `lp_old` the logged behaviour
/// log-probs; all inputs [B, R], `mask` 1 on real tokens. `base_lp` adds `kl_coef · k3`.
pub fn policy_loss(
    config: &LossConfig,
    new_lp: &Tensor,
    old_lp: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    base_lp: Option<&Tensor>,
) -> PolicyLoss {
    let log_ratio = (new_lp - old_lp) * mask;
    let ratio = log_ratio.exp();
    let clipped = ratio.clamp(1.0 - config.eps_low, 1.0 + config.eps_high);
    let surrogate = (&ratio * advantages).min_other(&(&clipped * advantages));
    // Dual clip: with A < 0 the objective is floored at ratio_cap·A.
    let negative = advantages.lt(0.0);
    let floor = advantages * config.ratio_cap;
    let surrogate = surrogate.where_self(&negative.logical_not(), &surrogate.max_other(&floor));
    let mut per_token = -surrogate;
    let mut kl_to_base = None;
    if let Some(base) = base_lp {
        // k3 = exp(b − n) − (b − n) − 1 ≥ 0, an unbiased low-variance KL(new‖base) estimate.
        let diff = (base - new_lp) * mask;
        let k3 = diff.exp() - &diff - 1.0;
        kl_to_base = Some(masked_mean(&k3.detach(), mask));
        if config.kl_coef != 0.0 {
            per_token += k3 * config.kl_coef;
        }
    }
    let tokens = mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0);
    let per_sample = (per_token * mask).sum_dim_intlist(1, false, Kind::Float) / tokens;
    let loss = per_sample.mean(Kind::Float);

    let outside = ratio
        .lt(1.0 - config.eps_low)
        .logical_or(&ratio.gt(1.0 + config.eps_high))
        .to_kind(Kind::Float);
    let clip_fraction = masked_mean(&outside.detach(), mask);
    let approx_kl = masked_mean(&(-log_ratio).detach(), mask);
    PolicyLoss {
        loss,
        clip_fraction,
        approx_kl,
        kl_to_base,
    }
}

fn masked_mean(values: &Tensor, mask: &Tensor) -> f64 {
    let total = mask.sum(Kind::Float).double_value(&[]);
    if total == 0.0 {
        return 0.0;
    }
    (values * mask).sum(Kind::Float).double_value(&[]) / total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[&[f32]]) -> Tensor {
        let width = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, width])
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-5, "{a} != {b}");
    }

    #[test]
    fn advantages_combine_reward_and_clipped_teacher_gap() {
        let config = LossConfig {
            opd_clip: 1.0,
            ..LossConfig::default()
        };
        let old = t(&[&[-1.0, -2.0, -3.0], &[-0.5, -0.5, 0.0]]);
        let teacher = t(&[&[-0.5, -4.0, -1.0], &[-1.0, -0.25, 0.0]]);
        let mask = t(&[&[1.0, 1.0, 1.0], &[1.0, 1.0, 0.0]]);
        let adv = advantages(&config, &[1.0, -1.0], &teacher, &[true, false], &old, &mask);
        // Row 0: 1 + clip([0.5, -2, 2], ±1) = [1.5, 0, 2]. Row 1: no teacher → r = -1, pad 0.
        let got: Vec<f32> = Vec::try_from(adv.view([-1])).unwrap();
        assert_eq!(got, vec![1.5, 0.0, 2.0, -1.0, -1.0, 0.0]);
    }

    #[test]
    fn ppo_surrogate_matches_hand_computed_values() {
        let config = LossConfig::default();
        let ln = |x: f64| x.ln() as f32;
        // Ratios: row 0 [1.5, 0.5] with A = +1; row 1 [1.1, 4.0, pad] with A = -1.
        let old = t(&[&[0.0, 0.0, 0.0], &[0.0, 0.0, 0.0]]);
        let new = t(&[&[ln(1.5), ln(0.5), 0.0], &[ln(1.1), ln(4.0), 0.0]]);
        let adv = t(&[&[1.0, 1.0, 0.0], &[-1.0, -1.0, 0.0]]);
        let mask = t(&[&[1.0, 1.0, 0.0], &[1.0, 1.0, 0.0]]);
        let out = policy_loss(&config, &new, &old, &adv, &mask, None);
        // Row 0: min(1.5, 1.28) = 1.28; min(0.5, 0.8) = 0.5 → loss -(1.28 + 0.5)/2 = -0.89.
        // Row 1: min(-1.1, -1.1) = -1.1; min(-4, -1.28) = -4, dual clip max(-4, -3) = -3
        //        → loss (1.1 + 3)/2 = 2.05. Mean over samples: (−0.89 + 2.05)/2 = 0.58.
        close(out.loss.double_value(&[]), 0.58);
        // Outside [0.8, 1.28]: 1.5, 0.5, 4.0 → 3 of 4 tokens.
        close(out.clip_fraction, 0.75);
        let kl = -(1.5f64.ln() + 0.5f64.ln() + 1.1f64.ln() + 4.0f64.ln()) / 4.0;
        close(out.approx_kl, kl);
    }

    #[test]
    fn on_policy_gradient_is_advantage_times_score() {
        // At ratio 1 the gradient of the loss w.r.t. lp_new is -A / tokens / samples.
        let config = LossConfig::default();
        let new = t(&[&[-1.0, -2.0]]).set_requires_grad(true);
        let old = t(&[&[-1.0, -2.0]]);
        let adv = t(&[&[2.0, -1.0]]);
        let mask = t(&[&[1.0, 1.0]]);
        let out = policy_loss(&config, &new, &old, &adv, &mask, None);
        out.loss.backward();
        let grad: Vec<f32> = Vec::try_from(new.grad().view([-1])).unwrap();
        assert!(
            (grad[0] + 1.0).abs() < 1e-6 && (grad[1] - 0.5).abs() < 1e-6,
            "{grad:?}"
        );
    }

    #[test]
    fn k3_kl_to_base_is_zero_at_base_and_positive_elsewhere() {
        let config = LossConfig {
            kl_coef: 0.5,
            ..LossConfig::default()
        };
        let zeros = t(&[&[0.0, 0.0]]);
        let mask = t(&[&[1.0, 1.0]]);
        let lp = t(&[&[-1.0, -2.0]]);
        let same = policy_loss(&config, &lp, &lp, &zeros, &mask, Some(&lp));
        close(same.kl_to_base.unwrap(), 0.0);
        close(same.loss.double_value(&[]), 0.0);
        let base = t(&[&[-2.0, -2.0]]);
        let moved = policy_loss(&config, &lp, &lp, &zeros, &mask, Some(&base));
        // Token 0: d = -1 → e^-1 + 1 - 1 = 0.36788; token 1: 0. Mean 0.18394, loss 0.5 of it.
        close(moved.kl_to_base.unwrap(), 0.183_940);
        close(moved.loss.double_value(&[]), 0.091_970);
    }
}
