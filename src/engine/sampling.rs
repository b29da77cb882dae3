//! Token selection: grammar masks, logit_bias, penalties, temperature, top-k, top-p,
//! per-sequence seeded RNG.
//!
//! The reported log-prob of a token is the log-softmax of the model's raw logits (temperature 1,
//! no penalties): the policy's own probability, which is what the trainer recomputes for the
//! PPO ratio and what OpenAI's `logprobs` reports.
//!
//! A constrained or biased sequence reports instead the log-softmax of (raw logits +
//! `logit_bias`) with the tokens its grammar forbids at that step set to -inf, still at
//! temperature 1 and without penalties: the distribution the token was actually drawn from, so
//! the trainer's recompute must apply the same bias and masks (`GrammarCompiler::replay_masks`).
//! `top_logprobs` come from the same distribution and never list a forbidden token.
//! Unconstrained, unbiased rows go through exactly the same ops as before (bit-identical).

use std::collections::HashMap;

use llguidance::toktrie::SimpleVob;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::types::SamplingParams;

/// Below this temperature sampling is greedy.
const GREEDY_TEMPERATURE: f32 = 1e-5;

/// Sampling state of one sequence.
pub struct SequenceSampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Occurrences of each generated token, for presence / frequency penalties.
    counts: HashMap<u32, u32>,
}

/// One chosen token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    /// The `n` most likely tokens with their log-probs, most likely first.
    pub top: Vec<(u32, f32)>,
}

impl SequenceSampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        Self {
            params,
            rng,
            counts: HashMap::new(),
        }
    }

    fn is_greedy(&self) -> bool {
        self.params.temperature < GREEDY_TEMPERATURE
    }

    /// Whether this sequence's logits get a `logit_bias`.
    pub fn is_biased(&self) -> bool {
        !self.params.logit_bias.is_empty()
    }

    fn has_penalties(&self) -> bool {
        !self.counts.is_empty()
            && (self.params.presence_penalty != 0.0 || self.params.frequency_penalty != 0.0)
    }

    /// Records a generated token for the penalties.
    pub fn observe(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
    }

    fn penalized(&self, row: &Tensor) -> Tensor {
        if !self.has_penalties() {
            return row.shallow_clone();
        }
        let (ids, amounts): (Vec<i64>, Vec<f32>) = self
            .counts
            .iter()
            .map(|(&tok, &n)| {
                let amount =
                    self.params.presence_penalty + self.params.frequency_penalty * n as f32;
                (tok as i64, -amount)
            })
            .unzip();
        let ids = Tensor::from_slice(&ids).to_device(row.device());
        let amounts = Tensor::from_slice(&amounts).to_device(row.device());
        row.index_add(0, &ids, &amounts)
    }

    /// Samples one token from a row of logits ([vocab], f32).
    fn choose(&mut self, row: &Tensor) -> u32 {
        let row = self.penalized(row);
        if self.is_greedy() {
            return row.argmax(0, false).int64_value(&[]) as u32;
        }
        let scaled = row / f64::from(self.params.temperature);
        let vocab = scaled.size()[0];
        let top_k = if self.params.top_k > 0 {
            (self.params.top_k as i64).min(vocab)
        } else {
            vocab
        };
        let draw: f32 = self.rng.random();
        if top_k == vocab && self.params.top_p >= 1.0 {
            let probs = to_f32s(&scaled.softmax(0, Kind::Float));
            return pick(&probs, draw, None) as u32;
        }
        let (values, indices) = scaled.topk(top_k, 0, true, true);
        let probs = to_f32s(&values.softmax(0, Kind::Float));
        let keep = nucleus_len(&probs, self.params.top_p);
        let position = pick(&probs[..keep], draw, Some(probs[..keep].iter().sum()));
        indices.int64_value(&[position as i64]) as u32
    }
}

/// A tensor's values, flattened, on the CPU (a float tensor of any shape converts).
fn to_f32s(t: &Tensor) -> Vec<f32> {
    let flat = t
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        .reshape(-1);
    Vec::<f32>::try_from(&flat).expect("a flat float tensor converts to Vec<f32>")
}

fn to_i64s(t: &Tensor) -> Vec<i64> {
    let flat = t
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Int64)
        .reshape(-1);
    Vec::<i64>::try_from(&flat).expect("a flat int64 tensor converts to Vec<i64>")
}

/// How many of the (descending) probabilities make up the nucleus of mass `top_p`.
pub fn nucleus_len(sorted_probs: &[f32], top_p: f32) -> usize {
    if top_p >= 1.0 {
        return sorted_probs.len();
    }
    let mut mass = 0.0;
    for (i, p) in sorted_probs.iter().enumerate() {
        mass += p;
        if mass >= top_p {
            return i + 1;
        }
    }
    sorted_probs.len().max(1)
}

/// Inverse-CDF pick: the first index where the running mass passes `draw * total`.
pub fn pick(probs: &[f32], draw: f32, total: Option<f32>) -> usize {
    let total = total.unwrap_or_else(|| probs.iter().sum());
    let target = draw * total;
    let mut mass = 0.0;
    for (i, p) in probs.iter().enumerate() {
        mass += p;
        if mass > target {
            return i;
        }
    }
    // Rounding left the target past the end: the last token with any mass.
    probs.iter().rposition(|&p| p > 0.0).unwrap_or(0)
}

/// A grammar mask as a row to add to the logits: 0 where a token is allowed, -inf elsewhere.
pub fn mask_row(allowed: &SimpleVob) -> Vec<f32> {
    let mut row = vec![f32::NEG_INFINITY; allowed.len()];
    allowed.iter_set_entries(|i| row[i] = 0.0);
    row
}

/// Adds each row's grammar mask (`masks[b]`, from [`mask_row`]) and its sampler's logit_bias to
/// `logits` in place. Rows with neither are not touched, and with none at all this is free.
fn adjust_rows(logits: &Tensor, samplers: &[&mut SequenceSampler], masks: &[Option<Vec<f32>>]) {
    for (b, sampler) in samplers.iter().enumerate() {
        let mask = masks.get(b).and_then(Option::as_ref);
        if mask.is_none() && !sampler.is_biased() {
            continue;
        }
        let mut row = logits.get(b as i64);
        let device = row.device();
        if let Some(mask) = mask {
            let _ = row.g_add_(&Tensor::from_slice(mask).to_device(device));
        }
        if sampler.is_biased() {
            let (ids, values): (Vec<i64>, Vec<f32>) = sampler
                .params
                .logit_bias
                .iter()
                .map(|&(token, value)| (i64::from(token), value))
                .unzip();
            let ids = Tensor::from_slice(&ids).to_device(device);
            let values = Tensor::from_slice(&values).to_device(device);
            // A forbidden token stays at -inf whatever its bias.
            let _ = row.index_add_(0, &ids, &values);
        }
    }
}

/// Chooses one token per row of `logits` ([B, vocab]); `top_n[b]` alternatives are reported.
/// `masks[b]` (may be shorter than the batch) is row b's grammar mask from [`mask_row`], as wide
/// as the logits; masks and logit_bias are added to `logits` in place. Only the chosen (and
/// top-n) values cross to the host.
pub fn sample_batch(
    logits: &Tensor,
    samplers: &mut [&mut SequenceSampler],
    top_n: &[usize],
    masks: &[Option<Vec<f32>>],
) -> Vec<Sampled> {
    let logits = logits.to_kind(Kind::Float);
    adjust_rows(&logits, samplers, masks);
    let logprobs = logits.log_softmax(-1, Kind::Float);
    let batch = samplers.len();
    let greedy_all = samplers.iter().all(|s| s.is_greedy() && !s.has_penalties());
    let (tokens, chosen): (Vec<u32>, Vec<f32>) = if greedy_all {
        // Argmax of the raw logits (as HF greedy decoding), its log-prob gathered on the
        // tensor side: no round trip of the token ids through the host.
        let (_, indices) = logits.max_dim(-1, true);
        let chosen = to_f32s(&logprobs.gather(1, &indices, false));
        let tokens = to_i64s(&indices).into_iter().map(|t| t as u32).collect();
        (tokens, chosen)
    } else {
        let tokens: Vec<u32> = (0..batch)
            .map(|b| samplers[b].choose(&logits.get(b as i64)))
            .collect();
        let index = Tensor::from_slice(&tokens.iter().map(|&t| t as i64).collect::<Vec<_>>())
            .to_device(logits.device())
            .unsqueeze(1);
        (tokens, to_f32s(&logprobs.gather(1, &index, false)))
    };
    let max_top = top_n.iter().copied().max().unwrap_or(0);
    let tops = if max_top > 0 {
        let (values, indices) = logprobs.topk(max_top as i64, -1, true, true);
        Some((to_f32s(&values), to_i64s(&indices)))
    } else {
        None
    };
    (0..batch)
        .map(|b| {
            samplers[b].observe(tokens[b]);
            let top = match &tops {
                Some((values, indices)) => (0..top_n[b])
                    .map(|j| {
                        let at = b * max_top + j;
                        (indices[at] as u32, values[at])
                    })
                    // Fewer tokens than asked may be allowed: forbidden ones are not alternatives.
                    .filter(|&(_, logprob)| logprob > f32::NEG_INFINITY)
                    .collect(),
                None => Vec::new(),
            };
            Sampled {
                token: tokens[b],
                logprob: chosen[b],
                top,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            seed: Some(seed),
            ..SamplingParams::default()
        }
    }

    #[test]
    fn nucleus_keeps_smallest_prefix_reaching_mass() {
        assert_eq!(nucleus_len(&[0.5, 0.3, 0.2], 0.5), 1);
        assert_eq!(nucleus_len(&[0.5, 0.3, 0.2], 0.6), 2);
        assert_eq!(nucleus_len(&[0.5, 0.3, 0.2], 1.0), 3);
    }

    #[test]
    fn pick_is_inverse_cdf() {
        let p = [0.25, 0.25, 0.5];
        assert_eq!(pick(&p, 0.0, None), 0);
        assert_eq!(pick(&p, 0.3, None), 1);
        assert_eq!(pick(&p, 0.51, None), 2);
        assert_eq!(pick(&p, 0.9999, None), 2);
    }

    #[test]
    fn greedy_takes_argmax_and_reports_raw_logprob() {
        let logits = Tensor::from_slice(&[1.0f32, 3.0, 2.0, 0.0, 0.5, 2.5]).reshape([2, 3]);
        let mut a = SequenceSampler::new(params(0.0, 1.0, 0, 1));
        let mut b = SequenceSampler::new(params(0.0, 1.0, 0, 1));
        let out = sample_batch(&logits, &mut [&mut a, &mut b], &[2, 0], &[]);
        assert_eq!(out[0].token, 1);
        assert_eq!(out[1].token, 2);
        let expected = 3.0 - (1f32.exp() + 3f32.exp() + 2f32.exp()).ln();
        assert!((out[0].logprob - expected).abs() < 1e-5);
        assert_eq!(out[0].top.len(), 2);
        assert_eq!(out[0].top[0].0, 1);
        assert_eq!(out[0].top[1].0, 2);
        assert!(out[1].top.is_empty());
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_restricts() {
        let logits = Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]).unsqueeze(0);
        let run = |seed| {
            let mut s = SequenceSampler::new(params(1.0, 1.0, 0, seed));
            (0..50)
                .map(|_| sample_batch(&logits, &mut [&mut s], &[0], &[])[0].token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let mut k2 = SequenceSampler::new(params(1.0, 1.0, 2, 3));
        for _ in 0..50 {
            let t = sample_batch(&logits, &mut [&mut k2], &[0], &[])[0].token;
            assert!(t == 6 || t == 7, "top_k=2 sampled {t}");
        }
        let mut p = SequenceSampler::new(params(1.0, 0.01, 0, 3));
        for _ in 0..20 {
            assert_eq!(sample_batch(&logits, &mut [&mut p], &[0], &[])[0].token, 7);
        }
    }

    #[test]
    fn frequency_penalty_discourages_repeats() {
        let logits = Tensor::from_slice(&[2.0f32, 1.9]).unsqueeze(0);
        let mut s = SequenceSampler::new(SamplingParams {
            temperature: 0.0,
            frequency_penalty: 1.0,
            ..SamplingParams::default()
        });
        let first = sample_batch(&logits, &mut [&mut s], &[0], &[])[0].token;
        let second = sample_batch(&logits, &mut [&mut s], &[0], &[])[0].token;
        assert_eq!((first, second), (0, 1));
    }

    fn allowed(n: usize, tokens: &[u32]) -> Vec<f32> {
        let mut vob = SimpleVob::alloc(n);
        tokens.iter().for_each(|&t| vob.allow_token(t));
        mask_row(&vob)
    }

    /// log-softmax of `row` at `at`, in f64.
    fn log_softmax_at(row: &[f32], at: usize) -> f32 {
        let total: f64 = row.iter().map(|&x| f64::from(x).exp()).sum();
        (f64::from(row[at]) - total.ln()) as f32
    }

    #[test]
    fn greedy_respects_the_mask_and_bias_and_reports_the_masked_distribution() {
        let raw = [0.0f32, 4.0, 2.0, 3.0];
        let logits = Tensor::from_slice(&raw).unsqueeze(0);
        let mut s = SequenceSampler::new(SamplingParams {
            temperature: 0.0,
            logit_bias: vec![(0, 2.5), (1, 10.0)],
            ..SamplingParams::default()
        });
        // Token 1 would win (raw and biased) but is forbidden; 0 gets +2.5 and beats 2.
        let out = sample_batch(&logits, &mut [&mut s], &[4], &[Some(allowed(4, &[0, 2]))]);
        assert_eq!(out[0].token, 0);
        let expected = log_softmax_at(&[2.5, 2.0], 0);
        assert!(
            (out[0].logprob - expected).abs() < 1e-6,
            "{}",
            out[0].logprob
        );
        assert_eq!(
            out[0].top.len(),
            2,
            "only the allowed tokens are alternatives"
        );
        assert_eq!((out[0].top[0].0, out[0].top[1].0), (0, 2));
        let total: f32 = out[0].top.iter().map(|&(_, lp)| lp.exp()).sum();
        assert!(
            (total - 1.0).abs() < 1e-5,
            "renormalized over the allowed set"
        );
    }

    #[test]
    fn sampled_tokens_stay_in_the_mask_with_renormalized_logprobs() {
        let raw = [1.0f32, 0.5, 2.0, 0.1, 1.5, 3.0];
        let mask = allowed(6, &[1, 3, 4]);
        // Reported at temperature 1 without penalties, over the allowed tokens 1, 3 and 4.
        let expected = |t: usize| {
            log_softmax_at(
                &[0.5, 0.1, 1.5],
                [1, 3, 4].iter().position(|&a| a == t).unwrap(),
            )
        };
        for (temperature, top_p, top_k) in [(1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 1.0, 2)] {
            let mut s = SequenceSampler::new(SamplingParams {
                presence_penalty: 0.5,
                ..params(temperature, top_p, top_k, 5)
            });
            let mut seen = Vec::new();
            for _ in 0..40 {
                let logits = Tensor::from_slice(&raw).unsqueeze(0);
                let out = sample_batch(&logits, &mut [&mut s], &[0], &[Some(mask.clone())]);
                let t = out[0].token as usize;
                assert!([1, 3, 4].contains(&t), "sampled forbidden token {t}");
                assert!((out[0].logprob - expected(t)).abs() < 1e-5);
                seen.push(t);
            }
            assert!(seen.contains(&4), "the likeliest allowed token is drawn");
        }
    }

    #[test]
    fn unconstrained_rows_are_unchanged_beside_a_constrained_one() {
        let raw = [0.3f32, -1.2, 2.2, 0.9, 1.7, -0.4, 0.05, 1.1];
        let alone = {
            let logits = Tensor::from_slice(&raw[4..]).unsqueeze(0);
            let mut s = SequenceSampler::new(params(1.0, 1.0, 0, 9));
            sample_batch(&logits, &mut [&mut s], &[2], &[])
        };
        let logits = Tensor::from_slice(&raw).reshape([2, 4]);
        let mut a = SequenceSampler::new(SamplingParams {
            logit_bias: vec![(3, -100.0)],
            ..params(1.0, 1.0, 0, 1)
        });
        let mut b = SequenceSampler::new(params(1.0, 1.0, 0, 9));
        let out = sample_batch(
            &logits,
            &mut [&mut a, &mut b],
            &[2, 2],
            &[Some(allowed(4, &[0, 3]))],
        );
        assert_eq!(out[0].token, 0, "token 3 is allowed but biased far down");
        assert_eq!(
            out[1], alone[0],
            "bit-identical: token, logprob and alternatives"
        );
        // Bias alone (no grammar) shifts the reported distribution too.
        let mut c = SequenceSampler::new(SamplingParams {
            temperature: 0.0,
            logit_bias: vec![(1, 100.0)],
            ..SamplingParams::default()
        });
        let logits = Tensor::from_slice(&raw[..4]).unsqueeze(0);
        let out = sample_batch(&logits, &mut [&mut c], &[0], &[]);
        assert_eq!(out[0].token, 1);
        let expected = log_softmax_at(&[0.3, 98.8, 2.2, 0.9], 1);
        assert!((out[0].logprob - expected).abs() < 1e-6);
    }
}
