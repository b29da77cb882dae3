//! The seam between the HTTP layer and the model: requests in, a stream of events out.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use crate::model::grammar::Constraint;

/// How the next token is chosen. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// OpenAI `logit_bias`: added to a token's logit before sampling (already validated: ids in
    /// the vocabulary, values in [-100, 100]).
    #[serde(default)]
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

/// When generation ends (besides the model's own end-of-sequence tokens).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StopCriteria {
    pub max_tokens: usize,
    pub stop_strings: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past the model's end-of-sequence tokens (benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
}

/// Which weights answer: the current policy (base + published adapter) or the frozen base
/// (used by the judge and as the OPD teacher).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdapterChoice {
    #[default]
    Current,
    BaseOnly,
}

/// User traffic is always scheduled before background work (judge votes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Priority {
    Background,
    #[default]
    User,
}

/// One generation request, already tokenized.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub request_id: String,
    pub prompt_tokens: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopCriteria,
    /// Number of alternatives to report per token (OpenAI `top_logprobs`), 0 for none.
    pub top_logprobs: usize,
    pub adapter: AdapterChoice,
    pub priority: Priority,
    /// A grammar every sampled token must keep the output inside (structured output, forced
    /// tool calls); enforced by masking logits at each step.
    pub constraint: Option<Constraint>,
}

/// One candidate token with its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub text: String,
    pub logprob: f32,
}

/// One sampled token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenEvent {
    pub token_id: u32,
    /// The text this token adds to the output (may be empty while a multi-byte char is pending).
    pub text: String,
    /// Log-prob of the token under the serving policy, exactly as sampled (behaviour log-prob).
    pub logprob: f32,
    pub top_logprobs: Vec<TokenLogprob>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishEvent {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache (not prefilled again).
    #[serde(default)]
    pub cached_tokens: usize,
    /// The policy version (adapter generation) that produced every token of this response.
    pub policy_version: u64,
    /// Text held back by a stop string, never sent: the stop string itself is not part of output.
    pub matched_stop: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GenerateEvent {
    Token(TokenEvent),
    Finish(FinishEvent),
    Error(String),
}

pub type EventStream = mpsc::Receiver<GenerateEvent>;

/// Why a request was refused before it started.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the engine queue is full; retry later")]
    QueueFull,
    #[error("this model's maximum context length is {max} tokens, but the request needs {requested} ({prompt} in the prompt + {completion} to generate)")]
    ContextTooLong {
        max: usize,
        requested: usize,
        prompt: usize,
        completion: usize,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The grammar engine could not compile the constraint; the message names the part.
    #[error("{0}")]
    UnsupportedConstraint(String),
    #[error("the engine has stopped")]
    Stopped,
}

/// A prompt could not be built from the messages (template error, bad role...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PromptError(pub String);

/// What the HTTP layer needs to know about the served model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The id clients send as `model`.
    pub id: String,
    pub context_length: usize,
    /// Token ids are `0..vocab_size` (bounds `logit_bias` keys).
    pub vocab_size: usize,
    /// Creation time (unix seconds) reported by `/v1/models`.
    pub created: i64,
}

/// The engine as the HTTP layer sees it. Messages and tools are the canonical JSON the chat
/// template consumes (OpenAI shape: `{"role": ..., "content": ..., "tool_calls": ...}`).
pub trait Backend: Send + Sync + 'static {
    fn info(&self) -> &ModelInfo;
    /// Render the chat template and tokenize.
    fn chat_prompt(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<Vec<u32>, PromptError>;
    fn encode(&self, text: &str) -> Vec<u32>;
    fn decode(&self, tokens: &[u32]) -> String;
    /// Queue a generation; events arrive on the returned stream. Dropping it cancels.
    fn submit(&self, request: GenerateRequest) -> Result<EventStream, SubmitError>;
    /// Sequences currently decoding and requests waiting, for metrics.
    fn load(&self) -> EngineLoad {
        EngineLoad::default()
    }
    /// The policy version new requests will be served by.
    fn policy_version(&self) -> u64 {
        0
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineLoad {
    pub active_sequences: usize,
    pub queued_requests: usize,
}
