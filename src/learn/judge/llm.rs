//! An LLM judge over any sampler of chat completions: m evaluative votes (majority of the last
//! `\boxed{}` values) and m hint votes (the longest hint kept), sampled concurrently.

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;

use super::prompts::{evaluative_messages, hint_messages};
use super::votes::{choose_hint, hint_vote, majority, vote};
use super::{Judge, JudgeError, JudgeInput, Verdict};

/// Samples chat completions from some model.
pub trait VoteSampler: Send + Sync {
    /// Which model, where: "openai:gpt-4o-mini@http://host/v1", "local:SmolLM2-135M".
    fn describe(&self) -> String;
    /// `n` independent completions of `messages` at `temperature`, each the reply's text.
    fn sample<'a>(
        &'a self,
        messages: Vec<Value>,
        n: usize,
        temperature: f32,
    ) -> BoxFuture<'a, Result<Vec<String>, JudgeError>>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlmJudgeOptions {
    /// m: votes per prompt.
    pub votes: usize,
    pub temperature: f32,
    /// Also ask the hint prompt.
    pub hints: bool,
}

impl Default for LlmJudgeOptions {
    fn default() -> Self {
        Self {
            votes: 3,
            temperature: 0.6,
            hints: true,
        }
    }
}

pub struct LlmJudge {
    source: &'static str,
    sampler: Box<dyn VoteSampler>,
    options: LlmJudgeOptions,
}

impl LlmJudge {
    /// `source` is what verdicts report ("openai", "local").
    pub fn new(
        source: &'static str,
        sampler: Box<dyn VoteSampler>,
        options: LlmJudgeOptions,
    ) -> Result<Self, JudgeError> {
        if options.votes == 0 || options.votes > 32 {
            return Err(JudgeError::Config(format!(
                "votes must be between 1 and 32, got {}",
                options.votes
            )));
        }
        if !(0.0..=2.0).contains(&options.temperature) {
            return Err(JudgeError::Config(format!(
                "temperature must be between 0 and 2, got {}",
                options.temperature
            )));
        }
        Ok(Self {
            source,
            sampler,
            options,
        })
    }

    async fn run(&self, input: &JudgeInput) -> Result<Option<Verdict>, JudgeError> {
        // Without a next state there is nothing for the model to read.
        if input.next_state.is_empty() {
            return Ok(None);
        }
        let (n, temperature) = (self.options.votes, self.options.temperature);
        let evaluate = self
            .sampler
            .sample(evaluative_messages(input), n, temperature);
        let hints = async {
            if self.options.hints {
                self.sampler
                    .sample(hint_messages(input), n, temperature)
                    .await
            } else {
                Ok(Vec::new())
            }
        };
        let (evaluations, hint_texts) = match futures::try_join!(evaluate, hints) {
            Ok(both) => both,
            Err(JudgeError::TooLong(why)) => {
                tracing::warn!(judge = %self.name(), "judge abstains: {why}");
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        let votes: Vec<_> = evaluations.into_iter().map(vote).collect();
        let Some(score) = majority(&votes) else {
            return Ok(None);
        };
        let hint_votes: Vec<_> = hint_texts.into_iter().map(hint_vote).collect();
        Ok(Some(Verdict {
            source: self.source,
            judge: self.name(),
            score,
            votes,
            hint: choose_hint(&hint_votes),
            hint_votes,
        }))
    }
}

impl Judge for LlmJudge {
    fn name(&self) -> String {
        self.sampler.describe()
    }

    fn judge<'a>(
        &'a self,
        input: &'a JudgeInput,
    ) -> BoxFuture<'a, Result<Option<Verdict>, JudgeError>> {
        self.run(input).boxed()
    }
}
