//! The learner's options of `hindsight serve` (flags, `HINDSIGHT_…` variables, or the `[learn]`
//! table of the config file) and its start-up beside serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::watch;

use crate::api::admin::{LearnerControl, LearnerStatus};

use crate::engine::LocalEngine;
use crate::learn::guard::GuardConfig;
use crate::learn::judge::{
    default_chain, judge_from_config, local_judge, JudgeChain, LlmJudgeConfig, LlmJudgeOptions,
};
use crate::learn::loss::LossConfig;
use crate::learn::samples::LearnMode;
use crate::learn::service::{Learner, LearnerOptions};
use crate::learn::trainer::{Teacher, TrainerConfig};
use crate::model::lora::LoraConfig;
use crate::store::Store;

#[derive(Debug, Clone, Default, PartialEq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnFlags {
    /// What the trainer learns from: combined (RL + OPD), rl, opd, or off (log and judge only)
    /// [default: combined].
    #[arg(long, env = "HINDSIGHT_LEARN_MODE")]
    pub learn_mode: Option<LearnMode>,
    /// AdamW learning rate of the LoRA adapter [default: 3e-4].
    #[arg(long, env = "HINDSIGHT_LEARN_LR")]
    pub learn_lr: Option<f64>,
    /// Samples per training step [default: 16].
    #[arg(long, env = "HINDSIGHT_LEARN_BATCH")]
    pub learn_batch: Option<usize>,
    /// Fewest samples a step runs with once --learn-max-wait has passed [default: 4].
    #[arg(long, env = "HINDSIGHT_LEARN_MIN_BATCH")]
    pub learn_min_batch: Option<usize>,
    /// Seconds to wait for a full batch before training on a smaller one [default: 120].
    #[arg(long, env = "HINDSIGHT_LEARN_MAX_WAIT")]
    pub learn_max_wait: Option<f64>,
    /// Who scores responses under the hinted context: base (adapter off) or policy
    /// [default: base].
    #[arg(long, env = "HINDSIGHT_LEARN_TEACHER")]
    pub learn_teacher: Option<Teacher>,
    /// Bound C of the OPD advantage clip(log π_T − log π_old, −C, C) [default: 5].
    #[arg(long, env = "HINDSIGHT_LEARN_OPD_CLIP")]
    pub learn_opd_clip: Option<f64>,
    /// Coefficient of the k3 KL penalty to the base [default: 0].
    #[arg(long, env = "HINDSIGHT_LEARN_KL_COEF")]
    pub learn_kl_coef: Option<f64>,
    /// LoRA rank [default: 16].
    #[arg(long, env = "HINDSIGHT_LORA_RANK")]
    pub lora_rank: Option<usize>,
    /// LoRA alpha [default: 32].
    #[arg(long, env = "HINDSIGHT_LORA_ALPHA")]
    pub lora_alpha: Option<f64>,
    /// Largest mean KL to the base on the guard's probe set before a version is held back
    /// [default: 1.5].
    #[arg(long, env = "HINDSIGHT_GUARD_MAX_KL")]
    pub guard_max_kl: Option<f64>,
    /// An OpenAI-compatible base URL (…/v1) of a judge model (vLLM, Ollama, a hosted API).
    #[arg(long, env = "HINDSIGHT_JUDGE_URL")]
    pub judge_url: Option<String>,
    /// The judge model's id at --judge-url.
    #[arg(long, env = "HINDSIGHT_JUDGE_MODEL")]
    pub judge_model: Option<String>,
    /// The API key of --judge-url.
    #[arg(long, env = "HINDSIGHT_JUDGE_KEY")]
    pub judge_key: Option<String>,
    /// A PEM file of the CA that signed an https:// --judge-url's certificate (a private CA);
    /// public CAs are trusted without it.
    #[arg(long, env = "HINDSIGHT_JUDGE_CA_CERT")]
    pub judge_ca_cert: Option<PathBuf>,
    /// Votes per judged turn [default: 3].
    #[arg(long, env = "HINDSIGHT_JUDGE_VOTES")]
    pub judge_votes: Option<usize>,
    /// Also ask the served model itself (adapter off, background priority) when the rules
    /// abstain. Useful only with capable models.
    #[arg(long, env = "HINDSIGHT_JUDGE_LOCAL")]
    pub judge_local: Option<bool>,
}

impl LearnFlags {
    /// Flags win over the config file's `[learn]` table.
    pub fn or(self, file: LearnFlags) -> LearnFlags {
        LearnFlags {
            learn_mode: self.learn_mode.or(file.learn_mode),
            learn_lr: self.learn_lr.or(file.learn_lr),
            learn_batch: self.learn_batch.or(file.learn_batch),
            learn_min_batch: self.learn_min_batch.or(file.learn_min_batch),
            learn_max_wait: self.learn_max_wait.or(file.learn_max_wait),
            learn_teacher: self.learn_teacher.or(file.learn_teacher),
            learn_opd_clip: self.learn_opd_clip.or(file.learn_opd_clip),
            learn_kl_coef: self.learn_kl_coef.or(file.learn_kl_coef),
            lora_rank: self.lora_rank.or(file.lora_rank),
            lora_alpha: self.lora_alpha.or(file.lora_alpha),
            guard_max_kl: self.guard_max_kl.or(file.guard_max_kl),
            judge_url: self.judge_url.or(file.judge_url),
            judge_model: self.judge_model.or(file.judge_model),
            judge_key: self.judge_key.or(file.judge_key),
            judge_ca_cert: self.judge_ca_cert.or(file.judge_ca_cert),
            judge_votes: self.judge_votes.or(file.judge_votes),
            judge_local: self.judge_local.or(file.judge_local),
        }
    }

    pub fn mode(&self) -> LearnMode {
        self.learn_mode.unwrap_or(LearnMode::Combined)
    }

    /// Checks ranges and combinations; an error names the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = |name: &str, v: Option<f64>| match v {
            Some(x) if !(x.is_finite() && x > 0.0) => {
                anyhow::bail!("--{name} must be a positive number, got {x}")
            }
            _ => Ok(()),
        };
        positive("learn-lr", self.learn_lr)?;
        positive("learn-opd-clip", self.learn_opd_clip)?;
        positive("lora-alpha", self.lora_alpha)?;
        positive("guard-max-kl", self.guard_max_kl)?;
        if let Some(w) = self.learn_max_wait {
            if !(w.is_finite() && w >= 0.0) {
                anyhow::bail!("--learn-max-wait must be a number of seconds ≥ 0, got {w}");
            }
        }
        if self
            .learn_kl_coef
            .is_some_and(|k| !(k.is_finite() && k >= 0.0))
        {
            anyhow::bail!("--learn-kl-coef must be ≥ 0");
        }
        for (name, v) in [
            ("learn-batch", self.learn_batch),
            ("learn-min-batch", self.learn_min_batch),
            ("lora-rank", self.lora_rank),
            ("judge-votes", self.judge_votes),
        ] {
            if v == Some(0) {
                anyhow::bail!("--{name} must be at least 1");
            }
        }
        if self.judge_url.is_some() != self.judge_model.is_some() {
            anyhow::bail!("--judge-url and --judge-model go together: give both or neither");
        }
        if self.judge_ca_cert.is_some() && self.judge_url.is_none() {
            anyhow::bail!("--judge-ca-cert is for a --judge-url judge: give --judge-url too");
        }
        Ok(())
    }

    fn trainer_config(&self) -> TrainerConfig {
        let defaults = TrainerConfig::default();
        let lora_defaults = LoraConfig::default();
        TrainerConfig {
            mode: self.mode(),
            lr: self.learn_lr.unwrap_or(defaults.lr),
            teacher: self.learn_teacher.unwrap_or(defaults.teacher),
            loss: LossConfig {
                opd_clip: self.learn_opd_clip.unwrap_or(defaults.loss.opd_clip),
                kl_coef: self.learn_kl_coef.unwrap_or(defaults.loss.kl_coef),
                ..defaults.loss
            },
            lora: LoraConfig {
                rank: self.lora_rank.unwrap_or(lora_defaults.rank),
                alpha: self.lora_alpha.unwrap_or(lora_defaults.alpha),
                ..lora_defaults
            },
            ..defaults
        }
    }

    /// explicit feedback → rules → the configured LLM judge (a remote one, or the served model).
    fn judge_chain(&self, engine: &Arc<LocalEngine>) -> anyhow::Result<JudgeChain> {
        let votes = self.judge_votes.unwrap_or(3);
        let llm = match (&self.judge_url, &self.judge_model) {
            (Some(url), Some(model)) => Some(judge_from_config(&LlmJudgeConfig {
                api_key: self.judge_key.clone(),
                ca_cert: self.judge_ca_cert.clone(),
                votes,
                ..LlmJudgeConfig::new(url.clone(), model.clone())
            })?),
            _ if self.judge_local == Some(true) => {
                let backend: Arc<dyn crate::engine::Backend> = engine.clone();
                Some(local_judge(
                    backend,
                    LlmJudgeOptions {
                        votes,
                        ..LlmJudgeOptions::default()
                    },
                )?)
            }
            _ => None,
        };
        Ok(default_chain(llm))
    }
}

/// Starts the learner for a running engine and store.
pub async fn start_learner(
    flags: &LearnFlags,
    model_dir: &Path,
    data_dir: &Path,
    device: tch::Device,
    store: Store,
    engine: Arc<LocalEngine>,
) -> anyhow::Result<Arc<Learner>> {
    let chain = flags.judge_chain(&engine)?;
    let batch_size = flags.learn_batch.unwrap_or(16);
    let options = LearnerOptions {
        model_dir: PathBuf::from(model_dir),
        data_dir: PathBuf::from(data_dir),
        device,
        // The trainer's copy of the model gets the serving rope and window.
        trainer: TrainerConfig {
            model: engine.overrides().clone(),
            ..flags.trainer_config()
        },
        guard: GuardConfig {
            max_kl: flags.guard_max_kl.unwrap_or(GuardConfig::default().max_kl),
            ..GuardConfig::default()
        },
        batch_size,
        min_batch: flags.learn_min_batch.unwrap_or(4).min(batch_size),
        max_wait: Duration::from_secs_f64(flags.learn_max_wait.unwrap_or(120.0)),
        judge_workers: 2,
        poll: Duration::from_millis(500),
    };
    let learner = Learner::start(options, store, engine, chain).await?;
    tracing::info!(
        mode = learner.mode.as_str(),
        judges = ?learner.chain.describe(),
        "learner started"
    );
    Ok(learner)
}

/// The learner of `serve`: started at once when the store is reachable, otherwise in the
/// background once it is (serving does not wait for the database). The admin API sees it
/// through this slot either way.
pub struct LearnerSlot {
    learner: Arc<OnceLock<Arc<Learner>>>,
    mode: LearnMode,
    stop: watch::Sender<bool>,
    starting: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Starts the learner now if the store is connected (a failure is then fatal, as a bad judge
/// configuration should be); otherwise waits for the store in the background and retries a
/// failed start with backoff, logging each try.
pub async fn start_learner_when_ready(
    flags: &LearnFlags,
    model_dir: &Path,
    data_dir: &Path,
    device: tch::Device,
    store: Store,
    engine: Arc<LocalEngine>,
) -> anyhow::Result<Arc<LearnerSlot>> {
    let (stop, stop_rx) = watch::channel(false);
    let slot = LearnerSlot {
        learner: Arc::new(OnceLock::new()),
        mode: flags.mode(),
        stop,
        starting: Mutex::new(None),
    };
    if store.health().connected {
        let learner = start_learner(flags, model_dir, data_dir, device, store, engine).await?;
        let _ = slot.learner.set(learner);
        return Ok(Arc::new(slot));
    }
    // Judge configuration errors still stop `serve` at start-up.
    flags.judge_chain(&engine)?;
    tracing::warn!("learner: the store is unreachable; the learner starts once it is back");
    let (flags, model_dir, data_dir) = (
        flags.clone(),
        model_dir.to_path_buf(),
        data_dir.to_path_buf(),
    );
    let cell = Arc::clone(&slot.learner);
    let task = tokio::spawn(async move {
        let mut stop = stop_rx;
        let mut backoff = Duration::from_secs(1);
        loop {
            while !store.health().connected {
                if stopped_within(&mut stop, Duration::from_millis(250)).await {
                    return;
                }
            }
            let started = start_learner(
                &flags,
                &model_dir,
                &data_dir,
                device,
                store.clone(),
                Arc::clone(&engine),
            )
            .await;
            match started {
                Ok(learner) => {
                    let _ = cell.set(learner);
                    return;
                }
                Err(err) => {
                    tracing::warn!("learner: could not start, retrying in {backoff:?}: {err:#}")
                }
            }
            if stopped_within(&mut stop, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    });
    *slot.starting.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    Ok(Arc::new(slot))
}

/// Waits `wait`, or less if shutdown starts; true when it did.
async fn stopped_within(stop: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    let stopped = tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        changed = stop.wait_for(|s| *s) => changed.is_ok(),
    };
    stopped || *stop.borrow()
}

impl LearnerSlot {
    pub fn learner(&self) -> Option<&Arc<Learner>> {
        self.learner.get()
    }

    /// Stops a start still waiting for the store, then the learner if it runs.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        if let Some(learner) = self.learner.get() {
            learner.shutdown().await;
        }
    }

    fn waiting(&self) -> String {
        "the learner has not started yet: it waits for the database to be reachable".into()
    }
}

impl LearnerControl for LearnerSlot {
    fn status(&self) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        match self.learner.get() {
            Some(learner) => learner.status(),
            None => {
                let status = LearnerStatus {
                    enabled: true,
                    following_latest: true,
                    mode: self.mode.as_str().into(),
                    note: Some(self.waiting()),
                    ..LearnerStatus::default()
                };
                Box::pin(async move { Ok(status) })
            }
        }
    }

    fn rollback(&self, version: i64) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        match self.learner.get() {
            Some(learner) => learner.rollback(version),
            None => Box::pin(async move { Err(self.waiting()) }),
        }
    }

    fn pin(&self, version: i64) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        match self.learner.get() {
            Some(learner) => learner.pin(version),
            None => Box::pin(async move { Err(self.waiting()) }),
        }
    }

    fn follow_latest(&self) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        match self.learner.get() {
            Some(learner) => learner.follow_latest(),
            None => Box::pin(async move { Err(self.waiting()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_ca_cert_comes_from_the_learn_table_and_needs_a_judge_url() {
        let file: LearnFlags = toml::from_str(
            "judge_url = \"https://judge.internal/v1\"\njudge_model = \"m\"\n\
             judge_ca_cert = \"/etc/hindsight/ca.pem\"",
        )
        .unwrap();
        let flags = LearnFlags::default().or(file);
        assert_eq!(
            flags.judge_ca_cert.as_deref(),
            Some(Path::new("/etc/hindsight/ca.pem"))
        );
        assert!(flags.validate().is_ok());
        let alone = LearnFlags {
            judge_ca_cert: Some("ca.pem".into()),
            ..LearnFlags::default()
        };
        let err = alone.validate().unwrap_err();
        assert!(err.to_string().contains("--judge-ca-cert"), "{err}");
    }
}
