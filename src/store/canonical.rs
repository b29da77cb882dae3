//! Canonical form of chat messages, used to link a stateless client's resent history to the
//! turn that produced it: role + text content + tool calls, whitespace-normalised, hashed.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// What a message contributes to the hash; ids (tool_call ids, names of parts) are left out
/// because clients do not reliably echo them.
fn canonical_message(role: &str, content: &Value, tool_calls: Option<&Value>) -> Value {
    let calls: Vec<Value> = tool_calls
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .map(|call| {
                    let function = call.get("function").unwrap_or(call);
                    let name = function.get("name").and_then(Value::as_str).unwrap_or("");
                    let arguments = canonical_arguments(function.get("arguments"));
                    Value::Array(vec![Value::from(name), Value::from(arguments)])
                })
                .collect()
        })
        .unwrap_or_default();
    Value::Array(vec![
        Value::from(role),
        Value::from(normalize_whitespace(&content_text(content))),
        Value::Array(calls),
    ])
}

/// Arguments are a JSON string; re-serialising parsed JSON with sorted keys removes
/// formatting and key-order differences (serde_json keeps insertion order in this crate).
fn canonical_arguments(arguments: Option<&Value>) -> String {
    match arguments {
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(parsed) => sorted_keys(&parsed).to_string(),
            Err(_) => normalize_whitespace(s),
        },
        Some(Value::Null) | None => String::new(),
        Some(other) => sorted_keys(other).to_string(),
    }
}

/// A copy of `value` whose objects list their keys in sorted order, at every depth.
fn sorted_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted_keys).collect()),
        other => other.clone(),
    }
}

/// The text of a message's content: a string, or the text parts of an array of parts
/// (non-text parts count by their type so an image turn differs from a text one).
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") | None => part
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                Some(other) => format!("[{other}]"),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => sorted_keys(other).to_string(),
    }
}

pub fn normalize_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn role_of(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or("")
}

/// Hashes a message list, optionally followed by an assistant response.
pub fn hash_messages(messages: &[Value], response: Option<(&str, Option<&Value>)>) -> String {
    let mut canonical: Vec<Value> = messages
        .iter()
        .map(|m| {
            canonical_message(
                role_of(m),
                m.get("content").unwrap_or(&Value::Null),
                m.get("tool_calls"),
            )
        })
        .collect();
    if let Some((text, tool_calls)) = response {
        canonical.push(canonical_message(
            "assistant",
            &Value::from(text),
            tool_calls,
        ));
    }
    let mut hasher = Sha256::new();
    hasher.update(Value::Array(canonical).to_string().as_bytes());
    hex::encode(hasher.finalize())
}

/// Splits a request's messages into the history it continues and the trailing block of
/// user/tool messages that answer the last assistant message (the previous turn's next state).
pub fn split_trailing_replies(messages: &[Value]) -> (&[Value], &[Value]) {
    let start = messages
        .iter()
        .rposition(|m| !matches!(role_of(m), "user" | "tool"))
        .map_or(0, |i| i + 1);
    messages.split_at(start)
}

/// The hash to look up for a request: only when its history ends with an assistant message.
pub fn link_hash(messages: &[Value]) -> Option<String> {
    let (history, _) = split_trailing_replies(messages);
    match history.last() {
        Some(last) if role_of(last) == "assistant" => Some(hash_messages(history, None)),
        _ => None,
    }
}

/// `👍` / `/good` → up, `👎` / `/bad` → down: a chat message that is only a rating.
pub fn chat_rating(text: &str) -> Option<&'static str> {
    let trimmed: String = text
        .trim()
        .chars()
        .filter(|c| !matches!(c, '\u{FE0F}' | '\u{200D}') && !c.is_whitespace())
        .collect();
    let skin_tone = |c: char| ('\u{1F3FB}'..='\u{1F3FF}').contains(&c);
    let base: String = trimmed.chars().filter(|c| !skin_tone(*c)).collect();
    match base.to_lowercase().as_str() {
        "👍" | "/good" => Some("up"),
        "👎" | "/bad" => Some("down"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whitespace_and_parts_do_not_change_the_hash() {
        let a = [json!({"role":"user","content":"hello   world\n"})];
        let b = [json!({"role":"user","content":[{"type":"text","text":" hello world"}]})];
        assert_eq!(hash_messages(&a, None), hash_messages(&b, None));
        let c = [json!({"role":"user","content":"hello worlds"})];
        assert_ne!(hash_messages(&a, None), hash_messages(&c, None));
    }

    #[test]
    fn response_is_hashed_like_an_assistant_message() {
        let calls = json!([{"id":"call_1","type":"function",
            "function":{"name":"f","arguments":"{\"b\": 1, \"a\": 2}"}}]);
        let resent = json!([{"id":"other","type":"function",
            "function":{"name":"f","arguments":"{\"a\":2,\"b\":1}"}}]);
        let user = json!({"role":"user","content":"hi"});
        let with_response = hash_messages(std::slice::from_ref(&user), Some(("ok", Some(&calls))));
        let history = [
            user,
            json!({"role":"assistant","content":"ok","tool_calls":resent}),
        ];
        assert_eq!(with_response, hash_messages(&history, None));
    }

    #[test]
    fn trailing_replies_and_link_hash() {
        let msgs = [
            json!({"role":"system","content":"s"}),
            json!({"role":"user","content":"q"}),
            json!({"role":"assistant","content":"a"}),
            json!({"role":"tool","content":"t"}),
            json!({"role":"user","content":"u"}),
        ];
        let (history, replies) = split_trailing_replies(&msgs);
        assert_eq!((history.len(), replies.len()), (3, 2));
        assert!(link_hash(&msgs).is_some());
        assert!(link_hash(&msgs[..2]).is_none());
    }

    #[test]
    fn chat_ratings() {
        assert_eq!(chat_rating(" 👍 "), Some("up"));
        assert_eq!(chat_rating("👍🏽"), Some("up"));
        assert_eq!(chat_rating("/BAD\n"), Some("down"));
        assert_eq!(chat_rating("👎 but why"), None);
        assert_eq!(chat_rating("good"), None);
    }
}
