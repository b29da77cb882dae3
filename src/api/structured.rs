//! Structured output: `response_format` and `tool_choice` become a grammar [`Constraint`] the
//! engine enforces while sampling (llguidance token masks), never a mere instruction.
//!
//! Tool calls are generated in the Hermes convention (`<tool_call>\n{"name": .., "arguments":
//! {..}}\n</tool_call>`) that [`super::tool_parse`] reads back, with each tool's `parameters`
//! schema embedded as the arguments' JSON schema.

use serde_json::{json, Value};

use super::dto::ToolDefinition;
use super::error::ApiError;
use crate::engine::Constraint;

/// What the tools of a request allow or require.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolMode {
    /// No tools (or `tool_choice: "none"`): the template gets none, nothing is constrained.
    Off,
    /// The model may answer in prose or call any tool; a call it starts must be valid.
    Auto,
    /// At least one call to any of the tools.
    Required,
    /// A call to this tool.
    Named(String),
}

/// The request's output constraint and the request field it came from (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputConstraint {
    pub constraint: Constraint,
    pub param: &'static str,
}

/// Validates `tools` and `tool_choice`.
pub fn tool_mode(
    tools: Option<&[ToolDefinition]>,
    choice: Option<&Value>,
) -> Result<ToolMode, ApiError> {
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
        match &tool.function.parameters {
            None | Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(ApiError::invalid_param(
                    format!("tools[{i}].function.parameters"),
                    "parameters must be a JSON Schema object.",
                ))
            }
        }
    }
    let bad = |message: String| ApiError::invalid_param("tool_choice", message);
    let mode = match choice {
        None | Some(Value::Null) => ToolMode::Auto,
        Some(Value::String(mode)) if mode == "none" => ToolMode::Off,
        Some(Value::String(mode)) if mode == "auto" => ToolMode::Auto,
        Some(Value::String(mode)) if mode == "required" => {
            if tools.is_empty() {
                return Err(bad("tool_choice 'required' needs at least one tool.".into()));
            }
            ToolMode::Required
        }
        Some(named @ Value::Object(_)) => {
            // Chat Completions: {"type":"function","function":{"name":..}}; Responses: {"type":"function","name":..}.
            let name = named
                .pointer("/function/name")
                .or_else(|| named.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("a named tool_choice needs function.name.".into()))?;
            if !tools.iter().any(|tool| tool.function.name == name) {
                return Err(bad(format!(
                    "tool_choice names '{name}', which is not in tools."
                )));
            }
            ToolMode::Named(name.to_string())
        }
        Some(other) => {
            return Err(bad(format!(
                "tool_choice must be 'none', 'auto', 'required' or a named function, got {other}."
            )))
        }
    };
    Ok(if tools.is_empty() {
        ToolMode::Off
    } else {
        mode
    })
}

/// The constraint for a request: a forced tool call wins over `response_format` (the answer is
/// the call); with tools on `auto`, prose is free but a started call must be valid; otherwise
/// `response_format` decides.
pub fn output_constraint(
    tools: Option<&[ToolDefinition]>,
    mode: &ToolMode,
    parallel_tool_calls: bool,
    response_format: Option<&Value>,
) -> Result<Option<OutputConstraint>, ApiError> {
    let tools = tools.unwrap_or_default();
    let calls = |only: Option<&str>| tool_call_grammar(tools, only, parallel_tool_calls);
    let tool_grammar = match mode {
        ToolMode::Off => None,
        ToolMode::Auto => Some(format!(
            "start: TEXT | calls\nTEXT: /[^<](.|\\n)*/\n{}",
            calls(None)
        )),
        ToolMode::Required => Some(format!("start: calls\n{}", calls(None))),
        ToolMode::Named(name) => Some(format!("start: calls\n{}", calls(Some(name)))),
    };
    let format = response_format_constraint(response_format)?;
    Ok(match (tool_grammar, format) {
        (Some(lark), _) if *mode != ToolMode::Auto => Some(OutputConstraint {
            constraint: Constraint::Lark(lark),
            param: "tool_choice",
        }),
        // Auto tools with a response format: prose must follow the format, calls their schemas.
        (Some(_), Some(Constraint::JsonSchema(schema))) => Some(OutputConstraint {
            constraint: Constraint::Lark(format!(
                "start: answer | calls\nanswer: %json {}\n{}",
                schema,
                calls(None)
            )),
            param: "response_format",
        }),
        (Some(lark), _) => Some(OutputConstraint {
            constraint: Constraint::Lark(lark),
            param: "tools",
        }),
        (None, Some(constraint)) => Some(OutputConstraint {
            constraint,
            param: "response_format",
        }),
        (None, None) => None,
    })
}

/// Lark rules for `calls`: one `<tool_call>` block, or several when parallel calls are allowed.
/// (Prose under `auto` is `TEXT`: anything that does not open with `<`, so a call cannot be
/// started outside the grammar's own `<tool_call>` rule.)
fn tool_call_grammar(tools: &[ToolDefinition], only: Option<&str>, parallel: bool) -> String {
    let schemas: Vec<Value> = tools
        .iter()
        .filter(|tool| only.is_none_or(|name| tool.function.name == name))
        .map(|tool| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": tool.function.name},
                    "arguments": tool.function.parameters.clone()
                        .unwrap_or_else(|| json!({"type": "object"})),
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let call_schema = if schemas.len() == 1 {
        schemas[0].clone()
    } else {
        json!({ "anyOf": schemas })
    };
    let repeat = if parallel { " (\"\\n\" call)*" } else { "" };
    format!(
        "calls: call{repeat}\ncall: \"<tool_call>\\n\" %json {call_schema} \"\\n</tool_call>\"\n"
    )
}

/// `response_format`: text (no constraint), json_object, or json_schema (strict or not: both
/// are enforced; strictness only matters to OpenAI's own schema subset).
fn response_format_constraint(format: Option<&Value>) -> Result<Option<Constraint>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonSchema(json!({"type": "object"})))),
        Some("json_schema") => {
            let spec = format.get("json_schema").ok_or_else(|| {
                ApiError::invalid_param(
                    "response_format.json_schema",
                    "response_format of type 'json_schema' needs a 'json_schema' object.",
                )
            })?;
            match spec.get("schema") {
                Some(schema @ Value::Object(_)) => Ok(Some(Constraint::JsonSchema(schema.clone()))),
                // OpenAI accepts a json_schema without a schema: any JSON value.
                None | Some(Value::Null) => Ok(Some(Constraint::JsonSchema(json!({})))),
                Some(_) => Err(ApiError::invalid_param(
                    "response_format.json_schema.schema",
                    "response_format.json_schema.schema must be a JSON Schema object.",
                )),
            }
        }
        _ => Err(ApiError::invalid_param(
            "response_format.type",
            "response_format.type must be 'text', 'json_object' or 'json_schema'.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::dto::FunctionDefinition;

    fn tool(name: &str) -> ToolDefinition {
        ToolDefinition {
            kind: "function".into(),
            function: FunctionDefinition {
                name: name.into(),
                description: None,
                parameters: Some(
                    json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                ),
                strict: None,
            },
        }
    }

    #[test]
    fn forced_tool_beats_response_format_and_names_its_tool() {
        let tools = [tool("weather"), tool("time")];
        let mode = tool_mode(
            Some(&tools),
            Some(&json!({"type": "function", "function": {"name": "time"}})),
        )
        .unwrap();
        assert_eq!(mode, ToolMode::Named("time".into()));
        let out = output_constraint(
            Some(&tools),
            &mode,
            true,
            Some(&json!({"type": "json_object"})),
        )
        .unwrap()
        .unwrap();
        let Constraint::Lark(lark) = out.constraint else {
            panic!("lark expected")
        };
        assert!(lark.starts_with("start: calls\n"), "{lark}");
        assert!(
            lark.contains("\"const\":\"time\"") && !lark.contains("weather"),
            "{lark}"
        );
        assert_eq!(out.param, "tool_choice");
    }

    #[test]
    fn formats_and_modes() {
        assert_eq!(
            response_format_constraint(Some(&json!({"type": "text"}))).unwrap(),
            None
        );
        assert_eq!(
            response_format_constraint(Some(&json!({"type": "json_object"}))).unwrap(),
            Some(Constraint::JsonSchema(json!({"type": "object"})))
        );
        assert!(response_format_constraint(Some(&json!({"type": "xml"}))).is_err());
        assert!(response_format_constraint(Some(&json!({"type": "json_schema"}))).is_err());
        assert_eq!(
            tool_mode(None, Some(&json!("auto"))).unwrap(),
            ToolMode::Off
        );
        assert!(tool_mode(None, Some(&json!("required"))).is_err());
        let tools = [tool("weather")];
        assert!(tool_mode(
            Some(&tools),
            Some(&json!({"type": "function", "function": {"name": "nope"}}))
        )
        .is_err());
        let single = tool_call_grammar(&tools, None, false);
        assert!(!single.contains(")*"), "{single}");
    }
}
