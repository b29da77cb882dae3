//! `hindsight bench train`: one LoRA training step on the default model (16 samples × ~256
//! tokens, CPU), side by side with the same step written in PyTorch in the same run.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use rand::{Rng, SeedableRng};
use tch::Device;

use super::model_args::ModelArgs;
use crate::learn::samples::{LearnMode, TrainingSample};
use crate::learn::trainer::{Trainer, TrainerConfig};

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Samples per step.
    #[arg(long, default_value_t = 16)]
    pub samples: usize,
    /// Prompt tokens per sample.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Response tokens per sample.
    #[arg(long, default_value_t = 128)]
    pub response_tokens: usize,
    /// Samples per forward/backward pass [default: the trainer's default].
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Python with torch, transformers and peft for the reference column.
    #[arg(long, env = "HINDSIGHT_PYTHON", default_value = ".venv/bin/python")]
    pub python: PathBuf,
    #[arg(long)]
    pub no_reference: bool,
}

/// Synthetic RL samples (rewards ±1, no hints, so neither side runs a teacher pass).
fn samples(args: &TrainArgs, vocab: usize) -> Vec<TrainingSample> {
    synthetic_samples(
        args.samples,
        args.prompt_tokens,
        args.response_tokens,
        vocab,
    )
}

/// `n` random samples of `prompt` + `response` tokens, the same for a given shape (seeded).
pub(super) fn synthetic_samples(
    n: usize,
    prompt: usize,
    response: usize,
    vocab: usize,
) -> Vec<TrainingSample> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    (0..n)
        .map(|i| TrainingSample {
            id: i as i64,
            messages: Vec::new(),
            tools: None,
            prompt_ids: (0..prompt)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect(),
            response_ids: (0..response)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect(),
            behaviour_logprobs: (0..response)
                .map(|_| -rng.random_range(0.5f32..8.0))
                .collect(),
            policy_version: 0,
            reward: if i % 2 == 0 { 1.0 } else { -1.0 },
            hint: None,
            constraint: None,
            logit_bias: Vec::new(),
        })
        .collect()
}

pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn reference(
    args: &TrainArgs,
    config: &TrainerConfig,
    batch: &[TrainingSample],
) -> anyhow::Result<Vec<f64>> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/reference/bench_train_step.py"
    );
    let rows: Vec<serde_json::Value> = batch
        .iter()
        .map(|s| {
            serde_json::json!({
                "prompt": s.prompt_ids, "response": s.response_ids,
                "behaviour": s.behaviour_logprobs, "teacher": s.behaviour_logprobs,
                "reward": s.reward,
            })
        })
        .collect();
    let input = serde_json::json!({
        "model_dir": args.model.model_dir()?,
        "samples": rows,
        "micro_batch": config.micro_batch,
        "lr": config.lr,
        "repeats": args.repeats + 1,
        "threads": std::thread::available_parallelism().map_or(2, |n| n.get()),
    });
    let mut child = Command::new(&args.python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", args.python.display()))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin for the reference"))?
        .write_all(input.to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        anyhow::bail!("the PyTorch reference step failed ({})", output.status);
    }
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let seconds: Vec<f64> = result["seconds"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    // The first step warms up allocators and kernels.
    Ok(seconds.into_iter().skip(1).collect())
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let model_dir = args.model.model_dir()?;
    let defaults = TrainerConfig::default();
    let config = TrainerConfig {
        mode: LearnMode::Rl,
        micro_batch: args.micro_batch.unwrap_or(defaults.micro_batch),
        model: args.model.overrides(),
        ..defaults
    };
    let mut trainer = Trainer::new(&model_dir, Device::Cpu, config.clone(), None)?;
    let batch = samples(&args, trainer.model().config().vocab_size);
    eprintln!(
        "{} samples × ({} prompt + {} response) tokens, micro-batch {}",
        args.samples, args.prompt_tokens, args.response_tokens, config.micro_batch
    );
    trainer.step(&batch)?;
    let mut ours = Vec::new();
    for _ in 0..args.repeats {
        ours.push(trainer.step(&batch)?.step_seconds);
    }
    drop(trainer);
    let theirs = if args.no_reference {
        Vec::new()
    } else {
        reference(&args, &config, &batch).unwrap_or_else(|err| {
            eprintln!("reference skipped: {err:#}");
            Vec::new()
        })
    };
    let (ours_s, theirs_s) = (median(ours.clone()), median(theirs.clone()));
    println!("| LoRA train step (r16, 7 modules, f32 CPU) | Hindsight (tch) | PyTorch + peft |");
    println!("|---|---|---|");
    println!(
        "| median seconds per step ({} timed) | {ours_s:.2} | {theirs_s:.2} |",
        args.repeats
    );
    println!("| all timed steps | {ours:.2?} | {theirs:.2?} |");
    println!(
        "| ratio Hindsight / PyTorch (target ≤ 0.8) | {:.2} | |",
        ours_s / theirs_s
    );
    Ok(())
}
