//! What each served response hands to the store: the session headers of the request and the
//! finished choices, packed into a [`CapturedTurn`] and enqueued (never awaited).

use std::time::Instant;

use axum::http::HeaderMap;
use serde_json::Value;

use super::error::ApiError;
use super::generation::{first_token_latency, policy_version_of, usage_of, ChoiceState};
use super::session_hints::{hint, AFFINITY_HEADERS};
use crate::store::{CapturedTurn, LinkMethod, TurnSink, TurnType};

/// `X-Session-Id`, `X-Turn-Type: main|side`, `X-Session-Done: true|false`, OpenClaw's session
/// headers; [`SessionHeaders::resolve`] then adds the body's hints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionHeaders {
    pub session_id: Option<String>,
    /// Which hint named the session (see `session_hints`).
    pub session_source: Option<LinkMethod>,
    /// The request's `user`: narrows content linking, never names a session.
    pub user: Option<String>,
    pub turn_type: TurnType,
    pub session_done: bool,
    /// OpenClaw's `session_id` / `x-session-affinity` header, until `resolve` ranks it.
    pub affinity: Option<String>,
}

impl SessionHeaders {
    pub fn parse(headers: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &str| -> Result<Option<String>, ApiError> {
            match headers.get(name) {
                None => Ok(None),
                Some(value) => value
                    .to_str()
                    .map(|v| Some(v.trim().to_string()))
                    .map_err(|_| ApiError::invalid_param(name, format!("{name} must be ASCII."))),
            }
        };
        let turn_type = match text("x-turn-type")?.as_deref().map(str::to_ascii_lowercase) {
            None => TurnType::Main,
            Some(kind) if kind == "main" => TurnType::Main,
            Some(kind) if kind == "side" => TurnType::Side,
            Some(other) => {
                return Err(ApiError::invalid_param(
                    "X-Turn-Type",
                    format!("X-Turn-Type must be 'main' or 'side', got '{other}'."),
                ))
            }
        };
        let session_done = match text("x-session-done")?
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            None => false,
            Some(flag) if flag == "true" || flag == "1" => true,
            Some(flag) if flag == "false" || flag == "0" => false,
            Some(other) => {
                return Err(ApiError::invalid_param(
                    "X-Session-Done",
                    format!("X-Session-Done must be 'true' or 'false', got '{other}'."),
                ))
            }
        };
        let session_id = hint("X-Session-Id", text("x-session-id")?.as_deref())?;
        let mut affinity = None;
        for name in AFFINITY_HEADERS {
            let value = hint(name, text(name)?.as_deref())?;
            affinity = affinity.or(value);
        }
        Ok(Self {
            session_source: session_id.as_ref().map(|_| LinkMethod::Header),
            session_id,
            user: None,
            turn_type,
            session_done,
            affinity,
        })
    }
}

/// Everything about a request the turn record needs, gathered before generation starts.
#[derive(Debug, Clone)]
pub struct TurnContext {
    pub response_id: String,
    pub endpoint: &'static str,
    pub session: SessionHeaders,
    pub api_key_id: Option<String>,
    pub model: String,
    pub messages: Value,
    pub tools: Option<Value>,
    pub prompt_token_ids: Vec<u32>,
    pub sampling: Value,
    pub started: Instant,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl TurnContext {
    /// Hands the finished response to the sink and observes the generation metrics.
    pub fn record(self, sink: &dyn TurnSink, states: &[ChoiceState], fallback_policy: u64) {
        let latency = self.started.elapsed();
        let ttft = first_token_latency(states, self.started);
        let usage = usage_of(states, self.prompt_token_ids.len());
        if let Some(ttft) = ttft {
            super::metrics::observe_time_to_first_token(self.endpoint, ttft);
        }
        super::metrics::observe_generation(
            self.endpoint,
            latency,
            usage.prompt_tokens,
            usage.completion_tokens,
        );
        sink.record(CapturedTurn {
            response_id: self.response_id,
            session_id: self.session.session_id,
            session_source: self.session.session_source,
            user: self.session.user,
            session_done: self.session.session_done,
            turn_type: self.session.turn_type,
            api_key_id: self.api_key_id,
            model: self.model,
            endpoint: self.endpoint.to_string(),
            messages: self.messages,
            tools: self.tools,
            prompt_token_ids: self.prompt_token_ids,
            choices: states.iter().map(ChoiceState::captured).collect(),
            sampling: self.sampling,
            policy_version: policy_version_of(states, fallback_policy),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            latency_ms: latency.as_millis() as u64,
            time_to_first_token_ms: ttft.map(|d| d.as_millis() as u64),
            created_at: self.created_at,
        });
    }
}
