//! Reading sampled judge answers: the last `\boxed{}` of each vote, the majority over votes,
//! and the hint between markers.

use std::sync::LazyLock;

use regex::Regex;

use super::{HintVote, Vote};

/// Hints are written between these markers (the hint prompt asks for them).
pub const HINT_START: &str = "[HINT]";
pub const HINT_END: &str = "[/HINT]";
/// Shorter hints say too little to teach anything.
pub const MIN_HINT_CHARS: usize = 10;

static BOXED: LazyLock<Regex> = LazyLock::new(|| {
    // A fixed, tested pattern: compiling it cannot fail.
    Regex::new(r"\\boxed\s*\{([^{}]*)\}").expect("valid regex")
});

/// The value of the last `\boxed{…}` in `text`: 1, -1 or 0 (spaces, "+1", "−1", "1.0" and `$`
/// tolerated); None when there is none or the last one is not a verdict.
pub fn parse_boxed(text: &str) -> Option<i8> {
    let inner = BOXED.captures_iter(text).last()?.get(1)?.as_str();
    let cleaned: String = inner
        .replace('\u{2212}', "-")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '$')
        .collect();
    let number = cleaned.strip_prefix('+').unwrap_or(&cleaned);
    let number = number
        .strip_suffix(".0")
        .or_else(|| number.strip_suffix('.'))
        .unwrap_or(number);
    match number {
        "1" => Some(1),
        "-1" => Some(-1),
        "0" | "-0" => Some(0),
        _ => None,
    }
}

pub fn vote(text: String) -> Vote {
    let value = parse_boxed(&text);
    Vote { text, value }
}

/// The majority over parseable votes: the most frequent value if strictly ahead, 0 on a tie,
/// None when no vote parsed (abstain).
pub fn majority(votes: &[Vote]) -> Option<i8> {
    let values: Vec<i8> = votes.iter().filter_map(|v| v.value).collect();
    if values.is_empty() {
        return None;
    }
    let mut counts: Vec<(i8, usize)> = [1, -1, 0]
        .iter()
        .map(|&v| (v, values.iter().filter(|&&x| x == v).count()))
        .collect();
    counts.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
    if counts[0].1 == counts[1].1 {
        Some(0)
    } else {
        Some(counts[0].0)
    }
}

/// The text between the last hint markers (an unterminated last hint runs to the end).
pub fn extract_hint(text: &str) -> Option<String> {
    let start = text.rfind(HINT_START)? + HINT_START.len();
    let rest = &text[start..];
    let body = match rest.find(HINT_END) {
        Some(end) => &rest[..end],
        // No end marker: drop a trailing verdict the model may have put after the hint.
        None => BOXED.find(rest).map_or(rest, |m| &rest[..m.start()]),
    };
    let hint = body.trim();
    (!hint.is_empty()).then(|| hint.to_string())
}

pub fn hint_vote(text: String) -> HintVote {
    let accepted = parse_boxed(&text) == Some(1);
    let hint = if accepted { extract_hint(&text) } else { None };
    HintVote {
        text,
        accepted,
        hint,
    }
}

/// The longest accepted hint longer than [`MIN_HINT_CHARS`] characters (the first on a tie).
pub fn choose_hint(votes: &[HintVote]) -> Option<String> {
    let mut best: Option<&str> = None;
    for hint in votes
        .iter()
        .filter(|v| v.accepted)
        .filter_map(|v| v.hint.as_deref())
    {
        let len = hint.chars().count();
        if len > MIN_HINT_CHARS && best.is_none_or(|b| len > b.chars().count()) {
            best = Some(hint);
        }
    }
    best.map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_boxed_value_counts() {
        let cases: &[(&str, Option<i8>)] = &[
            (r"progress \boxed{1}", Some(1)),
            (r"\boxed{-1}", Some(-1)),
            (r"\boxed{ 0 }", Some(0)),
            (r"\boxed{+1}", Some(1)),
            (r"\boxed {−1}", Some(-1)),
            (r"$\boxed{1.0}$", Some(1)),
            (r"\boxed{\text{-1}}", None), // nested braces are not a plain verdict
            (r"first \boxed{1}, on reflection \boxed{-1}", Some(-1)),
            (r"\boxed{1} then \boxed{yes}", None),
            (r"\boxed{2}", None),
            ("no verdict at all", None),
            (r"\boxed{1", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_boxed(text), *want, "{text:?}");
        }
    }

    fn votes(values: &[Option<i8>]) -> Vec<Vote> {
        values
            .iter()
            .map(|&value| Vote {
                text: String::new(),
                value,
            })
            .collect()
    }

    #[test]
    fn majority_ties_and_abstention() {
        assert_eq!(majority(&votes(&[Some(1), Some(1), Some(-1)])), Some(1));
        assert_eq!(majority(&votes(&[Some(-1), None, Some(-1)])), Some(-1));
        assert_eq!(majority(&votes(&[Some(1), Some(-1)])), Some(0));
        assert_eq!(majority(&votes(&[Some(1), Some(-1), Some(0)])), Some(0));
        assert_eq!(majority(&votes(&[Some(0), Some(0), Some(1)])), Some(0));
        assert_eq!(majority(&votes(&[None, Some(1), None])), Some(1));
        assert_eq!(majority(&votes(&[None, None])), None);
        assert_eq!(majority(&[]), None);
    }

    #[test]
    fn hints_are_extracted_filtered_and_the_longest_chosen() {
        let a = hint_vote(r"\boxed{1} [HINT] Answer in one sentence. [/HINT]".into());
        assert_eq!(a.hint.as_deref(), Some("Answer in one sentence."));
        let b =
            hint_vote("[HINT]Answer in at most 20 words, no preamble.[/HINT]\n\\boxed{1}".into());
        let short = hint_vote(r"\boxed{1} [HINT]Be brief[/HINT]".into());
        let rejected = hint_vote(
            r"[HINT]A very long hint that must not count at all.[/HINT] \boxed{0}".into(),
        );
        let unterminated = hint_vote(r"\boxed{1} [HINT] Use metric units throughout.".into());
        assert!(!rejected.accepted && rejected.hint.is_none());
        assert_eq!(short.hint.as_deref(), Some("Be brief"));
        assert_eq!(
            unterminated.hint.as_deref(),
            Some("Use metric units throughout.")
        );
        let all = vec![a.clone(), short.clone(), b.clone(), rejected.clone()];
        assert_eq!(choose_hint(&all), b.hint);
        assert_eq!(choose_hint(&[short.clone(), rejected]), None);
        assert_eq!(choose_hint(&[]), None);
        let no_markers = hint_vote(r"\boxed{1} answer shorter".into());
        assert!(no_markers.accepted && no_markers.hint.is_none());
    }
}
