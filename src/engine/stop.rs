//! Stop strings over streamed text: text that might be the start of a stop string is held back
//! until it is known not to be one, so a stop string never reaches the client.

/// What a text delta released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to send now (possibly empty).
    Continue(String),
    /// A stop string was completed: send `text`, then finish.
    Stopped { text: String, stop: String },
}

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(delta.to_string());
        }
        self.held.push_str(delta);
        let earliest = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = earliest {
            let stop = stop.clone();
            let text = self.held[..at].to_string();
            self.held.clear();
            return StopOutcome::Stopped { text, stop };
        }
        let keep = self.partial_suffix_len();
        let release_to = self.held.len() - keep;
        let text = self.held[..release_to].to_string();
        self.held.drain(..release_to);
        StopOutcome::Continue(text)
    }

    /// Releases whatever is held back (the sequence ended for another reason).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop string.
    fn partial_suffix_len(&self) -> usize {
        let held = self.held.as_str();
        held.char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let suffix = &held[i..];
                self.stops.iter().any(|s| s.starts_with(suffix))
            })
            .map_or(0, |i| held.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(m: &mut StopMatcher, parts: &[&str]) -> (String, Option<String>) {
        let mut out = String::new();
        for p in parts {
            match m.push(p) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped { text, stop } => {
                    out.push_str(&text);
                    return (out, Some(stop));
                }
            }
        }
        out.push_str(&m.finish());
        (out, None)
    }

    #[test]
    fn stop_split_across_deltas_is_never_emitted() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("hello E"), StopOutcome::Continue("hello ".into()));
        assert_eq!(m.push("N"), StopOutcome::Continue(String::new()));
        assert_eq!(
            m.push("Dx"),
            StopOutcome::Stopped {
                text: String::new(),
                stop: "END".into()
            }
        );
    }

    #[test]
    fn false_start_is_released() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(
            feed(&mut m, &["a E", "Nb", "c"]),
            ("a ENbc".to_string(), None)
        );
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = StopMatcher::new(&["\n\n".to_string(), "B".to_string()]);
        assert_eq!(
            feed(&mut m, &["xx", "AB\n\n"]),
            ("xxA".to_string(), Some("B".to_string()))
        );
    }

    #[test]
    fn multibyte_text_is_handled() {
        let mut m = StopMatcher::new(&["été".to_string()]);
        assert_eq!(
            feed(&mut m, &["un é", "t", "é 🎉"]),
            ("un ".to_string(), Some("été".to_string()))
        );
        let mut none = StopMatcher::new(&[]);
        assert_eq!(feed(&mut none, &["🎉", "x"]), ("🎉x".to_string(), None));
    }
}
