//! Learning from turns sampled under constrained decoding (a grammar for structured output or a
//! forced tool call) and/or an OpenAI `logit_bias`.
//!
//! Such a turn's behaviour log-probs are those of the distribution its tokens were drawn from:
//! q_old(a|s) = log-softmax(logits + bias) over the tokens the grammar allowed at that step.
//! The trainer recomputes every per-token log-prob it compares with them (the policy's lp_new
//! for the PPO ratio, the teacher's for the OPD advantage, the base's for the KL estimate)
//! under the same transformation: bias added, the position masked to the grammar's allowed
//! tokens (replayed over the logged tokens), log-softmax in f32. Against the unmasked policy
//! the ratio would start below 1 by the allowed mass and `lp_teacher − lp_old` would be biased
//! negative on every forced token, teaching the model away from valid output. Under the mask
//! q_θ/q_old is the exact ratio of the constrained policy, a forced position (one allowed
//! token) has log q = 0 and no gradient, and teacher and policy are compared on one support.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tch::Device;

use super::samples::TrainingSample;
use crate::model::grammar::{Constraint, GrammarCompiler};
use crate::model::logprobs::LogitTransform;

/// Builds each sample's [`LogitTransform`]; the grammar compiler is loaded (from the trainer's
/// model directory) the first time a constrained sample comes, so unconstrained training never
/// pays for it.
pub struct SampleTransforms {
    model_dir: PathBuf,
    vocab: usize,
    eos: Vec<u32>,
    grammar: OnceLock<Result<GrammarCompiler, String>>,
}

impl SampleTransforms {
    /// `vocab`: the width of the model's logits; `eos`: the tokens that end generation.
    pub fn new(model_dir: &Path, vocab: usize, eos: Vec<u32>) -> Self {
        Self {
            model_dir: model_dir.to_path_buf(),
            vocab,
            eos,
            grammar: OnceLock::new(),
        }
    }

    /// Uses `compiler` (built for the same model, e.g. the serving engine's) instead of
    /// building one; no effect once one is in use.
    pub fn set_compiler(&self, compiler: GrammarCompiler) {
        let _ = self.grammar.set(Ok(compiler));
    }

    /// The transform `sample` was sampled under (`Ok(None)`: plain log-softmax, nothing built).
    /// An error (the constraint does not compile or replay over the logged tokens, a bias
    /// outside the vocabulary) means the sample cannot be trained on consistently.
    pub fn for_sample(
        &self,
        sample: &TrainingSample,
        device: Device,
    ) -> Result<Option<LogitTransform>, String> {
        if sample.constraint.is_none() && sample.logit_bias.is_empty() {
            return Ok(None);
        }
        let masks = match &sample.constraint {
            Some(constraint) => Some(self.replay(constraint, &sample.response_ids)?),
            None => None,
        };
        LogitTransform::new(
            self.vocab,
            &sample.response_ids,
            &sample.logit_bias,
            masks.as_deref(),
            device,
        )
    }

    fn replay(&self, constraint: &Constraint, tokens: &[u32]) -> Result<Vec<Vec<bool>>, String> {
        let grammar = self.grammar.get_or_init(|| {
            GrammarCompiler::from_model_dir(&self.model_dir, self.vocab, &self.eos)
                .map_err(|e| format!("no grammar compiler: {e:#}"))
        });
        grammar.as_ref()?.replay_masks(constraint, tokens)
    }
}
