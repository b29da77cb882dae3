//! The training loop on its own thread: waits for enough judged samples, runs a step, publishes
//! the next version, checks it against the guard and hands it to serving when it passes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tch::Device;

use super::guard::{
    distinct_trigrams, greedy_replies, reply_kl, verdict, GuardConfig, GuardReport, ProbeResult,
};
use super::publish::{adapter_checksum, write_version};
use super::samples::{sampling_transform, TrainingSample};
use super::trainer::{StepMetrics, Trainer, TrainerConfig};
use super::versions::{VersionControl, PROMOTED, REJECTED};
use crate::store::{NewStep, NewVersion, SampleRow, Store};

/// When a step runs and where versions go.
#[derive(Debug, Clone)]
pub struct TrainingOptions {
    pub model_dir: PathBuf,
    pub adapters_dir: PathBuf,
    pub device: Device,
    pub trainer: TrainerConfig,
    pub guard: GuardConfig,
    /// A step runs as soon as this many samples wait...
    pub batch_size: usize,
    /// ...or after `max_wait` with at least this many.
    pub min_batch: usize,
    pub max_wait: Duration,
    pub poll: Duration,
}

/// Guard probes: their prompts and the base model's greedy replies, computed once.
pub(crate) struct Probes {
    pub prompts: Vec<Vec<u32>>,
    pub base_tokens: Vec<usize>,
    pub base_degenerate: Vec<bool>,
}

pub struct TrainingLoop {
    options: TrainingOptions,
    store: Store,
    versions: Arc<VersionControl>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
}

impl TrainingLoop {
    pub fn new(
        options: TrainingOptions,
        store: Store,
        versions: Arc<VersionControl>,
        runtime: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            options,
            store,
            versions,
            runtime,
            stop,
        }
    }

    /// Runs until `stop` is set. Errors of one step are logged and the loop goes on.
    pub fn run(self) {
        let mut trainer = match self.start_trainer() {
            Ok(t) => t,
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "the trainer could not start; learning is off");
                return;
            }
        };
        // The base's probe replies are computed at the first step, not at start-up.
        let mut probes: Option<Probes> = None;
        let mut waiting_since: Option<Instant> = None;
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(self.options.poll);
            let waiting = match self.runtime.block_on(self.store.count_unused_samples()) {
                Ok(n) => n as usize,
                Err(err) => {
                    tracing::warn!(%err, "counting samples failed");
                    continue;
                }
            };
            metrics::gauge!("hindsight_train_samples_waiting").set(waiting as f64);
            if waiting == 0 {
                waiting_since = None;
                continue;
            }
            let since = *waiting_since.get_or_insert_with(Instant::now);
            let due = waiting >= self.options.batch_size
                || (waiting >= self.options.min_batch && since.elapsed() >= self.options.max_wait);
            if !due {
                continue;
            }
            waiting_since = None;
            if probes.is_none() {
                match base_probes(&trainer, &self.options.guard) {
                    Ok(p) => probes = Some(p),
                    Err(err) => {
                        tracing::error!(error = %format!("{err:#}"), "guard probes failed");
                        continue;
                    }
                }
            }
            let Some(probes) = probes.as_ref() else {
                continue;
            };
            if let Err(err) = self.one_step(&mut trainer, probes) {
                tracing::error!(error = %format!("{err:#}"), "training step failed");
            }
        }
    }

    fn start_trainer(&self) -> anyhow::Result<Trainer> {
        let serving = self
            .runtime
            .block_on(self.versions.state())?
            .serving_version;
        let initial = self.runtime.block_on(self.versions.snapshot_of(serving))?;
        Trainer::new(
            &self.options.model_dir,
            self.options.device,
            self.options.trainer.clone(),
            initial.as_ref(),
        )
    }

    fn one_step(&self, trainer: &mut Trainer, probes: &Probes) -> anyhow::Result<()> {
        let rows = self
            .runtime
            .block_on(self.store.unused_samples(self.options.batch_size))?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut unreadable = 0;
        let samples: Vec<TrainingSample> = rows
            .iter()
            .filter_map(|row| match to_sample(row) {
                Ok(sample) => Some(sample),
                Err(err) => {
                    // Consumed with the step like any skipped sample, so it is not retried.
                    tracing::warn!(sample = row.id, error = %err, "sample skipped");
                    unreadable += 1;
                    None
                }
            })
            .collect();
        let serving = self
            .runtime
            .block_on(self.versions.state())?
            .serving_version;
        let step_number = self
            .runtime
            .block_on(self.store.steps(1))?
            .first()
            .map_or(1, |s| s.step + 1);
        let sample_ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let metrics = match trainer.step(&samples) {
            Ok(mut metrics) => {
                metrics.samples_skipped += unreadable;
                metrics
            }
            Err(err) => {
                // Recorded with its samples consumed, so one bad batch is not retried forever.
                let message = format!("{err:#}");
                self.runtime.block_on(self.store.record_step(&NewStep {
                    step: step_number,
                    policy_version: serving,
                    created_version: None,
                    metrics: json!({ "error": message }),
                    sample_ids,
                }))?;
                anyhow::bail!("training step {step_number} failed: {message}");
            }
        };
        let trained = metrics.tokens > 0;
        let mut created_version = None;
        if trained {
            let version = self.runtime.block_on(self.store.latest_version_number())? + 1;
            let snapshot = trainer.snapshot();
            let report = guard_report(trainer, probes, &self.options.guard)?;
            let path = write_version(&self.options.adapters_dir, version, &snapshot)?;
            let checksum = adapter_checksum(&path)?;
            let status = if report.passed { PROMOTED } else { REJECTED };
            self.runtime
                .block_on(self.store.insert_version(&NewVersion {
                    version,
                    step: Some(step_number),
                    path: path.display().to_string(),
                    status: status.into(),
                    reason: report.reason.clone(),
                    guard: Some(serde_json::to_value(&report)?),
                    metrics: Some(serde_json::to_value(&metrics)?),
                    checksum: Some(checksum),
                }))?;
            created_version = Some(version);
            if report.passed {
                self.runtime
                    .block_on(self.versions.promoted(version, Arc::new(snapshot)))?;
            } else {
                tracing::warn!(version, reason = ?report.reason, "version rejected by the guard; training goes on from the serving version");
                let serving_now = self
                    .runtime
                    .block_on(self.versions.state())?
                    .serving_version;
                let back = self
                    .runtime
                    .block_on(self.versions.snapshot_of(serving_now))?;
                trainer.reset_to(back.as_ref())?;
            }
        }
        self.runtime.block_on(self.store.record_step(&NewStep {
            step: step_number,
            policy_version: serving,
            created_version,
            metrics: step_json(&metrics),
            sample_ids,
        }))?;
        publish_metrics(&metrics);
        tracing::info!(
            step = step_number,
            ?created_version,
            loss = metrics.loss,
            tokens = metrics.tokens,
            seconds = metrics.step_seconds,
            "training step"
        );
        Ok(())
    }
}

/// The guard's baseline: the probe prompts and the base model's greedy replies to them.
pub(crate) fn base_probes(trainer: &Trainer, guard: &GuardConfig) -> anyhow::Result<Probes> {
    let prompts = probe_prompts(trainer, guard)?;
    let eos = trainer.tokenizer().eos_token_ids();
    let base = greedy_replies(trainer.model(), &prompts, guard.max_new_tokens, &eos, false)?;
    let min = guard.min_distinct_trigrams;
    Ok(Probes {
        prompts,
        base_tokens: base.iter().map(Vec::len).collect(),
        base_degenerate: base
            .iter()
            .map(|r| r.is_empty() || distinct_trigrams(r) < min)
            .collect(),
    })
}

fn probe_prompts(trainer: &Trainer, guard: &GuardConfig) -> anyhow::Result<Vec<Vec<u32>>> {
    guard
        .probes
        .iter()
        .map(|p| trainer.chat_prompt(&[json!({"role": "user", "content": p})], None))
        .collect()
}

/// The candidate (the trainer's current adapter) answers the probes; the guard decides.
pub(crate) fn guard_report(
    trainer: &Trainer,
    probes: &Probes,
    config: &GuardConfig,
) -> anyhow::Result<GuardReport> {
    let eos = trainer.tokenizer().eos_token_ids();
    let replies = greedy_replies(
        trainer.model(),
        &probes.prompts,
        config.max_new_tokens,
        &eos,
        true,
    )?;
    let mut results = Vec::new();
    for (i, reply) in replies.iter().enumerate() {
        results.push(ProbeResult {
            prompt: config.probes[i].clone(),
            reply: trainer.tokenizer().decode(reply)?,
            tokens: reply.len(),
            base_tokens: probes.base_tokens[i],
            kl: reply_kl(trainer.model(), &probes.prompts[i], reply)?,
            distinct_trigrams: distinct_trigrams(reply),
            base_degenerate: probes.base_degenerate[i],
        });
    }
    Ok(verdict(config, results))
}

/// The sample of a stored row; an error when the turn's constraint or logit bias is unreadable.
fn to_sample(row: &SampleRow) -> Result<TrainingSample, String> {
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let (constraint, logit_bias) = sampling_transform(&row.sampling)?;
    Ok(TrainingSample {
        id: row.id,
        messages: list(&row.messages),
        tools: row.tools.as_ref().map(list),
        prompt_ids: row.prompt_token_ids.clone(),
        response_ids: row.response_token_ids.clone(),
        behaviour_logprobs: row.response_logprobs.clone(),
        policy_version: row.policy_version,
        reward: row.reward,
        hint: row.hint.clone(),
        constraint,
        logit_bias,
    })
}

/// The step's metrics under the keys the dashboard reads.
fn step_json(m: &StepMetrics) -> Value {
    json!({
        "loss": m.loss,
        "clip_fraction": m.clip_fraction,
        "kl": m.kl,
        "kl_to_base": m.kl_to_base,
        "mean_reward": m.mean_reward,
        "mean_teacher_advantage": m.mean_teacher_advantage,
        "samples_rl": m.samples_rl,
        "samples_opd": m.samples_opd,
        "samples_both": m.samples_both,
        "samples_skipped": m.samples_skipped,
        "grad_norm": m.grad_norm,
        "tokens": m.tokens,
        "step_seconds": m.step_seconds,
    })
}

fn publish_metrics(m: &StepMetrics) {
    metrics::counter!("hindsight_train_steps_total").increment(1);
    metrics::gauge!("hindsight_train_loss").set(m.loss);
    metrics::gauge!("hindsight_train_clip_fraction").set(m.clip_fraction);
    metrics::gauge!("hindsight_train_kl").set(m.kl);
    metrics::gauge!("hindsight_train_mean_reward").set(m.mean_reward);
    metrics::gauge!("hindsight_train_grad_norm").set(m.grad_norm);
    metrics::gauge!("hindsight_train_step_seconds").set(m.step_seconds);
    metrics::counter!("hindsight_train_tokens_total").increment(m.tokens as u64);
    for (kind, n) in [
        ("rl", m.samples_rl),
        ("opd", m.samples_opd),
        ("both", m.samples_both),
    ] {
        metrics::counter!("hindsight_train_samples_total", "kind" => kind).increment(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::grammar::Constraint;

    fn row(sampling: Value) -> SampleRow {
        SampleRow {
            id: 3,
            turn_id: 9,
            kind: "rl".into(),
            reward: 1.0,
            hint: None,
            policy_version: 2,
            messages: json!([{"role": "user", "content": "hi"}]),
            tools: None,
            prompt_token_ids: vec![1, 2],
            response_token_ids: vec![5, 6],
            response_logprobs: vec![-0.5, 0.0],
            sampling,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn rows_carry_their_constraint_and_bias_into_samples() {
        let plain = to_sample(&row(json!({"temperature": 1.0}))).unwrap();
        assert_eq!((plain.constraint, plain.logit_bias), (None, vec![]));
        let schema = json!({"type": "object"});
        let sampling = json!({
            "temperature": 1.0,
            "constraint": {"kind": "json_schema", "grammar": schema},
            "logit_bias": [[6, -1.5]],
        });
        let sample = to_sample(&row(sampling)).unwrap();
        assert_eq!(sample.constraint, Some(Constraint::JsonSchema(schema)));
        assert_eq!(sample.logit_bias, vec![(6, -1.5)]);
        assert_eq!(sample.behaviour_logprobs, vec![-0.5, 0.0]);
        let unreadable = json!({"constraint": {"kind": "json_schema"}, "logit_bias": "x"});
        assert!(to_sample(&row(unreadable)).is_err());
    }
}
