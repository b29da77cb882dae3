//! Starts the learner beside serving: judge workers on the runtime, the trainer on its own
//! thread, and the version control that hot-swaps adapters into the serving thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tch::Device;

use super::guard::GuardConfig;
use super::judge::JudgeChain;
use super::judging::JudgeWorker;
use super::samples::LearnMode;
use super::trainer::TrainerConfig;
use super::training::{TrainingLoop, TrainingOptions};
use super::versions::{ServingState, VersionControl};
use crate::engine::LocalEngine;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct LearnerOptions {
    pub model_dir: PathBuf,
    pub data_dir: PathBuf,
    pub device: Device,
    pub trainer: TrainerConfig,
    pub guard: GuardConfig,
    pub batch_size: usize,
    pub min_batch: usize,
    pub max_wait: Duration,
    /// Concurrent judge workers (1 on SQLite, whose writes are serial anyway).
    pub judge_workers: usize,
    pub poll: Duration,
}

/// The running learner; dropping it does not stop it, `shutdown` does.
pub struct Learner {
    pub versions: Arc<VersionControl>,
    pub chain: Arc<JudgeChain>,
    pub mode: LearnMode,
    pub(crate) store: Store,
    stop: Arc<AtomicBool>,
    trainer: Mutex<Option<JoinHandle<()>>>,
}

impl Learner {
    /// Restores the pinned or latest promoted version into serving, then starts the workers.
    pub async fn start(
        options: LearnerOptions,
        store: Store,
        engine: Arc<LocalEngine>,
        chain: JudgeChain,
    ) -> anyhow::Result<Arc<Learner>> {
        let versions = Arc::new(VersionControl::new(store.clone(), engine));
        let own_store = store.clone();
        let restored = versions.restore().await?;
        tracing::info!(?restored, "policy version restored");
        let stop = Arc::new(AtomicBool::new(false));
        let chain = Arc::new(chain);
        let mode = options.trainer.mode;
        let workers = if store.backend() == "sqlite" {
            1
        } else {
            options.judge_workers.max(1)
        };
        for i in 0..workers {
            let worker = JudgeWorker {
                name: format!("judge-{}-{i}", std::process::id()),
                store: store.clone(),
                chain: Arc::clone(&chain),
                mode,
                poll: options.poll,
                stop: Arc::clone(&stop),
            };
            tokio::spawn(worker.run());
        }
        let trainer = if mode == LearnMode::Off {
            None
        } else {
            let training = TrainingLoop::new(
                TrainingOptions {
                    model_dir: options.model_dir.clone(),
                    adapters_dir: options.data_dir.join("adapters"),
                    device: options.device,
                    trainer: options.trainer.clone(),
                    guard: options.guard.clone(),
                    batch_size: options.batch_size.max(1),
                    min_batch: options.min_batch.clamp(1, options.batch_size.max(1)),
                    max_wait: options.max_wait,
                    poll: options.poll,
                },
                store,
                Arc::clone(&versions),
                tokio::runtime::Handle::current(),
                Arc::clone(&stop),
            );
            Some(
                std::thread::Builder::new()
                    .name("hindsight-trainer".into())
                    .spawn(move || training.run())?,
            )
        };
        Ok(Arc::new(Learner {
            versions,
            chain,
            mode,
            store: own_store,
            stop,
            trainer: Mutex::new(trainer),
        }))
    }

    pub async fn state(&self) -> anyhow::Result<ServingState> {
        self.versions.state().await
    }

    /// Stops the workers; a step in progress finishes and is recorded first.
    pub async fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.trainer.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}
