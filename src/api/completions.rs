//! POST /v1/completions: the legacy text-completion endpoint (no chat template).

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::chat::{fingerprint, now_unix};
use super::dto::{StreamOptions, Usage};
use super::error::ApiError;
use super::extract::OpenAiJson;
use super::generation::{
    collect, policy_version_of, stream_sse, submit_all, to_json, usage_of, ChoiceDelta,
    ChoiceState, ChunkWriter, StreamEnd,
};
use super::openapi::schemas::{fixed, PromptInput, SessionHeaderParams, Stop};
use super::openapi::{
    BadRequest, NotFound, PayloadTooLarge, ServerError, TooManyRequests, Unauthorized,
};
use super::params::{check_model, completion_budget, sampling_fields, Generation};
use super::session_hints::BodyHints;
use super::state::AppState;
use super::turn_record::{SessionHeaders, TurnContext};
use crate::engine::TokenEvent;

/// OpenAI's default for this endpoint.
const DEFAULT_MAX_TOKENS: u32 = 16;
const MAX_LEGACY_LOGPROBS: u32 = 5;

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub model: String,
    #[schema(value_type = PromptInput)]
    pub prompt: Value,
    #[schema(minimum = 1, default = 16)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f32>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f32>,
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    #[schema(minimum = 0, maximum = 5)]
    pub logprobs: Option<u32>,
    pub echo: Option<bool>,
    #[schema(value_type = Option<Stop>)]
    pub stop: Option<Value>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub presence_penalty: Option<f32>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub frequency_penalty: Option<f32>,
    pub seed: Option<i64>,
    #[schema(value_type = Option<HashMap<String, f32>>)]
    pub logit_bias: Option<Value>,
    /// Only equal to `n` (or absent) is accepted.
    pub best_of: Option<u32>,
    /// Only empty (or absent) is accepted.
    pub suffix: Option<String>,
    pub user: Option<String>,
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    #[schema(schema_with = fixed::text_completion)]
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub system_fingerprint: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub text: String,
    pub index: usize,
    #[schema(required)]
    pub logprobs: Option<LegacyLogprobs>,
    #[schema(schema_with = fixed::finish_reason_or_null, required)]
    pub finish_reason: Option<String>,
}

/// The legacy logprobs shape: parallel arrays.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct LegacyLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

fn legacy_logprobs(tokens: &[TokenEvent], start_offset: usize) -> LegacyLogprobs {
    let mut out = LegacyLogprobs::default();
    let mut offset = start_offset;
    for token in tokens {
        out.tokens.push(token.text.clone());
        out.token_logprobs.push(token.logprob);
        out.top_logprobs.push(
            token
                .top_logprobs
                .iter()
                .map(|alt| (alt.text.clone(), alt.logprob))
                .collect(),
        );
        out.text_offset.push(offset);
        offset += token.text.len();
    }
    out
}

/// The prompt as a string, or as token ids when given that way.
enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// `vocab_size` bounds token-id prompts: an id outside `0..vocab_size` is the client's error.
fn parse_prompt(prompt: &Value, vocab_size: usize) -> Result<Prompt, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            "prompt",
            "prompt must be a string, an array of one string, or an array of token ids.",
        )
    };
    match prompt {
        Value::String(text) => Ok(Prompt::Text(text.clone())),
        Value::Array(items) if items.len() == 1 && items[0].is_string() => Ok(Prompt::Text(
            items[0].as_str().unwrap_or_default().to_string(),
        )),
        Value::Array(items) if !items.is_empty() && items.iter().all(is_integer) => items
            .iter()
            .enumerate()
            .map(|(i, id)| {
                id.as_u64()
                    .filter(|&id| id < vocab_size as u64)
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            "prompt",
                            format!(
                                "Invalid 'prompt[{i}]': token id {id} is outside the model's \
                                 vocabulary (0 to {}).",
                                vocab_size.saturating_sub(1)
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Prompt::Tokens),
        Value::Array(items) if items.len() > 1 && items.iter().all(Value::is_string) => {
            Err(ApiError::invalid_param(
                "prompt",
                "Several prompts in one request are not supported; send one request per prompt.",
            ))
        }
        _ => Err(bad()),
    }
}

fn is_integer(value: &Value) -> bool {
    value.is_u64() || value.is_i64()
}

#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "completions",
    summary = "Create a text completion (legacy)",
    params(SessionHeaderParams),
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion, or with `stream: true` a text/event-stream \
            of chunks ending with `data: [DONE]`", content(
            (Completion = "application/json"),
            (Completion = "text/event-stream"),
        )),
        BadRequest, Unauthorized, NotFound, PayloadTooLarge, TooManyRequests, ServerError,
    ),
    security(("bearer" = []))
)]
pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    OpenAiJson(request): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let session = SessionHeaders::parse(&headers)?.resolve(
        &BodyHints {
            session_id: request.session_id.as_deref(),
            user: request.user.as_deref(),
            ..BodyHints::default()
        },
        None,
    )?;
    let backend = state.backend.as_ref();
    let info = backend.info();
    check_model(&request.model, info)?;
    let generation = Generation::parse(sampling_fields!(request), info)?;
    let n = generation.n;
    if request.best_of.is_some_and(|best_of| best_of as usize != n) {
        return Err(ApiError::invalid_param(
            "best_of",
            "best_of is not supported.",
        ));
    }
    if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param(
            "suffix",
            "suffix is not supported.",
        ));
    }
    let logprobs = match request.logprobs {
        Some(k) if k > MAX_LEGACY_LOGPROBS => {
            return Err(ApiError::invalid_param(
                "logprobs",
                format!("logprobs must be between 0 and {MAX_LEGACY_LOGPROBS}, got {k}."),
            ))
        }
        other => other,
    };
    let echo = request.echo.unwrap_or(false);
    if echo && logprobs.is_some() {
        return Err(ApiError::invalid_param(
            "echo",
            "echo together with logprobs is not supported.",
        ));
    }
    let max_tokens = request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 {
        return Err(ApiError::invalid_param(
            "max_tokens",
            "max_tokens must be at least 1.",
        ));
    }
    let (prompt_text, prompt_tokens) = match parse_prompt(&request.prompt, info.vocab_size)? {
        Prompt::Text(text) => {
            let tokens = backend.encode(&text);
            (text, tokens)
        }
        Prompt::Tokens(tokens) => (backend.decode(&tokens), tokens),
    };
    let max_tokens = completion_budget(prompt_tokens.len(), Some(max_tokens), info)?;
    let (stream, include_usage) = (generation.stream, generation.include_usage);

    let response_id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let (requests, mut sampling_record) = generation.requests(
        &response_id,
        prompt_tokens.clone(),
        max_tokens,
        logprobs.unwrap_or(0) as usize,
        None,
    );
    sampling_record["logprobs"] = json!(logprobs);
    let model = info.id.clone();
    let policy_version = backend.policy_version();
    let turn = TurnContext {
        response_id: response_id.clone(),
        endpoint: "completion",
        session,
        api_key_id: caller.key_id,
        model: model.clone(),
        messages: json!([{"role": "user", "content": prompt_text}]),
        tools: None,
        prompt_token_ids: prompt_tokens.clone(),
        sampling: sampling_record,
        started,
        created_at: chrono::Utc::now(),
    };
    let states: Vec<ChoiceState> = (0..n)
        .map(|i| ChoiceState::new(i, false, true, logprobs.is_some()))
        .collect();
    let streams = submit_all(backend, requests)?;
    let created = now_unix();
    let echoed = if echo { prompt_text } else { String::new() };

    if stream {
        let writer = CompletionChunks {
            id: response_id,
            created,
            model,
            fingerprint: fingerprint(policy_version),
            logprobs: logprobs.is_some(),
            echo: echoed,
            offsets: vec![0; n],
        };
        let sink = state.turns.clone();
        let sse = stream_sse(
            streams,
            states,
            Box::new(writer),
            include_usage,
            prompt_tokens.len(),
            move |end| match end {
                StreamEnd::Completed(states) => turn.record(sink.as_ref(), &states, policy_version),
                StreamEnd::Cancelled => super::metrics::count_cancelled("completion"),
                StreamEnd::Failed => {}
            },
        );
        return Ok(sse.into_response());
    }

    let states = collect(streams, states).await.map_err(|err| {
        let param = err.status.is_client_error().then_some("prompt");
        err.or_param(param)
    })?;
    let body = Completion {
        id: response_id,
        object: "text_completion",
        created,
        model,
        choices: states
            .iter()
            .map(|s| CompletionChoice {
                text: format!("{echoed}{}", s.content),
                index: s.index,
                logprobs: logprobs.map(|_| legacy_logprobs(&s.logprob_tokens, 0)),
                finish_reason: Some(s.finish_reason().to_string()),
            })
            .collect(),
        usage: Some(usage_of(&states, prompt_tokens.len())),
        system_fingerprint: fingerprint(policy_version_of(&states, policy_version)),
    };
    turn.record(state.turns.as_ref(), &states, policy_version);
    Ok(Json(body).into_response())
}

struct CompletionChunks {
    id: String,
    created: i64,
    model: String,
    fingerprint: String,
    logprobs: bool,
    echo: String,
    /// Text offset reached by each choice, for legacy `text_offset`.
    offsets: Vec<usize>,
}

impl CompletionChunks {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> String {
        to_json(&Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            system_fingerprint: self.fingerprint.clone(),
        })
    }
}

impl ChunkWriter for CompletionChunks {
    fn opening(&mut self, index: usize) -> Option<String> {
        if self.echo.is_empty() {
            return None;
        }
        let choice = CompletionChoice {
            text: self.echo.clone(),
            index,
            logprobs: None,
            finish_reason: None,
        };
        Some(self.chunk(vec![choice], None))
    }

    fn delta(&mut self, index: usize, delta: ChoiceDelta) -> Option<String> {
        let ChoiceDelta::Text { text, tokens } = delta else {
            return None;
        };
        if text.is_empty() && (tokens.is_empty() || !self.logprobs) {
            return None;
        }
        let logprobs = self
            .logprobs
            .then(|| legacy_logprobs(&tokens, self.offsets[index]));
        self.offsets[index] += text.len();
        let choice = CompletionChoice {
            text,
            index,
            logprobs,
            finish_reason: None,
        };
        Some(self.chunk(vec![choice], None))
    }

    fn closing(&mut self, state: &ChoiceState) -> String {
        let choice = CompletionChoice {
            text: String::new(),
            index: state.index,
            logprobs: None,
            finish_reason: Some(state.finish_reason().to_string()),
        };
        self.chunk(vec![choice], None)
    }

    fn usage(&mut self, usage: Usage) -> String {
        self.chunk(Vec::new(), Some(usage))
    }
}

/// POST /v1/completions.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(completions))
}
