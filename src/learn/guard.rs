//! Guarded promotion: before a version is served it answers a fixed probe set greedily; a
//! version whose replies collapse or drift too far from the base is kept but not promoted.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::model::transformer::Transformer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardConfig {
    /// User messages answered by every candidate (greedy).
    pub probes: Vec<String>,
    pub max_new_tokens: usize,
    /// Largest mean per-token KL(candidate ‖ base) over the candidate's probe replies, nats.
    pub max_kl: f64,
    /// Mean reply length must stay within [min, max] × the base's.
    pub min_length_ratio: f64,
    pub max_length_ratio: f64,
    /// A reply whose distinct 3-gram share is below this (≥ 12 tokens) counts as repetitive.
    pub min_distinct_trigrams: f64,
    /// Collapse is systemic: a version is held back when more than this share of the probes
    /// whose base reply was healthy come back empty or repetitive. (One greedy path can flip
    /// into a loop after a tiny update on a small model; that alone is not a collapse.)
    pub max_degenerate_share: f64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            probes: [
                "What is the capital of France?",
                "Explain what a noun is.",
                "Give me a tip for staying focused while studying.",
                "How do plants make their food?",
                "Name three primary colors.",
                "Why do we need to drink water?",
            ]
            .map(String::from)
            .to_vec(),
            max_new_tokens: 48,
            max_kl: 1.5,
            min_length_ratio: 0.08,
            max_length_ratio: 4.0,
            min_distinct_trigrams: 0.4,
            max_degenerate_share: 0.5,
        }
    }
}

/// One probe's replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub prompt: String,
    pub reply: String,
    pub tokens: usize,
    pub base_tokens: usize,
    pub kl: f64,
    pub distinct_trigrams: f64,
    /// The base's reply to the same probe was itself empty or repetitive.
    #[serde(default)]
    pub base_degenerate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardReport {
    pub passed: bool,
    /// Why it failed, in words an admin can act on.
    pub reason: Option<String>,
    pub mean_kl: f64,
    pub mean_tokens: f64,
    pub base_mean_tokens: f64,
    pub probes: Vec<ProbeResult>,
}

/// Greedy replies (token ids) to each prompt, all decoding together.
pub fn greedy_replies(
    model: &Transformer,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    eos: &[u32],
    use_adapter: bool,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let _no_grad = tch::no_grad_guard();
    let mut cache = model.new_cache(prompts.len().max(1), 128);
    let mut replies = vec![Vec::new(); prompts.len()];
    let adapter = use_adapter.then(|| model.adapter_id());
    let mut active = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let slot = cache
            .alloc()
            .ok_or_else(|| anyhow::anyhow!("no cache slot for probe {i}"))?;
        let logits = model.prefill(&mut cache, slot, prompt, adapter)?;
        let token = logits.argmax(-1, false).int64_value(&[]) as u32;
        active.push((i, slot, token));
    }
    for _ in 0..max_new_tokens {
        active.retain(|&(i, slot, token)| {
            let done = eos.contains(&token);
            if !done {
                replies[i].push(token);
            }
            if done || replies[i].len() >= max_new_tokens {
                cache.free(slot);
                return false;
            }
            true
        });
        if active.is_empty() {
            break;
        }
        let slots: Vec<usize> = active.iter().map(|a| a.1).collect();
        let tokens: Vec<u32> = active.iter().map(|a| a.2).collect();
        let flags = vec![adapter; active.len()];
        let logits = model.decode(&mut cache, &slots, &tokens, &flags)?;
        let next: Vec<i64> = Vec::try_from(logits.argmax(-1, false))?;
        for (a, n) in active.iter_mut().zip(next) {
            a.2 = n as u32;
        }
    }
    Ok(replies)
}

/// Mean over reply positions of KL(candidate ‖ base), teacher-forced on the candidate's reply.
pub fn reply_kl(model: &Transformer, prompt: &[u32], reply: &[u32]) -> anyhow::Result<f64> {
    if reply.is_empty() {
        return Ok(0.0);
    }
    let _no_grad = tch::no_grad_guard();
    let ids: Vec<i64> = prompt.iter().chain(reply).map(|&t| i64::from(t)).collect();
    let len = ids.len() as i64;
    let input = Tensor::from_slice(&ids)
        .view([1, len])
        .to_device(model.device());
    let mask = Tensor::ones([1, len], (Kind::Int64, model.device()));
    // Positions prompt.len()-1 .. len-2 predict the reply tokens.
    let start = prompt.len() as i64 - 1;
    let n = reply.len() as i64;
    let pick = |logits: Tensor| logits.narrow(1, start, n).log_softmax(-1, Kind::Float);
    let new = pick(model.forward_logits(&input, &mask, true)?);
    let base = pick(model.forward_logits(&input, &mask, false)?);
    let kl = (new.exp() * (&new - &base)).sum_dim_intlist(-1, false, Kind::Float);
    Ok(kl.mean(Kind::Float).double_value(&[]))
}

/// Share of distinct 3-grams among a reply's 3-grams (1.0 for short replies).
pub fn distinct_trigrams(tokens: &[u32]) -> f64 {
    if tokens.len() < 12 {
        return 1.0;
    }
    let grams: Vec<&[u32]> = tokens.windows(3).collect();
    let distinct: std::collections::HashSet<&[u32]> = grams.iter().copied().collect();
    distinct.len() as f64 / grams.len() as f64
}

/// Judges a candidate from its probe replies and the base's reply lengths.
pub fn verdict(config: &GuardConfig, probes: Vec<ProbeResult>) -> GuardReport {
    let n = probes.len().max(1) as f64;
    let mean_kl = probes.iter().map(|p| p.kl).sum::<f64>() / n;
    let mean_tokens = probes.iter().map(|p| p.tokens as f64).sum::<f64>() / n;
    let base_mean_tokens = probes.iter().map(|p| p.base_tokens as f64).sum::<f64>() / n;
    let healthy_base = probes.iter().filter(|p| !p.base_degenerate).count();
    let degenerate: Vec<String> = probes
        .iter()
        .filter(|p| !p.base_degenerate)
        .filter_map(|p| {
            if p.reply.trim().is_empty() {
                Some(format!("empty reply to {:?}", p.prompt))
            } else if p.distinct_trigrams < config.min_distinct_trigrams {
                Some(format!("repetitive reply to {:?}", p.prompt))
            } else {
                None
            }
        })
        .collect();
    let ratio = mean_tokens / base_mean_tokens.max(1.0);
    let collapsed = !degenerate.is_empty()
        && degenerate.len() as f64 > config.max_degenerate_share * healthy_base as f64;
    let reason = if collapsed {
        Some(format!(
            "replies collapsed on {} of {healthy_base} probes: {}",
            degenerate.len(),
            degenerate.join("; ")
        ))
    } else if ratio < config.min_length_ratio || ratio > config.max_length_ratio {
        Some(format!(
            "mean reply length {mean_tokens:.1} tokens is {ratio:.2}× the base's {base_mean_tokens:.1} (allowed {}–{}×)",
            config.min_length_ratio, config.max_length_ratio
        ))
    } else if mean_kl > config.max_kl {
        Some(format!(
            "KL to the base on the probe set is {mean_kl:.3} nats/token (bound {})",
            config.max_kl
        ))
    } else {
        None
    };
    GuardReport {
        passed: reason.is_none(),
        reason,
        mean_kl,
        mean_tokens,
        base_mean_tokens,
        probes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(reply: &str, tokens: usize, base_tokens: usize, kl: f64) -> ProbeResult {
        ProbeResult {
            prompt: "p".into(),
            reply: reply.into(),
            tokens,
            base_tokens,
            kl,
            distinct_trigrams: 1.0,
            base_degenerate: false,
        }
    }

    #[test]
    fn healthy_shorter_replies_pass() {
        let report = verdict(
            &GuardConfig::default(),
            vec![probe("Paris.", 3, 40, 0.4), probe("A word.", 5, 48, 0.6)],
        );
        assert!(report.passed, "{:?}", report.reason);
    }

    #[test]
    fn collapse_is_caught_with_a_reason() {
        let config = GuardConfig::default();
        let empty = verdict(&config, vec![probe("", 0, 40, 0.1), probe("", 0, 40, 0.1)]);
        assert!(!empty.passed);
        assert!(empty.reason.unwrap().contains("empty"));
        // One chaotic probe among healthy ones is not a collapse; nor is a probe the base
        // itself answers badly.
        let one = verdict(
            &config,
            vec![probe("", 0, 40, 0.1), probe("ok fine", 30, 40, 0.1)],
        );
        assert!(one.passed, "{:?}", one.reason);
        let mut base_bad = probe("", 0, 40, 0.1);
        base_bad.base_degenerate = true;
        assert!(verdict(&config, vec![base_bad, probe("ok", 30, 40, 0.1)]).passed);
        let drift = verdict(&config, vec![probe("fine", 20, 40, 3.0)]);
        assert!(drift.reason.unwrap().contains("KL"));
        let long = verdict(&config, vec![probe("long", 48, 10, 0.1)]);
        assert!(long.reason.unwrap().contains("length"));
        let mut rep = probe("la la la", 48, 40, 0.1);
        rep.distinct_trigrams = distinct_trigrams(&[7; 48]);
        assert!(verdict(&config, vec![rep])
            .reason
            .unwrap()
            .contains("repetitive"));
    }

    #[test]
    fn distinct_trigram_share() {
        assert_eq!(distinct_trigrams(&[1, 2, 3]), 1.0);
        let cycle: Vec<u32> = (0..30).map(|i| i % 2).collect();
        assert!(distinct_trigrams(&cycle) < 0.1);
        let varied: Vec<u32> = (0..30).collect();
        assert_eq!(distinct_trigrams(&varied), 1.0);
    }
}
