//! Reads for the admin dashboard: counters, time series, sessions across every key, session
//! timelines with every judgement and sample, training steps, policy versions, and the rows a
//! live feed has not seen yet. The SQL lives in `dashboard/sql.rs`, one copy per backend.

mod sql;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::db::{dispatch, Db};
use super::error::StoreError;
use super::handle::Store;
use super::ops::{FeedbackSource, Rating};
use super::queries;
use super::reads::FeedbackOutcome;
use super::views::TurnView;

pub type Time = chrono::DateTime<chrono::Utc>;

/// Totals over the whole store.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counters {
    /// Every logged request (main and side turns).
    pub turns: i64,
    pub main_turns: i64,
    pub sessions: i64,
    /// Turns whose next state (the user's or tool's following message) has arrived.
    pub turns_with_next_state: i64,
    pub feedback: i64,
    pub feedback_up: i64,
    pub feedback_down: i64,
    /// Feedback carrying a correction text.
    pub corrections: i64,
    /// Turns with at least one judgement.
    pub judged_turns: i64,
    pub samples: i64,
    /// Samples not yet used by a training step.
    pub samples_waiting: i64,
    pub steps: i64,
    pub last_step: Option<i64>,
    pub versions: i64,
    pub latest_version: Option<i64>,
    pub latest_promoted: Option<i64>,
    pub rejected_versions: i64,
}

/// The `learner_state` row: which version serves and whether it is pinned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServingState {
    pub serving_version: i64,
    /// None: following the latest promoted version.
    pub pinned_version: Option<i64>,
    pub trainer_holder: Option<String>,
    pub updated_at: Time,
}

/// How often the judge agreed with explicit feedback on the same turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Agreement {
    /// Turns with both explicit feedback and a judgement that did not come from that feedback.
    pub pairs: i64,
    pub agree: i64,
    pub disagree: i64,
    /// The judge abstained (score 0 or none).
    pub abstained: i64,
    /// agree / (agree + disagree); None without a decided pair.
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overview {
    pub counters: Counters,
    pub serving: Option<ServingState>,
    pub samples_by_kind: BTreeMap<String, i64>,
    pub agreement: Agreement,
}

/// Counts per time bucket; `starts[i]` is the start of bucket i.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeSeries {
    pub bucket_seconds: i64,
    pub starts: Vec<Time>,
    /// turns, next_states, feedback, judgements → one count per bucket.
    pub series: BTreeMap<&'static str, Vec<i64>>,
}

/// `rewarded` filter of the sessions list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewardFilter {
    /// Some turn has a nonzero reward.
    Any,
    Positive,
    Negative,
    /// No turn has a nonzero reward.
    None,
}

impl RewardFilter {
    pub fn parse(text: &str) -> Option<RewardFilter> {
        Some(match text {
            "any" | "yes" | "true" => RewardFilter::Any,
            "positive" => RewardFilter::Positive,
            "negative" => RewardFilter::Negative,
            "none" | "no" | "false" => RewardFilter::None,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionFilter {
    /// Substring of the session id, a request or a response (case-insensitive).
    pub search: Option<String>,
    /// The key id exactly ('' = auth off).
    pub key: Option<String>,
    /// Sessions active at or after / before these times.
    pub from: Option<Time>,
    pub to: Option<Time>,
    pub rewarded: Option<RewardFilter>,
    /// Some(true): a turn got a correction (feedback text or a judge hint); Some(false): none did.
    pub corrected: Option<bool>,
    pub limit: i64,
    pub offset: i64,
}

/// A session in the admin list: across keys, with its learning signals summed up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionRow {
    /// The row id: the stable handle the admin API uses (session ids are only unique per key).
    pub pk: i64,
    pub session_id: String,
    pub key_id: String,
    pub explicit: bool,
    pub turn_count: i64,
    pub created_at: Time,
    pub updated_at: Time,
    pub closed_at: Option<Time>,
    pub feedback_up: i64,
    pub feedback_down: i64,
    pub corrections: i64,
    pub judged: i64,
    pub mean_reward: Option<f64>,
    pub last_version: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionPage {
    pub data: Vec<SessionRow>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// One judgement with everything the judge recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgementDetail {
    pub judge: String,
    pub source: Option<String>,
    pub votes: Value,
    pub score: Option<f64>,
    pub hint: Option<String>,
    pub hint_votes: Option<Value>,
    pub created_at: Time,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleDetail {
    pub kind: Option<String>,
    pub reward: Option<f64>,
    pub hint: Option<String>,
    pub used_in_step: Option<i64>,
    pub policy_version: i64,
    pub created_at: Time,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineTurn {
    #[serde(flatten)]
    pub turn: TurnView,
    pub judgements: Vec<JudgementDetail>,
    pub samples: Vec<SampleDetail>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    pub session: SessionRow,
    pub turns: Vec<TimelineTurn>,
}

/// A training step and what its samples looked like.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    pub step: i64,
    pub policy_version: i64,
    pub created_version: Option<i64>,
    /// loss, clip_fraction, kl, mean_reward, samples_rl/opd/both, grad_norm, tokens, step_seconds.
    pub metrics: Value,
    pub created_at: Time,
    /// Samples whose `used_in_step` is this step, their mean reward and mean judge score.
    pub samples: i64,
    pub sample_reward: Option<f64>,
    pub judge_score: Option<f64>,
}

/// Versions are the learner's own rows (`Store::versions`).
pub use super::learner::VersionRow;

/// The newest row id of each table the live feed follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LiveCursor {
    pub turns: i64,
    pub next_states: i64,
    pub feedback: i64,
    pub judgements: i64,
    pub steps: i64,
    pub versions: i64,
    /// Changes when the serving or pinned version changes.
    pub learner: Option<String>,
}

/// One row a live client has not seen: `kind` is turn, next_state, feedback, judgement, step,
/// version or learner.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveEvent {
    pub kind: &'static str,
    pub data: Value,
}

/// Most rows of one kind a live poll returns; the rest come on the next poll.
pub const LIVE_BATCH: i64 = 200;

impl Store {
    pub async fn dashboard_overview(&self) -> Result<Overview, StoreError> {
        let db = self.db();
        let counters = dispatch!(db, sql::counters())?;
        let serving = dispatch!(db, sql::serving_state())?;
        let samples_by_kind = dispatch!(db, sql::samples_by_kind())?;
        let pairs = dispatch!(db, sql::feedback_judge_pairs())?;
        Ok(Overview {
            counters,
            serving,
            samples_by_kind,
            agreement: agreement(&pairs),
        })
    }

    /// Counts of turns, next states, feedback and judgements per bucket over `[since, until)`.
    pub async fn dashboard_series(
        &self,
        since: Time,
        until: Time,
        bucket_seconds: i64,
    ) -> Result<TimeSeries, StoreError> {
        let bucket_seconds = bucket_seconds.max(1);
        let first = since.timestamp().div_euclid(bucket_seconds);
        let last = (until.timestamp() - 1)
            .div_euclid(bucket_seconds)
            .max(first);
        let len = (last - first + 1) as usize;
        let mut series = BTreeMap::new();
        for table in sql::SERIES_TABLES {
            let rows = dispatch!(self.db(), sql::bucket_counts(table, since, bucket_seconds))?;
            let mut counts = vec![0; len];
            for (bucket, n) in rows {
                if (first..=last).contains(&bucket) {
                    counts[(bucket - first) as usize] += n;
                }
            }
            series.insert(*table, counts);
        }
        let starts = (first..=last)
            .filter_map(|b| chrono::DateTime::from_timestamp(b * bucket_seconds, 0))
            .collect();
        Ok(TimeSeries {
            bucket_seconds,
            starts,
            series,
        })
    }

    pub async fn dashboard_sessions(
        &self,
        filter: &SessionFilter,
    ) -> Result<SessionPage, StoreError> {
        self.flush_briefly().await;
        let (data, total) = dispatch!(self.db(), sql::sessions(filter))?;
        Ok(SessionPage {
            data,
            total,
            limit: filter.limit,
            offset: filter.offset,
        })
    }

    /// A session (by row id, any key) with every turn, judgement and sample.
    pub async fn dashboard_timeline(&self, pk: i64) -> Result<Option<Timeline>, StoreError> {
        self.flush_briefly().await;
        let db = self.db();
        let filter = SessionFilter {
            limit: 1,
            ..SessionFilter::default()
        };
        let Some(session) = dispatch!(db, sql::session_row(pk, &filter))? else {
            return Ok(None);
        };
        let turns = dispatch!(db, queries::session_turns(pk, None, false))?;
        let mut judgements = dispatch!(db, sql::session_judgements(pk))?;
        let mut samples = dispatch!(db, sql::session_samples(pk))?;
        let turns = turns
            .into_iter()
            .map(|turn| TimelineTurn {
                judgements: judgements.remove(&turn.response_id).unwrap_or_default(),
                samples: samples.remove(&turn.response_id).unwrap_or_default(),
                turn,
            })
            .collect();
        Ok(Some(Timeline { session, turns }))
    }

    /// The newest `limit` steps, oldest first.
    pub async fn dashboard_steps(&self, limit: i64) -> Result<Vec<StepRow>, StoreError> {
        Ok(dispatch!(self.db(), sql::steps(limit))?)
    }

    /// Every policy version, newest first.
    pub async fn dashboard_versions(&self) -> Result<Vec<VersionRow>, StoreError> {
        self.versions().await
    }

    /// Feedback from the dashboard on any key's turn (the turn's own key is used).
    pub async fn admin_feedback(
        &self,
        response_id: &str,
        rating: Rating,
        correction: Option<String>,
    ) -> Result<FeedbackOutcome, StoreError> {
        let key = match self.pending_key(response_id) {
            Some(key) => Some(key),
            None => dispatch!(self.db(), sql::turn_key(response_id))?,
        };
        let Some(key) = key else {
            return Ok(FeedbackOutcome::UnknownTurn);
        };
        self.add_feedback(
            Some(&key),
            response_id,
            rating,
            correction,
            FeedbackSource::Dashboard,
        )
        .await
    }

    pub async fn live_cursor(&self) -> Result<LiveCursor, StoreError> {
        Ok(dispatch!(self.db(), sql::live_cursor())?)
    }

    /// Rows newer than `cursor`, oldest first, and the cursor past them.
    pub async fn live_events(
        &self,
        cursor: &LiveCursor,
    ) -> Result<(Vec<LiveEvent>, LiveCursor), StoreError> {
        let now = self.live_cursor().await?;
        if &now == cursor {
            return Ok((Vec::new(), now));
        }
        let mut next = cursor.clone();
        let mut events = Vec::new();
        let db: &Db = self.db();
        if now.turns > cursor.turns {
            next.turns = dispatch!(db, sql::live_turns(cursor.turns, &mut events))?;
        }
        if now.next_states > cursor.next_states {
            next.next_states =
                dispatch!(db, sql::live_next_states(cursor.next_states, &mut events))?;
        }
        if now.judgements > cursor.judgements {
            next.judgements = dispatch!(db, sql::live_judgements(cursor.judgements, &mut events))?;
        }
        if now.feedback > cursor.feedback {
            next.feedback = dispatch!(db, sql::live_feedback(cursor.feedback, &mut events))?;
        }
        if now.steps > cursor.steps {
            next.steps = dispatch!(db, sql::live_steps(cursor.steps, &mut events))?;
        }
        if now.versions > cursor.versions {
            next.versions = dispatch!(db, sql::live_versions(cursor.versions, &mut events))?;
        }
        if now.learner != cursor.learner {
            if let Some(state) = dispatch!(db, sql::serving_state())? {
                events.push(LiveEvent {
                    kind: "learner",
                    data: serde_json::to_value(state).unwrap_or(Value::Null),
                });
            }
            next.learner = now.learner;
        }
        Ok((events, next))
    }

    async fn flush_briefly(&self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.flush()).await;
    }
}

/// Latest feedback rating vs latest non-feedback judgement score, per turn.
/// `pairs` holds (turn id, rating, score) in insertion order.
fn agreement(pairs: &[(i64, String, Option<f64>)]) -> Agreement {
    let mut latest: BTreeMap<i64, (&str, Option<f64>)> = BTreeMap::new();
    for (turn, rating, score) in pairs {
        latest.insert(*turn, (rating.as_str(), *score));
    }
    let mut out = Agreement {
        pairs: latest.len() as i64,
        ..Agreement::default()
    };
    for (rating, score) in latest.values() {
        let want = if *rating == "up" { 1.0 } else { -1.0 };
        match score {
            Some(s) if *s != 0.0 => {
                if s.signum() == want {
                    out.agree += 1
                } else {
                    out.disagree += 1
                }
            }
            _ => out.abstained += 1,
        }
    }
    let decided = out.agree + out.disagree;
    out.rate = (decided > 0).then(|| out.agree as f64 / decided as f64);
    out
}

/// The first `max` characters of `text`, with an ellipsis when cut.
pub fn preview(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_uses_the_latest_of_each_and_skips_abstentions() {
        let pairs = vec![
            (1, "up".to_string(), Some(1.0)),
            (2, "down".to_string(), Some(1.0)),
            (3, "down".to_string(), Some(0.0)),
            (4, "up".to_string(), Some(-1.0)),
            (4, "down".to_string(), Some(-1.0)),
        ];
        let a = agreement(&pairs);
        assert_eq!((a.pairs, a.agree, a.disagree, a.abstained), (4, 2, 1, 1));
        assert!((a.rate.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(agreement(&[]).rate, None);
    }

    #[test]
    fn preview_cuts_on_characters() {
        assert_eq!(preview("héllo", 2), "hé…");
        assert_eq!(preview("hi", 5), "hi");
    }
}
