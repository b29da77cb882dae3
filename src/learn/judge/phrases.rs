//! The `rules` judge's phrase table (phrases.toml, embedded) and the matcher that finds its cues
//! in a message: text → normalized words → non-overlapping cue hits, longest phrase first.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

/// The embedded table; `PhraseTable::parse` of it is checked by a unit test.
pub const PHRASES_TOML: &str = include_str!("phrases.toml");

/// Words past this many are not searched for cues: corrections come early in a message.
const MAX_WORDS: usize = 1000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub min_weight: f32,
    pub dominance: f32,
    pub contrast_factor: f32,
    pub negated_positive_weight: f32,
    pub moving_on_weight: f32,
    pub moving_on_min_words: usize,
    pub reask_overlap: f32,
    pub tool_error_weight: f32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum At {
    #[default]
    Any,
    Start,
    Whole,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cue {
    pub name: String,
    pub polarity: i8,
    pub weight: f32,
    #[serde(default)]
    pub at: At,
    #[serde(default)]
    pub directive: bool,
    #[serde(default)]
    pub constraint: bool,
    pub phrases: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Words {
    neutral: Vec<String>,
    negators: Vec<String>,
    contrast: Vec<String>,
    fillers: Vec<String>,
    back_reference: Vec<String>,
    request_openers: Vec<String>,
    numbers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolPatterns {
    ok: Vec<String>,
    errors: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    decision: Decision,
    cue: Vec<Cue>,
    words: Words,
    tool: ToolPatterns,
}

/// One phrase of a cue, as normalized words (`#` = any number).
#[derive(Debug, Clone)]
struct Pattern {
    cue: usize,
    words: Vec<String>,
}

/// A message split into normalized words; `clause_start[i]` when word i opens a clause.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Normalized {
    pub words: Vec<String>,
    pub clause_start: Vec<bool>,
}

/// A cue found in a message: `len` words from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub cue: usize,
    pub start: usize,
    pub len: usize,
}

/// A message with its cue hits; `masked[i]` when word i is inside a hit or a neutral span.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub text: Normalized,
    pub hits: Vec<Hit>,
    pub masked: Vec<bool>,
}

#[derive(Debug)]
pub struct PhraseTable {
    pub decision: Decision,
    pub cues: Vec<Cue>,
    patterns: Vec<Pattern>,
    neutral: Vec<Vec<String>>,
    back_reference: Vec<Vec<String>>,
    request_openers: Vec<Vec<String>>,
    negators: HashSet<String>,
    contrast: HashSet<String>,
    fillers: HashSet<String>,
    numbers: HashSet<String>,
    tool_ok: Vec<Regex>,
    tool_errors: Vec<Regex>,
}

static TABLE: LazyLock<PhraseTable> = LazyLock::new(|| {
    // The table is compiled into the binary and parsed by a unit test, so this cannot fail.
    PhraseTable::parse(PHRASES_TOML).expect("the embedded phrases.toml is valid")
});

/// The embedded phrase table.
pub fn table() -> &'static PhraseTable {
    &TABLE
}

fn phrase_words(phrase: &str) -> Vec<String> {
    normalize(phrase).words
}

fn phrase_list(list: &[String], what: &str) -> Result<Vec<Vec<String>>, String> {
    list.iter()
        .map(|p| {
            let words = phrase_words(p);
            if words.is_empty() {
                Err(format!("{what}: phrase {p:?} has no words"))
            } else {
                Ok(words)
            }
        })
        .collect()
}

fn word_set(list: &[String]) -> HashSet<String> {
    list.iter().flat_map(|w| phrase_words(w)).collect()
}

fn regexes(list: &[String]) -> Result<Vec<Regex>, String> {
    list.iter()
        .map(|p| {
            RegexBuilder::new(p)
                .case_insensitive(true)
                .build()
                .map_err(|e| format!("tool pattern {p:?}: {e}"))
        })
        .collect()
}

impl PhraseTable {
    pub fn parse(toml_text: &str) -> Result<PhraseTable, String> {
        let raw: RawTable = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let mut patterns = Vec::new();
        for (index, cue) in raw.cue.iter().enumerate() {
            if ![-1, 1].contains(&cue.polarity) || cue.weight <= 0.0 {
                return Err(format!("cue {}: polarity must be ±1, weight > 0", cue.name));
            }
            for words in phrase_list(&cue.phrases, &cue.name)? {
                patterns.push(Pattern { cue: index, words });
            }
        }
        // Longest phrases claim their words first: "not what i asked" before "asked".
        patterns.sort_by_key(|p| std::cmp::Reverse(p.words.len()));
        let words = &raw.words;
        Ok(PhraseTable {
            decision: raw.decision,
            cues: raw.cue,
            patterns,
            neutral: phrase_list(&words.neutral, "neutral")?,
            back_reference: phrase_list(&words.back_reference, "back_reference")?,
            request_openers: phrase_list(&words.request_openers, "request_openers")?,
            negators: word_set(&words.negators),
            contrast: word_set(&words.contrast),
            fillers: word_set(&words.fillers),
            numbers: word_set(&words.numbers),
            tool_ok: regexes(&raw.tool.ok)?,
            tool_errors: regexes(&raw.tool.errors)?,
        })
    }

    pub fn is_negator(&self, word: &str) -> bool {
        self.negators.contains(word)
    }

    pub fn is_contrast(&self, word: &str) -> bool {
        self.contrast.contains(word)
    }

    pub fn is_filler(&self, word: &str) -> bool {
        self.fillers.contains(word)
    }

    fn word_matches(&self, pattern: &str, word: &str) -> bool {
        if pattern == "#" {
            word.chars().all(|c| c.is_ascii_digit()) || self.numbers.contains(word)
        } else {
            pattern == word
        }
    }

    fn matches_at(&self, pattern: &[String], words: &[String], at: usize) -> bool {
        at + pattern.len() <= words.len()
            && pattern
                .iter()
                .zip(&words[at..])
                .all(|(p, w)| self.word_matches(p, w))
    }

    /// Normalize `text` and find its cues: neutral spans are masked first, then each phrase,
    /// longest first, claims the unmasked words it matches.
    pub fn analyze(&self, text: &str) -> Analysis {
        let mut text = normalize(text);
        text.words.truncate(MAX_WORDS);
        text.clause_start.truncate(MAX_WORDS);
        let n = text.words.len();
        let mut masked = vec![false; n];
        let free = |masked: &[bool], at: usize, len: usize| !masked[at..at + len].contains(&true);
        for span in &self.neutral {
            for at in 0..n {
                if self.matches_at(span, &text.words, at) && free(&masked, at, span.len()) {
                    masked[at..at + span.len()].fill(true);
                }
            }
        }
        let mut hits = Vec::new();
        for pattern in &self.patterns {
            let len = pattern.words.len();
            for at in 0..n {
                let placed = match self.cues[pattern.cue].at {
                    At::Any => true,
                    At::Start => text.clause_start[at],
                    At::Whole => at == 0 && len == n,
                };
                if placed
                    && self.matches_at(&pattern.words, &text.words, at)
                    && free(&masked, at, len)
                {
                    masked[at..at + len].fill(true);
                    hits.push(Hit {
                        cue: pattern.cue,
                        start: at,
                        len,
                    });
                }
            }
        }
        hits.sort_by_key(|h| h.start);
        Analysis { text, hits, masked }
    }

    /// Whether any back-reference phrase ("that", "your answer"...) occurs in the words.
    pub fn refers_back(&self, words: &[String]) -> bool {
        (0..words.len()).any(|at| {
            self.back_reference
                .iter()
                .any(|p| self.matches_at(p, words, at))
        })
    }

    /// Whether a clause opens as a fresh request ("how…", "tell me…"), after lead-ins such as
    /// "ok", "so" and words inside `skip` (e.g. a "thanks" cue).
    pub fn opens_request(&self, text: &Normalized, skip: &[bool]) -> bool {
        let words = &text.words;
        let mut at = 0;
        while at < words.len() {
            if !text.clause_start[at] {
                at += 1;
                continue;
            }
            let mut i = at;
            loop {
                if self
                    .request_openers
                    .iter()
                    .any(|p| self.matches_at(p, words, i))
                {
                    return true;
                }
                i += 1;
                let lead_in = skip[i - 1] || self.is_filler(&words[i - 1]);
                if i >= words.len() || text.clause_start[i] || !lead_in {
                    break;
                }
            }
            at = i.max(at + 1);
        }
        false
    }

    /// The first error pattern a tool result matches, after blanking its benign spans.
    pub fn tool_error(&self, content: &str) -> Option<String> {
        let mut text = content.to_string();
        for ok in &self.tool_ok {
            text = ok.replace_all(&text, " ").into_owned();
        }
        self.tool_errors
            .iter()
            .find_map(|re| re.find(&text).map(|m| m.as_str().trim().to_string()))
    }
}

fn is_apostrophe(c: char) -> bool {
    matches!(
        c,
        '\'' | '\u{2019}' | '\u{2018}' | '\u{02BC}' | '`' | '\u{00B4}'
    )
}

/// Marks that never make a word of their own: emoji variation selectors, joiners, skin tones.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{FE0E}' | '\u{FE0F}' | '\u{200B}'..='\u{200D}' | '\u{1F3FB}'..='\u{1F3FF}')
}

fn ends_clause(c: char) -> bool {
    matches!(
        c,
        '.' | '!'
            | '?'
            | ','
            | ';'
            | ':'
            | '\n'
            | '\u{2014}'
            | '\u{2013}'
            | '\u{2026}'
            | '\u{3002}'
            | '\u{FF01}'
            | '\u{FF1F}'
            | '\u{FF0C}'
            | '\u{00A1}'
            | '\u{00BF}'
    )
}

fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || c.is_ascii_punctuation()
        || c.is_control()
        || ('\u{2000}'..='\u{206F}').contains(&c)
        || ('\u{00A0}'..='\u{00BF}').contains(&c)
        || ('\u{3000}'..='\u{303F}').contains(&c)
        || ('\u{FF00}'..='\u{FF0F}').contains(&c)
}

/// Lowercase words; apostrophes dropped ("that's" → "thats"); other punctuation separates
/// (sentence marks and dashes also open a new clause); a leading "/" stays ("/good"); every
/// other symbol (emoji) is a word of its own.
pub fn normalize(text: &str) -> Normalized {
    let mut out = Normalized::default();
    let mut word = String::new();
    let mut clause = true;
    let flush = |word: &mut String, out: &mut Normalized, clause: &mut bool| {
        if !word.is_empty() {
            out.words.push(std::mem::take(word));
            out.clause_start.push(*clause);
            *clause = false;
        }
    };
    for c in text.chars() {
        if is_apostrophe(c) || is_invisible(c) {
            continue;
        }
        if c.is_alphanumeric() || (c == '/' && word.is_empty()) {
            word.extend(c.to_lowercase());
        } else if ends_clause(c) {
            flush(&mut word, &mut out, &mut clause);
            clause = true;
        } else if is_separator(c) {
            flush(&mut word, &mut out, &mut clause);
        } else {
            flush(&mut word, &mut out, &mut clause);
            word.push(c);
            flush(&mut word, &mut out, &mut clause);
        }
    }
    flush(&mut word, &mut out, &mut clause);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        normalize(text).words
    }

    #[test]
    fn the_embedded_table_parses() {
        let table = PhraseTable::parse(PHRASES_TOML).unwrap();
        assert!(table.cues.len() >= 10);
        assert!(table.patterns.len() > 200);
    }

    #[test]
    fn normalization_is_case_punctuation_and_unicode_robust() {
        assert_eq!(words("That’s WRONG!!"), ["thats", "wrong"]);
        assert_eq!(words("  too   long\t\n"), ["too", "long"]);
        assert_eq!(words("👍🏽 /good"), ["👍", "/good"]);
        assert_eq!(words("❤️❤️"), ["❤", "❤"]);
        assert_eq!(words("tl;dr — naïve Café"), ["tl", "dr", "naïve", "café"]);
        assert_eq!(words("and/or"), ["and", "or"]);
        assert_eq!(words(""), Vec::<String>::new());
        let text = normalize("Thanks! Now, how do magnets work?");
        assert_eq!(text.clause_start, [true, true, true, false, false, false]);
    }

    /// Every phrase of every cue, alone as a message, is found as that cue.
    #[test]
    fn every_row_matches_its_own_cue() {
        let table = table();
        for (index, cue) in table.cues.iter().enumerate() {
            for phrase in &cue.phrases {
                let message = phrase.replace('#', "20");
                let analysis = table.analyze(&message);
                let found: Vec<&str> = analysis
                    .hits
                    .iter()
                    .map(|h| table.cues[h.cue].name.as_str())
                    .collect();
                assert!(
                    analysis.hits.iter().any(|h| h.cue == index),
                    "{phrase:?} should be a {} cue, found {found:?}",
                    cue.name
                );
            }
        }
    }

    #[test]
    fn neutral_spans_and_longest_phrases_win() {
        let table = table();
        assert!(table.analyze("No problem, not bad at all").hits.is_empty());
        let analysis = table.analyze("that's not what I asked");
        assert_eq!(analysis.hits.len(), 1);
        assert_eq!(table.cues[analysis.hits[0].cue].name, "not_what_i_asked");
        let numbers = table.analyze("under twenty words");
        assert_eq!(table.cues[numbers.hits[0].cue].name, "length_constraint");
    }

    #[test]
    fn tool_errors() {
        let table = table();
        for error in [
            "Traceback (most recent call last):\n  File \"x.py\"",
            r#"{"error": "not found"}"#,
            r#"{"error": {"code": 404}}"#,
            "bash: foo: command not found",
            "Process exited with exit code 2",
            "exit status: 1",
            "ValueError: invalid literal for int()",
            "error[E0308]: mismatched types",
            "cat: x: No such file or directory",
            "3 failed, 10 passed",
        ] {
            assert!(table.tool_error(error).is_some(), "{error:?} is an error");
        }
        for ok in [
            r#"{"error": null, "result": 4}"#,
            "exit code 0",
            "12 passed, 0 errors",
            "def f():\n    try:\n        g()\n    except ValueError:\n        pass",
            "The weather in Lima is 18°C and sunny.",
            "",
        ] {
            assert_eq!(table.tool_error(ok), None, "{ok:?} is not an error");
        }
    }
}
