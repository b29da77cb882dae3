//! The trainer: its own f32 copy of the base model with a trainable LoRA adapter, one step per
//! batch of samples (Binary RL + hindsight OPD through the PPO clipped surrogate).

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

use super::constrained::SampleTransforms;
use super::loss::{advantages, policy_loss, LossConfig};
use super::samples::{hinted_messages, LearnMode, SampleKind, TrainingSample};
use crate::model::chat_template::ChatTemplate;
use crate::model::grammar::GrammarCompiler;
use crate::model::logprobs::{response_logprobs_transformed, LogitTransform};
use crate::model::lora::{LoraConfig, TrainableAdapter};
use crate::model::overrides::ModelOverrides;
use crate::model::peft::AdapterSnapshot;
use crate::model::tokenizer::TextTokenizer;
use crate::model::transformer::Transformer;

/// Who scores the response under the hinted context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Teacher {
    /// The frozen base model (adapter off), as in the paper.
    Base,
    /// The current policy (adapter on).
    Policy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerConfig {
    pub mode: LearnMode,
    pub loss: LossConfig,
    pub lr: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub lora: LoraConfig,
    pub teacher: Teacher,
    /// Samples per forward/backward pass (gradients accumulate over a step's micro-batches).
    pub micro_batch: usize,
    /// Rope scaling and window the base model is loaded with: the serving engine's, so that
    /// log-probs are computed under exactly the serving rope.
    #[serde(skip)]
    pub model: ModelOverrides,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            mode: LearnMode::Combined,
            loss: LossConfig::default(),
            // Chosen by `hindsight bench learn` (BENCHMARKS.md): 1e-4 barely moved in 6 steps,
            // 5e-4 and up produced versions the guard held back.
            lr: 3e-4,
            weight_decay: 0.0,
            grad_clip: 1.0,
            lora: LoraConfig::default(),
            teacher: Teacher::Base,
            micro_batch: 4,
            model: ModelOverrides::default(),
        }
    }
}

/// What one step did, recorded per step in the store and in Prometheus.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub loss: f64,
    pub clip_fraction: f64,
    /// Approximate KL to the behaviour policy (mean of lp_old − lp_new over tokens).
    pub kl: f64,
    pub kl_to_base: Option<f64>,
    pub mean_reward: f64,
    pub mean_teacher_advantage: Option<f64>,
    pub samples_rl: usize,
    pub samples_opd: usize,
    pub samples_both: usize,
    pub samples_skipped: usize,
    pub grad_norm: f64,
    pub tokens: usize,
    pub step_seconds: f64,
}

/// A sample prepared for the loss: tokens, behaviour log-probs and advantages' ingredients.
struct Prepared<'a> {
    sample: &'a TrainingSample,
    reward: f64,
    teacher: Option<Vec<f32>>,
    /// The logit bias / grammar mask the response was sampled under, if any.
    transform: Option<LogitTransform>,
}

impl Prepared<'_> {
    fn pair(&self) -> (Vec<u32>, Vec<u32>) {
        (
            self.sample.prompt_ids.clone(),
            self.sample.response_ids.clone(),
        )
    }
}

pub struct Trainer {
    model: Transformer,
    adapter: TrainableAdapter,
    optimizer: nn::Optimizer,
    template: ChatTemplate,
    tokenizer: TextTokenizer,
    transforms: SampleTransforms,
    config: TrainerConfig,
    steps: u64,
}

impl Trainer {
    /// Loads the base model (f32) from `model_dir`; `initial` resumes from a published adapter.
    pub fn new(
        model_dir: &Path,
        device: Device,
        config: TrainerConfig,
        initial: Option<&AdapterSnapshot>,
    ) -> anyhow::Result<Self> {
        let mut model = Transformer::load_with(model_dir, device, Kind::Float, &config.model)?;
        let adapter = match initial {
            Some(snapshot) => TrainableAdapter::from_snapshot(model.config(), snapshot, device)?,
            None => TrainableAdapter::new(model.config(), config.lora.clone(), device)?,
        };
        model.attach_trainable(&adapter)?;
        let optimizer = build_optimizer(&adapter, &config)?;
        let tokenizer = TextTokenizer::from_dir(model_dir)?;
        let vocab = model.config().vocab_size;
        Ok(Self {
            transforms: SampleTransforms::new(model_dir, vocab, tokenizer.eos_token_ids()),
            model,
            adapter,
            optimizer,
            template: ChatTemplate::from_model_dir(model_dir)?,
            tokenizer,
            config,
            steps: 0,
        })
    }

    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Replays constraints with `compiler` (the same model's, e.g. the engine's) instead of
    /// building its own the first time a constrained sample comes.
    pub fn use_grammar(&self, compiler: GrammarCompiler) {
        self.transforms.set_compiler(compiler);
    }

    /// Starts over from `snapshot` (None: a fresh adapter) with a fresh optimizer, e.g. after
    /// the guard rejected what training produced.
    pub fn reset_to(&mut self, snapshot: Option<&AdapterSnapshot>) -> anyhow::Result<()> {
        let device = self.model.device();
        let adapter = match snapshot {
            Some(s) => TrainableAdapter::from_snapshot(self.model.config(), s, device)?,
            None => TrainableAdapter::new(self.model.config(), self.config.lora.clone(), device)?,
        };
        self.model.attach_trainable(&adapter)?;
        self.optimizer = build_optimizer(&adapter, &self.config)?;
        self.adapter = adapter;
        Ok(())
    }

    pub fn snapshot(&self) -> AdapterSnapshot {
        self.adapter.snapshot()
    }

    /// Tokens of the chat prompt for `messages` (with the generation prompt).
    pub fn chat_prompt(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
    ) -> anyhow::Result<Vec<u32>> {
        let text = self.template.render(messages, tools, true)?;
        Ok(self.tokenizer.encode(&text)?)
    }

    /// Each sample's response log-probs as a step would recompute them: under the sample's
    /// logit bias and grammar mask, with the adapter (lp_new) or without (the base). None for a
    /// sample whose constraint cannot be replayed (a step skips it).
    pub fn sample_logprobs(
        &self,
        samples: &[TrainingSample],
        use_adapter: bool,
    ) -> anyhow::Result<Vec<Option<Vec<f32>>>> {
        let _no_grad = tch::no_grad_guard();
        let device = self.model.device();
        let mut out = Vec::with_capacity(samples.len());
        for sample in samples {
            let Ok(transform) = self.transforms.for_sample(sample, device) else {
                out.push(None);
                continue;
            };
            let batch = [(sample.prompt_ids.clone(), sample.response_ids.clone())];
            let (lp, _) = response_logprobs_transformed(
                &self.model,
                &batch,
                use_adapter,
                &[transform.as_ref()],
            )?;
            out.push(Some(Vec::try_from(lp.get(0))?));
        }
        Ok(out)
    }

    /// One optimizer step over `samples`. Samples that carry no signal under the mode are
    /// counted as skipped; a batch with none left changes nothing.
    pub fn step(&mut self, samples: &[TrainingSample]) -> anyhow::Result<StepMetrics> {
        let started = Instant::now();
        let mut metrics = StepMetrics::default();
        let prepared = self.prepare(samples, &mut metrics)?;
        if prepared.is_empty() {
            metrics.step_seconds = started.elapsed().as_secs_f64();
            return Ok(metrics);
        }
        let total = prepared.len() as f64;
        let (mut loss_sum, mut clip_sum, mut kl_sum, mut kl_base_sum) = (0.0, 0.0, 0.0, 0.0);
        let mut token_sum = 0usize;
        self.optimizer.zero_grad();
        for chunk in prepared.chunks(self.config.micro_batch.max(1)) {
            let out = self.micro_batch_loss(chunk)?;
            // Mean over samples of the whole step, accumulated micro-batch by micro-batch.
            let scaled = &out.loss * (chunk.len() as f64 / total);
            scaled.backward();
            loss_sum += scaled.double_value(&[]);
            clip_sum += out.clip_fraction * out.tokens as f64;
            kl_sum += out.approx_kl * out.tokens as f64;
            kl_base_sum += out.kl_to_base.unwrap_or(0.0) * out.tokens as f64;
            token_sum += out.tokens;
        }
        metrics.grad_norm = self.clip_gradients();
        self.optimizer.step();
        self.optimizer.zero_grad();
        self.steps += 1;

        let tokens = token_sum.max(1) as f64;
        metrics.loss = loss_sum;
        metrics.clip_fraction = clip_sum / tokens;
        metrics.kl = kl_sum / tokens;
        if self.config.loss.kl_coef != 0.0 {
            metrics.kl_to_base = Some(kl_base_sum / tokens);
        }
        metrics.tokens = token_sum;
        metrics.mean_reward = prepared.iter().map(|p| p.reward).sum::<f64>() / total;
        let teacher_gaps: Vec<f64> = prepared
            .iter()
            .filter_map(|p| {
                let t = p.teacher.as_ref()?;
                let old = &p.sample.behaviour_logprobs;
                let gap: f64 = t.iter().zip(old).map(|(t, o)| f64::from(t - o)).sum();
                Some(gap / old.len().max(1) as f64)
            })
            .collect();
        if !teacher_gaps.is_empty() {
            metrics.mean_teacher_advantage =
                Some(teacher_gaps.iter().sum::<f64>() / teacher_gaps.len() as f64);
        }
        metrics.step_seconds = started.elapsed().as_secs_f64();
        Ok(metrics)
    }

    /// Chooses what each sample contributes and computes teacher log-probs for hinted ones.
    fn prepare<'a>(
        &self,
        samples: &'a [TrainingSample],
        metrics: &mut StepMetrics,
    ) -> anyhow::Result<Vec<Prepared<'a>>> {
        let mode = self.config.mode;
        let mut prepared = Vec::new();
        let mut teacher_rows = Vec::new();
        for sample in samples {
            let usable = !sample.response_ids.is_empty()
                && sample.response_ids.len() == sample.behaviour_logprobs.len();
            let kind = SampleKind::of(sample.reward, sample.hint.as_deref(), mode);
            let Some(kind) = kind.filter(|_| usable) else {
                metrics.samples_skipped += 1;
                continue;
            };
            // A constrained / biased turn is scored under its own transform (see
            // learn::constrained); one that cannot be replayed is left out, never guessed.
            let transform = match self.transforms.for_sample(sample, self.model.device()) {
                Ok(t) => t,
                Err(err) => {
                    let id = sample.id;
                    tracing::warn!(sample = id, error = %err, "logit transform not replayable; skipped");
                    metrics.samples_skipped += 1;
                    continue;
                }
            };
            let reward = if mode.uses_reward() {
                sample.reward
            } else {
                0.0
            };
            if kind != SampleKind::Rl {
                let hint = sample.hint.as_deref().unwrap_or_default();
                let messages = hinted_messages(&sample.messages, hint);
                match self.chat_prompt(&messages, sample.tools.as_deref()) {
                    Ok(prompt) => teacher_rows.push((prepared.len(), prompt)),
                    Err(err) => {
                        // One unrenderable sample does not sink the batch.
                        tracing::warn!(sample = sample.id, error = %format!("{err:#}"), "no hinted context; sample skipped");
                        metrics.samples_skipped += 1;
                        continue;
                    }
                }
            }
            match kind {
                SampleKind::Rl => metrics.samples_rl += 1,
                SampleKind::Opd => metrics.samples_opd += 1,
                SampleKind::Both => metrics.samples_both += 1,
            }
            prepared.push(Prepared {
                sample,
                reward,
                teacher: None,
                transform,
            });
        }
        let use_adapter = self.config.teacher == Teacher::Policy;
        let _no_grad = tch::no_grad_guard();
        for chunk in teacher_rows.chunks(self.config.micro_batch.max(1)) {
            let batch: Vec<(Vec<u32>, Vec<u32>)> = chunk
                .iter()
                .map(|(i, prompt)| (prompt.clone(), prepared[*i].sample.response_ids.clone()))
                .collect();
            // The teacher sees the same grammar mask and bias as the policy: the mask depends
            // on the response tokens only, not on the (hinted) context.
            let transforms: Vec<_> = chunk
                .iter()
                .map(|(i, _)| prepared[*i].transform.as_ref())
                .collect();
            let (lp, _) =
                response_logprobs_transformed(&self.model, &batch, use_adapter, &transforms)?;
            for (row, (i, _)) in chunk.iter().enumerate() {
                let n = prepared[*i].sample.response_ids.len();
                let values: Vec<f32> = Vec::try_from(lp.get(row as i64).narrow(0, 0, n as i64))?;
                prepared[*i].teacher = Some(values);
            }
        }
        Ok(prepared)
    }

    fn micro_batch_loss(&self, chunk: &[Prepared<'_>]) -> anyhow::Result<MicroBatchLoss> {
        let batch: Vec<(Vec<u32>, Vec<u32>)> = chunk.iter().map(Prepared::pair).collect();
        // lp_new under each turn's own logit transform, like the logged lp_old (see
        // learn::constrained): the ratio is that of the constrained policy.
        let transforms: Vec<_> = chunk.iter().map(|p| p.transform.as_ref()).collect();
        let (new_lp, mask) = response_logprobs_transformed(&self.model, &batch, true, &transforms)?;
        let width = new_lp.size()[1] as usize;
        let device = new_lp.device();
        let pad = |rows: Vec<&[f32]>| -> Tensor {
            let mut flat = vec![0f32; rows.len() * width];
            for (i, row) in rows.iter().enumerate() {
                flat[i * width..i * width + row.len()].copy_from_slice(row);
            }
            Tensor::from_slice(&flat)
                .view([rows.len() as i64, width as i64])
                .to_device(device)
        };
        let old_lp = pad(chunk
            .iter()
            .map(|p| p.sample.behaviour_logprobs.as_slice())
            .collect());
        let empty: &[f32] = &[];
        let teacher_lp = pad(chunk
            .iter()
            .map(|p| p.teacher.as_deref().unwrap_or(empty))
            .collect());
        let has_teacher: Vec<bool> = chunk.iter().map(|p| p.teacher.is_some()).collect();
        let rewards: Vec<f64> = chunk.iter().map(|p| p.reward).collect();
        let adv = advantages(
            &self.config.loss,
            &rewards,
            &teacher_lp,
            &has_teacher,
            &old_lp,
            &mask,
        );
        let base_lp = if self.config.loss.kl_coef != 0.0 {
            let _no_grad = tch::no_grad_guard();
            Some(response_logprobs_transformed(&self.model, &batch, false, &transforms)?.0)
        } else {
            None
        };
        let out = policy_loss(
            &self.config.loss,
            &new_lp,
            &old_lp,
            &adv,
            &mask,
            base_lp.as_ref(),
        );
        Ok(MicroBatchLoss {
            loss: out.loss,
            clip_fraction: out.clip_fraction,
            approx_kl: out.approx_kl,
            kl_to_base: out.kl_to_base,
            tokens: chunk.iter().map(|p| p.sample.response_ids.len()).sum(),
        })
    }

    /// Scales gradients to a total norm of at most `grad_clip`; returns the norm before.
    fn clip_gradients(&mut self) -> f64 {
        let _no_grad = tch::no_grad_guard();
        let vars = self.adapter.var_store().trainable_variables();
        let squares: f64 = vars
            .iter()
            .map(|v| {
                let g = v.grad();
                if g.defined() {
                    g.pow_tensor_scalar(2).sum(Kind::Double).double_value(&[])
                } else {
                    0.0
                }
            })
            .sum();
        let norm = squares.sqrt();
        let max = self.config.grad_clip;
        if max > 0.0 && norm > max {
            let scale = max / (norm + 1e-6);
            for v in &vars {
                let mut g = v.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        norm
    }
}

fn build_optimizer(
    adapter: &TrainableAdapter,
    config: &TrainerConfig,
) -> anyhow::Result<nn::Optimizer> {
    Ok(nn::AdamW {
        wd: config.weight_decay,
        ..Default::default()
    }
    .build(adapter.var_store(), config.lr)?)
}

struct MicroBatchLoss {
    loss: Tensor,
    clip_fraction: f64,
    approx_kl: f64,
    kl_to_base: Option<f64>,
    tokens: usize,
}
