//! Turns a model's text back into OpenAI `tool_calls`. Two output conventions are understood:
//! Qwen/Hermes (`<tool_call>{"name":..,"arguments":{..}}</tool_call>`, one or several, possibly
//! after prose) and Llama 3 (the whole message is `{"name":..,"parameters":{..}}`, optionally
//! after `<|python_tag|>`). The same streamer serves streamed and non-streamed responses, so
//! both always agree.

use serde_json::Value;

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

/// A parsed call: `arguments` is a JSON object serialized as a string.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedToolCall {
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Call(ParsedToolCall),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing but whitespace yet: the first characters decide.
    Undecided,
    /// Prose; a `<tool_call>` may still start later.
    Content,
    /// Inside or between Hermes blocks.
    Hermes,
    /// A Llama-style JSON call: only the complete message can be judged.
    WholeJson,
}

/// Incremental tool-call detector: text goes in as it is generated; text that may belong to a
/// call is held back until it either parses (→ [`Piece::Call`]) or cannot (→ [`Piece::Text`]).
#[derive(Debug)]
pub struct ToolCallStreamer {
    mode: Mode,
    pending: String,
    /// The request's tool names: a "call" naming anything else is the model's text (e.g. a
    /// JSON answer with a "name" key). Empty: any name is accepted.
    known: Vec<String>,
}

impl Default for ToolCallStreamer {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolCallStreamer {
    pub fn new() -> Self {
        Self {
            mode: Mode::Undecided,
            pending: String::new(),
            known: Vec::new(),
        }
    }

    /// Only calls to these tools are calls.
    pub fn with_tools(mut self, names: Vec<String>) -> Self {
        self.known = names;
        self
    }

    fn known_call(&self, call: Option<ParsedToolCall>) -> Option<ParsedToolCall> {
        call.filter(|c| self.known.is_empty() || self.known.contains(&c.name))
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        self.advance(&mut out, false);
        out
    }

    /// The generation ended: everything still held back is resolved.
    pub fn finish(&mut self) -> Vec<Piece> {
        self.finish_cut(false)
    }

    /// As [`Self::finish`]; `cut` says the token budget ended the generation, so an unfinished
    /// `<tool_call>` block at the end is a call that never completed: markup, dropped rather
    /// than shown as content.
    pub fn finish_cut(&mut self, cut: bool) -> Vec<Piece> {
        let tail = self.pending.trim_start();
        let may_call = matches!(self.mode, Mode::Hermes | Mode::Undecided);
        if cut && may_call && !tail.is_empty() && HERMES_OPEN.starts_with(tail) {
            // Cut inside the opening tag of a call (`<tool`), the first or the next: markup,
            // not prose.
            self.pending.clear();
        }
        let mut out = Vec::new();
        self.advance(&mut out, true);
        let rest = std::mem::take(&mut self.pending);
        match self.mode {
            Mode::WholeJson => match parse_whole_json(&rest).filter(|calls| {
                calls
                    .iter()
                    .all(|call| self.known_call(Some(call.clone())).is_some())
            }) {
                Some(calls) => out.extend(calls.into_iter().map(Piece::Call)),
                None => push_text(&mut out, rest),
            },
            Mode::Hermes => {
                // A final block without its closing tag (the model stopped right after the JSON).
                let opened = rest.trim_start().strip_prefix(HERMES_OPEN);
                match self.known_call(opened.and_then(parse_call_json)) {
                    Some(call) => out.push(Piece::Call(call)),
                    None if cut && opened.is_some() => {}
                    None => push_text(&mut out, rest),
                }
            }
            Mode::Undecided | Mode::Content => push_text(&mut out, rest),
        }
        out
    }

    fn advance(&mut self, out: &mut Vec<Piece>, at_end: bool) {
        loop {
            match self.mode {
                Mode::Undecided => {
                    let trimmed = self.pending.trim_start();
                    if trimmed.is_empty() {
                        return;
                    }
                    if trimmed.starts_with(HERMES_OPEN) {
                        self.mode = Mode::Hermes;
                    } else if trimmed.starts_with(PYTHON_TAG)
                        || trimmed.starts_with('{')
                        || trimmed.starts_with('[')
                    {
                        self.mode = Mode::WholeJson;
                        return;
                    } else if !at_end
                        && (HERMES_OPEN.starts_with(trimmed) || PYTHON_TAG.starts_with(trimmed))
                    {
                        return;
                    } else {
                        self.mode = Mode::Content;
                    }
                }
                Mode::Content => {
                    if let Some(at) = self.pending.find(HERMES_OPEN) {
                        let before: String = self.pending.drain(..at).collect();
                        push_text(out, before);
                        self.mode = Mode::Hermes;
                        continue;
                    }
                    // Hold back a tail that could be the start of `<tool_call>`.
                    let keep = if at_end {
                        0
                    } else {
                        partial_suffix_len(&self.pending, HERMES_OPEN)
                    };
                    let emit = self.pending.len() - keep;
                    let text: String = self.pending.drain(..emit).collect();
                    push_text(out, text);
                    return;
                }
                Mode::Hermes => {
                    let trimmed_start = self.pending.len() - self.pending.trim_start().len();
                    let body = &self.pending[trimmed_start..];
                    if body.is_empty() {
                        return;
                    }
                    if !body.starts_with(HERMES_OPEN) {
                        if !at_end && HERMES_OPEN.starts_with(body) {
                            return;
                        }
                        // Prose after the calls: back to content.
                        self.mode = Mode::Content;
                        continue;
                    }
                    let Some(close) = body.find(HERMES_CLOSE) else {
                        return;
                    };
                    let inner = &body[HERMES_OPEN.len()..close];
                    let block_end = trimmed_start + close + HERMES_CLOSE.len();
                    match self.known_call(parse_call_json(inner)) {
                        Some(call) => {
                            out.push(Piece::Call(call));
                            self.pending.drain(..block_end);
                        }
                        None => {
                            let block: String = self.pending.drain(..block_end).collect();
                            push_text(out, block);
                        }
                    }
                }
                Mode::WholeJson => return,
            }
        }
    }
}

fn push_text(out: &mut Vec<Piece>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(Piece::Text(last)) = out.last_mut() {
        last.push_str(&text);
    } else {
        out.push(Piece::Text(text));
    }
}

/// Length of the longest proper prefix of `marker` that `text` ends with.
fn partial_suffix_len(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&len| text.ends_with(&marker[..len]))
        .unwrap_or(0)
}

/// `{"name": .., "arguments"|"parameters": {..}}` → a call. Arguments given as a string are
/// kept if they hold JSON.
fn call_from_value(value: &Value) -> Option<ParsedToolCall> {
    let object = value.as_object()?;
    let object = match object.get("function") {
        Some(Value::Object(inner)) if !object.contains_key("name") => inner,
        _ => object,
    };
    let name = object.get("name")?.as_str()?.trim();
    if name.is_empty() {
        return None;
    }
    let arguments = match object.get("arguments").or_else(|| object.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(text)) => {
            serde_json::from_str::<Value>(text).ok()?;
            text.clone()
        }
        Some(args @ Value::Object(_)) => args.to_string(),
        Some(_) => return None,
    };
    Some(ParsedToolCall {
        name: name.to_string(),
        arguments,
    })
}

fn parse_call_json(text: &str) -> Option<ParsedToolCall> {
    call_from_value(&serde_json::from_str(text.trim()).ok()?)
}

/// The whole message as Llama-3 JSON: one call object, an array of them, or several objects
/// separated by `;` (Llama 3.2's parallel form).
fn parse_whole_json(text: &str) -> Option<Vec<ParsedToolCall>> {
    let text = text.trim();
    let text = text.strip_prefix(PYTHON_TAG).unwrap_or(text).trim();
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return match value {
            Value::Array(items) if !items.is_empty() => items.iter().map(call_from_value).collect(),
            other => call_from_value(&other).map(|call| vec![call]),
        };
    }
    let calls: Option<Vec<_>> = text
        .split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(parse_call_json)
        .collect();
    calls.filter(|calls| calls.len() > 1)
}

/// The non-streaming view: prose (None when empty) and the calls, in order.
pub fn parse_tool_calls(text: &str) -> (Option<String>, Vec<ParsedToolCall>) {
    let mut streamer = ToolCallStreamer::new();
    let mut pieces = streamer.push(text);
    pieces.extend(streamer.finish());
    let mut content = String::new();
    let mut calls = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => content.push_str(&text),
            Piece::Call(call) => calls.push(call),
        }
    }
    let content = if calls.is_empty() {
        Some(content)
    } else {
        Some(content.trim().to_string()).filter(|text| !text.is_empty())
    };
    (content, calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Output formats as Qwen2.5/Qwen3 (Hermes template) and Llama 3.1/3.2 emit them for the
    // weather tool of their model cards.
    const QWEN_ONE: &str = "<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"San Francisco, CA\", \"unit\": \"celsius\"}}\n</tool_call>";
    const QWEN_TWO: &str = "<tool_call>\n{\"name\": \"get_current_temperature\", \"arguments\": {\"location\": \"San Francisco, CA, USA\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_temperature_date\", \"arguments\": {\"location\": \"San Francisco, CA, USA\", \"date\": \"2024-10-01\"}}\n</tool_call>";
    const QWEN3_THINK_THEN_CALL: &str = "I'll check the weather for you.\n\n<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Paris\"}}\n</tool_call>";
    const LLAMA_JSON: &str = "{\"name\": \"get_current_conditions\", \"parameters\": {\"location\": \"San Francisco, CA\", \"unit\": \"Fahrenheit\"}}";
    const LLAMA_PYTHON_TAG: &str = "<|python_tag|>{\"name\": \"brave_search\", \"parameters\": {\"query\": \"weather in Menlo Park\"}}";

    fn names(calls: &[ParsedToolCall]) -> Vec<&str> {
        calls.iter().map(|call| call.name.as_str()).collect()
    }

    fn args(call: &ParsedToolCall) -> Value {
        serde_json::from_str(&call.arguments).unwrap()
    }

    #[test]
    fn qwen_single_and_parallel_calls() {
        let (content, calls) = parse_tool_calls(QWEN_ONE);
        assert_eq!(content, None);
        assert_eq!(names(&calls), ["get_current_weather"]);
        assert_eq!(
            args(&calls[0]),
            serde_json::json!({"location": "San Francisco, CA", "unit": "celsius"})
        );
        let (content, calls) = parse_tool_calls(QWEN_TWO);
        assert_eq!(content, None);
        assert_eq!(
            names(&calls),
            ["get_current_temperature", "get_temperature_date"]
        );
        assert_eq!(args(&calls[1])["date"], "2024-10-01");
    }

    #[test]
    fn qwen_prose_before_a_call_is_content() {
        let (content, calls) = parse_tool_calls(QWEN3_THINK_THEN_CALL);
        assert_eq!(content.as_deref(), Some("I'll check the weather for you."));
        assert_eq!(names(&calls), ["get_current_weather"]);
    }

    #[test]
    fn llama_json_with_and_without_python_tag() {
        let (content, calls) = parse_tool_calls(LLAMA_JSON);
        assert_eq!(content, None);
        assert_eq!(names(&calls), ["get_current_conditions"]);
        assert_eq!(args(&calls[0])["unit"], "Fahrenheit");
        let (_, calls) = parse_tool_calls(LLAMA_PYTHON_TAG);
        assert_eq!(names(&calls), ["brave_search"]);
        let (_, calls) = parse_tool_calls(&format!("{LLAMA_JSON}; {LLAMA_JSON}"));
        assert_eq!(calls.len(), 2);
    }

    #[test]
    fn plain_text_and_broken_calls_stay_text() {
        for text in [
            "The weather is sunny.",
            "{\"answer\": 42}",
            "<tool_call>{not json}</tool_call>",
            "use <tool_call> tags",
            "  <tool",
        ] {
            let (content, calls) = parse_tool_calls(text);
            assert!(calls.is_empty(), "{text}");
            assert_eq!(content.as_deref(), Some(text), "{text}");
        }
    }

    #[test]
    fn unclosed_final_block_is_still_a_call() {
        let (_, calls) = parse_tool_calls("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n");
        assert_eq!(names(&calls), ["f"]);
        assert_eq!(calls[0].arguments, "{}");
    }

    /// Streaming char by char yields the same content and calls, and a call comes out as soon
    /// as its closing tag arrives, not at the end.
    #[test]
    fn streaming_matches_whole_text_and_emits_calls_early() {
        for text in [
            QWEN_ONE,
            QWEN_TWO,
            QWEN3_THINK_THEN_CALL,
            LLAMA_JSON,
            "Hi <tool_c there",
        ] {
            let mut streamer = ToolCallStreamer::new();
            let mut pieces = Vec::new();
            let mut first_call_at = None;
            for (i, ch) in text.char_indices() {
                let out = streamer.push(&ch.to_string());
                if first_call_at.is_none() && out.iter().any(|p| matches!(p, Piece::Call(_))) {
                    first_call_at = Some(i);
                }
                pieces.extend(out);
            }
            pieces.extend(streamer.finish());
            let streamed_calls: Vec<_> = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Call(call) => Some(call.clone()),
                    Piece::Text(_) => None,
                })
                .collect();
            let (_, calls) = parse_tool_calls(text);
            assert_eq!(streamed_calls, calls, "{text}");
            if text.starts_with(HERMES_OPEN) {
                let first_close = text.find(HERMES_CLOSE).unwrap() + HERMES_CLOSE.len() - 1;
                assert_eq!(first_call_at, Some(first_close), "{text}");
            }
        }
        let mut streamer = ToolCallStreamer::new();
        let mut text = String::new();
        for piece in "Hi <tool_c there"
            .chars()
            .flat_map(|c| streamer.push(&c.to_string()))
        {
            if let Piece::Text(t) = piece {
                text.push_str(&t);
            }
        }
        for piece in streamer.finish() {
            if let Piece::Text(t) = piece {
                text.push_str(&t);
            }
        }
        assert_eq!(text, "Hi <tool_c there");
    }

    #[test]
    fn prose_streams_without_waiting_for_the_end() {
        let mut streamer = ToolCallStreamer::new();
        assert_eq!(streamer.push("Hello"), vec![Piece::Text("Hello".into())]);
        assert_eq!(streamer.push(" wor<to"), vec![Piece::Text(" wor".into())]);
        assert_eq!(streamer.push("p>"), vec![Piece::Text("<top>".into())]);
    }

    #[test]
    fn only_known_tools_are_calls_and_a_cut_block_is_dropped() {
        // A JSON answer with a "name" key is not a call to a tool named by its value.
        let answer = r#"{"name": "Dave", "age": 30}"#;
        let mut streamer = ToolCallStreamer::new().with_tools(vec!["lookup_age".into()]);
        let mut pieces = streamer.push(answer);
        pieces.extend(streamer.finish());
        assert_eq!(pieces, vec![Piece::Text(answer.into())]);
        // A call cut by the token budget leaves no markup behind.
        let text =
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"na";
        let mut streamer = ToolCallStreamer::new().with_tools(vec!["f".into()]);
        let mut pieces = streamer.push(text);
        pieces.extend(streamer.finish_cut(true));
        assert_eq!(pieces.len(), 1, "{pieces:?}");
        assert!(matches!(&pieces[0], Piece::Call(call) if call.name == "f"));
        // ...also when the budget ends inside the next opening tag.
        let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n<tool";
        let mut streamer = ToolCallStreamer::new().with_tools(vec!["f".into()]);
        let mut pieces = streamer.push(text);
        pieces.extend(streamer.finish_cut(true));
        assert_eq!(pieces.len(), 1, "{pieces:?}");
        // ...or inside the first one (a 4-token budget: "<tool_call").
        let mut streamer = ToolCallStreamer::new().with_tools(vec!["f".into()]);
        let mut pieces = streamer.push("<tool_call");
        pieces.extend(streamer.finish_cut(true));
        assert!(pieces.is_empty(), "{pieces:?}");
        // Not cut: the text stays.
        let mut streamer = ToolCallStreamer::new().with_tools(vec!["f".into()]);
        let mut pieces = streamer.push("<tool");
        pieces.extend(streamer.finish_cut(false));
        assert_eq!(pieces, vec![Piece::Text("<tool".into())]);
    }
}
