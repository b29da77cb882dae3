//! OpenAI request → the engine's [`GenerateRequest`]: validation (ranges, roles, content parts,
//! tool choice) and normalization of messages into the canonical JSON the chat template reads.

use serde_json::{json, Value};

use super::dto::{ChatCompletionRequest, ToolDefinition};
use super::error::ApiError;
use crate::engine::{
    AdapterChoice, Backend, GenerateRequest, ModelInfo, Priority, SamplingParams, StopCriteria,
};

/// Most choices per request (OpenAI's own limit).
pub const MAX_CHOICES: u32 = 128;
pub const MAX_TOP_LOGPROBS: u32 = 20;
pub const MAX_STOP_SEQUENCES: usize = 4;

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
    /// The sampling parameters as recorded with the turn.
    pub sampling_record: Value,
}

/// The one place a chat request becomes engine requests.
pub fn prepare_chat(
    request: ChatCompletionRequest,
    backend: &dyn Backend,
    request_id: &str,
) -> Result<PreparedChat, ApiError> {
    let info = backend.info();
    check_model(&request.model, info)?;
    let sampling = sampling_params(
        request.temperature,
        request.top_p,
        request.seed,
        request.presence_penalty,
        request.frequency_penalty,
    )?;
    let n = choice_count(request.n)?;
    let stop_strings = stop_sequences(request.stop.as_ref())?;
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

    let (tools, instruction) = tool_choice(request.tools.as_deref(), request.tool_choice.as_ref())?;
    let format_instruction = response_format_instruction(request.response_format.as_ref())?;
    let mut messages = normalize_messages(&request.messages)?;
    for extra in [instruction, format_instruction].into_iter().flatten() {
        add_system_instruction(&mut messages, &extra);
    }
    let prompt_tokens = backend
        .chat_prompt(&messages, tools.as_deref())
        .map_err(|err| ApiError::bad_request(format!("Could not build the prompt: {err}")))?;
    let max_tokens = completion_budget(prompt_tokens.len(), max_tokens, info)?;

    let stream = request.stream.unwrap_or(false);
    let include_usage = match &request.stream_options {
        Some(_) if !stream => {
            return Err(ApiError::invalid_param(
                "stream_options",
                "stream_options is only allowed when stream is true.",
            ));
        }
        Some(options) => options.include_usage.unwrap_or(false),
        None => false,
    };
    let sampling_record = json!({
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "max_tokens": max_tokens,
        "stop": stop_strings,
        "n": n,
        "top_logprobs": top_logprobs,
    });
    let base = GenerateRequest {
        request_id: request_id.to_string(),
        prompt_tokens: prompt_tokens.clone(),
        sampling,
        stop: StopCriteria {
            ignore_eos: false,
            max_tokens,
            stop_strings,
            stop_token_ids: Vec::new(),
        },
        top_logprobs,
        adapter: AdapterChoice::Current,
        priority: Priority::User,
        constraint: None,
    };
    Ok(PreparedChat {
        requests: (0..n).map(|i| choice_request(&base, i)).collect(),
        prompt_tokens,
        template_messages: messages,
        template_tools: tools,
        parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
        stream,
        include_usage,
        logprobs,
        session_id: request.session_id,
        sampling_record,
    })
}

/// Choice `i` of a request: its own id and, with a seed, seed + i so choices differ but replay.
pub fn choice_request(base: &GenerateRequest, index: usize) -> GenerateRequest {
    let mut request = base.clone();
    if index > 0 {
        request.request_id = format!("{}-{index}", base.request_id);
        request.sampling.seed = base.sampling.seed.map(|s| s.wrapping_add(index as u64));
    }
    request
}

pub fn check_model(model: &str, info: &ModelInfo) -> Result<(), ApiError> {
    if model == info.id {
        Ok(())
    } else {
        Err(ApiError::model_not_found(model))
    }
}

fn in_range(param: &str, value: Option<f32>, min: f32, max: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(min..=max).contains(&v) => Err(ApiError::invalid_param(
            param,
            format!("{param} must be between {min} and {max}, got {v}."),
        )),
        _ => Ok(()),
    }
}

pub fn sampling_params(
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
) -> Result<SamplingParams, ApiError> {
    in_range("temperature", temperature, 0.0, 2.0)?;
    in_range("top_p", top_p, 0.0, 1.0)?;
    in_range("presence_penalty", presence_penalty, -2.0, 2.0)?;
    in_range("frequency_penalty", frequency_penalty, -2.0, 2.0)?;
    let top_p = top_p.unwrap_or(1.0);
    Ok(SamplingParams {
        // top_p = 0 keeps only the most likely token: greedy, without an empty nucleus.
        temperature: if top_p == 0.0 {
            0.0
        } else {
            temperature.unwrap_or(1.0)
        },
        top_p: if top_p == 0.0 { 1.0 } else { top_p },
        top_k: 0,
        // OpenAI's seed is a signed 64-bit integer; its bits are the engine's seed.
        seed: seed.map(|s| s as u64),
        presence_penalty: presence_penalty.unwrap_or(0.0),
        frequency_penalty: frequency_penalty.unwrap_or(0.0),
        logit_bias: Vec::new(),
    })
}

pub fn choice_count(n: Option<u32>) -> Result<usize, ApiError> {
    match n.unwrap_or(1) {
        n @ 1..=MAX_CHOICES => Ok(n as usize),
        n => Err(ApiError::invalid_param(
            "n",
            format!("n must be between 1 and {MAX_CHOICES}, got {n}."),
        )),
    }
}

/// `stop`: a string or an array of at most four non-empty strings.
pub fn stop_sequences(stop: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = |message: &str| ApiError::invalid_param("stop", message.to_string());
    let strings = match stop {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("stop must be a string or an array of strings."))?,
        Some(_) => return Err(bad("stop must be a string or an array of strings.")),
    };
    if strings.len() > MAX_STOP_SEQUENCES {
        return Err(bad(&format!(
            "stop may contain at most {MAX_STOP_SEQUENCES} sequences, got {}.",
            strings.len()
        )));
    }
    if strings.iter().any(String::is_empty) {
        return Err(bad("stop sequences must not be empty."));
    }
    Ok(strings)
}

/// The tokens left for the completion; refuses requests that cannot fit.
pub fn completion_budget(
    prompt_len: usize,
    max_tokens: Option<u32>,
    info: &ModelInfo,
) -> Result<usize, ApiError> {
    let limit = info.context_length;
    let wanted = max_tokens.map(|m| m as usize).unwrap_or(1);
    if prompt_len + wanted > limit {
        return Err(ApiError::context_length_exceeded(format!(
            "This model's maximum context length is {limit} tokens. However, you requested {} \
             tokens ({prompt_len} in the messages, {wanted} in the completion). Please reduce \
             the length of the messages or completion.",
            prompt_len + wanted
        )));
    }
    Ok(max_tokens.map(|m| m as usize).unwrap_or(limit - prompt_len))
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

/// The tools the template sees, and an instruction that nudges the model when a call is
/// required (decoding is not constrained, so this is best effort).
fn tool_choice(
    tools: Option<&[ToolDefinition]>,
    choice: Option<&Value>,
) -> Result<(Option<Vec<Value>>, Option<String>), ApiError> {
    let tools = tools.unwrap_or_default();
    for (i, tool) in tools.iter().enumerate() {
        if tool.kind != "function" {
            return Err(ApiError::invalid_param(
                format!("tools[{i}].type"),
                format!(
                    "Unsupported tool type '{}': only 'function' is supported.",
                    tool.kind
                ),
            ));
        }
        if tool.function.name.trim().is_empty() {
            return Err(ApiError::invalid_param(
                format!("tools[{i}].function.name"),
                "a function needs a name.",
            ));
        }
    }
    let as_values = || {
        tools
            .iter()
            .map(|tool| serde_json::to_value(tool).unwrap_or(Value::Null))
            .collect::<Vec<_>>()
    };
    let bad = |message: String| ApiError::invalid_param("tool_choice", message);
    match choice {
        Some(Value::String(mode)) if mode == "none" => Ok((None, None)),
        None | Some(Value::Null) => Ok(((!tools.is_empty()).then(as_values), None)),
        Some(Value::String(mode)) if mode == "auto" => {
            Ok(((!tools.is_empty()).then(as_values), None))
        }
        Some(Value::String(mode)) if mode == "required" => {
            if tools.is_empty() {
                return Err(bad("tool_choice 'required' needs at least one tool.".into()));
            }
            Ok((
                Some(as_values()),
                Some("You must answer by calling one or more of the provided tools.".into()),
            ))
        }
        Some(named @ Value::Object(_)) => {
            let name = named
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("a named tool_choice needs function.name.".into()))?;
            if !tools.iter().any(|tool| tool.function.name == name) {
                return Err(bad(format!(
                    "tool_choice names '{name}', which is not in tools."
                )));
            }
            Ok((
                Some(as_values()),
                Some(format!("You must answer by calling the tool '{name}'.")),
            ))
        }
        Some(other) => Err(bad(format!(
            "tool_choice must be 'none', 'auto', 'required' or a named function, got {other}."
        ))),
    }
}

fn response_format_instruction(format: Option<&Value>) -> Result<Option<String>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some("Respond only with a valid JSON object.".into())),
        Some("json_schema") => {
            let schema = format
                .pointer("/json_schema/schema")
                .map(Value::to_string)
                .unwrap_or_else(|| "{}".into());
            Ok(Some(format!(
                "Respond only with a valid JSON object that follows this JSON schema: {schema}"
            )))
        }
        _ => Err(ApiError::invalid_param(
            "response_format.type",
            "response_format.type must be 'text', 'json_object' or 'json_schema'.",
        )),
    }
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
