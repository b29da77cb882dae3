//! The judge chain (each judge answers only what it can) and its construction from settings.

use std::path::PathBuf;
use std::time::Duration;

use super::llm::{LlmJudge, LlmJudgeOptions};
use super::remote::{OpenAiSampler, OpenAiSamplerConfig};
use super::{FeedbackJudge, Judge, JudgeError, JudgeInput, RulesJudge, Verdict};

/// Judges asked in order; the first verdict wins.
pub struct JudgeChain {
    judges: Vec<Box<dyn Judge>>,
}

impl JudgeChain {
    pub fn new(judges: Vec<Box<dyn Judge>>) -> Self {
        Self { judges }
    }

    /// The judges' names in order, e.g. `["feedback", "rules"]` (for the dashboard).
    pub fn describe(&self) -> Vec<String> {
        self.judges.iter().map(|j| j.name()).collect()
    }

    /// The first verdict of the chain; `Ok(None)` when every judge abstained. A judge's error
    /// ends the walk (the turn should be retried later, not judged by a weaker fallback).
    pub async fn judge(&self, input: &JudgeInput) -> Result<Option<Verdict>, JudgeError> {
        for judge in &self.judges {
            if let Some(verdict) = judge.judge(input).await? {
                return Ok(Some(verdict));
            }
        }
        Ok(None)
    }
}

/// The default chain: explicit feedback → rules → the configured LLM judge, if any.
pub fn default_chain(llm: Option<Box<dyn Judge>>) -> JudgeChain {
    let mut judges: Vec<Box<dyn Judge>> = vec![Box::new(FeedbackJudge), Box::new(RulesJudge)];
    judges.extend(llm);
    JudgeChain::new(judges)
}

/// An OpenAI-compatible judge as configured (`--judge-url/--judge-model/--judge-key/
/// --judge-votes/--judge-ca-cert`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlmJudgeConfig {
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// m: votes per prompt (default 3).
    pub votes: usize,
    pub temperature: f32,
    pub timeout: Duration,
    pub max_tokens: u32,
    /// Also ask for hints.
    pub hints: bool,
    /// A PEM file of the private CA that signed an `https://` judge's certificate.
    pub ca_cert: Option<PathBuf>,
}

impl LlmJudgeConfig {
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        let sampler = OpenAiSamplerConfig::new("", "");
        let options = LlmJudgeOptions::default();
        Self {
            url: url.into(),
            model: model.into(),
            api_key: None,
            votes: options.votes,
            temperature: options.temperature,
            timeout: sampler.timeout,
            max_tokens: sampler.max_tokens,
            hints: options.hints,
            ca_cert: None,
        }
    }
}

/// The `openai` judge for `config`; a clear error for a bad URL, model or vote count.
pub fn judge_from_config(config: &LlmJudgeConfig) -> Result<Box<dyn Judge>, JudgeError> {
    let sampler = OpenAiSampler::new(OpenAiSamplerConfig {
        url: config.url.clone(),
        model: config.model.clone(),
        api_key: config.api_key.clone(),
        timeout: config.timeout,
        max_tokens: config.max_tokens,
        ca_cert: config.ca_cert.clone(),
    })?;
    let options = LlmJudgeOptions {
        votes: config.votes,
        temperature: config.temperature,
        hints: config.hints,
    };
    Ok(Box::new(LlmJudge::new(
        "openai",
        Box::new(sampler),
        options,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::judge::{FeedbackInput, NextMessage, Rating};

    #[tokio::test]
    async fn feedback_outranks_rules_and_all_abstain_without_signal() {
        let chain = default_chain(None);
        assert_eq!(chain.describe(), ["feedback", "rules"]);
        let mut input = JudgeInput {
            next_state: vec![NextMessage::user("Thanks, perfect!")],
            ..JudgeInput::default()
        };
        assert_eq!(chain.judge(&input).await.unwrap().unwrap().source, "rules");
        input.feedback.push(FeedbackInput {
            rating: Some(Rating::Down),
            correction: None,
        });
        let verdict = chain.judge(&input).await.unwrap().unwrap();
        assert_eq!((verdict.source, verdict.score), ("feedback", -1));
        let silent = JudgeInput {
            next_state: vec![NextMessage::user("Hmm.")],
            ..JudgeInput::default()
        };
        assert_eq!(chain.judge(&silent).await.unwrap(), None);
    }

    #[test]
    fn configs_are_validated() {
        let mut config = LlmJudgeConfig::new("http://127.0.0.1:9/v1", "judge-model");
        let judge = judge_from_config(&config).unwrap();
        assert_eq!(judge.name(), "openai:judge-model@http://127.0.0.1:9/v1");
        config.votes = 0;
        let err = judge_from_config(&config).err().unwrap();
        assert!(err.to_string().contains("votes"), "{err}");
        config.votes = 3;
        config.url = "127.0.0.1:9".into();
        assert!(judge_from_config(&config).is_err());
        assert_eq!(
            default_chain(Some(
                judge_from_config(&LlmJudgeConfig::new("http://h/v1", "m")).unwrap()
            ))
            .describe(),
            ["feedback", "rules", "openai:m@http://h/v1"]
        );
    }
}
