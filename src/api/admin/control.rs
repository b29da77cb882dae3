//! What the admin API asks of the learner: its status and the version actions. The real
//! learner (engine hot-swap + store) implements [`LearnerControl`]; without one, learning is
//! off and the actions answer a clear error.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// The learner as the dashboard shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LearnerStatus {
    /// Whether a learner is configured at all.
    pub enabled: bool,
    /// The policy version answering requests now (0 = the base model).
    pub serving_version: i64,
    /// The version serving is pinned to; None while following the latest promoted version.
    #[schema(required)]
    pub pinned_version: Option<i64>,
    pub following_latest: bool,
    /// rl | opd | combined | off
    pub mode: String,
    /// The judges in the order they are asked, e.g. ["feedback", "rules"].
    pub judge_chain: Vec<String>,
    /// Samples waiting for the next training step.
    pub samples_waiting: i64,
    /// A line for the admin, e.g. "judge: rules only (default model)".
    #[schema(required)]
    pub note: Option<String>,
}

impl LearnerStatus {
    /// What the API reports when no learner is configured.
    pub fn off() -> LearnerStatus {
        LearnerStatus {
            enabled: false,
            mode: "off".into(),
            following_latest: true,
            note: Some(
                "learning is off: this server logs turns but runs no learner, so versions cannot \
                 be changed here"
                    .into(),
            ),
            ..LearnerStatus::default()
        }
    }
}

/// The version actions of the admin API. Errors are shown to the admin as they are, so they
/// should say what went wrong and what to do (e.g. "version 7 was rejected by the guard: …").
pub trait LearnerControl: Send + Sync + 'static {
    fn status(&self) -> BoxFuture<'_, Result<LearnerStatus, String>>;
    /// Serve `version` (0 = the base model) now and pin it.
    fn rollback(&self, version: i64) -> BoxFuture<'_, Result<LearnerStatus, String>>;
    /// Keep serving `version` whatever later steps publish.
    fn pin(&self, version: i64) -> BoxFuture<'_, Result<LearnerStatus, String>>;
    /// Unpin: serve the latest promoted version from now on.
    fn follow_latest(&self) -> BoxFuture<'_, Result<LearnerStatus, String>>;
}
