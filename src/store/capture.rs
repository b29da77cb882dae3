//! What the HTTP layer hands to the store after each response: plain data, enqueued, never awaited.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnType {
    /// A real exchange with the user: logged and trained on.
    #[default]
    Main,
    /// Heartbeats, memory flushes...: logged, never trained on.
    Side,
}

/// One generated choice of a response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapturedChoice {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Behaviour log-prob of each token, exactly as sampled.
    pub logprobs: Vec<f32>,
    pub finish_reason: String,
    /// OpenAI-shaped `tool_calls` when the model called tools.
    pub tool_calls: Option<serde_json::Value>,
}

/// A served request and its response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedTurn {
    /// The id returned to the client (`chatcmpl-…` / `cmpl-…`).
    pub response_id: String,
    /// Explicit session id (`X-Session-Id` header or body `session_id`); None → linked by prefix.
    pub session_id: Option<String>,
    /// `X-Session-Done: true`.
    pub session_done: bool,
    pub turn_type: TurnType,
    /// Identity of the API key that made the call (a hash, never the key), None with auth off.
    pub api_key_id: Option<String>,
    pub model: String,
    /// `chat` or `completion`.
    pub endpoint: String,
    /// The request messages as received (OpenAI shape), or `[{"role":"user","content":prompt}]`
    /// for legacy completions.
    pub messages: serde_json::Value,
    pub tools: Option<serde_json::Value>,
    pub prompt_token_ids: Vec<u32>,
    pub choices: Vec<CapturedChoice>,
    /// The sampling parameters used (temperature, top_p, seed, max_tokens...).
    pub sampling: serde_json::Value,
    pub policy_version: u64,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub latency_ms: u64,
    pub time_to_first_token_ms: Option<u64>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Receives every served turn. Implementations must return at once (enqueue only).
pub trait TurnSink: Send + Sync + 'static {
    fn record(&self, turn: CapturedTurn);
}

/// A sink that drops turns (tests of the HTTP layer that do not look at the store).
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardTurns;

impl TurnSink for DiscardTurns {
    fn record(&self, _turn: CapturedTurn) {}
}
