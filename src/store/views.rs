//! What reads return: shaped for the HTTP API and for `hindsight export`.

use serde::Serialize;
use serde_json::Value;

type Time = chrono::DateTime<chrono::Utc>;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionSummary {
    pub id: String,
    pub object: &'static str,
    pub explicit: bool,
    pub turn_count: i64,
    pub created_at: Time,
    pub updated_at: Time,
    pub closed_at: Option<Time>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackView {
    pub id: String,
    pub object: &'static str,
    pub response_id: String,
    pub rating: String,
    pub correction: Option<String>,
    pub source: String,
    pub created_at: Time,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NextStateView {
    pub role: String,
    pub content: String,
    /// The message as the client sent it (tool_call_id, content parts...).
    pub message: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgementView {
    pub judge: String,
    /// `feedback` | `rules` | `local` | `openai`; null on rows written before it existed.
    pub source: Option<String>,
    pub votes: Value,
    pub score: Option<f64>,
    pub hint: Option<String>,
    /// Every hint vote, chosen or not.
    pub hint_votes: Option<Value>,
    pub created_at: Time,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponseView {
    pub content: String,
    pub tool_calls: Option<Value>,
    pub finish_reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageView {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// Token-level data for training; left out of HTTP listings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokensView {
    pub prompt_token_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnView {
    pub response_id: String,
    pub seq: i64,
    pub turn_type: String,
    /// Why a `side` turn is never trained on: `client` (X-Turn-Type: side), `length_cut` (a
    /// reply cut on a tiny budget), `probe` (a health probe); null on main turns.
    pub side_reason: Option<String>,
    /// How the turn joined its session: `header`, `body`, `previous_response_id`,
    /// `affinity_header`, `prompt_cache_key`, `metadata`, `prefix`, `history`, `reply` or
    /// `new`; null on turns logged before it was recorded.
    pub link_method: Option<String>,
    pub endpoint: String,
    pub model: String,
    pub created_at: Time,
    pub messages: Value,
    pub tools: Option<Value>,
    pub response: ResponseView,
    pub usage: UsageView,
    pub latency_ms: i64,
    pub time_to_first_token_ms: Option<i64>,
    pub policy_version: i64,
    pub sampling: Value,
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub tokens: Option<TokensView>,
    /// The user/tool messages that followed this response; null until they arrive.
    pub next_state: Option<Vec<NextStateView>>,
    pub feedback: Vec<FeedbackView>,
    /// The latest judgement and reward; null until the learner fills them.
    pub judgement: Option<JudgementView>,
    pub reward: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionDetail {
    #[serde(flatten)]
    pub session: SessionSummary,
    pub turns: Vec<TurnView>,
}
