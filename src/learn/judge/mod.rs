//! Judging a served turn from what followed it (its next state) and from explicit feedback.
//!
//! A [`JudgeChain`] asks its judges in order; each answers only what it can (`Ok(None)` =
//! abstain). The default chain is explicit feedback → the `rules` phrase table → an optional LLM
//! judge (`openai`: any OpenAI-compatible server; `local`: the served base model).

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

pub mod chain;
pub mod feedback;
pub mod llm;
pub mod local;
pub mod phrases;
pub mod prompts;
pub mod remote;
pub mod rules;
pub mod votes;

pub use crate::store::Rating;
pub use chain::{default_chain, judge_from_config, JudgeChain, LlmJudgeConfig};
pub use feedback::FeedbackJudge;
pub use llm::{LlmJudge, LlmJudgeOptions, VoteSampler};
pub use local::{local_judge, LocalSampler};
pub use remote::{OpenAiSampler, OpenAiSamplerConfig};
pub use rules::RulesJudge;

/// One message of the next state: the user's next message or a tool result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NextMessage {
    /// "user" or "tool" (other roles are ignored by the judges).
    pub role: String,
    pub content: String,
}

impl NextMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }

    pub fn tool(content: impl Into<String>) -> Self {
        Self {
            role: "tool".into(),
            content: content.into(),
        }
    }
}

/// Explicit feedback on the judged response.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackInput {
    pub rating: Option<Rating>,
    pub correction: Option<String>,
}

/// Everything a judge sees about one turn.
#[derive(Debug, Clone, Default)]
pub struct JudgeInput {
    /// The request messages, OpenAI shape (`{"role", "content", "tool_calls"...}`).
    pub messages: Vec<Value>,
    pub response_text: String,
    pub response_tool_calls: Option<Value>,
    /// May be empty when only feedback exists.
    pub next_state: Vec<NextMessage>,
    /// Explicit feedback, oldest first.
    pub feedback: Vec<FeedbackInput>,
}

impl JudgeInput {
    /// The text of the last user message of the request ("" when there is none).
    pub fn last_user_text(&self) -> String {
        self.messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(message_text)
            .unwrap_or_default()
    }
}

/// The text of an OpenAI-shaped message: a string content, or the text parts of an array.
pub fn message_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// One sampled evaluative vote: its full text and the value of its last `\boxed{}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vote {
    pub text: String,
    /// +1, -1 or 0; None when the vote had no parseable `\boxed{}` (dropped from the majority).
    pub value: Option<i8>,
}

/// One sampled hint vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HintVote {
    pub text: String,
    /// The vote answered `\boxed{1}`: the next state reveals how the response should have been.
    pub accepted: bool,
    /// The text between the hint markers, when accepted and present.
    pub hint: Option<String>,
}

/// A judge's answer for one turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// "feedback" | "rules" | "local" | "openai".
    pub source: &'static str,
    /// Which judge exactly, e.g. "rules" or "openai:gpt-4o-mini@http://host/v1".
    pub judge: String,
    /// +1 progress, -1 correction or redo, 0 ambiguous.
    pub score: i8,
    pub votes: Vec<Vote>,
    /// How the response should have been (for on-policy distillation), when known.
    pub hint: Option<String>,
    pub hint_votes: Vec<HintVote>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JudgeError {
    #[error("judge configuration: {0}")]
    Config(String),
    #[error("judge request to {url} failed: {message}")]
    Http { url: String, message: String },
    #[error("judge request to {url} timed out")]
    Timeout { url: String },
    #[error("judge server {url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("judge server {url} sent an invalid response: {message}")]
    InvalidResponse { url: String, message: String },
    #[error("judge engine: {0}")]
    Engine(String),
    /// The judge prompt does not fit the judge model's context.
    #[error("judge prompt too long: {0}")]
    TooLong(String),
}

/// A judge: answers with a verdict or abstains (`Ok(None)`, the next judge is asked).
pub trait Judge: Send + Sync {
    fn name(&self) -> String;
    fn judge<'a>(
        &'a self,
        input: &'a JudgeInput,
    ) -> BoxFuture<'a, Result<Option<Verdict>, JudgeError>>;
}
