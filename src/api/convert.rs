//! A chat request → the engine's [`GenerateRequest`]s: messages normalized into the canonical
//! JSON the chat template reads, tools and `response_format` turned into a sampling constraint
//! ([`super::structured`]), and the shared parameter path ([`super::params`]). The Responses
//! API converts its request into a chat request and comes through here too.

use serde_json::{json, Value};

use super::dto::ChatCompletionRequest;
use super::error::ApiError;
use super::params::{check_model, completion_budget, sampling_fields, Generation};
use super::structured::{output_constraint, tool_mode, ToolMode};
use crate::engine::{Backend, GenerateRequest};

pub const MAX_TOP_LOGPROBS: u32 = 20;

/// A validated chat request, ready to submit: one [`GenerateRequest`] per choice.
#[derive(Debug, Clone)]
pub struct PreparedChat {
    pub requests: Vec<GenerateRequest>,
    pub prompt_tokens: Vec<u32>,
    /// The messages as the template saw them.
    pub template_messages: Vec<Value>,
    /// The tools passed to the template (None with `tool_choice: none` or no tools).
    pub template_tools: Option<Vec<Value>>,
    pub parallel_tool_calls: bool,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: bool,
    pub session_id: Option<String>,
    /// The sampling parameters as recorded with the turn (constraint and bias included).
    pub sampling_record: Value,
    /// The request field the output constraint came from, named by a grammar error.
    pub constraint_param: Option<&'static str>,
}

impl PreparedChat {
    /// The names of the tools the model was offered (calls to anything else are text).
    pub fn tool_names(&self) -> Vec<String> {
        self.template_tools
            .iter()
            .flatten()
            .filter_map(|tool| tool.pointer("/function/name")?.as_str().map(str::to_string))
            .collect()
    }
}

/// The one place a chat request becomes engine requests.
pub fn prepare_chat(
    request: ChatCompletionRequest,
    backend: &dyn Backend,
    request_id: &str,
) -> Result<PreparedChat, ApiError> {
    let info = backend.info();
    check_model(&request.model, info)?;
    let generation = Generation::parse(sampling_fields!(request), info)?;
    let logprobs = request.logprobs.unwrap_or(false);
    let top_logprobs = match request.top_logprobs {
        Some(k) if k > MAX_TOP_LOGPROBS => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}."),
            ))
        }
        Some(k) if k > 0 && !logprobs => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "logprobs must be set to true when top_logprobs is used.",
            ))
        }
        Some(k) => k as usize,
        None => 0,
    };
    // max_completion_tokens supersedes the deprecated max_tokens.
    let (max_param, max_tokens) = match (request.max_completion_tokens, request.max_tokens) {
        (Some(max), _) => ("max_completion_tokens", Some(max)),
        (None, max) => ("max_tokens", max),
    };
    if max_tokens == Some(0) {
        return Err(ApiError::invalid_param(
            max_param,
            format!("{max_param} must be at least 1."),
        ));
    }

    let mode = tool_mode(request.tools.as_deref(), request.tool_choice.as_ref())?;
    let parallel_tool_calls = request.parallel_tool_calls.unwrap_or(true);
    let constraint = output_constraint(
        request.tools.as_deref(),
        &mode,
        parallel_tool_calls,
        request.response_format.as_ref(),
    )?;
    let tools = (mode != ToolMode::Off).then(|| {
        request
            .tools
            .iter()
            .flatten()
            .map(|tool| serde_json::to_value(tool).unwrap_or(Value::Null))
            .collect::<Vec<_>>()
    });
    let mut messages = normalize_messages(&request.messages)?;
    // The grammar enforces the format; the instruction tells the model what it is writing, so
    // the content inside the grammar makes sense.
    if let Some(instruction) = format_instruction(request.response_format.as_ref(), &mode) {
        add_system_instruction(&mut messages, &instruction);
    }
    let prompt_tokens = backend
        .chat_prompt(&messages, tools.as_deref())
        .map_err(|err| ApiError::bad_request(format!("Could not build the prompt: {err}")))?;
    let max_tokens = completion_budget(prompt_tokens.len(), max_tokens, info)?;
    let constraint_param = constraint.as_ref().map(|c| c.param);
    let (requests, sampling_record) = generation.requests(
        request_id,
        prompt_tokens.clone(),
        max_tokens,
        top_logprobs,
        constraint.map(|c| c.constraint),
    );
    Ok(PreparedChat {
        requests,
        prompt_tokens,
        template_messages: messages,
        template_tools: tools,
        parallel_tool_calls,
        stream: generation.stream,
        include_usage: generation.include_usage,
        logprobs,
        session_id: request.session_id,
        sampling_record,
        constraint_param,
    })
}

/// A short system instruction naming the required output (a forced tool call is left to the
/// grammar and the template's tool list).
fn format_instruction(format: Option<&Value>, mode: &ToolMode) -> Option<String> {
    if matches!(mode, ToolMode::Required | ToolMode::Named(_)) {
        return None;
    }
    match format?.get("type").and_then(Value::as_str)? {
        "json_object" => Some("Respond only with a valid JSON object.".into()),
        "json_schema" => {
            let schema = format
                .and_then(|f| f.pointer("/json_schema/schema"))
                .map(Value::to_string)
                .unwrap_or_else(|| "{}".into());
            Some(format!(
                "Respond only with a valid JSON object that follows this JSON schema: {schema}"
            ))
        }
        _ => None,
    }
}

/// Messages in the canonical shape: content flattened to a string, developer → system.
pub fn normalize_messages(messages: &[Value]) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must contain at least one message.",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, message)| normalize_message(i, message))
        .collect()
}

fn normalize_message(i: usize, message: &Value) -> Result<Value, ApiError> {
    let param = format!("messages[{i}]");
    let object = message
        .as_object()
        .ok_or_else(|| ApiError::invalid_param(&param, format!("{param} must be an object.")))?;
    let role = object.get("role").and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid_param(
            format!("{param}.role"),
            format!("{param}.role must be a string."),
        )
    })?;
    let content = flatten_content(&format!("{param}.content"), object.get("content"))?;
    let mut out = serde_json::Map::new();
    match role {
        "system" | "developer" | "user" => {
            out.insert(
                "role".into(),
                json!(if role == "user" { "user" } else { "system" }),
            );
            out.insert("content".into(), json!(content.unwrap_or_default()));
        }
        "assistant" => {
            out.insert("role".into(), json!("assistant"));
            let tool_calls = match object.get("tool_calls") {
                None | Some(Value::Null) => None,
                Some(Value::Array(calls)) => {
                    Some(assistant_tool_calls(&format!("{param}.tool_calls"), calls)?)
                }
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        format!("{param}.tool_calls"),
                        "tool_calls must be an array.",
                    ))
                }
            };
            if content.is_none() && tool_calls.is_none() {
                return Err(ApiError::invalid_param(
                    format!("{param}.content"),
                    "an assistant message needs content or tool_calls.",
                ));
            }
            out.insert("content".into(), json!(content.unwrap_or_default()));
            if let Some(calls) = tool_calls {
                out.insert("tool_calls".into(), Value::Array(calls));
            }
        }
        "tool" => {
            let id = object
                .get("tool_call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        format!("{param}.tool_call_id"),
                        "a tool message needs a string tool_call_id.",
                    )
                })?;
            out.insert("role".into(), json!("tool"));
            out.insert("tool_call_id".into(), json!(id));
            out.insert("content".into(), json!(content.unwrap_or_default()));
        }
        other => {
            return Err(ApiError::invalid_param(
                format!("{param}.role"),
                format!(
                    "Invalid role '{other}': expected system, developer, user, assistant or tool."
                ),
            ))
        }
    }
    if let Some(name) = object.get("name").and_then(Value::as_str) {
        out.insert("name".into(), json!(name));
    }
    Ok(Value::Object(out))
}

/// A string, or an array of text parts joined by newlines; images and audio are refused.
fn flatten_content(param: &str, content: Option<&Value>) -> Result<Option<String>, ApiError> {
    let parts = match content {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => return Ok(Some(text.clone())),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(ApiError::invalid_param(
                param,
                format!("{param} must be a string or an array of content parts."),
            ))
        }
    };
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let part_param = format!("{param}[{j}]");
        let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "text" | "refusal" => {
                let text = part.get(kind).and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid_param(
                        format!("{part_param}.{kind}"),
                        format!("a {kind} part needs a string '{kind}' field."),
                    )
                })?;
                texts.push(text.to_string());
            }
            "image_url" | "input_image" | "input_audio" | "file" => {
                return Err(ApiError::invalid_param(
                    format!("{part_param}.type"),
                    format!(
                        "This model accepts text only; content parts of type '{kind}' are not \
                         supported."
                    ),
                ))
            }
            other => {
                return Err(ApiError::invalid_param(
                    format!("{part_param}.type"),
                    format!("Unknown content part type '{other}'."),
                ))
            }
        }
    }
    Ok(Some(texts.join("\n")))
}

fn assistant_tool_calls(param: &str, calls: &[Value]) -> Result<Vec<Value>, ApiError> {
    calls
        .iter()
        .enumerate()
        .map(|(k, call)| {
            let name = call.pointer("/function/name").and_then(Value::as_str);
            let arguments = call.pointer("/function/arguments");
            match (name, arguments) {
                (Some(name), Some(arguments)) => Ok(json!({
                    "id": call.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                })),
                _ => Err(ApiError::invalid_param(
                    format!("{param}[{k}].function"),
                    "a tool call needs function.name and function.arguments.",
                )),
            }
        })
        .collect()
}

/// Appends to the leading system message (templates expect at most one, first) or adds one.
fn add_system_instruction(messages: &mut Vec<Value>, instruction: &str) {
    match messages.first_mut() {
        Some(first) if first["role"] == "system" => {
            let content = first["content"].as_str().unwrap_or_default();
            first["content"] = json!(format!("{content}\n\n{instruction}").trim_start());
        }
        _ => messages.insert(0, json!({"role": "system", "content": instruction})),
    }
}
