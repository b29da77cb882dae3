//! Explicit feedback outranks every other judge: thumbs up → +1, down → −1 (the latest rating
//! wins); a correction text becomes the hint, and a correction without a rating means −1.

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{Judge, JudgeError, JudgeInput, Rating, Verdict};

#[derive(Debug, Clone, Copy, Default)]
pub struct FeedbackJudge;

impl FeedbackJudge {
    /// The verdict the explicit feedback implies, or None without any usable feedback.
    pub fn decide(input: &JudgeInput) -> Option<Verdict> {
        let rating = input.feedback.iter().rev().find_map(|f| f.rating);
        // The latest non-empty correction is the user's freshest word on how it should be.
        let correction = input
            .feedback
            .iter()
            .rev()
            .filter_map(|f| f.correction.as_deref())
            .map(str::trim)
            .find(|c| !c.is_empty())
            .map(str::to_string);
        let score = match (rating, &correction) {
            (Some(Rating::Up), _) => 1,
            (Some(Rating::Down), _) | (None, Some(_)) => -1,
            (None, None) => return None,
        };
        Some(Verdict {
            source: "feedback",
            judge: "feedback".into(),
            score,
            votes: Vec::new(),
            hint: correction,
            hint_votes: Vec::new(),
        })
    }
}

impl Judge for FeedbackJudge {
    fn name(&self) -> String {
        "feedback".into()
    }

    fn judge<'a>(
        &'a self,
        input: &'a JudgeInput,
    ) -> BoxFuture<'a, Result<Option<Verdict>, JudgeError>> {
        async move { Ok(Self::decide(input)) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::judge::FeedbackInput;

    fn input(feedback: Vec<(Option<Rating>, Option<&str>)>) -> JudgeInput {
        JudgeInput {
            feedback: feedback
                .into_iter()
                .map(|(rating, correction)| FeedbackInput {
                    rating,
                    correction: correction.map(str::to_string),
                })
                .collect(),
            ..JudgeInput::default()
        }
    }

    #[test]
    fn ratings_corrections_and_abstention() {
        assert_eq!(FeedbackJudge::decide(&input(vec![])), None);
        assert_eq!(
            FeedbackJudge::decide(&input(vec![(None, Some("  "))])),
            None
        );
        let up = FeedbackJudge::decide(&input(vec![(Some(Rating::Up), None)])).unwrap();
        assert_eq!((up.score, up.source, up.hint), (1, "feedback", None));
        let latest = input(vec![(Some(Rating::Up), None), (Some(Rating::Down), None)]);
        assert_eq!(FeedbackJudge::decide(&latest).unwrap().score, -1);
        let fixed = input(vec![(Some(Rating::Down), None), (Some(Rating::Up), None)]);
        assert_eq!(FeedbackJudge::decide(&fixed).unwrap().score, 1);
        let corrected = input(vec![(None, Some(" Answer in one sentence. "))]);
        let verdict = FeedbackJudge::decide(&corrected).unwrap();
        assert_eq!(verdict.score, -1);
        assert_eq!(verdict.hint.as_deref(), Some("Answer in one sentence."));
        // A later rating without text keeps the earlier correction as the hint.
        let both = input(vec![
            (Some(Rating::Down), Some("Use metric units.")),
            (Some(Rating::Down), None),
        ]);
        let verdict = FeedbackJudge::decide(&both).unwrap();
        assert_eq!(
            (verdict.score, verdict.hint.as_deref()),
            (-1, Some("Use metric units."))
        );
    }
}
