//! Teacher-forced log-probabilities of responses (training and evaluation path), optionally
//! under the logit transformation a turn was sampled with (logit bias, grammar mask).

use tch::{Device, Kind, Tensor};

use super::error::ModelError;
use super::transformer::Transformer;

/// The transformation a turn's logits went through before each of its tokens was sampled:
/// OpenAI `logit_bias` added, then the tokens the grammar disallowed at that position set to
/// −inf. Log-probs taken through it are those of the distribution the token was drawn from.
#[derive(Debug)]
pub struct LogitTransform {
    /// [vocab] f32, added at every position.
    bias: Option<Tensor>,
    /// [positions, vocab] bool, true where a token was disallowed.
    disallowed: Option<Tensor>,
    positions: usize,
}

impl LogitTransform {
    /// The transform for `response` (its tokens, in order) from the turn's `logit_bias` and,
    /// for a constrained turn, the allowed tokens before each response token was sampled.
    /// `Ok(None)` when there is nothing to apply: the plain log-softmax, no tensors built.
    /// Errors when the parts do not fit the response or the vocabulary, or when a response
    /// token was not allowed where it stands (the logged turn cannot have sampled it).
    pub fn new(
        vocab: usize,
        response: &[u32],
        logit_bias: &[(u32, f32)],
        allowed: Option<&[Vec<bool>]>,
        device: Device,
    ) -> Result<Option<Self>, String> {
        if logit_bias.is_empty() && allowed.is_none() {
            return Ok(None);
        }
        let bias = if logit_bias.is_empty() {
            None
        } else {
            let mut dense = vec![0f32; vocab];
            for &(token, value) in logit_bias {
                let slot = dense.get_mut(token as usize).ok_or_else(|| {
                    format!("logit_bias token {token} is outside the vocabulary of {vocab}")
                })?;
                *slot += value;
            }
            Some(Tensor::from_slice(&dense).to_device(device))
        };
        let disallowed = match allowed {
            None => None,
            Some(masks) => {
                if masks.len() != response.len() {
                    return Err(format!(
                        "{} masks for {} response tokens",
                        masks.len(),
                        response.len()
                    ));
                }
                let mut flat = Vec::with_capacity(masks.len() * vocab);
                for (i, (mask, &token)) in masks.iter().zip(response).enumerate() {
                    if mask.len() != vocab {
                        return Err(format!(
                            "mask {i} has {} entries for a vocabulary of {vocab}",
                            mask.len()
                        ));
                    }
                    if !mask.get(token as usize).copied().unwrap_or(false) {
                        return Err(format!("response token {i} ({token}) is not allowed there"));
                    }
                    flat.extend(mask.iter().map(|&a| !a));
                }
                let shape = [masks.len() as i64, vocab as i64];
                Some(Tensor::from_slice(&flat).view(shape).to_device(device))
            }
        };
        Ok(Some(Self {
            bias,
            disallowed,
            positions: response.len(),
        }))
    }

    /// Positions this transform covers (the response's length).
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Log-softmax in f32 of `logits` ([positions, vocab]) under the transform.
    pub fn log_softmax(&self, logits: &Tensor) -> Tensor {
        let logits = logits.to_kind(Kind::Float);
        let biased = match &self.bias {
            Some(bias) => logits + bias,
            None => logits,
        };
        let masked = match &self.disallowed {
            // −inf, not a large negative: disallowed tokens get exactly zero mass, so a
            // position with one allowed token has log-prob 0 and no gradient.
            Some(disallowed) => biased.masked_fill(disallowed, f64::NEG_INFINITY),
            None => biased,
        };
        masked.log_softmax(-1, Kind::Float)
    }
}

/// Log-probabilities of each response token given its prompt and the response so far:
/// ([B, Rmax] f32, [B, Rmax] f32 mask of real tokens). Rows are right-padded; autograd
/// follows the caller's mode (so gradients reach a trainable adapter).
pub fn response_logprobs(
    model: &Transformer,
    batch: &[(Vec<u32>, Vec<u32>)],
    use_adapter: bool,
) -> Result<(Tensor, Tensor), ModelError> {
    response_logprobs_transformed(model, batch, use_adapter, &[])
}

/// [`response_logprobs`] with row i's log-probs taken under `transforms[i]` (None, or a row
/// past the end of `transforms`: the plain log-softmax). With no transform at all this is
/// exactly the plain path.
pub fn response_logprobs_transformed(
    model: &Transformer,
    batch: &[(Vec<u32>, Vec<u32>)],
    use_adapter: bool,
    transforms: &[Option<&LogitTransform>],
) -> Result<(Tensor, Tensor), ModelError> {
    if batch.is_empty() {
        return Err(ModelError::InvalidRequest("empty batch".into()));
    }
    let max_len = batch
        .iter()
        .map(|(p, r)| p.len() + r.len())
        .max()
        .unwrap_or(0);
    let r_max = batch.iter().map(|(_, r)| r.len()).max().unwrap_or(0).max(1);
    let (b, t) = (batch.len(), max_len);
    let mut ids = vec![0i64; b * t];
    let mut mask = vec![0i64; b * t];
    // For response token j of row i: the position whose logits predict it, and its id.
    let mut positions = vec![0i64; b * r_max];
    let mut targets = vec![0i64; b * r_max];
    let mut resp_mask = vec![0f32; b * r_max];
    for (i, (prompt, response)) in batch.iter().enumerate() {
        if prompt.is_empty() {
            return Err(ModelError::InvalidRequest(format!(
                "row {i}: the prompt must not be empty"
            )));
        }
        if let Some(Some(transform)) = transforms.get(i) {
            if transform.positions() != response.len() {
                return Err(ModelError::InvalidRequest(format!(
                    "row {i}: a logit transform for {} positions, {} response tokens",
                    transform.positions(),
                    response.len()
                )));
            }
        }
        model.check_tokens(prompt)?;
        model.check_tokens(response)?;
        for (k, &tok) in prompt.iter().chain(response.iter()).enumerate() {
            ids[i * t + k] = tok as i64;
            mask[i * t + k] = 1;
        }
        for (j, &tok) in response.iter().enumerate() {
            positions[i * r_max + j] = (i * t + prompt.len() + j - 1) as i64;
            targets[i * r_max + j] = tok as i64;
            resp_mask[i * r_max + j] = 1.0;
        }
    }
    let dev = model.device();
    let shape = [b as i64, t as i64];
    let ids = Tensor::from_slice(&ids).view(shape).to_device(dev);
    let mask = Tensor::from_slice(&mask).view(shape).to_device(dev);
    let hidden = model.forward_hidden(&ids, &mask, use_adapter)?;
    // Only the positions that predict response tokens go through lm_head and log_softmax.
    let h = hidden.view([(b * t) as i64, -1]);
    let picked = h.index_select(0, &Tensor::from_slice(&positions).to_device(dev));
    let logits = model.logits(&picked);
    let targets = Tensor::from_slice(&targets).to_device(dev).view([-1, 1]);
    let token_lp = if transforms.iter().all(Option::is_none) {
        logits
            .log_softmax(-1, Kind::Float)
            .gather(1, &targets, false)
            .view([b as i64, r_max as i64])
    } else {
        let rows: Vec<Tensor> = (0..b)
            .map(|i| {
                let start = (i * r_max) as i64;
                let row_logits = logits.narrow(0, start, r_max as i64);
                let row_targets = targets.narrow(0, start, r_max as i64);
                match transforms.get(i).copied().flatten() {
                    None => row_logits
                        .log_softmax(-1, Kind::Float)
                        .gather(1, &row_targets, false)
                        .view([r_max as i64]),
                    Some(transform) => {
                        // Only the real positions: padding has no mask, and is zeroed below.
                        let n = transform.positions() as i64;
                        let lp = transform
                            .log_softmax(&row_logits.narrow(0, 0, n))
                            .gather(1, &row_targets.narrow(0, 0, n), false)
                            .view([n]);
                        let pad = Tensor::zeros([r_max as i64 - n], (Kind::Float, dev));
                        Tensor::cat(&[lp, pad], 0)
                    }
                }
            })
            .collect();
        Tensor::stack(&rows, 0)
    };
    let resp_mask = Tensor::from_slice(&resp_mask)
        .to_device(dev)
        .view([b as i64, r_max as i64]);
    Ok((token_lp * &resp_mask, resp_mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG_INF: f32 = f32::NEG_INFINITY;

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        let width = t.size()[1];
        (0..t.size()[0])
            .map(|i| Vec::try_from(t.get(i).reshape([width])).unwrap())
            .collect()
    }

    fn logits() -> Tensor {
        Tensor::from_slice(&[1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0, 1.0, 2.0]).view([2, 4])
    }

    fn log_softmax(v: &[f32]) -> Vec<f32> {
        let max = v.iter().copied().fold(NEG_INF, f32::max);
        let total: f32 = v.iter().map(|x| (x - max).exp()).sum();
        v.iter().map(|x| x - max - total.ln()).collect()
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g == w) || (g - w).abs() < 1e-6, "{got:?} != {want:?}");
        }
    }

    #[test]
    fn nothing_to_apply_builds_nothing() {
        let t = LogitTransform::new(4, &[1, 2], &[], None, Device::Cpu).unwrap();
        assert!(t.is_none());
    }

    #[test]
    fn bias_is_added_then_the_mask_renormalizes() {
        let allowed = vec![
            vec![true, true, false, false],
            vec![false, true, true, true],
        ];
        let t = LogitTransform::new(
            4,
            &[1, 3],
            &[(1, -2.0), (3, 0.5)],
            Some(&allowed),
            Device::Cpu,
        )
        .unwrap()
        .unwrap();
        let got = rows(&t.log_softmax(&logits()));
        // Row 0: biased [1, 0, 0.5, -0.5], allowed {0, 1}.
        // Row 1: biased [0, 1, 1, 2.5], allowed {1, 2, 3}.
        let r0 = log_softmax(&[1.0, 0.0]);
        let r1 = log_softmax(&[1.0, 1.0, 2.5]);
        close(&got[0], &[r0[0], r0[1], NEG_INF, NEG_INF]);
        close(&got[1], &[NEG_INF, r1[0], r1[1], r1[2]]);
        let mass: f32 = got[1].iter().map(|x| x.exp()).sum();
        assert!((mass - 1.0).abs() < 1e-6);
    }

    #[test]
    fn bias_alone_shifts_the_distribution() {
        let t = LogitTransform::new(4, &[0, 0], &[(2, 1.5)], None, Device::Cpu)
            .unwrap()
            .unwrap();
        let got = rows(&t.log_softmax(&logits()));
        close(&got[0], &log_softmax(&[1.0, 2.0, 2.0, -1.0]));
        close(&got[1], &log_softmax(&[0.0, 3.0, 2.5, 2.0]));
    }

    #[test]
    fn a_forced_token_has_log_prob_zero_and_no_gradient() {
        let allowed = vec![vec![false, false, true, false], vec![true; 4]];
        let t = LogitTransform::new(4, &[2, 1], &[(2, -100.0)], Some(&allowed), Device::Cpu)
            .unwrap()
            .unwrap();
        let x = logits().set_requires_grad(true);
        let lp = t
            .log_softmax(&x)
            .gather(1, &Tensor::from_slice(&[2i64, 1]).view([2, 1]), false);
        let values: Vec<f32> = Vec::try_from(lp.detach().view([-1])).unwrap();
        assert_eq!(values[0], 0.0, "the only allowed token has all the mass");
        lp.sum(Kind::Float).backward();
        let grad = rows(&x.grad());
        assert!(grad[0].iter().all(|&g| g == 0.0), "forced: {:?}", grad[0]);
        assert!(grad[1].iter().any(|&g| g != 0.0), "free: {:?}", grad[1]);
        assert!(grad.iter().flatten().all(|g| g.is_finite()));
    }

    #[test]
    fn parts_that_do_not_fit_are_errors() {
        let row = vec![true; 4];
        let cpu = Device::Cpu;
        assert!(LogitTransform::new(4, &[1], &[(4, 1.0)], None, cpu).is_err());
        assert!(
            LogitTransform::new(4, &[1, 2], &[], Some(std::slice::from_ref(&row)), cpu).is_err()
        );
        assert!(LogitTransform::new(4, &[1], &[], Some(&[vec![true; 3]]), cpu).is_err());
        let no_one = vec![true, false, true, true];
        assert!(LogitTransform::new(4, &[1], &[], Some(&[no_one]), cpu).is_err());
        assert!(LogitTransform::new(4, &[1], &[], Some(&[row]), cpu).is_ok());
    }
}
