//! The store's read side and the writes that answer a request (feedback, session delete).

use std::time::Duration;

use super::db::dispatch;
use super::error::StoreError;
use super::handle::Store;
use super::ops::{FeedbackSource, NewFeedback, Rating, WriteOp};
use super::queries;
use super::views::{FeedbackView, SessionDetail, SessionSummary, TurnView};

type Time = chrono::DateTime<chrono::Utc>;

/// How long a request waits for queued turns to land before it reads.
const READ_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq)]
pub enum FeedbackOutcome {
    /// Written.
    Stored(FeedbackView),
    /// The turn is still being written: the feedback is queued right behind it.
    Queued(FeedbackView),
    /// No turn with that response id for this key.
    UnknownTurn,
}

impl Store {
    /// Records feedback on `response_id` if it belongs to `key` (None = auth off).
    pub async fn add_feedback(
        &self,
        key: Option<&str>,
        response_id: &str,
        rating: Rating,
        correction: Option<String>,
        source: FeedbackSource,
    ) -> Result<FeedbackOutcome, StoreError> {
        let key = key.unwrap_or("");
        let feedback = NewFeedback {
            feedback_id: format!("fb_{}", uuid::Uuid::now_v7().simple()),
            response_id: response_id.to_string(),
            key_id: key.to_string(),
            rating,
            correction,
            source,
            created_at: chrono::Utc::now(),
        };
        let view = FeedbackView {
            id: feedback.feedback_id.clone(),
            object: "feedback",
            response_id: feedback.response_id.clone(),
            rating: rating.as_str().to_string(),
            correction: feedback.correction.clone(),
            source: source.as_str().to_string(),
            created_at: feedback.created_at,
        };
        // Pending first: the entry is removed only after the turn commits, so a miss here
        // means the database has the final answer.
        if let Some(owner) = self.pending_key(response_id) {
            if owner != key {
                return Ok(FeedbackOutcome::UnknownTurn);
            }
            self.enqueue(WriteOp::Feedback { feedback });
            return Ok(FeedbackOutcome::Queued(view));
        }
        if dispatch!(self.db(), queries::add_feedback(&feedback))? {
            Ok(FeedbackOutcome::Stored(view))
        } else {
            Ok(FeedbackOutcome::UnknownTurn)
        }
    }

    /// Feedback on one of `key`'s turns; None when the turn is unknown to that key.
    pub async fn feedback(
        &self,
        key: Option<&str>,
        response_id: &str,
    ) -> Result<Option<Vec<FeedbackView>>, StoreError> {
        let key = key.unwrap_or("");
        if self.pending_key(response_id).is_some() {
            self.flush_for_read().await;
        }
        let Some(turn_id) = dispatch!(self.db(), queries::turn_for_key(response_id, key))? else {
            return Ok(None);
        };
        Ok(Some(dispatch!(
            self.db(),
            queries::feedback_for_turn(turn_id)
        )?))
    }

    pub async fn sessions(
        &self,
        key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        self.flush_for_read().await;
        let key = key.unwrap_or("");
        Ok(dispatch!(self.db(), queries::list_sessions(key, limit))?)
    }

    /// One of `key`'s sessions with its turns in order (no token arrays).
    pub async fn session(
        &self,
        key: Option<&str>,
        session_id: &str,
    ) -> Result<Option<SessionDetail>, StoreError> {
        self.flush_for_read().await;
        let key = key.unwrap_or("");
        let Some((pk, session)) = dispatch!(self.db(), queries::find_session(key, session_id))?
        else {
            return Ok(None);
        };
        let turns = dispatch!(self.db(), queries::session_turns(pk, None, false))?;
        Ok(Some(SessionDetail { session, turns }))
    }

    /// Deletes one of `key`'s sessions and everything derived from its turns.
    pub async fn delete_session(
        &self,
        key: Option<&str>,
        session_id: &str,
    ) -> Result<bool, StoreError> {
        self.flush_for_read().await;
        let key = key.unwrap_or("");
        Ok(dispatch!(
            self.db(),
            queries::delete_session(key, session_id)
        )?)
    }

    /// Sessions of every key for export: all, one id, or those active since a time.
    pub async fn export_sessions(
        &self,
        since: Option<Time>,
        session_id: Option<&str>,
    ) -> Result<Vec<(i64, SessionSummary)>, StoreError> {
        Ok(dispatch!(
            self.db(),
            queries::export_sessions(since, session_id)
        )?)
    }

    /// A session's turns with token ids and log-probs, for export and the learner.
    pub async fn export_turns(
        &self,
        session_pk: i64,
        since: Option<Time>,
    ) -> Result<Vec<TurnView>, StoreError> {
        Ok(dispatch!(
            self.db(),
            queries::session_turns(session_pk, since, true)
        )?)
    }

    /// Row count of a table in `queries::COUNTABLE` (tests, benchmarks, metrics).
    pub async fn count(&self, table: &str) -> Result<i64, StoreError> {
        Ok(dispatch!(self.db(), queries::count_rows(table))?)
    }

    async fn flush_for_read(&self) {
        let _ = tokio::time::timeout(READ_FLUSH_TIMEOUT, self.flush()).await;
    }
}
