//! The OpenAI Responses API: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`.
//!
//! A Responses request is converted into a chat request ([`input`]) and served by the chat
//! path ([`prepare_chat`]: validation, template, structured-output constraint); its output is
//! rebuilt as Responses output items and events ([`output`], [`stream`]). Each response is
//! logged as a turn like a chat turn (endpoint `responses`), and with `store` (the default) it
//! is kept ([`ResponseStore`]) so GET can return it and `previous_response_id` can replay its
//! conversation: the predecessor's input history, its input and its output, then the new input.

pub mod input;
pub mod output;
pub mod request;
pub mod schema;
pub mod stream;

use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::input::{input_messages, responses_param, text_format, tool_choice, tools, Messages};
use self::output::{Echo, OutputBuilder};
use self::request::CreateResponseRequest;
use self::schema::{DeletedResponse, ResponseObject, ResponseStreamEvent};
use self::stream::{Finish, Save};
use super::caller::Caller;
use super::convert::prepare_chat;
use super::dto::ChatCompletionRequest;
use super::error::ApiError;
use super::extract::OpenAiJson;
use super::generation::{submit_all, ChoiceState};
use super::openapi::{
    BadRequest, NotFound, PayloadTooLarge, ServerError, TooManyRequests, Unauthorized, Unavailable,
};
use super::session_hints::BodyHints;
use super::turn_record::{SessionHeaders, TurnContext};
use super::AppState;
use crate::store::responses::ResponseStore;
use crate::store::StoreError;

/// POST /v1/responses, GET and DELETE /v1/responses/{id}. Responses are kept in the
/// [`ResponseStore`] found in the request's extensions — `hindsight serve` puts the persistent
/// one there with an outer `.layer(Extension(store))` — or else in this router's own
/// in-memory store (tests, or a server without a database).
pub fn router() -> OpenApiRouter<AppState> {
    let fallback = ResponseStore::in_memory();
    routes().layer(middleware::from_fn(
        move |mut request: Request, next: Next| {
            if request.extensions().get::<ResponseStore>().is_none() {
                request.extensions_mut().insert(fallback.clone());
            }
            next.run(request)
        },
    ))
}

/// The same routes, always on `store`.
pub fn router_with(store: ResponseStore) -> OpenApiRouter<AppState> {
    routes().layer(Extension(store))
}

fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(retrieve, remove))
}

fn key_of(caller: &Caller) -> String {
    caller.key_id.clone().unwrap_or_default()
}

fn not_found(id: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("No response found with id '{id}'."),
        kind: "invalid_request_error",
        param: None,
        code: None,
    }
}

fn previous_not_found(id: &str) -> ApiError {
    ApiError {
        code: Some("previous_response_not_found"),
        ..ApiError::invalid_param(
            "previous_response_id",
            format!("Previous response with id '{id}' not found."),
        )
    }
}

fn store_unavailable(err: StoreError) -> ApiError {
    tracing::error!(error = %err, "responses: the store could not answer");
    ApiError::service_unavailable("The response store is unavailable; try again later.")
}

/// A chat-path error, renamed to the Responses field it is about.
fn renamed(mut err: ApiError, sources: &[String]) -> ApiError {
    if let Some(param) = &err.param {
        err.param = Some(responses_param(param, sources));
    }
    err
}

#[utoipa::path(
    get,
    path = "/v1/responses/{id}",
    tag = "responses",
    operation_id = "get_response",
    summary = "Retrieve a stored response",
    params(("id" = String, Path, description = "The response id (`resp_...`)")),
    responses(
        (status = 200, description = "The response object", body = ResponseObject),
        Unauthorized,
        NotFound,
        Unavailable,
    ),
    security(("bearer" = []))
)]
async fn retrieve(
    Extension(caller): Extension<Caller>,
    Extension(responses): Extension<ResponseStore>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match responses
        .load(&id, &key_of(&caller))
        .await
        .map_err(store_unavailable)?
    {
        Some(record) => Ok(Json(record.body.clone()).into_response()),
        None => Err(not_found(&id)),
    }
}

#[utoipa::path(
    delete,
    path = "/v1/responses/{id}",
    tag = "responses",
    operation_id = "delete_response",
    summary = "Delete a stored response",
    params(("id" = String, Path, description = "The response id (`resp_...`)")),
    responses(
        (status = 200, description = "The response was deleted", body = DeletedResponse),
        Unauthorized,
        NotFound,
        Unavailable,
    ),
    security(("bearer" = []))
)]
async fn remove(
    Extension(caller): Extension<Caller>,
    Extension(responses): Extension<ResponseStore>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if responses
        .delete(&id, &key_of(&caller))
        .await
        .map_err(store_unavailable)?
    {
        Ok(Json(json!({"id": id, "object": "response", "deleted": true})).into_response())
    } else {
        Err(not_found(&id))
    }
}

/// Whether the conversation already holds an assistant turn (then the store links the turn to
/// its predecessor by content, and no new session is named for it).
fn continues_a_conversation(messages: &[Value]) -> bool {
    messages.iter().any(|m| m["role"] == "assistant")
}

/// POST /v1/responses.
#[utoipa::path(
    post,
    path = "/v1/responses",
    tag = "responses",
    operation_id = "create_response",
    summary = "Create a response",
    request_body = CreateResponseRequest,
    responses(
        (status = 200, description = "The response object, or with `stream: true` a \
            text/event-stream of typed events ending with `response.completed`, \
            `response.incomplete` or `response.failed`", content(
            (ResponseObject = "application/json"),
            (ResponseStreamEvent = "text/event-stream"),
        )),
        BadRequest, Unauthorized, NotFound, PayloadTooLarge, TooManyRequests, ServerError,
        Unavailable,
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(responses): Extension<ResponseStore>,
    headers: HeaderMap,
    OpenAiJson(body): OpenAiJson<Value>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let request = CreateResponseRequest::parse(body)?;
    let key_id = key_of(&caller);
    let previous = match &request.previous_response_id {
        Some(id) => Some(
            responses
                .load(id, &key_id)
                .await
                .map_err(store_unavailable)?
                .ok_or_else(|| previous_not_found(id))?,
        ),
        None => None,
    };

    // The conversation: the predecessor's, then this request's input.
    let mut conversation = Messages::default();
    for message in previous.iter().flat_map(|p| p.conversation.iter()) {
        conversation.push(message.clone(), "previous_response_id");
    }
    let input = request.input.as_ref().expect("checked by parse");
    conversation.extend(input_messages(input, conversation.call_ids())?);
    if conversation.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "input",
            "input must contain at least one item.",
        ));
    }
    let mut messages = Messages::default();
    if let Some(instructions) = &request.instructions {
        messages.push(
            json!({"role": "system", "content": instructions}),
            "instructions",
        );
    }
    messages.extend(conversation.clone());

    let (chat_tools, echo_tools) = tools(request.tools.as_deref().unwrap_or_default())?;
    let chat_tool_choice = tool_choice(request.tool_choice.as_ref())?;
    let (response_format, text_echo) = text_format(request.text.as_ref())?;
    let stream = request.stream.unwrap_or(false);
    let mut chat = json!({
        "model": request.model,
        "messages": messages.messages,
        "stream": stream,
    });
    let optional = [
        ("temperature", request.temperature.map(|t| json!(t))),
        ("top_p", request.top_p.map(|p| json!(p))),
        (
            "max_completion_tokens",
            request.max_output_tokens.map(|m| json!(m)),
        ),
        ("tools", (!chat_tools.is_empty()).then(|| json!(chat_tools))),
        ("tool_choice", chat_tool_choice.clone()),
        (
            "parallel_tool_calls",
            request.parallel_tool_calls.map(|p| json!(p)),
        ),
        ("response_format", response_format),
        ("user", request.user.as_ref().map(|u| json!(u))),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            chat[key] = value;
        }
    }
    let chat: ChatCompletionRequest = serde_json::from_value(chat).map_err(ApiError::internal)?;

    let response_id = format!("resp_{}", uuid::Uuid::new_v4().simple());
    let backend = state.backend.as_ref();
    let prepared =
        prepare_chat(chat, backend, &response_id).map_err(|e| renamed(e, &messages.sources))?;

    // Session: an explicit id; else the predecessor's exactly; else the client's other hints
    // (see `session_hints`); a conversation that starts here gets a session of its own (named,
    // so its follow-ups can name it too).
    let inherited = previous.as_ref().and_then(|p| p.session_id.clone());
    let mut session = SessionHeaders::parse(&headers)?.resolve(
        &BodyHints {
            session_id: request.session_id.as_deref(),
            prompt_cache_key: request.prompt_cache_key.as_deref(),
            metadata: request.metadata.as_ref(),
            user: request.user.as_deref(),
        },
        inherited,
    )?;
    if session.session_id.is_none() && !continues_a_conversation(&conversation.messages) {
        session.name_new(format!("sess_{}", uuid::Uuid::now_v7().simple()));
    }

    let model = backend.info().id.clone();
    let policy_version = backend.policy_version();
    let trim_text = prepared.template_tools.is_some();
    let state_of_choice = ChoiceState::new(
        0,
        trim_text,
        prepared.parallel_tool_calls,
        prepared.logprobs,
    )
    .with_tool_names(prepared.tool_names());
    let turn = TurnContext {
        response_id: response_id.clone(),
        endpoint: "responses",
        session,
        api_key_id: caller.key_id.clone(),
        model: model.clone(),
        messages: Value::Array(messages.messages.clone()),
        tools: prepared.template_tools.clone().map(Value::Array),
        prompt_token_ids: prepared.prompt_tokens.clone(),
        sampling: prepared.sampling_record.clone(),
        started,
        created_at: chrono::Utc::now(),
    };
    let echo = Echo {
        id: response_id,
        created_at: turn.created_at.timestamp(),
        model,
        instructions: request.instructions.clone(),
        max_output_tokens: request.max_output_tokens,
        parallel_tool_calls: prepared.parallel_tool_calls,
        previous_response_id: request.previous_response_id.clone(),
        prompt_cache_key: request.prompt_cache_key.clone(),
        safety_identifier: request.safety_identifier.clone(),
        store: request.store.unwrap_or(true),
        temperature: request.temperature.unwrap_or(1.0),
        top_p: request.top_p.unwrap_or(1.0),
        text: text_echo,
        tool_choice: request
            .tool_choice
            .clone()
            .filter(|c| !c.is_null())
            .unwrap_or_else(|| json!("auto")),
        tools: echo_tools,
        truncation: request
            .truncation
            .clone()
            .unwrap_or_else(|| "disabled".into()),
        user: request.user.clone(),
        metadata: request.metadata_value(),
    };
    let finish = Finish {
        sink: state.turns.clone(),
        prompt_len: prepared.prompt_tokens.len(),
        turn,
        policy_version,
        save: echo.store.then(|| Save {
            store: responses.clone(),
            key_id,
            conversation,
        }),
    };

    let constraint_param = prepared.constraint_param;
    let mut streams = submit_all(backend, prepared.requests)
        .map_err(|err| renamed(err.or_param(constraint_param), &messages.sources))?;
    let Some(rx) = streams.pop() else {
        return Err(ApiError::internal("no generation was submitted"));
    };
    let builder = OutputBuilder::new(trim_text, stream);
    if stream {
        return Ok(
            self::stream::stream(rx, state_of_choice, builder, echo, finish).into_response(),
        );
    }
    let object = self::stream::collect(rx, state_of_choice, builder, echo, finish).await?;
    Ok(Json(object).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routes_are_documented() {
        let doc = serde_json::to_value(router().get_openapi()).unwrap();
        let paths = &doc["paths"];
        let create = &paths["/v1/responses"]["post"];
        assert_eq!(create["operationId"], "create_response");
        assert_eq!(create["tags"], json!(["responses"]));
        assert_eq!(create["security"], json!([{"bearer": []}]));
        let content = &create["responses"]["200"]["content"];
        assert_eq!(
            content["application/json"]["schema"]["$ref"],
            "#/components/schemas/ResponseObject"
        );
        assert_eq!(
            content["text/event-stream"]["schema"]["$ref"],
            "#/components/schemas/ResponseStreamEvent"
        );
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/CreateResponseRequest"
        );
        for (method, id) in [("get", "get_response"), ("delete", "delete_response")] {
            let op = &paths["/v1/responses/{id}"][method];
            assert_eq!(op["operationId"], id);
            assert_eq!(op["parameters"][0]["name"], "id");
            assert_eq!(op["parameters"][0]["in"], "path");
            assert!(op["responses"]["401"].is_object());
        }
        assert!(create["responses"]["401"].is_object());
        let schemas = &doc["components"]["schemas"];
        for name in ["ResponseInput", "ResponseToolChoice", "DeletedResponse"] {
            assert!(schemas[name].is_object(), "{name}");
        }
    }
}
