//! Documentation-only types for the Responses routes in /openapi.json. The handlers build their
//! bodies as JSON ([`super::output::Echo::object`], the stream's events) and keep loosely typed
//! request fields as JSON values so validation can name the exact offending element; these
//! types describe what those values are. None of them is constructed at run time.

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};
use utoipa::ToSchema;

/// A string schema allowing exactly `values`.
fn strings(values: &[&str]) -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::String))
        .enum_values(Some(values.iter().map(|v| Value::from(*v))))
        .build()
}

fn response() -> Object {
    strings(&["response"])
}

fn status() -> Object {
    strings(&["in_progress", "completed", "incomplete", "failed"])
}

/// Text (one user message), or a list of input items.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ResponseInput {
    Text(String),
    Items(Vec<InputItem>),
}

/// An input item: a message (`role`, `content`), a `function_call` (`call_id`, `name`,
/// `arguments`) or a `function_call_output` (`call_id`, `output`).
#[derive(Serialize, ToSchema)]
pub struct InputItem {
    /// `message` (the default when `role` is given), `function_call` or
    /// `function_call_output`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `user`, `assistant`, `system` or `developer`.
    pub role: Option<String>,
    /// Text, or content parts (`input_text`, `output_text`).
    #[schema(value_type = Option<Value>)]
    pub content: Option<Value>,
    pub call_id: Option<String>,
    pub name: Option<String>,
    pub arguments: Option<String>,
    pub output: Option<String>,
}

/// `none`, `auto`, `required`, or `{"type": "function", "name": ...}`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ResponseToolChoice {
    Mode(String),
    #[schema(value_type = Object)]
    Function(Value),
}

/// A response object, as POST returns it (or, streamed, the final event carries it) and GET
/// returns it again.
#[derive(Serialize, ToSchema)]
pub struct ResponseObject {
    pub id: String,
    #[schema(schema_with = response)]
    pub object: String,
    /// Unix seconds.
    pub created_at: i64,
    #[schema(schema_with = status)]
    pub status: String,
    /// `{"code", "message"}` when `status` is `failed`.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// `{"reason": "max_output_tokens"}` when `status` is `incomplete`.
    #[schema(value_type = Option<Object>)]
    pub incomplete_details: Option<Value>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub model: String,
    /// Output items in generation order: `message` items (with `output_text` content) and
    /// `function_call` items.
    #[schema(value_type = Vec<Object>)]
    pub output: Vec<Value>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub store: bool,
    pub temperature: f32,
    pub top_p: f32,
    #[schema(value_type = Object)]
    pub text: Value,
    #[schema(value_type = ResponseToolChoice)]
    pub tool_choice: Value,
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    pub truncation: String,
    pub usage: Option<ResponseUsage>,
    pub user: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
}

#[derive(Serialize, ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub total_tokens: u32,
}

/// One server-sent event of a streamed response (`event: <type>`): `response.created`, the
/// output item, content part and text delta events, then `response.completed`,
/// `response.incomplete` or `response.failed` carrying the final response object.
#[derive(Serialize, ToSchema)]
pub struct ResponseStreamEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub sequence_number: u64,
    /// On `response.*` events.
    pub response: Option<ResponseObject>,
    pub output_index: Option<u32>,
    /// On `response.output_text.delta` and the arguments delta events.
    pub delta: Option<String>,
    /// On `response.output_item.added` / `.done`.
    #[schema(value_type = Option<Object>)]
    pub item: Option<Value>,
}

/// The answer to DELETE /v1/responses/{id}.
#[derive(Serialize, ToSchema)]
pub struct DeletedResponse {
    pub id: String,
    #[schema(schema_with = response)]
    pub object: String,
    pub deleted: bool,
}
