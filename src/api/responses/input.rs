//! Responses request parts → their Chat Completions equivalents: input items → chat messages,
//! function tools, `tool_choice` and `text.format` → `response_format`; and the way back for
//! errors (a chat parameter name → the Responses field it came from).

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use super::request::{check_keys, missing, unsupported};
use crate::api::error::ApiError;

/// Chat messages, each with the request field it came from (for error messages).
#[derive(Debug, Clone, Default)]
pub struct Messages {
    pub messages: Vec<Value>,
    pub sources: Vec<String>,
}

impl Messages {
    pub fn push(&mut self, message: Value, source: impl Into<String>) {
        self.messages.push(message);
        self.sources.push(source.into());
    }

    pub fn extend(&mut self, other: Messages) {
        self.messages.extend(other.messages);
        self.sources.extend(other.sources);
    }

    /// The tool call ids of every assistant message so far.
    pub fn call_ids(&self) -> HashSet<String> {
        self.messages
            .iter()
            .filter_map(|m| m.get("tool_calls").and_then(Value::as_array))
            .flatten()
            .filter_map(|call| call.get("id").and_then(Value::as_str).map(str::to_string))
            .collect()
    }
}

const MESSAGE_KEYS: &[&str] = &["type", "role", "content", "id", "status", "phase"];
const CALL_KEYS: &[&str] = &["type", "id", "call_id", "name", "arguments", "status"];
const CALL_OUTPUT_KEYS: &[&str] = &["type", "id", "call_id", "output", "status"];

/// `input` (a string, or an array of items) as chat messages. `known_calls` holds the call ids
/// of the conversation so far: a `function_call_output` must answer one of them.
pub fn input_messages(input: &Value, known_calls: HashSet<String>) -> Result<Messages, ApiError> {
    let mut out = Messages::default();
    match input {
        Value::String(text) => out.push(json!({"role": "user", "content": text}), "input"),
        Value::Array(items) => items_to_messages(items, "input", known_calls, &mut out)?,
        _ => {
            return Err(ApiError::invalid_param(
                "input",
                "input must be a string or an array of input items.",
            ))
        }
    }
    Ok(out)
}

/// Appends `items` (input items, or a response's output items) to `out` as chat messages.
/// Function calls join the assistant message right before them, as one assistant turn.
pub fn items_to_messages(
    items: &[Value],
    prefix: &str,
    mut known_calls: HashSet<String>,
    out: &mut Messages,
) -> Result<(), ApiError> {
    for (i, item) in items.iter().enumerate() {
        let param = format!("{prefix}[{i}]");
        let Value::Object(object) = item else {
            return Err(ApiError::invalid_param(
                &param,
                format!("{param} must be an object."),
            ));
        };
        match object.get("type").map(|t| t.as_str().ok_or(t)) {
            None | Some(Ok("message")) => {
                check_keys(object, MESSAGE_KEYS, &param)?;
                out.push(message(object, &param)?, param);
            }
            Some(Ok("function_call")) => {
                check_keys(object, CALL_KEYS, &param)?;
                let call = function_call(object, &param)?;
                known_calls.insert(call["id"].as_str().unwrap_or_default().to_string());
                match out.messages.last_mut() {
                    Some(last) if last["role"] == "assistant" => {
                        match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                            Some(calls) => calls.push(call),
                            None => last["tool_calls"] = json!([call]),
                        }
                    }
                    _ => out.push(
                        json!({"role": "assistant", "content": null, "tool_calls": [call]}),
                        param,
                    ),
                }
            }
            Some(Ok("function_call_output")) => {
                check_keys(object, CALL_OUTPUT_KEYS, &param)?;
                let call_id = string_field(object, "call_id", &param)?;
                if !known_calls.contains(call_id) {
                    return Err(ApiError::invalid_param(
                        format!("{param}.call_id"),
                        format!(
                            "No tool call found for function call output with call_id {call_id}."
                        ),
                    ));
                }
                let output = match object.get("output") {
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(parts)) => text_parts(parts, &format!("{param}.output"))?,
                    None | Some(Value::Null) => return Err(missing(&format!("{param}.output"))),
                    Some(_) => {
                        return Err(ApiError::invalid_param(
                            format!("{param}.output"),
                            "output must be a string or an array of content parts.",
                        ))
                    }
                };
                out.push(
                    json!({"role": "tool", "tool_call_id": call_id, "content": output}),
                    param,
                );
            }
            Some(Ok(other)) => {
                return Err(unsupported(
                    format!("{param}.type"),
                    &format!(
                        "input items of type '{other}' are not supported (use message, \
                         function_call or function_call_output)."
                    ),
                ))
            }
            Some(Err(_)) => {
                return Err(ApiError::invalid_param(
                    format!("{param}.type"),
                    "type must be a string.",
                ))
            }
        }
    }
    Ok(())
}

fn string_field<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    param: &str,
) -> Result<&'a str, ApiError> {
    match object.get(key) {
        Some(Value::String(text)) => Ok(text),
        None | Some(Value::Null) => Err(missing(&format!("{param}.{key}"))),
        Some(_) => Err(ApiError::invalid_param(
            format!("{param}.{key}"),
            format!("{param}.{key} must be a string."),
        )),
    }
}

fn message(object: &Map<String, Value>, param: &str) -> Result<Value, ApiError> {
    let role = string_field(object, "role", param)?;
    if !matches!(role, "user" | "system" | "developer" | "assistant") {
        return Err(ApiError::invalid_param(
            format!("{param}.role"),
            format!("Invalid role '{role}': expected user, system, developer or assistant."),
        ));
    }
    let content_param = format!("{param}.content");
    let content = match object.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => text_parts(parts, &content_param)?,
        None | Some(Value::Null) => return Err(missing(&content_param)),
        Some(_) => {
            return Err(ApiError::invalid_param(
                content_param,
                "content must be a string or an array of content parts.",
            ))
        }
    };
    Ok(json!({"role": role, "content": content}))
}

/// Text parts joined by newlines (as chat flattens them); images, files and audio are refused.
fn text_parts(parts: &[Value], param: &str) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let part_param = format!("{param}[{j}]");
        let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
        let field = match kind {
            "input_text" | "output_text" | "text" => "text",
            "refusal" => "refusal",
            "input_image" | "input_file" | "input_audio" => {
                return Err(unsupported(
                    format!("{part_param}.type"),
                    &format!("this model accepts text only, not '{kind}' parts."),
                ))
            }
            other => {
                return Err(ApiError::invalid_param(
                    format!("{part_param}.type"),
                    format!("Unknown content part type '{other}'."),
                ))
            }
        };
        let text = part.get(field).and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid_param(
                format!("{part_param}.{field}"),
                format!("a {kind} part needs a string '{field}' field."),
            )
        })?;
        texts.push(text);
    }
    Ok(texts.join("\n"))
}

fn function_call(object: &Map<String, Value>, param: &str) -> Result<Value, ApiError> {
    let call_id = string_field(object, "call_id", param)?;
    let name = string_field(object, "name", param)?;
    let arguments = match object.get("arguments") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Object(_)) => object["arguments"].to_string(),
        None | Some(Value::Null) => return Err(missing(&format!("{param}.arguments"))),
        Some(_) => {
            return Err(ApiError::invalid_param(
                format!("{param}.arguments"),
                "arguments must be a JSON object serialized as a string.",
            ))
        }
    };
    Ok(json!({
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }))
}

const TOOL_KEYS: &[&str] = &["type", "name", "description", "parameters", "strict"];

/// Function tools → (chat tools, the tools echoed in the response).
pub fn tools(tools: &[Value]) -> Result<(Vec<Value>, Vec<Value>), ApiError> {
    let mut chat = Vec::with_capacity(tools.len());
    let mut echo = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        let Value::Object(object) = tool else {
            return Err(ApiError::invalid_param(
                &param,
                format!("{param} must be an object."),
            ));
        };
        let kind = string_field(object, "type", &param)?;
        if kind != "function" {
            return Err(unsupported(
                format!("{param}.type"),
                &format!("only 'function' tools are supported, got '{kind}'."),
            ));
        }
        check_keys(object, TOOL_KEYS, &param)?;
        let name = string_field(object, "name", &param)?;
        let description = match object.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(_) => {
                return Err(ApiError::invalid_param(
                    format!("{param}.description"),
                    "description must be a string.",
                ))
            }
        };
        let parameters = object.get("parameters").filter(|p| !p.is_null()).cloned();
        let strict = match object.get("strict") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(strict)) => Some(*strict),
            Some(_) => {
                return Err(ApiError::invalid_param(
                    format!("{param}.strict"),
                    "strict must be a boolean.",
                ))
            }
        };
        let mut function = json!({"name": name});
        if let Some(description) = &description {
            function["description"] = json!(description);
        }
        if let Some(parameters) = &parameters {
            function["parameters"] = parameters.clone();
        }
        if let Some(strict) = strict {
            function["strict"] = json!(strict);
        }
        chat.push(json!({"type": "function", "function": function}));
        echo.push(json!({
            "type": "function",
            "name": name,
            "description": description,
            "parameters": parameters,
            "strict": strict,
        }));
    }
    Ok((chat, echo))
}

/// `tool_choice` → chat's form. None when absent.
pub fn tool_choice(choice: Option<&Value>) -> Result<Option<Value>, ApiError> {
    match choice {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(mode)) if matches!(mode.as_str(), "none" | "auto" | "required") => {
            Ok(Some(json!(mode)))
        }
        Some(Value::Object(object)) if object.get("type") == Some(&json!("function")) => {
            check_keys(object, &["type", "name"], "tool_choice")?;
            let name = string_field(object, "name", "tool_choice")?;
            Ok(Some(
                json!({"type": "function", "function": {"name": name}}),
            ))
        }
        Some(Value::Object(object)) => Err(unsupported(
            "tool_choice.type",
            &format!(
                "only 'none', 'auto', 'required' or {{\"type\": \"function\", \"name\": ...}} \
                 are supported, got type {}.",
                object.get("type").unwrap_or(&Value::Null)
            ),
        )),
        Some(other) => Err(ApiError::invalid_param(
            "tool_choice",
            format!("tool_choice must be 'none', 'auto', 'required' or an object, got {other}."),
        )),
    }
}

/// `text` → (chat's `response_format`, the `text` echoed in the response).
pub fn text_format(text: Option<&Value>) -> Result<(Option<Value>, Value), ApiError> {
    let object = match text {
        None | Some(Value::Null) => return Ok((None, default_text())),
        Some(Value::Object(object)) => object,
        Some(_) => return Err(ApiError::invalid_param("text", "text must be an object.")),
    };
    check_keys(object, &["format", "verbosity"], "text")?;
    let verbosity = match object.get("verbosity") {
        None | Some(Value::Null) => json!("medium"),
        Some(Value::String(v)) if matches!(v.as_str(), "low" | "medium" | "high") => json!(v),
        Some(_) => {
            return Err(ApiError::invalid_param(
                "text.verbosity",
                "text.verbosity must be 'low', 'medium' or 'high'.",
            ))
        }
    };
    let format = match object.get("format") {
        None | Some(Value::Null) => {
            return Ok((
                None,
                json!({"format": {"type": "text"}, "verbosity": verbosity}),
            ))
        }
        Some(Value::Object(format)) => format,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "text.format",
                "text.format must be an object.",
            ))
        }
    };
    let (chat, echo) = match format.get("type").and_then(Value::as_str) {
        Some("text") => {
            check_keys(format, &["type"], "text.format")?;
            (json!({"type": "text"}), json!({"type": "text"}))
        }
        Some("json_object") => {
            check_keys(format, &["type"], "text.format")?;
            (
                json!({"type": "json_object"}),
                json!({"type": "json_object"}),
            )
        }
        Some("json_schema") => {
            let allowed = ["type", "name", "schema", "strict", "description"];
            check_keys(format, &allowed, "text.format")?;
            let name = string_field(format, "name", "text.format")?;
            let schema = match format.get("schema") {
                Some(schema @ Value::Object(_)) => schema.clone(),
                None | Some(Value::Null) => return Err(missing("text.format.schema")),
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        "text.format.schema",
                        "text.format.schema must be a JSON Schema object.",
                    ))
                }
            };
            let strict = format.get("strict").cloned().unwrap_or(Value::Null);
            let mut json_schema = json!({"name": name, "schema": schema, "strict": strict});
            let mut echo =
                json!({"type": "json_schema", "name": name, "schema": schema, "strict": strict});
            if let Some(description) = format.get("description").filter(|d| !d.is_null()) {
                json_schema["description"] = description.clone();
                echo["description"] = description.clone();
            }
            (
                json!({"type": "json_schema", "json_schema": json_schema}),
                echo,
            )
        }
        _ => {
            return Err(ApiError::invalid_param(
                "text.format.type",
                "text.format.type must be 'text', 'json_object' or 'json_schema'.",
            ))
        }
    };
    Ok((Some(chat), json!({"format": echo, "verbosity": verbosity})))
}

fn default_text() -> Value {
    json!({"format": {"type": "text"}, "verbosity": "medium"})
}

/// Renames the chat parameter an error names to the Responses field it came from.
pub fn responses_param(param: &str, sources: &[String]) -> String {
    if let Some(rest) = param.strip_prefix("messages[") {
        let (index, tail) = rest.split_once(']').unwrap_or((rest, ""));
        return match index.parse::<usize>().ok().and_then(|i| sources.get(i)) {
            Some(source) if source.starts_with("input") => format!("{source}{tail}"),
            Some(source) => source.clone(),
            None => "input".into(),
        };
    }
    if param == "messages" {
        return "input".into();
    }
    if param == "max_completion_tokens" || param == "max_tokens" {
        return "max_output_tokens".into();
    }
    if let Some(rest) = param.strip_prefix("response_format") {
        let rest = rest.strip_prefix(".json_schema").unwrap_or(rest);
        return format!("text.format{rest}");
    }
    if let Some(rest) = param.strip_prefix("tools[") {
        return format!("tools[{}", rest.replacen("].function", "]", 1));
    }
    param.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_become_chat_messages_and_calls_join_the_assistant_turn() {
        let input = json!([
            {"role": "developer", "content": "be brief"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "let me look", "annotations": []}]},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}", "id": "fc_1", "status": "completed"},
            {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{\"x\":1}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "one"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "two"}]},
        ]);
        let out = input_messages(&input, HashSet::new()).unwrap();
        assert_eq!(
            out.messages,
            vec![
                json!({"role": "developer", "content": "be brief"}),
                json!({"role": "user", "content": "a\nb"}),
                json!({"role": "assistant", "content": "let me look", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{\"x\":1}"}},
                ]}),
                json!({"role": "tool", "tool_call_id": "call_1", "content": "one"}),
                json!({"role": "tool", "tool_call_id": "call_2", "content": "two"}),
            ]
        );
        assert_eq!(out.sources[2], "input[2]");
        assert_eq!(out.sources[4], "input[6]");
    }

    #[test]
    fn bad_items_name_their_field() {
        let param = |input: Value| {
            input_messages(&input, HashSet::new())
                .unwrap_err()
                .param
                .unwrap()
        };
        assert_eq!(
            param(json!([{"type": "reasoning", "summary": []}])),
            "input[0].type"
        );
        assert_eq!(
            param(json!([{"role": "tool", "content": "x"}])),
            "input[0].role"
        );
        assert_eq!(
            param(
                json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}])
            ),
            "input[0].content[0].type"
        );
        assert_eq!(
            param(json!([{"type": "function_call_output", "call_id": "nope", "output": "x"}])),
            "input[0].call_id"
        );
        assert_eq!(
            param(json!([{"role": "user", "content": "x", "extra": 1}])),
            "input[0].extra"
        );
        assert_eq!(
            param(json!([{"type": "function_call", "name": "f", "arguments": "{}"}])),
            "input[0].call_id"
        );
    }

    #[test]
    fn tools_choice_and_format_convert() {
        let (chat, echo) = tools(&[json!({"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true})]).unwrap();
        assert_eq!(
            chat[0],
            json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}})
        );
        assert_eq!(echo[0]["description"], Value::Null);
        let err = tools(&[json!({"type": "web_search"})]).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("tools[0].type"));
        assert_eq!(
            tool_choice(Some(&json!({"type": "function", "name": "f"}))).unwrap(),
            Some(json!({"type": "function", "function": {"name": "f"}}))
        );
        let (format, echo) = text_format(Some(&json!({"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": true}}))).unwrap();
        assert_eq!(
            format.unwrap(),
            json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": true}})
        );
        assert_eq!(echo["format"]["name"], "n");
        assert_eq!(text_format(None).unwrap().1["format"]["type"], "text");
    }

    #[test]
    fn chat_params_map_back() {
        let sources = vec!["instructions".to_string(), "input[0]".to_string()];
        assert_eq!(
            responses_param("messages[1].content", &sources),
            "input[0].content"
        );
        assert_eq!(
            responses_param("messages[0].content", &sources),
            "instructions"
        );
        assert_eq!(
            responses_param("response_format.json_schema.schema", &sources),
            "text.format.schema"
        );
        assert_eq!(
            responses_param("tools[2].function.parameters", &sources),
            "tools[2].parameters"
        );
        assert_eq!(
            responses_param("max_completion_tokens", &sources),
            "max_output_tokens"
        );
    }
}
