//! The body of `POST /v1/responses`: every field OpenAI defines is known here. Supported fields
//! are validated; fields this server does not implement are accepted only at their neutral
//! value (null, false, empty) and otherwise refused with a 400 naming them, as are fields
//! OpenAI does not define.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::schema::{ResponseInput, ResponseToolChoice};
use crate::api::error::ApiError;
use crate::api::extract::parse_json;

/// OpenAI's limits on `metadata`.
pub const MAX_METADATA_KEYS: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct CreateResponseRequest {
    pub model: String,
    #[schema(value_type = ResponseInput)]
    pub input: Option<Value>,
    pub instructions: Option<String>,
    pub previous_response_id: Option<String>,
    pub store: Option<bool>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f32>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f32>,
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<u32>,
    /// Function tools: `{"type": "function", "name", "description", "parameters", "strict"}`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    #[schema(value_type = Option<ResponseToolChoice>)]
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", ...}}`.
    #[schema(value_type = Option<Object>)]
    pub text: Option<Value>,
    /// Up to 16 string values.
    #[schema(value_type = Option<HashMap<String, String>>)]
    pub metadata: Option<Map<String, Value>>,
    pub user: Option<String>,
    pub truncation: Option<String>,
    pub include: Option<Vec<String>>,
    /// Not implemented: accepted only at its neutral value.
    #[schema(value_type = Option<Object>)]
    pub reasoning: Option<Value>,
    pub service_tier: Option<String>,
    pub background: Option<bool>,
    pub prompt_cache_key: Option<String>,
    pub safety_identifier: Option<String>,
    pub top_logprobs: Option<u32>,
    pub max_tool_calls: Option<u32>,
    /// Not implemented: accepted only at its neutral value.
    #[schema(value_type = Option<Object>)]
    pub conversation: Option<Value>,
    /// Not implemented: accepted only at its neutral value.
    #[schema(value_type = Option<Object>)]
    pub prompt: Option<Value>,
    /// Hindsight extension (as on chat): links turns of one conversation.
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ResponseStreamOptions)]
pub struct StreamOptions {
    /// Accepted; this server never pads its events.
    pub include_obfuscation: Option<bool>,
}

/// Every top-level field the request may carry.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "previous_response_id",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_output_tokens",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "metadata",
    "user",
    "truncation",
    "include",
    "reasoning",
    "service_tier",
    "background",
    "prompt_cache_key",
    "safety_identifier",
    "top_logprobs",
    "max_tool_calls",
    "conversation",
    "prompt",
    "session_id",
];

/// A 400 for a field or item key this server does not know.
pub fn unknown_parameter(param: impl Into<String>) -> ApiError {
    let param = param.into();
    ApiError {
        code: Some("unknown_parameter"),
        ..ApiError::invalid_param(param.clone(), format!("Unknown parameter: '{param}'."))
    }
}

/// A 400 for a field that is known but not implemented by this server.
pub fn unsupported(param: impl Into<String>, what: &str) -> ApiError {
    let param = param.into();
    ApiError {
        code: Some("unsupported_parameter"),
        ..ApiError::invalid_param(
            param.clone(),
            format!("'{param}' is not supported by this server: {what}"),
        )
    }
}

pub fn missing(param: &str) -> ApiError {
    ApiError {
        code: Some("missing_required_parameter"),
        ..ApiError::invalid_param(param, format!("Missing required parameter: '{param}'."))
    }
}

/// Refuses keys of `object` outside `allowed`, naming them under `prefix`.
pub fn check_keys(
    object: &Map<String, Value>,
    allowed: &[&str],
    prefix: &str,
) -> Result<(), ApiError> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) if prefix.is_empty() => Err(unknown_parameter(key.as_str())),
        Some(key) => Err(unknown_parameter(format!("{prefix}.{key}"))),
        None => Ok(()),
    }
}

impl CreateResponseRequest {
    /// Parses and validates a request body.
    pub fn parse(body: Value) -> Result<Self, ApiError> {
        let Value::Object(object) = &body else {
            return Err(ApiError::bad_request(
                "We could not parse the JSON body of your request. The body must be a JSON object.",
            ));
        };
        check_keys(object, KNOWN_FIELDS, "")?;
        // Typed parse, with the offending field named on a type error.
        let bytes = serde_json::to_vec(&body).map_err(ApiError::internal)?;
        let request: Self = parse_json(&bytes)?;
        request.check_unsupported()?;
        request.check_metadata()?;
        if request.max_output_tokens == Some(0) {
            return Err(ApiError::invalid_param(
                "max_output_tokens",
                "max_output_tokens must be at least 1.",
            ));
        }
        match &request.input {
            None | Some(Value::Null) => return Err(missing("input")),
            Some(Value::String(_) | Value::Array(_)) => {}
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "input",
                    "input must be a string or an array of input items.",
                ))
            }
        }
        if let Some(id) = &request.previous_response_id {
            if id.is_empty() {
                return Err(ApiError::invalid_param(
                    "previous_response_id",
                    "previous_response_id must not be empty.",
                ));
            }
        }
        Ok(request)
    }

    fn check_unsupported(&self) -> Result<(), ApiError> {
        if self.background == Some(true) {
            return Err(unsupported(
                "background",
                "responses are generated while the request is open.",
            ));
        }
        if let Some(include) = self.include.as_ref().filter(|i| !i.is_empty()) {
            return Err(unsupported(
                "include",
                &format!("no extra output data can be included (got {include:?})."),
            ));
        }
        if self.top_logprobs.is_some_and(|k| k > 0) {
            return Err(unsupported(
                "top_logprobs",
                "log-probs are not returned here.",
            ));
        }
        if self.max_tool_calls.is_some() {
            return Err(unsupported(
                "max_tool_calls",
                "use parallel_tool_calls: false to allow at most one call.",
            ));
        }
        if self.conversation.as_ref().is_some_and(|c| !c.is_null()) {
            return Err(unsupported(
                "conversation",
                "use previous_response_id to continue a conversation.",
            ));
        }
        if self.prompt.as_ref().is_some_and(|p| !p.is_null()) {
            return Err(unsupported(
                "prompt",
                "prompt templates are not stored here.",
            ));
        }
        match self.truncation.as_deref() {
            None | Some("disabled") | Some("auto") => {}
            Some(other) => {
                return Err(ApiError::invalid_param(
                    "truncation",
                    format!("truncation must be 'auto' or 'disabled', got '{other}'."),
                ))
            }
        }
        match &self.reasoning {
            None | Some(Value::Null) => {}
            Some(Value::Object(options)) => {
                if let Some((key, _)) = options.iter().find(|(_, v)| !v.is_null()) {
                    return Err(unsupported(
                        format!("reasoning.{key}"),
                        "this model does not reason before answering.",
                    ));
                }
            }
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "reasoning",
                    "reasoning must be an object.",
                ))
            }
        }
        if self.stream_options.is_some() && self.stream != Some(true) {
            return Err(ApiError::invalid_param(
                "stream_options",
                "stream_options is only allowed when stream is true.",
            ));
        }
        Ok(())
    }

    /// At most 16 string values, keys up to 64 characters, values up to 512.
    fn check_metadata(&self) -> Result<(), ApiError> {
        let Some(metadata) = &self.metadata else {
            return Ok(());
        };
        if metadata.len() > MAX_METADATA_KEYS {
            return Err(ApiError::invalid_param(
                "metadata",
                format!("metadata may hold at most {MAX_METADATA_KEYS} keys."),
            ));
        }
        for (key, value) in metadata {
            let param = format!("metadata.{key}");
            if key.chars().count() > MAX_METADATA_KEY_CHARS {
                return Err(ApiError::invalid_param(
                    param,
                    format!("metadata keys may be at most {MAX_METADATA_KEY_CHARS} characters."),
                ));
            }
            let Some(text) = value.as_str() else {
                return Err(ApiError::invalid_param(
                    param,
                    "metadata values must be strings.",
                ));
            };
            if text.chars().count() > MAX_METADATA_VALUE_CHARS {
                return Err(ApiError::invalid_param(
                    param,
                    format!(
                        "metadata values may be at most {MAX_METADATA_VALUE_CHARS} characters."
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `metadata.session_id`, if given.
    pub fn metadata_session(&self) -> Option<String> {
        self.metadata
            .as_ref()?
            .get("session_id")?
            .as_str()
            .filter(|id| !id.is_empty())
            .map(str::to_string)
    }

    pub fn metadata_value(&self) -> Value {
        self.metadata
            .clone()
            .map(Value::Object)
            .unwrap_or_else(|| json!({}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<CreateResponseRequest, ApiError> {
        CreateResponseRequest::parse(body)
    }

    #[test]
    fn unknown_and_unsupported_fields_are_named() {
        let err = parse(json!({"model": "m", "input": "hi", "stop": ["x"]})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("stop"));
        assert_eq!(err.code, Some("unknown_parameter"));
        let err = parse(json!({"model": "m", "input": "hi", "background": true})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("background"));
        let err = parse(json!({"model": "m", "input": "hi", "reasoning": {"effort": "high"}}))
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("reasoning.effort"));
        let err = parse(json!({"model": "m", "input": 3})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("input"));
        let err = parse(json!({"model": "m"})).unwrap_err();
        assert_eq!(err.code, Some("missing_required_parameter"));
        let err = parse(json!({"model": "m", "input": "x", "temperature": "hot"})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("temperature"));
    }

    #[test]
    fn neutral_values_of_unsupported_fields_pass() {
        let request = parse(json!({
            "model": "m", "input": "hi", "background": false, "include": [],
            "reasoning": {"effort": null}, "truncation": "disabled", "top_logprobs": 0,
            "service_tier": "auto", "metadata": {"session_id": "s1"},
            "stream": true, "stream_options": {"include_obfuscation": false}
        }))
        .unwrap();
        assert_eq!(request.metadata_session().as_deref(), Some("s1"));
    }

    #[test]
    fn metadata_limits() {
        let err = parse(json!({"model": "m", "input": "hi", "metadata": {"a": 1}})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("metadata.a"));
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        let err = parse(json!({"model": "m", "input": "hi", "metadata": many})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("metadata"));
    }
}
