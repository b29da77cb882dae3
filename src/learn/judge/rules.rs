//! The `rules` judge: explicit and clear implicit feedback in the next state, read with the
//! phrase table (phrases.toml). Cue weights are summed per side; a side wins only when it
//! clearly dominates, otherwise the judge abstains. Its hint is the user's own correction.

use std::collections::HashSet;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::phrases::{table, Analysis, PhraseTable};
use super::{Judge, JudgeError, JudgeInput, Verdict, Vote};

/// Corrections longer than this are cut (on a char boundary) before becoming the hint.
const MAX_HINT_CHARS: usize = 2000;

/// What the rules read in one next state.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// +1 / -1, or None (abstain).
    pub score: Option<i8>,
    pub positive: f32,
    pub negative: f32,
    /// The cues that counted, e.g. `too_long("too long")`, `moving_on`, `tool_error("...")`.
    pub cues: Vec<String>,
    pub hint: Option<String>,
}

/// How a user message reads: side weights, the cues that counted, and whether it carries a
/// directive or content beyond its cues (what makes it a hint).
#[derive(Debug, Default)]
struct MessageReading {
    positive: f32,
    negative: f32,
    cues: Vec<String>,
    directive: bool,
    has_content: bool,
}

fn content_words(table: &PhraseTable, words: &[String]) -> HashSet<String> {
    words
        .iter()
        .filter(|w| !table.is_filler(w) && !table.is_negator(w) && !table.is_contrast(w))
        .cloned()
        .collect()
}

fn read_user_message(table: &PhraseTable, message: &str, request: &str) -> MessageReading {
    let decision = &table.decision;
    let Analysis { text, hits, masked } = table.analyze(message);
    let words = &text.words;
    let mut reading = MessageReading::default();
    let mut positive_words = vec![false; words.len()];
    for hit in &hits {
        if table.cues[hit.cue].polarity > 0 {
            positive_words[hit.start..hit.start + hit.len].fill(true);
        }
    }
    let fresh_request = table.opens_request(&text, &positive_words);
    let refers_back = table.refers_back(words);
    let last_contrast = words.iter().rposition(|w| table.is_contrast(w));
    let hit_words: Vec<bool> = {
        let mut covered = vec![false; words.len()];
        for hit in &hits {
            covered[hit.start..hit.start + hit.len].fill(true);
        }
        covered
    };
    for hit in &hits {
        let cue = &table.cues[hit.cue];
        let phrase = words[hit.start..hit.start + hit.len].join(" ");
        // A constraint inside a fresh request is part of that request, not a complaint.
        if cue.constraint && fresh_request && !refers_back {
            continue;
        }
        // Up to two words back, in the same clause, outside other cues.
        let clause_from = (0..=hit.start)
            .rev()
            .find(|&i| text.clause_start[i])
            .unwrap_or(0);
        let negated = (hit.start.saturating_sub(2).max(clause_from)..hit.start)
            .any(|i| !hit_words[i] && table.is_negator(&words[i]));
        let mut weight = cue.weight;
        let mut polarity = cue.polarity;
        if negated {
            if polarity < 0 {
                continue; // "not wrong", "isn't too long"
            }
            polarity = -1; // "not great"
            weight = decision.negated_positive_weight;
        }
        if last_contrast.is_some_and(|c| c > hit.start) {
            weight *= decision.contrast_factor;
        }
        if polarity > 0 {
            reading.positive += weight;
        } else {
            reading.negative += weight;
            reading.directive |= cue.directive && !negated;
        }
        let name = if negated { "negated_" } else { "" };
        reading.cues.push(format!("{name}{}({phrase:?})", cue.name));
    }
    let content: Vec<String> = words
        .iter()
        .zip(&masked)
        .filter(|(_, m)| !**m)
        .map(|(w, _)| w.clone())
        .collect();
    let content = content_words(table, &content);
    reading.has_content = !content.is_empty();
    // Moving on: a fresh request or question, about something else, with no complaint.
    let request_words = content_words(
        table,
        &crate::learn::judge::phrases::normalize(request).words,
    );
    let repeated = content.intersection(&request_words).count() as f32;
    let reask = content.len() >= 2 && repeated >= decision.reask_overlap * content.len() as f32;
    let question = message.trim_end().ends_with('?');
    if reading.negative == 0.0
        && !reask
        && !refers_back
        && (fresh_request || question)
        && words.len() >= decision.moving_on_min_words
    {
        reading.positive += decision.moving_on_weight;
        reading.cues.push("moving_on(new request)".into());
    }
    reading
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => text[..at].to_string(),
        None => text.to_string(),
    }
}

/// `text` without a leading time stamp that a client put before the user's words (OpenClaw:
/// `[Sun 2026-11-29 13:31 UTC] Too long…`): a hint is what the user said, not when.
fn without_client_stamp(text: &str) -> &str {
    static STAMP: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let stamp = STAMP.get_or_init(|| {
        regex::Regex::new(r"^\[(?:[A-Za-z]{3},? )?\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2})?(?: ?[A-Za-z+\-:0-9]{1,6})?\]\s*")
            .expect("a valid pattern")
    });
    stamp.find(text).map_or(text, |m| &text[m.end()..])
}

/// Read a next state with `table`: the first user message's cues and every tool error.
pub fn read_next_state(table: &PhraseTable, input: &JudgeInput) -> Reading {
    let decision = &table.decision;
    let mut positive = 0.0;
    let mut negative = 0.0;
    let mut cues = Vec::new();
    let mut hint = None;
    for message in input.next_state.iter().filter(|m| m.role == "tool") {
        if let Some(error) = table.tool_error(&message.content) {
            negative += decision.tool_error_weight;
            cues.push(format!("tool_error({:?})", truncate_chars(&error, 80)));
        }
    }
    let user = input
        .next_state
        .iter()
        .find(|m| m.role == "user" && !m.content.trim().is_empty());
    let mut user_reading = None;
    if let Some(message) = user {
        let reading = read_user_message(table, &message.content, &input.last_user_text());
        positive += reading.positive;
        negative += reading.negative;
        cues.extend(reading.cues.iter().cloned());
        user_reading = Some(reading);
    }
    let score = if negative >= decision.min_weight && negative >= decision.dominance * positive {
        Some(-1)
    } else if positive >= decision.min_weight && positive >= decision.dominance * negative {
        Some(1)
    } else {
        None
    };
    if score == Some(-1) {
        if let (Some(message), Some(reading)) = (user, &user_reading) {
            if reading.negative > 0.0 && (reading.directive || reading.has_content) {
                let text = without_client_stamp(message.content.trim());
                hint = Some(truncate_chars(text, MAX_HINT_CHARS));
            }
        }
    }
    Reading {
        score,
        positive,
        negative,
        cues,
        hint,
    }
}

/// The rules judge over the embedded phrase table.
#[derive(Debug, Clone, Copy, Default)]
pub struct RulesJudge;

impl RulesJudge {
    pub fn read(input: &JudgeInput) -> Reading {
        read_next_state(table(), input)
    }

    pub fn decide(input: &JudgeInput) -> Option<Verdict> {
        let reading = Self::read(input);
        let score = reading.score?;
        let text = format!(
            "rules: {} (positive {:.1}, negative {:.1})",
            reading.cues.join(", "),
            reading.positive,
            reading.negative
        );
        Some(Verdict {
            source: "rules",
            judge: "rules".into(),
            score,
            votes: vec![Vote {
                text,
                value: Some(score),
            }],
            hint: reading.hint,
            hint_votes: Vec::new(),
        })
    }
}

impl Judge for RulesJudge {
    fn name(&self) -> String {
        "rules".into()
    }

    fn judge<'a>(
        &'a self,
        input: &'a JudgeInput,
    ) -> BoxFuture<'a, Result<Option<Verdict>, JudgeError>> {
        async move { Ok(Self::decide(input)) }.boxed()
    }
}

#[cfg(test)]
mod stamp_tests {
    use super::without_client_stamp;

    #[test]
    fn client_time_stamps_are_not_part_of_the_hint() {
        assert_eq!(
            without_client_stamp("[Sun 2026-11-29 13:31 UTC] Too long. Keep it short."),
            "Too long. Keep it short."
        );
        assert_eq!(without_client_stamp("[2026-11-29 13:31:05] ok"), "ok");
        assert_eq!(without_client_stamp("[note] keep me"), "[note] keep me");
    }
}
