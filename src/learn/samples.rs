//! Training samples: a served turn with its reward and/or hint, and the hinted context the OPD
//! teacher scores the same response tokens under.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::grammar::Constraint;

/// Which signals the trainer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LearnMode {
    /// Binary RL from the judge's reward only.
    Rl,
    /// Hindsight-guided on-policy distillation only.
    Opd,
    /// Both, summed per token (the default).
    Combined,
    /// Log and judge, never train.
    Off,
}

impl LearnMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LearnMode::Rl => "rl",
            LearnMode::Opd => "opd",
            LearnMode::Combined => "combined",
            LearnMode::Off => "off",
        }
    }
    pub fn uses_reward(self) -> bool {
        matches!(self, LearnMode::Rl | LearnMode::Combined)
    }
    pub fn uses_hint(self) -> bool {
        matches!(self, LearnMode::Opd | LearnMode::Combined)
    }
}

/// OpenAI `logit_bias` as (token id, bias) pairs.
pub type LogitBias = Vec<(u32, f32)>;

/// One served turn made ready for a training step.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSample {
    pub id: i64,
    /// The request messages as served (OpenAI shape), for re-rendering with the hint.
    pub messages: Vec<Value>,
    pub tools: Option<Vec<Value>>,
    pub prompt_ids: Vec<u32>,
    pub response_ids: Vec<u32>,
    /// Log-probs of `response_ids` under the policy that sampled them, as logged.
    pub behaviour_logprobs: Vec<f32>,
    pub policy_version: i64,
    /// +1 / −1 from the judge or explicit feedback; 0 when there is none.
    pub reward: f64,
    pub hint: Option<String>,
    /// The grammar the response was sampled under (structured output, forced tool calls).
    pub constraint: Option<Constraint>,
    /// OpenAI `logit_bias` the response was sampled with, as (token id, bias).
    pub logit_bias: LogitBias,
}

/// The constraint and logit bias a turn was sampled with, from its logged `sampling` JSON
/// (`"constraint"`: a serialized [`Constraint`], `"logit_bias"`: `[[token_id, bias], ...]`;
/// absent or null when not used). An error means the turn's behaviour log-probs come from a
/// distribution the trainer cannot reproduce.
pub fn sampling_transform(sampling: &Value) -> Result<(Option<Constraint>, LogitBias), String> {
    let constraint = match sampling.get("constraint") {
        None | Some(Value::Null) => None,
        Some(c) => Some(
            serde_json::from_value(c.clone()).map_err(|e| format!("unreadable constraint: {e}"))?,
        ),
    };
    let logit_bias = match sampling.get("logit_bias") {
        None | Some(Value::Null) => Vec::new(),
        Some(b) => {
            serde_json::from_value(b.clone()).map_err(|e| format!("unreadable logit_bias: {e}"))?
        }
    };
    Ok((constraint, logit_bias))
}

/// What a sample contributes under a mode (`None`: nothing, it carries no gradient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleKind {
    Rl,
    Opd,
    Both,
}

impl SampleKind {
    pub fn of(reward: f64, hint: Option<&str>, mode: LearnMode) -> Option<SampleKind> {
        let rl = mode.uses_reward() && reward != 0.0;
        let opd = mode.uses_hint() && hint.is_some_and(|h| !h.trim().is_empty());
        match (rl, opd) {
            (true, true) => Some(SampleKind::Both),
            (true, false) => Some(SampleKind::Rl),
            (false, true) => Some(SampleKind::Opd),
            (false, false) => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SampleKind::Rl => "rl",
            SampleKind::Opd => "opd",
            SampleKind::Both => "both",
        }
    }
}

/// The messages with the hint appended to the last user message: the context under which the
/// teacher scores the response that was actually served.
pub fn hinted_messages(messages: &[Value], hint: &str) -> Vec<Value> {
    let mut out = messages.to_vec();
    let note = format!("\n\n[Hint for this answer: {}]", hint.trim());
    let last_user = out
        .iter()
        .rposition(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    match last_user {
        Some(i) => {
            let message = &mut out[i];
            let content = message.get("content").cloned().unwrap_or(Value::Null);
            message["content"] = match content {
                Value::String(text) => Value::String(text + &note),
                Value::Array(mut parts) => {
                    parts.push(serde_json::json!({"type": "text", "text": note}));
                    Value::Array(parts)
                }
                _ => Value::String(note.trim_start().to_string()),
            };
        }
        None => out.push(serde_json::json!({"role": "user", "content": note.trim_start()})),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hint_goes_to_the_last_user_message_only() {
        let messages = vec![
            json!({"role": "system", "content": "Be helpful."}),
            json!({"role": "user", "content": "first"}),
            json!({"role": "assistant", "content": "reply"}),
            json!({"role": "user", "content": [{"type": "text", "text": "second"}]}),
        ];
        let hinted = hinted_messages(&messages, "  Answer in one sentence. ");
        assert_eq!(hinted[1], messages[1]);
        assert_eq!(
            hinted[3]["content"][1]["text"],
            "\n\n[Hint for this answer: Answer in one sentence.]"
        );
        let plain = hinted_messages(&messages[..2], "Be brief.");
        assert_eq!(
            plain[1]["content"],
            "first\n\n[Hint for this answer: Be brief.]"
        );
    }

    #[test]
    fn sampling_json_gives_constraint_and_bias() {
        let plain = json!({"temperature": 0.7, "top_p": 1.0});
        assert_eq!(sampling_transform(&plain).unwrap(), (None, vec![]));
        let nulls = json!({"constraint": null, "logit_bias": null});
        assert_eq!(sampling_transform(&nulls).unwrap(), (None, vec![]));
        let schema = json!({"type": "object"});
        let full = json!({
            "constraint": serde_json::to_value(Constraint::JsonSchema(schema.clone())).unwrap(),
            "logit_bias": [[42, -100.0], [7, 2.5]],
        });
        assert_eq!(
            sampling_transform(&full).unwrap(),
            (
                Some(Constraint::JsonSchema(schema)),
                vec![(42, -100.0), (7, 2.5)]
            )
        );
        let lark = json!({"constraint": {"kind": "lark", "grammar": "start: \"a\""}});
        assert_eq!(
            sampling_transform(&lark).unwrap().0,
            Some(Constraint::Lark("start: \"a\"".into()))
        );
        assert!(sampling_transform(&json!({"constraint": {"kind": "regex"}})).is_err());
        assert!(sampling_transform(&json!({"logit_bias": [[-1, 2.0]]})).is_err());
    }

    #[test]
    fn kind_follows_mode_and_signals() {
        use LearnMode::*;
        assert_eq!(SampleKind::of(1.0, None, Combined), Some(SampleKind::Rl));
        assert_eq!(
            SampleKind::of(-1.0, Some("x y"), Combined),
            Some(SampleKind::Both)
        );
        assert_eq!(
            SampleKind::of(0.0, Some("x y"), Combined),
            Some(SampleKind::Opd)
        );
        assert_eq!(SampleKind::of(0.0, Some("x y"), Rl), None);
        assert_eq!(
            SampleKind::of(-1.0, Some("x y"), Opd),
            Some(SampleKind::Opd)
        );
        assert_eq!(SampleKind::of(1.0, None, Opd), None);
        assert_eq!(SampleKind::of(0.0, Some("   "), Combined), None);
        assert_eq!(SampleKind::of(1.0, Some("x"), Off), None);
    }
}
