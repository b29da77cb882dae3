//! Hugging Face chat templates rendered with minijinja the way transformers'
//! `apply_chat_template` renders them with Jinja2 (same environment settings and helpers).

use std::path::Path;

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;
use serde_json::Value as Json;

mod python_json;

const DEFAULT: &str = "default";
const TOOL_USE: &str = "tool_use";
/// Marks errors raised by the template's own `raise_exception` call.
const RAISED: &str = "template raised: ";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{}: cannot read: {detail}", path.display())]
    Read {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("the model has no chat template")]
    Missing,
    #[error("chat_template has an unexpected shape: {0}")]
    BadConfig(String),
    #[error("the chat template does not compile: {0}")]
    Syntax(String),
    /// The template itself rejected the conversation (its `raise_exception`).
    #[error("the chat template rejected the conversation: {0}")]
    Rejected(String),
    #[error("the chat template failed: {0}")]
    Render(String),
}

/// A model's chat template(s): "default", and "tool_use" when the model has one.
pub struct ChatTemplate {
    env: Environment<'static>,
    has_tool_use: bool,
    special_tokens: serde_json::Map<String, Json>,
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

/// HF's `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent, separators=separators,
/// sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None => " ".repeat(usize::try_from(v).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be a number",
                )
            })?),
        }),
    };
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let separators = match separators.as_deref() {
        None => None,
        Some([item, key]) => Some((item.clone(), key.clone())),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be two strings",
            ))
        }
    };
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let options = python_json::DumpOptions {
        indent,
        separators,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    Ok(Value::from(python_json::dumps(&json, &options)))
}

fn strftime_now(format: String) -> String {
    chrono::Local::now().format(&format).to_string()
}

impl ChatTemplate {
    /// From a parsed tokenizer_config.json whose `chat_template` is a string or a list of
    /// `{name, template}`.
    pub fn from_tokenizer_config(config: &Json) -> Result<Self, TemplateError> {
        Self::build(config.get("chat_template"), config)
    }

    /// From a model directory: tokenizer_config.json's `chat_template`, or the separate
    /// `chat_template.jinja` newer transformers versions save.
    pub fn from_model_dir(dir: &Path) -> Result<Self, TemplateError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| TemplateError::Read {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })
        };
        let config_path = dir.join("tokenizer_config.json");
        let config: Json =
            serde_json::from_str(&read(&config_path)?).map_err(|e| TemplateError::Read {
                path: config_path.clone(),
                detail: e.to_string(),
            })?;
        let jinja = dir.join("chat_template.jinja");
        if config.get("chat_template").is_none() && jinja.is_file() {
            let template = Json::String(read(&jinja)?);
            return Self::build(Some(&template), &config);
        }
        Self::from_tokenizer_config(&config)
    }

    fn build(template: Option<&Json>, config: &Json) -> Result<Self, TemplateError> {
        let mut templates: Vec<(String, String)> = Vec::new();
        match template {
            None | Some(Json::Null) => return Err(TemplateError::Missing),
            Some(Json::String(s)) => templates.push((DEFAULT.to_string(), s.clone())),
            Some(Json::Array(items)) => {
                for item in items {
                    let name = item.get("name").and_then(Json::as_str);
                    let body = item.get("template").and_then(Json::as_str);
                    match (name, body) {
                        (Some(n), Some(t)) => templates.push((n.to_string(), t.to_string())),
                        _ => {
                            return Err(TemplateError::BadConfig(
                                "list items need string `name` and `template`".into(),
                            ))
                        }
                    }
                }
            }
            Some(other) => return Err(TemplateError::BadConfig(format!("{other}"))),
        }
        if !templates.iter().any(|(n, _)| n == DEFAULT) {
            return Err(TemplateError::BadConfig(
                "a list of templates needs one named \"default\"".into(),
            ));
        }

        let mut env = Environment::new();
        // transformers compiles templates with trim_blocks and lstrip_blocks on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        let mut has_tool_use = false;
        for (name, body) in templates {
            has_tool_use |= name == TOOL_USE;
            env.add_template_owned(name, body)
                .map_err(|e| TemplateError::Syntax(format!("{e:#}")))?;
        }

        let mut special_tokens = serde_json::Map::new();
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            let text = match config.get(key) {
                Some(Json::String(s)) => Some(s.clone()),
                Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(String::from),
                _ => None,
            };
            if let Some(text) = text {
                special_tokens.insert(key.to_string(), Json::String(text));
            }
        }
        Ok(ChatTemplate {
            env,
            has_tool_use,
            special_tokens,
        })
    }

    /// Renders a conversation of OpenAI-style messages (system, developer, user, assistant
    /// with `tool_calls`, tool), with optional tool definitions.
    pub fn render(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with(
            messages,
            tools,
            add_generation_prompt,
            &serde_json::Map::new(),
        )
    }

    /// As `render`, with extra template variables (e.g. Qwen3's `enable_thinking`).
    pub fn render_with(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, Json>,
    ) -> Result<String, TemplateError> {
        let name = if tools.is_some() && self.has_tool_use {
            TOOL_USE
        } else {
            DEFAULT
        };
        let template = self
            .env
            .get_template(name)
            .map_err(|e| TemplateError::Render(format!("{e:#}")))?;
        let mut context = self.special_tokens.clone();
        context.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        context.insert("messages".into(), Json::Array(messages.to_vec()));
        context.insert(
            "tools".into(),
            tools.map_or(Json::Null, |t| Json::Array(t.to_vec())),
        );
        context.insert("documents".into(), Json::Null);
        context.insert(
            "add_generation_prompt".into(),
            Json::Bool(add_generation_prompt),
        );
        template
            .render(Value::from_serialize(JsonContext(&context)))
            .map_err(|e| {
                let detail = e.detail().unwrap_or_default();
                match detail.strip_prefix(RAISED) {
                    Some(message) => TemplateError::Rejected(message.to_string()),
                    None => TemplateError::Render(format!("{e:#}")),
                }
            })
    }
}

struct JsonContext<'a>(&'a serde_json::Map<String, Json>);

impl Serialize for JsonContext<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(src: &str) -> ChatTemplate {
        ChatTemplate::from_tokenizer_config(&json!({"chat_template": src, "bos_token": "<s>"}))
            .expect("template")
    }

    #[test]
    fn raise_exception_becomes_a_rejection() {
        let t = template("{{ raise_exception('no system role') }}");
        match t.render(&[], None, false) {
            Err(TemplateError::Rejected(m)) => assert_eq!(m, "no system role"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = template("{{ x | tojson }}|{{ x | tojson(indent=2) }}");
        let out = t
            .render_with(
                &[],
                None,
                false,
                json!({"x": {"b": [1, "é"], "a": {}}}).as_object().unwrap(),
            )
            .unwrap();
        assert_eq!(
            out,
            "{\"b\": [1, \"é\"], \"a\": {}}|{\n  \"b\": [\n    1,\n    \"é\"\n  ],\n  \"a\": {}\n}"
        );
    }

    #[test]
    fn list_templates_pick_tool_use_when_tools_are_given() {
        let config = json!({"chat_template": [
            {"name": "default", "template": "plain"},
            {"name": "tool_use", "template": "tools={{ tools | length }}"},
        ]});
        let t = ChatTemplate::from_tokenizer_config(&config).unwrap();
        assert_eq!(t.render(&[], None, false).unwrap(), "plain");
        assert_eq!(t.render(&[], Some(&[json!({})]), false).unwrap(), "tools=1");
    }

    #[test]
    fn missing_and_broken_templates_are_errors() {
        assert!(matches!(
            ChatTemplate::from_tokenizer_config(&json!({})),
            Err(TemplateError::Missing)
        ));
        assert!(matches!(
            ChatTemplate::from_tokenizer_config(&json!({"chat_template": "{% if %}"})),
            Err(TemplateError::Syntax(_))
        ));
    }

    #[test]
    fn bos_token_and_python_methods_are_available() {
        let t = template("{{ bos_token }}{{ messages[0]['content'].strip().upper() }}");
        let out = t
            .render(&[json!({"role": "user", "content": "  hi "})], None, false)
            .unwrap();
        assert_eq!(out, "<s>HI");
    }
}
