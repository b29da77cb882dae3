//! The admin API's view of the learner: status and the version actions.

use futures::future::BoxFuture;
use futures::FutureExt;

use super::service::Learner;
use super::versions::REJECTED;
use crate::api::admin::control::{LearnerControl, LearnerStatus};

impl Learner {
    async fn status_now(&self) -> anyhow::Result<LearnerStatus> {
        let state = self.versions.state().await?;
        let judge_chain = self.chain.describe();
        let llm = judge_chain
            .iter()
            .any(|j| !matches!(j.as_str(), "feedback" | "rules"));
        let note = (!llm).then(|| {
            "judge: explicit feedback and rules only (no LLM judge configured; the default \
             135M model is too small to judge)"
                .to_string()
        });
        Ok(LearnerStatus {
            enabled: true,
            serving_version: state.serving_version,
            pinned_version: state.pinned_version,
            following_latest: state.pinned_version.is_none(),
            mode: self.mode.as_str().into(),
            judge_chain,
            samples_waiting: self.store.count_unused_samples().await?,
            note,
        })
    }

    /// Refuses versions that do not exist or that the guard held back.
    async fn check_servable(&self, version: i64) -> anyhow::Result<()> {
        if version == 0 {
            return Ok(());
        }
        match self.store.version(version).await? {
            None => anyhow::bail!("there is no policy version {version}"),
            Some(row) if row.status == REJECTED => anyhow::bail!(
                "version {version} was rejected by the guard ({}); it cannot be served",
                row.reason.as_deref().unwrap_or("no reason recorded")
            ),
            Some(_) => Ok(()),
        }
    }
}

fn message(err: anyhow::Error) -> String {
    format!("{err:#}")
}

impl LearnerControl for Learner {
    fn status(&self) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        async move { self.status_now().await.map_err(message) }.boxed()
    }

    fn rollback(&self, version: i64) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        async move {
            self.check_servable(version).await.map_err(message)?;
            self.versions.rollback(version).await.map_err(message)?;
            self.status_now().await.map_err(message)
        }
        .boxed()
    }

    fn pin(&self, version: i64) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        async move {
            self.check_servable(version).await.map_err(message)?;
            self.versions.pin(version).await.map_err(message)?;
            self.status_now().await.map_err(message)
        }
        .boxed()
    }

    fn follow_latest(&self) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        async move {
            self.versions.follow_latest().await.map_err(message)?;
            self.status_now().await.map_err(message)
        }
        .boxed()
    }
}
