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

/// How a turn was placed in its session, stored as `turns.link_method`. A session id the
/// client gave wins, in this order: `X-Session-Id` (`header`), body `session_id` (`body`),
/// `previous_response_id` (Responses API), OpenClaw's `session_id` / `x-session-affinity`
/// headers (`affinity_header`), body `prompt_cache_key`, `metadata.session_id` /
/// `metadata.conversation_id` (`metadata`). Without one the store links by content: the exact
/// message prefix (`prefix`), the prefix without system messages (`history`), the last
/// exchange (`reply`), or else a new session (`new`). See `store::linking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkMethod {
    Header,
    Body,
    PreviousResponseId,
    AffinityHeader,
    PromptCacheKey,
    Metadata,
    Prefix,
    History,
    Reply,
    New,
}

impl LinkMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkMethod::Header => "header",
            LinkMethod::Body => "body",
            LinkMethod::PreviousResponseId => "previous_response_id",
            LinkMethod::AffinityHeader => "affinity_header",
            LinkMethod::PromptCacheKey => "prompt_cache_key",
            LinkMethod::Metadata => "metadata",
            LinkMethod::Prefix => "prefix",
            LinkMethod::History => "history",
            LinkMethod::Reply => "reply",
            LinkMethod::New => "new",
        }
    }

    /// Whether a turn of a named session that matches no earlier turn by content continues
    /// the session's latest turn (a client that names its session may send only the new
    /// message). Not for `prompt_cache_key`: a cache key may be shared by many conversations
    /// with a common prefix, so only a content match makes a parent there.
    pub fn follows_latest(self) -> bool {
        !matches!(
            self,
            LinkMethod::PromptCacheKey
                | LinkMethod::Prefix
                | LinkMethod::History
                | LinkMethod::Reply
                | LinkMethod::New
        )
    }
}

/// Why a turn is logged as `side` (never trained on), stored as `turns.side_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SideReason {
    /// `X-Turn-Type: side` (heartbeats, memory flushes...).
    Client,
    /// The reply was cut at `length` before it had [`crate::store::linking::TINY_TOKENS`]
    /// tokens: a fragment, not an answer (OpenClaw may send `max_completion_tokens: 1`).
    LengthCut,
    /// A health probe: a one-word greeting or "ping" on a token budget under `TINY_TOKENS`.
    Probe,
}

impl SideReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SideReason::Client => "client",
            SideReason::LengthCut => "length_cut",
            SideReason::Probe => "probe",
        }
    }

    /// Whether the turn's trailing user/tool messages are still its parent's next state: a
    /// cut reply answered a real user message; a probe or a client side turn did not.
    pub fn continues_parent(self) -> bool {
        matches!(self, SideReason::LengthCut)
    }
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
    /// The session id the client named (see [`LinkMethod`] for the hints and their order);
    /// None → linked by content.
    pub session_id: Option<String>,
    /// Where `session_id` came from; None with a session id means `Header` (turns journaled
    /// before this field existed).
    #[serde(default)]
    pub session_source: Option<LinkMethod>,
    /// The request's `user` field. Not a session id (one person has many conversations): it
    /// only narrows content linking to earlier turns of the same user.
    #[serde(default)]
    pub user: Option<String>,
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
