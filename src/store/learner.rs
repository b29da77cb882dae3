//! The learner's side of the store: judge claims, judgements, training samples, steps, policy
//! versions and which version serves. These calls go straight to the database (the learner
//! is not on the serving path), unlike `record`, which only enqueues.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::db::dispatch;
use super::error::StoreError;
use super::handle::Store;
use super::learner_queries;
use super::views::{FeedbackView, NextStateView};

pub type Time = chrono::DateTime<chrono::Utc>;

/// Who holds a judge claim on a turn, and since when. Only the current holder may record
/// the outcome: a worker whose lease ran out and was reclaimed by another writes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JudgeClaim {
    pub turn_id: i64,
    pub worker: String,
    /// When the claim was taken: the judged inputs (next state, feedback) are as of this time.
    /// It becomes the turn's `judged_at`, so feedback that lands while a judge runs makes the
    /// turn claimable again.
    pub claimed_at: Time,
    pub until: Time,
}

/// A main turn ready to be judged, with everything a judge and the sample builder need.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgeTask {
    pub claim: JudgeClaim,
    pub turn_id: i64,
    pub response_id: String,
    pub key_id: String,
    pub turn_type: String,
    pub messages: Value,
    pub tools: Option<Value>,
    pub response_text: String,
    pub response_tool_calls: Option<Value>,
    pub prompt_token_ids: Vec<u32>,
    pub response_token_ids: Vec<u32>,
    pub response_logprobs: Vec<f32>,
    pub policy_version: i64,
    /// Empty when only feedback made the turn judgeable.
    pub next_state: Vec<NextStateView>,
    /// Oldest first.
    pub feedback: Vec<FeedbackView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewJudgement {
    /// Which judge decided (e.g. `rules`, `openai:gpt-4o-mini`).
    pub judge: String,
    /// `feedback` | `rules` | `local` | `openai`.
    pub source: String,
    pub votes: Value,
    pub score: Option<f64>,
    pub hint: Option<String>,
    pub hint_votes: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewSample {
    pub policy_version: i64,
    pub reward: f64,
    /// `rl` | `opd` | `both`.
    pub kind: String,
    pub hint: Option<String>,
}

/// A training sample not yet used by a step, joined with its turn's tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleRow {
    pub id: i64,
    pub turn_id: i64,
    pub kind: String,
    pub reward: f64,
    pub hint: Option<String>,
    pub policy_version: i64,
    pub messages: Value,
    pub tools: Option<Value>,
    pub prompt_token_ids: Vec<u32>,
    pub response_token_ids: Vec<u32>,
    pub response_logprobs: Vec<f32>,
    /// The turn's sampling parameters as logged (with its `constraint` and `logit_bias`).
    pub sampling: Value,
    pub created_at: Time,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewStep {
    pub step: i64,
    pub policy_version: i64,
    /// The version this step published, if any (a step may train without publishing).
    pub created_version: Option<i64>,
    pub metrics: Value,
    /// Samples consumed: marked `used_in_step = step` in the same transaction.
    pub sample_ids: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    pub id: i64,
    pub step: i64,
    pub policy_version: i64,
    pub created_version: Option<i64>,
    pub metrics: Value,
    pub created_at: Time,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewVersion {
    pub version: i64,
    pub step: Option<i64>,
    pub path: String,
    /// e.g. `candidate`, `promoted`, `rejected`.
    pub status: String,
    pub reason: Option<String>,
    pub guard: Option<Value>,
    pub metrics: Option<Value>,
    /// SHA-256 of the published adapter files (hex); None when not recorded.
    pub checksum: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionRow {
    pub version: i64,
    pub step: Option<i64>,
    pub path: String,
    pub status: String,
    pub reason: Option<String>,
    pub guard: Option<Value>,
    pub metrics: Option<Value>,
    /// SHA-256 of the published adapter files (hex); None on versions published before it.
    pub checksum: Option<String>,
    pub created_at: Time,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LearnerState {
    /// None: follow the latest promoted version.
    pub pinned_version: Option<i64>,
    pub serving_version: i64,
    pub updated_at: Time,
}

/// Timestamps are compared for equality (claim identity): keep the precision both backends
/// store (microseconds on Postgres).
fn micros(t: Time) -> Time {
    use chrono::SubsecRound;
    t.trunc_subsecs(6)
}

impl Store {
    /// Claims up to `limit` main turns that have a next state or feedback and are not judged
    /// yet (or were judged before their newest feedback), whose claim is free or expired.
    /// Side turns are never claimed. Concurrent claimers get disjoint sets.
    pub async fn claim_judge_tasks(
        &self,
        worker: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<JudgeTask>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lease = chrono::Duration::from_std(lease)
            .map_err(|_| StoreError::Invalid(format!("judge lease too long: {lease:?}")))?;
        let now = micros(chrono::Utc::now());
        let claim = JudgeClaim {
            turn_id: 0,
            worker: worker.to_string(),
            claimed_at: now,
            until: micros(now + lease),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(dispatch!(
            self.db(),
            learner_queries::claim_judge_tasks(&claim, limit)
        )?)
    }

    /// Stores a judgement (and the training sample it yields, if any) in one transaction: the
    /// turn's `judged_at` becomes `claim.claimed_at` and the claim is cleared. Returns false,
    /// writing nothing, when `claim` is no longer held (lease expired and reclaimed).
    pub async fn record_judgement(
        &self,
        claim: &JudgeClaim,
        judgement: &NewJudgement,
        sample: Option<&NewSample>,
    ) -> Result<bool, StoreError> {
        if let Some(kind) = sample.map(|s| s.kind.as_str()) {
            if !matches!(kind, "rl" | "opd" | "both") {
                return Err(StoreError::Invalid(format!(
                    "sample kind must be rl, opd or both, not `{kind}`"
                )));
            }
        }
        Ok(dispatch!(
            self.db(),
            learner_queries::record_judgement(claim, judgement, sample)
        )?)
    }

    /// Gives a claim back without judging (the turn is claimable again at once).
    pub async fn release_judge_claim(&self, claim: &JudgeClaim) -> Result<(), StoreError> {
        Ok(dispatch!(
            self.db(),
            learner_queries::release_judge_claim(claim)
        )?)
    }

    /// Marks a turn judged with no judgement row (every judge abstained): it is not claimed
    /// again unless new feedback arrives. False when `claim` is no longer held.
    pub async fn skip_judging(&self, claim: &JudgeClaim) -> Result<bool, StoreError> {
        Ok(dispatch!(self.db(), learner_queries::skip_judging(claim))?)
    }

    /// Samples not used by any step yet, oldest first.
    pub async fn unused_samples(&self, limit: usize) -> Result<Vec<SampleRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(dispatch!(
            self.db(),
            learner_queries::unused_samples(limit)
        )?)
    }

    pub async fn count_unused_samples(&self) -> Result<i64, StoreError> {
        Ok(dispatch!(
            self.db(),
            learner_queries::count_unused_samples()
        )?)
    }

    /// Records a training step and marks its samples used, in one transaction.
    pub async fn record_step(&self, step: &NewStep) -> Result<(), StoreError> {
        Ok(dispatch!(self.db(), learner_queries::record_step(step))?)
    }

    /// The latest `limit` steps, newest first.
    pub async fn steps(&self, limit: usize) -> Result<Vec<StepRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(dispatch!(self.db(), learner_queries::steps(limit))?)
    }

    /// Adds a policy version; an existing version number is an error.
    pub async fn insert_version(&self, version: &NewVersion) -> Result<(), StoreError> {
        Ok(dispatch!(
            self.db(),
            learner_queries::insert_version(version)
        )?)
    }

    pub async fn set_version_status(
        &self,
        version: i64,
        status: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let found = dispatch!(
            self.db(),
            learner_queries::set_version_status(version, status, reason)
        )?;
        if found {
            Ok(())
        } else {
            Err(StoreError::UnknownVersion(version))
        }
    }

    /// Every version, newest first.
    pub async fn versions(&self) -> Result<Vec<VersionRow>, StoreError> {
        Ok(dispatch!(self.db(), learner_queries::versions(None))?)
    }

    pub async fn version(&self, version: i64) -> Result<Option<VersionRow>, StoreError> {
        let rows = dispatch!(self.db(), learner_queries::versions(Some(version)))?;
        Ok(rows.into_iter().next())
    }

    /// The highest version number, 0 when none was published (the base model).
    pub async fn latest_version_number(&self) -> Result<i64, StoreError> {
        Ok(dispatch!(self.db(), learner_queries::latest_version())?)
    }

    pub async fn learner_state(&self) -> Result<LearnerState, StoreError> {
        Ok(dispatch!(self.db(), learner_queries::learner_state())?)
    }

    /// Pins serving to a version (it must exist; 0 is the base model), or None to follow the
    /// latest promoted version.
    pub async fn set_pinned(&self, version: Option<i64>) -> Result<(), StoreError> {
        if let Some(v) = version {
            if v != 0 && self.version(v).await?.is_none() {
                return Err(StoreError::UnknownVersion(v));
            }
        }
        Ok(dispatch!(self.db(), learner_queries::set_pinned(version))?)
    }

    pub async fn set_serving_version(&self, version: i64) -> Result<(), StoreError> {
        Ok(dispatch!(
            self.db(),
            learner_queries::set_serving_version(version)
        )?)
    }
}
