//! The output of one response, built from the engine's deltas by one state machine for both the
//! streamed and the non-streamed path: output items (assistant messages and function calls) in
//! the order they were generated, and — when streaming — the typed events announcing them.
//! The streamed deltas therefore always reassemble into the non-streamed response.

use serde_json::{json, Value};

use crate::api::dto::{ToolCall, Usage};
use crate::api::generation::ChoiceDelta;

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Completed,
    /// Stopped by `max_output_tokens` (or the context window).
    Incomplete,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed => "failed",
        }
    }

    /// The event that carries the final response object.
    pub fn final_event(self) -> &'static str {
        match self {
            Status::Completed => "response.completed",
            Status::Incomplete => "response.incomplete",
            Status::Failed => "response.failed",
        }
    }
}

#[derive(Debug, Clone)]
enum Item {
    Message {
        id: String,
        text: String,
        status: &'static str,
    },
    Call {
        id: String,
        call: ToolCall,
    },
}

/// Text as it is shown: with tools offered, each message is trimmed (whitespace before and
/// after a tool call is markup, not prose), so whitespace is held back until more text follows.
#[derive(Debug, Default)]
struct TextPacer {
    trim: bool,
    started: bool,
    held: String,
}

impl TextPacer {
    fn push(&mut self, text: &str) -> String {
        if !self.trim {
            return text.to_string();
        }
        self.held.push_str(text);
        if !self.started {
            let rest = self.held.trim_start();
            if rest.is_empty() {
                self.held.clear();
                return String::new();
            }
            self.started = true;
            self.held = rest.to_string();
        }
        let end = self.held.trim_end().len();
        let tail = self.held.split_off(end);
        std::mem::replace(&mut self.held, tail)
    }

    /// A message ends: held whitespace is dropped.
    fn reset(&mut self) {
        self.started = false;
        self.held.clear();
    }
}

/// Output items plus, when `emit` is set, the events (without `sequence_number`) that build
/// them on the client.
#[derive(Debug)]
pub struct OutputBuilder {
    items: Vec<Item>,
    open_message: Option<usize>,
    pacer: TextPacer,
    emit: bool,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

impl OutputBuilder {
    /// `trim_text`: tools were offered (see [`TextPacer`]).
    pub fn new(trim_text: bool, emit: bool) -> Self {
        Self {
            items: Vec::new(),
            open_message: None,
            pacer: TextPacer {
                trim: trim_text,
                ..TextPacer::default()
            },
            emit,
        }
    }

    pub fn apply(&mut self, delta: ChoiceDelta) -> Vec<Value> {
        match delta {
            ChoiceDelta::Text { text, .. } => self.text(&text),
            ChoiceDelta::ToolCall { call, .. } => self.call(call),
        }
    }

    fn text(&mut self, text: &str) -> Vec<Value> {
        let shown = self.pacer.push(text);
        if shown.is_empty() {
            return Vec::new();
        }
        let mut events = Vec::new();
        let index = match self.open_message {
            Some(index) => index,
            None => self.open(&mut events),
        };
        let Item::Message { id, text, .. } = &mut self.items[index] else {
            unreachable!("open_message points at a message");
        };
        text.push_str(&shown);
        if self.emit {
            events.push(json!({
                "type": "response.output_text.delta",
                "item_id": id, "output_index": index, "content_index": 0,
                "delta": shown, "logprobs": [],
            }));
        }
        events
    }

    fn open(&mut self, events: &mut Vec<Value>) -> usize {
        let id = new_id("msg");
        let index = self.items.len();
        if self.emit {
            events.push(json!({
                "type": "response.output_item.added",
                "output_index": index,
                "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []},
            }));
            events.push(json!({
                "type": "response.content_part.added",
                "item_id": id, "output_index": index, "content_index": 0,
                "part": text_part(""),
            }));
        }
        self.items.push(Item::Message {
            id,
            text: String::new(),
            status: "in_progress",
        });
        self.open_message = Some(index);
        index
    }

    fn close(&mut self, status: &'static str, events: &mut Vec<Value>) {
        self.pacer.reset();
        let Some(index) = self.open_message.take() else {
            return;
        };
        let Item::Message {
            id,
            text,
            status: s,
        } = &mut self.items[index]
        else {
            unreachable!("open_message points at a message");
        };
        *s = status;
        if self.emit {
            events.push(json!({
                "type": "response.output_text.done",
                "item_id": id, "output_index": index, "content_index": 0,
                "text": text, "logprobs": [],
            }));
            events.push(json!({
                "type": "response.content_part.done",
                "item_id": id, "output_index": index, "content_index": 0,
                "part": text_part(text),
            }));
            events.push(json!({
                "type": "response.output_item.done",
                "output_index": index,
                "item": item_json(&self.items[index]),
            }));
        }
    }

    fn call(&mut self, call: ToolCall) -> Vec<Value> {
        let mut events = Vec::new();
        self.close("completed", &mut events);
        let index = self.items.len();
        let item = Item::Call {
            id: new_id("fc"),
            call,
        };
        if self.emit {
            let Item::Call { id, call } = &item else {
                unreachable!()
            };
            let mut added = item_json(&item);
            added["status"] = json!("in_progress");
            added["arguments"] = json!("");
            events.push(
                json!({"type": "response.output_item.added", "output_index": index, "item": added}),
            );
            events.push(json!({
                "type": "response.function_call_arguments.delta",
                "item_id": id, "output_index": index, "delta": call.function.arguments,
            }));
            events.push(json!({
                "type": "response.function_call_arguments.done",
                "item_id": id, "output_index": index,
                "name": call.function.name, "arguments": call.function.arguments,
            }));
            events.push(json!({"type": "response.output_item.done", "output_index": index, "item": item_json(&item)}));
        }
        self.items.push(item);
        events
    }

    /// Ends the output: the open message is closed (a response with no output at all gets one
    /// empty message, as OpenAI's does).
    pub fn finish(&mut self, status: Status) -> Vec<Value> {
        let mut events = Vec::new();
        if self.items.is_empty() {
            self.open(&mut events);
        }
        let message_status = match status {
            Status::Completed => "completed",
            Status::Incomplete | Status::Failed => "incomplete",
        };
        self.close(message_status, &mut events);
        events
    }

    /// The output items in order, as the response object lists them.
    pub fn items(&self) -> Vec<Value> {
        self.items.iter().map(item_json).collect()
    }
}

fn item_json(item: &Item) -> Value {
    match item {
        Item::Message { id, text, status } => json!({
            "id": id, "type": "message", "status": status, "role": "assistant",
            "content": [text_part(text)],
        }),
        Item::Call { id, call } => json!({
            "id": id, "type": "function_call", "status": "completed",
            "arguments": call.function.arguments, "call_id": call.id, "name": call.function.name,
        }),
    }
}

/// What a response object echoes of its request.
#[derive(Debug, Clone)]
pub struct Echo {
    pub id: String,
    pub created_at: i64,
    pub model: String,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub safety_identifier: Option<String>,
    pub store: bool,
    pub temperature: f32,
    pub top_p: f32,
    pub text: Value,
    pub tool_choice: Value,
    pub tools: Vec<Value>,
    pub truncation: String,
    pub user: Option<String>,
    pub metadata: Value,
}

impl Echo {
    /// The response object in OpenAI's shape.
    pub fn object(
        &self,
        status: Status,
        output: Vec<Value>,
        usage: Option<Usage>,
        in_progress: bool,
    ) -> Value {
        let (status_name, error, incomplete) = match (in_progress, status) {
            (true, _) => ("in_progress", Value::Null, Value::Null),
            (false, Status::Completed) => ("completed", Value::Null, Value::Null),
            (false, Status::Incomplete) => (
                "incomplete",
                Value::Null,
                json!({"reason": "max_output_tokens"}),
            ),
            (false, Status::Failed) => (
                "failed",
                json!({"code": "server_error", "message": "The server had an error while processing your request."}),
                Value::Null,
            ),
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status_name,
            "background": false,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": null,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "prompt_cache_key": self.prompt_cache_key,
            "reasoning": {"effort": null, "summary": null},
            "safety_identifier": self.safety_identifier,
            "service_tier": "default",
            "store": self.store,
            "temperature": self.temperature,
            "text": self.text,
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_logprobs": 0,
            "top_p": self.top_p,
            "truncation": self.truncation,
            "usage": usage.map(usage_json),
            "user": self.user,
            "metadata": self.metadata,
        })
    }
}

pub fn usage_json(usage: Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens()},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::dto::FunctionCall;

    fn text(s: &str) -> ChoiceDelta {
        ChoiceDelta::Text {
            text: s.into(),
            tokens: Vec::new(),
        }
    }

    fn call(name: &str) -> ChoiceDelta {
        ChoiceDelta::ToolCall {
            position: 0,
            call: ToolCall {
                id: format!("call_{name}"),
                kind: "function",
                function: FunctionCall {
                    name: name.into(),
                    arguments: "{}".into(),
                },
            },
        }
    }

    /// The text the deltas of `events` spell, per output index.
    fn replay(events: &[Value]) -> Vec<String> {
        let mut texts = Vec::new();
        for event in events {
            if event["type"] == "response.output_text.delta" {
                let i = event["output_index"].as_u64().unwrap() as usize;
                texts.resize(texts.len().max(i + 1), String::new());
                texts[i].push_str(event["delta"].as_str().unwrap());
            }
        }
        texts
    }

    #[test]
    fn trimmed_messages_around_calls_reassemble() {
        let mut builder = OutputBuilder::new(true, true);
        let mut events = Vec::new();
        for delta in [
            text("\n "),
            text("Let me"),
            text(" look. "),
            text("\n"),
            call("f"),
            text("\n"),
            call("g"),
            text(" done "),
            text(" "),
        ] {
            events.extend(builder.apply(delta));
        }
        events.extend(builder.finish(Status::Completed));
        let items = builder.items();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0]["content"][0]["text"], "Let me look.");
        assert_eq!(items[1]["name"], "f");
        assert_eq!(items[2]["name"], "g");
        assert_eq!(items[3]["content"][0]["text"], "done");
        let texts = replay(&events);
        assert_eq!(texts[0], "Let me look.");
        assert_eq!(texts[3], "done");
        let done: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "response.output_item.done")
            .map(|e| &e["item"])
            .collect();
        assert_eq!(done, items.iter().collect::<Vec<_>>());
    }

    #[test]
    fn untrimmed_text_passes_through_and_empty_output_gets_a_message() {
        let mut builder = OutputBuilder::new(false, false);
        assert!(builder.apply(text(" hi ")).is_empty());
        builder.finish(Status::Incomplete);
        assert_eq!(builder.items()[0]["content"][0]["text"], " hi ");
        assert_eq!(builder.items()[0]["status"], "incomplete");
        let mut empty = OutputBuilder::new(true, true);
        let events = empty.finish(Status::Completed);
        assert_eq!(empty.items()[0]["content"][0]["text"], "");
        assert_eq!(events.len(), 5);
    }
}
