//! Documentation-only types for /openapi.json. The DTOs keep loosely typed request fields
//! (`messages`, `stop`, `prompt`, `tool_choice`...) as JSON values so validation can name the
//! exact offending element; these types describe what those values may be. Also the shared
//! error responses, the session headers, and bodies that handlers build as JSON. None of them is
//! constructed at run time.

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};
use utoipa::{IntoParams, IntoResponses, ToSchema};

use crate::api::dto::ToolCall;
use crate::api::error::ErrorEnvelope;

/// A string schema allowing exactly `values` (and null when `nullable`).
fn strings(values: &[&str], nullable: bool) -> Object {
    let mut allowed: Vec<Value> = values.iter().map(|v| Value::from(*v)).collect();
    let schema_type = if nullable {
        allowed.push(Value::Null);
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::new(Type::String)
    };
    ObjectBuilder::new()
        .schema_type(schema_type)
        .enum_values(Some(allowed))
        .build()
}

/// `schema_with` functions for the DTOs' fixed strings (`"object": "chat.completion"`...).
pub mod fixed {
    use super::strings;
    use utoipa::openapi::schema::Object;

    pub fn chat_completion() -> Object {
        strings(&["chat.completion"], false)
    }
    pub fn chat_completion_chunk() -> Object {
        strings(&["chat.completion.chunk"], false)
    }
    pub fn text_completion() -> Object {
        strings(&["text_completion"], false)
    }
    pub fn model() -> Object {
        strings(&["model"], false)
    }
    pub fn list() -> Object {
        strings(&["list"], false)
    }
    pub fn assistant() -> Object {
        strings(&["assistant"], false)
    }
    pub fn function() -> Object {
        strings(&["function"], false)
    }
    pub fn rating() -> Object {
        strings(&["up", "down"], false)
    }
    pub fn finish_reason() -> Object {
        strings(&["stop", "length", "tool_calls"], false)
    }
    pub fn finish_reason_or_null() -> Object {
        strings(&["stop", "length", "tool_calls"], true)
    }
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// A chat message as the client sends it.
#[derive(ToSchema)]
pub struct Message {
    #[schema(inline)]
    pub role: Role,
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    /// An assistant message's earlier tool calls.
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A tool message: the id of the call it answers.
    pub tool_call_id: Option<String>,
}

/// Text, or content parts (text only: image, audio and file parts are refused).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Serialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: ContentPartType,
    /// For `text` parts.
    pub text: Option<String>,
    /// For `refusal` parts.
    pub refusal: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentPartType {
    Text,
    Refusal,
}

/// One stop string, or up to 4.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `none`, `auto`, `required`, or one named function.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(#[schema(inline)] ToolChoiceMode),
    Named(NamedToolChoice),
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceMode {
    None,
    Auto,
    Required,
}

#[derive(Serialize, ToSchema)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    #[schema(schema_with = fixed::function)]
    pub kind: String,
    #[schema(inline)]
    pub function: FunctionName,
}

#[derive(Serialize, ToSchema)]
pub struct FunctionName {
    pub name: String,
}

/// `text`, `json_object`, or `json_schema` (the reply is constrained to the schema).
#[derive(Serialize, ToSchema)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: ResponseFormatType,
    pub json_schema: Option<JsonSchemaFormat>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormatType {
    Text,
    JsonObject,
    JsonSchema,
}

#[derive(Serialize, ToSchema)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub description: Option<String>,
    /// A JSON Schema; absent means any JSON value.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    pub strict: Option<bool>,
}

/// A string, an array of exactly one string, or an array of token ids.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum TurnType {
    Main,
    Side,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Flag {
    True,
    False,
}

/// The session headers of the generation endpoints.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct SessionHeaderParams {
    /// Links this turn to a conversation (at most 256 bytes). Without it the session is named
    /// by the first of: the body's `session_id`, `previous_response_id` (Responses),
    /// `session_id` / `x-session-affinity` headers, `prompt_cache_key`, `metadata.session_id`
    /// / `metadata.conversation_id`; else the turn is linked by content.
    #[param(rename = "X-Session-Id")]
    pub session_id: Option<String>,
    /// OpenClaw's session header (`compat.sendSessionAffinityHeaders`).
    #[param(rename = "session_id")]
    pub affinity_session_id: Option<String>,
    /// OpenClaw's session affinity header.
    #[param(rename = "x-session-affinity")]
    pub session_affinity: Option<String>,
    /// `side` turns are logged but never trained on.
    #[param(rename = "X-Turn-Type", inline)]
    pub turn_type: Option<TurnType>,
    /// Marks the last turn of the session.
    #[param(rename = "X-Session-Done", inline)]
    pub session_done: Option<Flag>,
}

/// GET /healthz.
#[derive(ToSchema)]
pub struct Health {
    #[schema(inline)]
    pub status: HealthStatus,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
}

/// GET /readyz: the verdict, and each dependency's state.
#[derive(ToSchema)]
pub struct Readiness {
    #[schema(inline)]
    pub status: ReadinessStatus,
    pub model: String,
    pub policy_version: u64,
    /// Dependency name → "ready", the reason it is not, or {status, detail}.
    #[schema(value_type = Object)]
    pub checks: Value,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ReadinessStatus {
    Ready,
    NotReady,
}

/// `{"object": "list", "data": [...]}`.
#[derive(ToSchema)]
pub struct List {
    #[schema(schema_with = fixed::list)]
    pub object: String,
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Value>,
}

#[derive(IntoResponses)]
#[response(
    status = 400,
    description = "Invalid request: malformed JSON, a wrong type, a value out of range, or a \
                   prompt longer than the context"
)]
pub struct BadRequest(pub ErrorEnvelope);

/// Missing or wrong API key.
#[derive(IntoResponses)]
#[response(status = 401)]
pub struct Unauthorized(pub ErrorEnvelope);

/// No such model, response or session (for this key).
#[derive(IntoResponses)]
#[response(status = 404)]
pub struct NotFound(pub ErrorEnvelope);

/// The request body is larger than the limit.
#[derive(IntoResponses)]
#[response(status = 413)]
pub struct PayloadTooLarge(pub ErrorEnvelope);

/// The engine queue is full; retry later.
#[derive(IntoResponses)]
#[response(
    status = 429,
    headers(("Retry-After" = String, description = "Seconds to wait before retrying"))
)]
pub struct TooManyRequests(pub ErrorEnvelope);

/// Server error.
#[derive(IntoResponses)]
#[response(status = 500)]
pub struct ServerError(pub ErrorEnvelope);

/// A dependency (the store, the engine) is unavailable; retry later.
#[derive(IntoResponses)]
#[response(status = 503)]
pub struct Unavailable(pub ErrorEnvelope);
