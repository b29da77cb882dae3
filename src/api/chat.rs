//! POST /v1/chat/completions.

use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::convert::prepare_chat;
use super::dto::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChoiceLogprobs, ChunkChoice, ChunkDelta, TokenLogprobOut, ToolCallDelta, TopLogprob, Usage,
};
use super::error::ApiError;
use super::extract::OpenAiJson;
use super::generation::{
    collect, policy_version_of, stream_sse, submit_all, to_json, usage_of, ChoiceDelta,
    ChoiceState, ChunkWriter, StreamEnd,
};
use super::openapi::schemas::SessionHeaderParams;
use super::openapi::{
    BadRequest, NotFound, PayloadTooLarge, ServerError, TooManyRequests, Unauthorized,
};
use super::session_hints::BodyHints;
use super::state::AppState;
use super::turn_record::{SessionHeaders, TurnContext};
use crate::engine::TokenEvent;

pub fn fingerprint(policy_version: u64) -> String {
    format!("hs-v{policy_version}")
}

pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "chat",
    summary = "Create a chat completion",
    params(SessionHeaderParams),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion, or with `stream: true` a text/event-stream \
            of chunks ending with `data: [DONE]`", content(
            (ChatCompletion = "application/json"),
            (ChatCompletionChunk = "text/event-stream"),
        )),
        BadRequest, Unauthorized, NotFound, PayloadTooLarge, TooManyRequests, ServerError,
    ),
    security(("bearer" = []))
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    OpenAiJson(request): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let session = SessionHeaders::parse(&headers)?.resolve(
        &BodyHints {
            session_id: request.session_id.as_deref(),
            prompt_cache_key: request.prompt_cache_key.as_deref(),
            metadata: request.metadata.as_ref().and_then(Value::as_object),
            user: request.user.as_deref(),
        },
        None,
    )?;
    let response_id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let raw_messages = Value::Array(request.messages.clone());
    let backend = state.backend.as_ref();
    let prepared = prepare_chat(request, backend, &response_id)?;
    let model = backend.info().id.clone();
    let policy_version = backend.policy_version();
    let choices = prepared.requests.len();
    let states: Vec<ChoiceState> = (0..choices)
        .map(|i| {
            ChoiceState::new(
                i,
                prepared.template_tools.is_some(),
                prepared.parallel_tool_calls,
                prepared.logprobs,
            )
            .with_tool_names(prepared.tool_names())
        })
        .collect();
    let turn = TurnContext {
        response_id: response_id.clone(),
        endpoint: "chat",
        session,
        api_key_id: caller.key_id,
        model: model.clone(),
        messages: raw_messages,
        tools: prepared.template_tools.clone().map(Value::Array),
        prompt_token_ids: prepared.prompt_tokens.clone(),
        sampling: prepared.sampling_record.clone(),
        started,
        created_at: chrono::Utc::now(),
    };
    let constraint_param = prepared.constraint_param;
    let streams =
        submit_all(backend, prepared.requests).map_err(|err| err.or_param(constraint_param))?;
    let created = now_unix();
    let prompt_len = prepared.prompt_tokens.len();

    if prepared.stream {
        let writer = ChatChunks {
            id: response_id,
            created,
            model,
            fingerprint: fingerprint(policy_version),
            logprobs: prepared.logprobs,
        };
        let sink = state.turns.clone();
        let sse = stream_sse(
            streams,
            states,
            Box::new(writer),
            prepared.include_usage,
            prompt_len,
            move |end| match end {
                StreamEnd::Completed(states) => turn.record(sink.as_ref(), &states, policy_version),
                StreamEnd::Cancelled => super::metrics::count_cancelled("chat"),
                StreamEnd::Failed => {}
            },
        );
        return Ok(sse.into_response());
    }

    let states = collect(streams, states).await?;
    let policy = policy_version_of(&states, policy_version);
    let body = ChatCompletion {
        id: response_id,
        object: "chat.completion",
        created,
        model,
        choices: states
            .iter()
            .map(|s| ChatChoice {
                index: s.index,
                message: AssistantMessage {
                    role: "assistant",
                    content: s.visible_content(),
                    tool_calls: (!s.tool_calls.is_empty()).then(|| s.tool_calls.clone()),
                    refusal: None,
                },
                logprobs: prepared.logprobs.then(|| ChoiceLogprobs {
                    content: s.logprob_tokens.iter().map(token_logprob).collect(),
                    refusal: None,
                }),
                finish_reason: s.finish_reason().to_string(),
            })
            .collect(),
        usage: usage_of(&states, prompt_len),
        system_fingerprint: fingerprint(policy),
    };
    turn.record(state.turns.as_ref(), &states, policy_version);
    Ok(Json(body).into_response())
}

/// OpenAI's logprob entry for one sampled token.
pub fn token_logprob(token: &TokenEvent) -> TokenLogprobOut {
    TokenLogprobOut {
        token: token.text.clone(),
        logprob: token.logprob,
        bytes: token.text.as_bytes().to_vec(),
        top_logprobs: token
            .top_logprobs
            .iter()
            .map(|alt| TopLogprob {
                token: alt.text.clone(),
                logprob: alt.logprob,
                bytes: alt.text.as_bytes().to_vec(),
            })
            .collect(),
    }
}

struct ChatChunks {
    id: String,
    created: i64,
    model: String,
    fingerprint: String,
    logprobs: bool,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> String {
        to_json(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices,
            usage,
        })
    }

    fn choice(index: usize, delta: ChunkDelta) -> ChunkChoice {
        ChunkChoice {
            index,
            delta,
            logprobs: None,
            finish_reason: None,
        }
    }
}

impl ChunkWriter for ChatChunks {
    fn opening(&mut self, index: usize) -> Option<String> {
        let delta = ChunkDelta {
            role: Some("assistant"),
            content: Some(String::new()),
            tool_calls: None,
        };
        Some(self.chunk(vec![Self::choice(index, delta)], None))
    }

    fn delta(&mut self, index: usize, delta: ChoiceDelta) -> Option<String> {
        let choice = match delta {
            ChoiceDelta::Text { text, tokens } => {
                if text.is_empty() && (tokens.is_empty() || !self.logprobs) {
                    return None;
                }
                let mut choice = Self::choice(
                    index,
                    ChunkDelta {
                        content: Some(text),
                        ..ChunkDelta::default()
                    },
                );
                if self.logprobs {
                    choice.logprobs = Some(ChoiceLogprobs {
                        content: tokens.iter().map(token_logprob).collect(),
                        refusal: None,
                    });
                }
                choice
            }
            ChoiceDelta::ToolCall { position, call } => Self::choice(
                index,
                ChunkDelta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: position,
                        id: call.id,
                        kind: call.kind,
                        function: call.function,
                    }]),
                    ..ChunkDelta::default()
                },
            ),
        };
        Some(self.chunk(vec![choice], None))
    }

    fn closing(&mut self, state: &ChoiceState) -> String {
        let mut choice = Self::choice(state.index, ChunkDelta::default());
        choice.finish_reason = Some(state.finish_reason().to_string());
        self.chunk(vec![choice], None)
    }

    fn usage(&mut self, usage: Usage) -> String {
        self.chunk(Vec::new(), Some(usage))
    }
}

/// POST /v1/chat/completions.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(chat_completions))
}
