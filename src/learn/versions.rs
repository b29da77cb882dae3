//! Which policy version serves: hot-swaps into the serving thread, roll back, pin, follow the
//! latest promoted version. Version 0 is the base model without an adapter.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{oneshot, Mutex};

use super::publish::read_verified;
use crate::engine::LocalEngine;
use crate::model::peft::AdapterSnapshot;
use crate::store::Store;

/// Statuses a version row can have.
pub const PROMOTED: &str = "promoted";
pub const REJECTED: &str = "rejected";
pub const ROLLED_BACK: &str = "rolled_back";
/// Its published adapter is missing, unreadable, fails its checksum or does not parse.
pub const BAD: &str = "bad";

/// A version's adapter as read from disk.
enum Loaded {
    /// None: the base model.
    Ready(Option<AdapterSnapshot>),
    Bad(anyhow::Error),
}

/// Where serving stands, as the admin API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServingState {
    pub serving_version: i64,
    pub pinned_version: Option<i64>,
    pub latest_promoted: i64,
}

/// The one place that changes the serving adapter; operations are serialised.
pub struct VersionControl {
    store: Store,
    engine: Arc<LocalEngine>,
    lock: Mutex<()>,
}

impl VersionControl {
    pub fn new(store: Store, engine: Arc<LocalEngine>) -> Self {
        Self {
            store,
            engine,
            lock: Mutex::new(()),
        }
    }

    pub async fn state(&self) -> anyhow::Result<ServingState> {
        let learner = self.store.learner_state().await?;
        Ok(ServingState {
            serving_version: learner.serving_version,
            pinned_version: learner.pinned_version,
            latest_promoted: self.latest_promoted().await?,
        })
    }

    /// The newest version that passed its guards (0 when none did).
    pub async fn latest_promoted(&self) -> anyhow::Result<i64> {
        Ok(self
            .store
            .versions()
            .await?
            .iter()
            .filter(|v| v.status == PROMOTED)
            .map(|v| v.version)
            .max()
            .unwrap_or(0))
    }

    /// Loads what should serve after a restart: the pinned version, else the latest promoted.
    /// A version whose adapter is bad is marked bad and the next older promoted version serves
    /// (the base when none is good), so a torn adapter never stops the server.
    pub async fn restore(&self) -> anyhow::Result<ServingState> {
        let _guard = self.lock.lock().await;
        let learner = self.store.learner_state().await?;
        let mut candidates: Vec<i64> = learner.pinned_version.into_iter().collect();
        let mut promoted: Vec<i64> = self
            .store
            .versions()
            .await?
            .iter()
            .filter(|v| v.status == PROMOTED)
            .map(|v| v.version)
            .collect();
        promoted.sort_unstable_by(|a, b| b.cmp(a));
        candidates.extend(promoted);
        candidates.push(0);
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|v| seen.insert(*v));
        for version in candidates {
            match self.load(version).await? {
                Loaded::Ready(snapshot) => {
                    self.swap(version, snapshot.map(Arc::new)).await?;
                    break;
                }
                Loaded::Bad(err) => {
                    self.mark_bad(version, &err).await;
                    if learner.pinned_version == Some(version) {
                        tracing::warn!(version, "the pinned version is bad; unpinning");
                        if let Err(e) = self.store.set_pinned(None).await {
                            tracing::warn!(error = %e, "could not unpin the bad version");
                        }
                    }
                }
            }
        }
        drop(_guard);
        self.state().await
    }

    /// Serves `version` now and pins it; the version it replaces, if newer, is marked rolled back.
    pub async fn rollback(&self, version: i64) -> anyhow::Result<ServingState> {
        let _guard = self.lock.lock().await;
        let before = self.store.learner_state().await?.serving_version;
        self.load_and_swap(version).await?;
        self.store.set_pinned(Some(version)).await?;
        if before > version {
            self.store
                .set_version_status(
                    before,
                    ROLLED_BACK,
                    Some(&format!("rolled back to {version}")),
                )
                .await?;
        }
        drop(_guard);
        self.state().await
    }

    /// Serves `version` and stops following new versions.
    pub async fn pin(&self, version: i64) -> anyhow::Result<ServingState> {
        let _guard = self.lock.lock().await;
        self.load_and_swap(version).await?;
        self.store.set_pinned(Some(version)).await?;
        drop(_guard);
        self.state().await
    }

    /// Unpins and serves the latest promoted version.
    pub async fn follow_latest(&self) -> anyhow::Result<ServingState> {
        let _guard = self.lock.lock().await;
        let latest = self.latest_promoted().await?;
        self.load_and_swap(latest).await?;
        self.store.set_pinned(None).await?;
        drop(_guard);
        self.state().await
    }

    /// A newly promoted version: served at once unless a version is pinned.
    pub async fn promoted(
        &self,
        version: i64,
        snapshot: Arc<AdapterSnapshot>,
    ) -> anyhow::Result<bool> {
        let _guard = self.lock.lock().await;
        if self.store.learner_state().await?.pinned_version.is_some() {
            return Ok(false);
        }
        self.swap(version, Some(snapshot)).await?;
        Ok(true)
    }

    /// The adapter of a version (None for the base), read from its published directory and
    /// checked against its recorded checksum. A bad adapter is marked bad and is an error.
    pub async fn snapshot_of(&self, version: i64) -> anyhow::Result<Option<AdapterSnapshot>> {
        match self.load(version).await? {
            Loaded::Ready(snapshot) => Ok(snapshot),
            Loaded::Bad(err) => {
                self.mark_bad(version, &err).await;
                Err(err.context(format!("policy version {version} is bad")))
            }
        }
    }

    /// Reads `version`'s adapter; the outer error is the store's, `Loaded::Bad` the adapter's.
    async fn load(&self, version: i64) -> anyhow::Result<Loaded> {
        if version == 0 {
            return Ok(Loaded::Ready(None));
        }
        let row = self
            .store
            .version(version)
            .await?
            .with_context(|| format!("there is no policy version {version}"))?;
        let (path, checksum) = (row.path.clone(), row.checksum.clone());
        let read = tokio::task::spawn_blocking(move || {
            read_verified(Path::new(&path), checksum.as_deref())
        })
        .await
        .context("adapter loader panicked")?;
        Ok(match read {
            Ok(snapshot) => Loaded::Ready(Some(snapshot)),
            Err(err) => Loaded::Bad(err),
        })
    }

    /// Logs a bad adapter and records it on the version; a store error is only logged, so a
    /// database outage never turns a bad adapter into a failed start.
    async fn mark_bad(&self, version: i64, err: &anyhow::Error) {
        let reason = format!("{err:#}");
        tracing::error!(version, %reason, "policy version's adapter is bad; it will not serve");
        metrics::counter!("hindsight_bad_adapters_total").increment(1);
        if let Err(e) = self
            .store
            .set_version_status(version, BAD, Some(&reason))
            .await
        {
            tracing::warn!(version, error = %e, "could not mark the version bad");
        }
    }

    /// Swaps to `version`; a bad adapter is marked bad and the serving version stays.
    async fn load_and_swap(&self, version: i64) -> anyhow::Result<()> {
        let snapshot = self.snapshot_of(version).await?;
        self.swap(version, snapshot.map(Arc::new)).await
    }

    /// Installs the adapter on the serving thread between decode steps; new requests get it.
    async fn swap(
        &self,
        version: i64,
        snapshot: Option<Arc<AdapterSnapshot>>,
    ) -> anyhow::Result<()> {
        let (done, result) = oneshot::channel();
        self.engine
            .handle()
            .update(move |model| {
                let outcome = model.install_adapter(version as u64, snapshot.as_deref());
                let reply = outcome.clone();
                let _ = done.send(reply);
                outcome.map(|()| version as u64)
            })
            .map_err(|e| anyhow::anyhow!("cannot reach the serving thread: {e}"))?;
        result
            .await
            .context("the serving thread stopped during the swap")?
            .map_err(|e| anyhow::anyhow!("installing version {version} failed: {e}"))?;
        self.store.set_serving_version(version).await?;
        tracing::info!(version, "serving policy version");
        metrics::gauge!("hindsight_policy_version").set(version as f64);
        Ok(())
    }
}
