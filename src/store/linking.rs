//! How a turn finds its session and its parent (the earlier turn whose reply its request
//! continues), the same on both backends and on the Postgres batch path.
//!
//! 1. A session id the client named (see [`LinkMethod`] for the hints and their order) picks
//!    the session; the parent is the content match below, else, for ids that name a
//!    conversation, the session's latest turn.
//! 2. Otherwise the request is matched by content against earlier turns of the same API key and
//!    the same `user` (none matches none), newest first, in open sessions, strongest first:
//!    - `prefix`: the request's history up to its last assistant message is exactly an earlier
//!      request plus its reply (canonical form, see `canonical`);
//!    - `history`: the same without system/developer messages, and cut after the first message
//!      of the final run of user/tool messages on both sides, so a changed system prompt (a
//!      `Current date:` line, injected notes, a compaction summary there) and context a client
//!      appends to a request but never replays (OpenClaw's) still link;
//!    - `reply`: the last exchange — the last non-system message before the request's last
//!      assistant message, and that message — is an earlier request's last message and its
//!      reply, so a compaction that rewrote older history but kept the last exchange links.
//! 3. Nothing matched: a new session.
//!
//! Turns that are not real exchanges are stored as `side` with a [`SideReason`]: never judged
//! or trained on, but linked like any turn, so the next real turn still finds its parent.

use serde_json::Value;

use super::canonical::{content_text, hash_messages, split_trailing_replies};
use super::capture::{CapturedTurn, LinkMethod, SideReason, TurnType};

/// A reply cut at `length` with fewer tokens than this is a fragment, not an answer; a probe
/// is sent with a budget under it. 16 is the smallest default budget of any OpenAI endpoint
/// (legacy completions), so a default-budget completion is never taken for a cut fragment.
pub const TINY_TOKENS: usize = 16;

/// What a health probe says: one word, case and punctuation ignored.
const PROBE_WORDS: &[&str] = &[
    "ping",
    "pong",
    "hi",
    "hello",
    "hey",
    "test",
    "testing",
    "health",
    "healthcheck",
    "status",
    "ok",
    "alive",
];

/// The content links, strongest first, with the `turns` column holding what each looks up.
pub const CONTENT_LINKS: [(LinkMethod, &str); 3] = [
    (LinkMethod::Prefix, "continuation_hash"),
    (LinkMethod::History, "history_hash"),
    (LinkMethod::Reply, "reply_hash"),
];

/// Everything linking needs to know about one captured turn.
#[derive(Debug, Clone)]
pub struct Linking<'a> {
    /// API key id ('' with auth off).
    pub key: &'a str,
    /// The request's `user` ('' when none).
    pub user: &'a str,
    /// Hashes this request looks up, in [`CONTENT_LINKS`] order; None when its history does
    /// not end with an assistant message (it continues nothing).
    pub lookups: [Option<String>; 3],
    /// Hashes this turn offers its successors, in [`CONTENT_LINKS`] order.
    pub offers: [String; 3],
    /// The session id the client named, and which hint named it.
    pub named: Option<(&'a str, LinkMethod)>,
    pub side: Option<SideReason>,
}

impl<'a> Linking<'a> {
    pub fn of(turn: &'a CapturedTurn) -> Self {
        let messages = turn.messages.as_array().map_or(&[][..], Vec::as_slice);
        let first = turn.choices.first();
        let response = (
            first.map_or("", |c| c.text.as_str()),
            first.and_then(|c| c.tool_calls.as_ref()),
        );
        Linking {
            key: turn.api_key_id.as_deref().unwrap_or(""),
            user: turn.user.as_deref().unwrap_or(""),
            lookups: lookups(messages),
            offers: offers(messages, response),
            named: turn
                .session_id
                .as_deref()
                .map(|name| (name, turn.session_source.unwrap_or(LinkMethod::Header))),
            side: side_reason(turn),
        }
    }

    /// `main` or `side`, as stored.
    pub fn turn_type(&self) -> &'static str {
        if self.side.is_some() {
            "side"
        } else {
            "main"
        }
    }

    /// The stored `end_user` (NULL when the request had none).
    pub fn end_user(&self) -> Option<&'a str> {
        (!self.user.is_empty()).then_some(self.user)
    }

    pub fn prefix_hash(&self) -> Option<&str> {
        self.lookups[0].as_deref()
    }

    pub fn continuation_hash(&self) -> &str {
        &self.offers[0]
    }

    /// Whether the request's trailing user/tool messages are its parent's next state (and a
    /// 👍 there is feedback on the parent).
    pub fn records_next_state(&self) -> bool {
        self.side.is_none_or(SideReason::continues_parent)
    }

    /// How the turn was linked, given the content link that found its parent (if any).
    pub fn method(&self, content: Option<LinkMethod>) -> LinkMethod {
        match self.named {
            Some((_, source)) => source,
            None => content.unwrap_or(LinkMethod::New),
        }
    }
}

fn role_of(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or("")
}

fn without_system(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .filter(|m| !matches!(role_of(m), "system" | "developer"))
        .cloned()
        .collect()
}

/// Where the run of user/tool messages at the end of `messages` starts (its length when
/// there is none).
fn last_run_start(messages: &[Value]) -> usize {
    messages
        .iter()
        .rposition(|m| !matches!(role_of(m), "user" | "tool" | "function"))
        .map_or(0, |i| i + 1)
}

/// `messages` up to the first message of its final run of user/tool messages. The history
/// link compares conversations cut there on both sides, because clients append context
/// to a request that they do not replay: OpenClaw ends every request with an internal-context
/// user message, so request N is `[sys, u1, ctx]` and request N+1 `[sys, u1, a1, u2, ctx']`.
fn through_first_of_last_run(messages: &[Value]) -> &[Value] {
    let start = last_run_start(messages);
    &messages[..(start + 1).min(messages.len())]
}

/// Prefix, history and reply hashes of the history a request continues.
fn lookups(messages: &[Value]) -> [Option<String>; 3] {
    let (history, _) = split_trailing_replies(messages);
    let Some((reply, before)) = history.split_last() else {
        return [None, None, None];
    };
    if role_of(reply) != "assistant" {
        return [None, None, None];
    }
    let before = without_system(before);
    let mut conversation = through_first_of_last_run(&before).to_vec();
    conversation.push(reply.clone());
    let mut exchange = before[before.len().saturating_sub(1)..].to_vec();
    exchange.push(reply.clone());
    [
        Some(hash_messages(history, None)),
        Some(hash_messages(&conversation, None)),
        Some(hash_messages(&exchange, None)),
    ]
}

/// Continuation, history and reply hashes of a request followed by its response.
fn offers(messages: &[Value], response: (&str, Option<&Value>)) -> [String; 3] {
    let conversation = without_system(messages);
    let last = &conversation[conversation.len().saturating_sub(1)..];
    [
        hash_messages(messages, Some(response)),
        hash_messages(through_first_of_last_run(&conversation), Some(response)),
        hash_messages(last, Some(response)),
    ]
}

/// Why a turn is not a real exchange, if it is not.
pub fn side_reason(turn: &CapturedTurn) -> Option<SideReason> {
    if turn.turn_type == TurnType::Side {
        return Some(SideReason::Client);
    }
    let budget = turn.sampling.get("max_tokens").and_then(Value::as_u64);
    let tiny_budget = budget.is_some_and(|b| b < TINY_TOKENS as u64);
    let messages = turn.messages.as_array().map_or(&[][..], Vec::as_slice);
    if tiny_budget && messages.last().is_some_and(is_probe) {
        return Some(SideReason::Probe);
    }
    let first = turn.choices.first()?;
    (first.finish_reason == "length" && first.token_ids.len() < TINY_TOKENS)
        .then_some(SideReason::LengthCut)
}

fn is_probe(message: &Value) -> bool {
    if role_of(message) != "user" {
        return false;
    }
    let text = content_text(message.get("content").unwrap_or(&Value::Null));
    let word = text
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    PROBE_WORDS.contains(&word.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::capture::CapturedChoice;
    use serde_json::json;

    fn turn(
        messages: Value,
        reply: &str,
        max_tokens: u64,
        finish: &str,
        tokens: usize,
    ) -> CapturedTurn {
        CapturedTurn {
            response_id: "r".into(),
            session_id: None,
            session_source: None,
            user: None,
            session_done: false,
            turn_type: TurnType::Main,
            api_key_id: None,
            model: "m".into(),
            endpoint: "chat".into(),
            messages,
            tools: None,
            prompt_token_ids: vec![],
            choices: vec![CapturedChoice {
                text: reply.into(),
                token_ids: vec![1; tokens],
                logprobs: vec![0.0; tokens],
                finish_reason: finish.into(),
                tool_calls: None,
            }],
            sampling: json!({"max_tokens": max_tokens}),
            policy_version: 0,
            prompt_tokens: 0,
            completion_tokens: tokens,
            latency_ms: 0,
            time_to_first_token_ms: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_changed_system_prompt_keeps_the_history_and_reply_links() {
        let first = turn(
            json!([{"role": "system", "content": "Current date: Monday"},
                   {"role": "user", "content": "q1"}]),
            "a1",
            256,
            "stop",
            3,
        );
        let next = json!([{"role": "system", "content": "Current date: Tuesday"},
            {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}]);
        let offered = Linking::of(&first).offers;
        let wanted = lookups(next.as_array().unwrap());
        assert_ne!(wanted[0].as_deref(), Some(offered[0].as_str()));
        assert_eq!(wanted[1].as_deref(), Some(offered[1].as_str()));
        assert_eq!(wanted[2].as_deref(), Some(offered[2].as_str()));
        // Compaction: older history summarised, the last exchange kept.
        let compacted = json!([{"role": "system", "content": "s"},
            {"role": "user", "content": "summary of q0..."},
            {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}]);
        let wanted = lookups(compacted.as_array().unwrap());
        assert_ne!(wanted[1].as_deref(), Some(offered[1].as_str()));
        assert_eq!(wanted[2].as_deref(), Some(offered[2].as_str()));
        // A first message continues nothing.
        assert_eq!(
            lookups(&[json!({"role": "user", "content": "q"})]),
            [None, None, None]
        );
    }

    #[test]
    fn tiny_turns_are_side_turns() {
        let user = json!([{"role": "user", "content": "tell me a story"}]);
        let cut = turn(user.clone(), "Once", 1, "length", 1);
        assert_eq!(side_reason(&cut), Some(SideReason::LengthCut));
        assert!(Linking::of(&cut).records_next_state());
        assert_eq!(Linking::of(&cut).turn_type(), "side");
        // A budget of 16 (legacy completions' default) cut at length is a normal completion.
        assert_eq!(
            side_reason(&turn(user.clone(), "x", 16, "length", 16)),
            None
        );
        // A short complete answer on a small budget is a real exchange.
        assert_eq!(side_reason(&turn(user.clone(), "Yes.", 4, "stop", 2)), None);
        let probe = turn(
            json!([{"role": "user", "content": " Ping!"}]),
            "P",
            1,
            "stop",
            1,
        );
        assert_eq!(side_reason(&probe), Some(SideReason::Probe));
        assert!(!Linking::of(&probe).records_next_state());
        // A greeting with a normal budget is the start of a conversation.
        let hello = turn(
            json!([{"role": "user", "content": "hi"}]),
            "Hello!",
            256,
            "stop",
            2,
        );
        assert_eq!(side_reason(&hello), None);
        let mut side = turn(user, "ok", 256, "stop", 1);
        side.turn_type = TurnType::Side;
        assert_eq!(side_reason(&side), Some(SideReason::Client));
    }

    #[test]
    fn named_sessions_report_their_hint() {
        let mut named = turn(
            json!([{"role": "user", "content": "q"}]),
            "a",
            64,
            "stop",
            1,
        );
        assert_eq!(Linking::of(&named).method(None), LinkMethod::New);
        assert_eq!(
            Linking::of(&named).method(Some(LinkMethod::History)),
            LinkMethod::History
        );
        named.session_id = Some("s".into());
        assert_eq!(Linking::of(&named).method(None), LinkMethod::Header);
        named.session_source = Some(LinkMethod::PromptCacheKey);
        let linking = Linking::of(&named);
        assert_eq!(
            linking.method(Some(LinkMethod::Prefix)),
            LinkMethod::PromptCacheKey
        );
        assert!(!LinkMethod::PromptCacheKey.follows_latest());
        assert!(LinkMethod::AffinityHeader.follows_latest());
    }

    #[test]
    fn context_a_client_appends_and_never_replays_does_not_break_links() {
        // OpenClaw: every request ends with an internal-context message the next one drops.
        let first = turn(
            json!([{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
                   {"role": "user", "content": "<<<CONTEXT 1>>>"}]),
            "a1",
            256,
            "stop",
            3,
        );
        let next = json!([{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
            {"role": "user", "content": "<<<CONTEXT 2>>>"}]);
        let offered = Linking::of(&first).offers;
        let wanted = lookups(next.as_array().unwrap());
        assert_ne!(
            wanted[0].as_deref(),
            Some(offered[0].as_str()),
            "not an exact prefix"
        );
        assert_eq!(wanted[1].as_deref(), Some(offered[1].as_str()), "history");
        // Two user messages in a row, both replayed, still link by history and reply.
        let pair = turn(
            json!([{"role": "user", "content": "q1a"}, {"role": "user", "content": "q1b"}]),
            "a1",
            256,
            "stop",
            3,
        );
        let next = json!([{"role": "user", "content": "q1a"}, {"role": "user", "content": "q1b"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]);
        let offered = Linking::of(&pair).offers;
        let wanted = lookups(next.as_array().unwrap());
        assert_eq!(wanted[0].as_deref(), Some(offered[0].as_str()), "prefix");
        assert_eq!(wanted[1].as_deref(), Some(offered[1].as_str()), "history");
        assert_eq!(wanted[2].as_deref(), Some(offered[2].as_str()), "reply");
        // A different first question does not link.
        let other = json!([{"role": "user", "content": "other"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}]);
        let wanted = lookups(other.as_array().unwrap());
        assert!(wanted
            .iter()
            .zip(&offered)
            .all(|(w, o)| w.as_deref() != Some(o.as_str())));
    }
}
