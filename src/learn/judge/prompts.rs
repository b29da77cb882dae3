//! The judge prompts: the evaluative prompt (did the next state show progress or a correction?)
//! and the hint prompt (does the next state reveal how the response should have been?).

use serde_json::{json, Value};

use super::votes::{HINT_END, HINT_START};
use super::{message_text, JudgeInput};

/// Conversation messages shown before the judged response (the latest ones).
const CONTEXT_MESSAGES: usize = 6;
const MAX_MESSAGE_CHARS: usize = 1500;
const MAX_RESPONSE_CHARS: usize = 3000;
const MAX_NEXT_CHARS: usize = 2000;

const SYSTEM: &str = "You evaluate an AI assistant's work. You judge a single assistant response \
by what happened right after it, and you answer only from the evidence you are shown.";

const EVALUATE: &str = "Below are the end of a conversation between a user and an AI assistant, \
the assistant's latest response, and the next state: what came back right after that response. \
The next state is the user's next message, or the result of a tool (a tool result exists only \
because the assistant chose to call that tool with those arguments).

Classify what the next state says about the response:
- progress (1): the user moves on to something new, thanks or confirms, or the tool call worked \
and its result moves the task forward;
- correction or redo (-1): the user corrects or complains, repeats or rephrases the request, asks \
for a redo or a change, or the tool call failed or returned an error because of how it was made;
- ambiguous (0): the next state does not show whether the response was good.

Reason in at most a few short sentences, then end your answer with exactly one of \\boxed{1}, \
\\boxed{-1} or \\boxed{0}.";

fn hint_instructions() -> String {
    format!(
        "Below are the end of a conversation between a user and an AI assistant, the assistant's \
latest response, and the next state: what came back right after that response (the user's next \
message, or the result of a tool the assistant chose to call).

Question: does the next state reveal how the response should have been? For example a fact the \
response got wrong, a constraint it ignored (length, format, language, scope), a preference of \
the user, or the fix a tool error points to.

If it does, answer \\boxed{{1}} and then write a hint for the assistant: 1 to 3 concrete sentences, \
phrased as an instruction that would have produced the better response (\"Answer in at most 20 \
words.\", \"Call the tool with the city name, not the country.\"). The hint must stand on its \
own: do not mention the next state, the user's reaction or this evaluation. Put the hint between \
the markers {HINT_START} and {HINT_END}.

If it does not (the next state moves on, is ambiguous, or says nothing about how to do better), \
answer \\boxed{{0}} and write no hint."
    )
}

/// At most `max` characters, keeping the start and the end of longer texts.
pub fn clip(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let head: String = text.chars().take(max / 2).collect();
    let tail: String = text.chars().skip(count - max / 2).collect();
    format!(
        "{head}\n[… {} characters omitted …]\n{tail}",
        count - 2 * (max / 2)
    )
}

fn render_message(message: &Value) -> String {
    let role = message["role"].as_str().unwrap_or("unknown");
    let label = match role {
        "tool" => "tool result".to_string(),
        other => other.to_string(),
    };
    let mut text = clip(&message_text(message), MAX_MESSAGE_CHARS);
    if let Some(calls) = message.get("tool_calls").filter(|c| !c.is_null()) {
        text.push_str(&format!(
            "\n(tool calls: {})",
            clip(&calls.to_string(), MAX_MESSAGE_CHARS)
        ));
    }
    format!("<message role=\"{label}\">\n{}\n</message>", text.trim())
}

/// The conversation, response and next state, in tagged sections.
pub fn render_turn(input: &JudgeInput) -> String {
    let start = input.messages.len().saturating_sub(CONTEXT_MESSAGES);
    let mut context: Vec<String> = Vec::new();
    if start > 0 {
        if let Some(system) = input.messages.first().filter(|m| m["role"] == "system") {
            context.push(render_message(system));
        }
        context.push(format!("[{start} earlier messages omitted]"));
    }
    context.extend(input.messages[start..].iter().map(render_message));
    let mut response = clip(&input.response_text, MAX_RESPONSE_CHARS);
    if let Some(calls) = input.response_tool_calls.as_ref().filter(|c| !c.is_null()) {
        response.push_str(&format!(
            "\n(the assistant called tools: {})",
            clip(&calls.to_string(), MAX_RESPONSE_CHARS)
        ));
    }
    let next: Vec<String> = if input.next_state.is_empty() {
        vec!["(nothing came back)".into()]
    } else {
        input
            .next_state
            .iter()
            .map(|m| {
                let role = match m.role.as_str() {
                    "tool" => "tool result (from a tool the assistant called)",
                    "user" => "user",
                    other => other,
                };
                format!(
                    "<message role=\"{role}\">\n{}\n</message>",
                    clip(m.content.trim(), MAX_NEXT_CHARS)
                )
            })
            .collect()
    };
    format!(
        "<conversation>\n{}\n</conversation>\n\n<response>\n{}\n</response>\n\n<next_state>\n{}\n</next_state>",
        context.join("\n"),
        response.trim(),
        next.join("\n")
    )
}

fn chat(instructions: &str, input: &JudgeInput) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": SYSTEM}),
        json!({"role": "user", "content": format!("{instructions}\n\n{}", render_turn(input))}),
    ]
}

/// The evaluative prompt as chat messages.
pub fn evaluative_messages(input: &JudgeInput) -> Vec<Value> {
    chat(EVALUATE, input)
}

/// The hint prompt as chat messages.
pub fn hint_messages(input: &JudgeInput) -> Vec<Value> {
    chat(&hint_instructions(), input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::judge::NextMessage;

    fn input() -> JudgeInput {
        JudgeInput {
            messages: vec![
                json!({"role": "system", "content": "Be helpful."}),
                json!({"role": "user", "content": "What is the weather in Lima?"}),
            ],
            response_text: String::new(),
            response_tool_calls: Some(json!([{"type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Lima\"}"}}])),
            next_state: vec![NextMessage::tool("{\"error\": \"unknown city\"}")],
            feedback: vec![],
        }
    }

    #[test]
    fn prompts_carry_the_turn_and_the_roles() {
        for messages in [evaluative_messages(&input()), hint_messages(&input())] {
            assert_eq!(messages.len(), 2);
            let body = messages[1]["content"].as_str().unwrap();
            assert!(body.contains("What is the weather in Lima?"));
            assert!(body.contains("the assistant called tools"));
            assert!(body.contains("tool result (from a tool the assistant called)"));
            assert!(body.contains("unknown city"));
        }
        let eval = evaluative_messages(&input())[1]["content"].to_string();
        assert!(eval.contains(r"\\boxed{-1}"));
        let hint = hint_messages(&input())[1]["content"].to_string();
        assert!(hint.contains(HINT_START) && hint.contains(HINT_END));
    }

    #[test]
    fn long_texts_and_long_conversations_are_clipped() {
        let long = "é".repeat(5000);
        let clipped = clip(&long, 100);
        assert!(clipped.chars().count() < 150 && clipped.contains("4900 characters omitted"));
        assert_eq!(clip("short", 100), "short");
        let mut turn = input();
        turn.messages = (0..20)
            .map(|i| json!({"role": "user", "content": format!("message {i}")}))
            .collect();
        let body = render_turn(&turn);
        assert!(body.contains("[14 earlier messages omitted]"));
        assert!(!body.contains("message 13\n") && body.contains("message 19"));
    }
}
