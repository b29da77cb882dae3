//! `hindsight bench learn`: how fast the trainer learns what a scripted user wants, per learning
//! rate, and whether each version would pass the guard. In process: a `LocalEngine` serves
//! sampled replies (with their behaviour log-probs), the rules judge reads the user's next
//! message, a fresh `Trainer` steps on the samples, and guarded versions are swapped into the
//! engine as the real training loop does.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use tch::Device;

use super::model_args::ModelArgs;
use crate::engine::{
    Backend, GenerateEvent, GenerateRequest, LocalEngine, SamplingParams, StopCriteria,
};
use crate::learn::guard::{greedy_replies, GuardConfig, GuardReport};
use crate::learn::judge::{JudgeInput, NextMessage, RulesJudge};
use crate::learn::samples::{LearnMode, SampleKind, TrainingSample};
use crate::learn::trainer::{Trainer, TrainerConfig};
use crate::learn::training::{base_probes, guard_report, Probes};
use crate::model::peft::AdapterSnapshot;

/// The scripted user's questions, corrections and move-on phrases (also used by
/// tests/learn_end_to_end.rs, so the bench and the test measure the same user).
pub const TRAIN: &[&str] = &[
    "What causes rain?",
    "How does a bicycle stay upright?",
    "Why do cats purr?",
    "What is photosynthesis?",
    "How do vaccines work?",
    "What is the internet?",
    "Why is the ocean salty?",
    "How do airplanes fly?",
    "What is gravity?",
    "How does a refrigerator keep food cold?",
    "Why do leaves change color in autumn?",
    "What is a black hole?",
    "How do volcanoes form?",
    "What is a rainbow?",
    "Why do we have seasons?",
    "How does the heart pump blood?",
];
pub const HELD_OUT: &[&str] = &[
    "How do bees make honey?",
    "What is electricity?",
    "Why do we sleep?",
    "How does a compass work?",
    "What are clouds made of?",
    "Why is the sky blue?",
];
pub const CORRECTIONS: &[&str] = &[
    "Too long. Keep it under 20 words.",
    "Way too wordy. Give me the short version, 20 words max.",
    "Please be brief: one sentence, at most 20 words.",
    "That's a lot of text; just a sentence please.",
    "Can you shorten that? No more than 20 words.",
    "Too long! I only want a one-line answer.",
];
pub const MOVE_ON: &[&str] = &["Thanks! Next question: ", "Great. Now: ", "Perfect. "];

#[derive(Debug, clap::Args)]
pub struct LearnArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Learning rates to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1e-4,3e-4,1e-3")]
    pub lrs: Vec<f64>,
    /// Seeds (sampling and LoRA init), comma-separated; every lr runs once per seed.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Training steps per run.
    #[arg(long, default_value_t = 6)]
    pub rounds: usize,
    /// Prompts answered (and judged) per round: one step's batch.
    #[arg(long, default_value_t = 8)]
    pub per_round: usize,
    /// Sampling temperature of the served replies.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Tokens per served and held-out reply.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// The scripted user corrects replies longer than this many words.
    #[arg(long, default_value_t = 20)]
    pub word_limit: usize,
    #[arg(long, value_enum, default_value_t = LearnMode::Combined)]
    pub mode: LearnMode,
}

impl LearnArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.lrs.is_empty() || self.lrs.iter().any(|lr| !lr.is_finite() || *lr <= 0.0) {
            anyhow::bail!("--lrs needs positive learning rates, got {:?}", self.lrs);
        }
        if self.seeds.is_empty() {
            anyhow::bail!("--seeds needs at least one seed");
        }
        if self.rounds == 0 || self.per_round == 0 || self.max_tokens == 0 {
            anyhow::bail!("--rounds, --per-round and --max-tokens must be at least 1");
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            anyhow::bail!("--temperature must be ≥ 0, got {}", self.temperature);
        }
        if self.mode == LearnMode::Off {
            anyhow::bail!("--mode off never trains; choose rl, opd or combined");
        }
        Ok(())
    }
}

/// Held-out greedy replies: mean words and the share within the word limit.
#[derive(Debug, Clone, Copy)]
struct HeldOut {
    mean_words: f64,
    within: f64,
}

/// One round of one run.
#[derive(Debug, Clone)]
struct Round {
    corrected: usize,
    samples: usize,
    step_seconds: f64,
    guard: GuardReport,
    held_out: HeldOut,
}

struct Run {
    lr: f64,
    seed: u64,
    rounds: Vec<Round>,
}

/// What the base model does, computed once: the guard's probe baseline and held-out replies.
struct Baseline {
    probes: Probes,
    held_out_prompts: Vec<Vec<u32>>,
    held_out: HeldOut,
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

fn user(text: &str) -> serde_json::Value {
    json!({"role": "user", "content": text})
}

/// The one place this bench swaps an adapter into the serving engine (between decode steps).
fn install_adapter(
    engine: &LocalEngine,
    version: u64,
    snapshot: Option<Arc<AdapterSnapshot>>,
) -> anyhow::Result<()> {
    let (done, result) = std::sync::mpsc::channel();
    engine
        .handle()
        .update(move |model| {
            let outcome = model.install_adapter(version, snapshot.as_deref());
            let _ = done.send(outcome.clone());
            outcome.map(|()| version)
        })
        .map_err(|e| anyhow::anyhow!("cannot reach the serving thread: {e}"))?;
    result
        .recv()
        .context("the serving thread stopped during the swap")?
        .map_err(|e| anyhow::anyhow!("installing version {version} failed: {e}"))
}

fn held_out(
    trainer: &Trainer,
    prompts: &[Vec<u32>],
    args: &LearnArgs,
    use_adapter: bool,
) -> anyhow::Result<HeldOut> {
    let eos = trainer.tokenizer().eos_token_ids();
    let replies = greedy_replies(trainer.model(), prompts, args.max_tokens, &eos, use_adapter)?;
    let mut counts = Vec::new();
    for reply in &replies {
        counts.push(words(&trainer.tokenizer().decode(reply)?));
    }
    let n = counts.len().max(1) as f64;
    Ok(HeldOut {
        mean_words: counts.iter().sum::<usize>() as f64 / n,
        within: counts.iter().filter(|&&w| w <= args.word_limit).count() as f64 / n,
    })
}

fn baseline(trainer: &Trainer, guard: &GuardConfig, args: &LearnArgs) -> anyhow::Result<Baseline> {
    let held_out_prompts = HELD_OUT
        .iter()
        .map(|p| trainer.chat_prompt(&[user(p)], None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let held = held_out(trainer, &held_out_prompts, args, false)?;
    Ok(Baseline {
        probes: base_probes(trainer, guard)?,
        held_out_prompts,
        held_out: held,
    })
}

/// Serves one round's prompts (sampled, all at once as concurrent users would) and turns each
/// reply into a sample through the scripted user's next message and the rules judge.
fn serve_round(
    engine: &LocalEngine,
    args: &LearnArgs,
    seed: u64,
    round: usize,
) -> anyhow::Result<(Vec<TrainingSample>, usize)> {
    let ks: Vec<usize> = (0..args.per_round)
        .map(|i| round * args.per_round + i)
        .collect();
    let mut streams = Vec::new();
    for &k in &ks {
        let messages = vec![user(TRAIN[k % TRAIN.len()])];
        let prompt = engine.chat_prompt(&messages, None)?;
        let stream = engine.submit(GenerateRequest {
            request_id: format!("learn-{seed}-{k}"),
            prompt_tokens: prompt.clone(),
            sampling: SamplingParams {
                temperature: args.temperature,
                seed: Some(seed * 1_000_003 + k as u64),
                ..SamplingParams::default()
            },
            stop: StopCriteria {
                max_tokens: args.max_tokens,
                ..StopCriteria::default()
            },
            top_logprobs: 0,
            adapter: Default::default(),
            priority: Default::default(),
            constraint: None,
        })?;
        streams.push((k, messages, prompt, stream));
    }
    let (mut samples, mut corrected) = (Vec::new(), 0);
    for (k, messages, prompt, mut stream) in streams {
        let (mut ids, mut logprobs, mut version) = (Vec::new(), Vec::new(), 0);
        while let Some(event) = stream.blocking_recv() {
            match event {
                GenerateEvent::Token(t) => {
                    ids.push(t.token_id);
                    logprobs.push(t.logprob);
                }
                GenerateEvent::Finish(f) => {
                    version = f.policy_version as i64;
                    break;
                }
                GenerateEvent::Error(err) => anyhow::bail!("generation failed: {err}"),
            }
        }
        let text = engine.decode(&ids);
        let too_long = words(&text) > args.word_limit;
        corrected += usize::from(too_long);
        let next = if too_long {
            CORRECTIONS[k % CORRECTIONS.len()].to_string()
        } else {
            format!(
                "{}{}",
                MOVE_ON[k % MOVE_ON.len()],
                TRAIN[(k + 1) % TRAIN.len()]
            )
        };
        let input = JudgeInput {
            messages: messages.clone(),
            response_text: text,
            next_state: vec![NextMessage::user(next)],
            ..JudgeInput::default()
        };
        // As serving: an abstaining judge or a signal the mode ignores yields no sample.
        let Some(v) = RulesJudge::decide(&input) else {
            continue;
        };
        let reward = f64::from(v.score);
        if ids.is_empty() || SampleKind::of(reward, v.hint.as_deref(), args.mode).is_none() {
            continue;
        }
        samples.push(TrainingSample {
            id: k as i64,
            messages,
            tools: None,
            prompt_ids: prompt,
            response_ids: ids,
            behaviour_logprobs: logprobs,
            policy_version: version,
            reward,
            hint: v.hint,
            constraint: None,
            logit_bias: Vec::new(),
        });
    }
    Ok((samples, corrected))
}

fn run_one(
    engine: &LocalEngine,
    args: &LearnArgs,
    lr: f64,
    seed: u64,
    baseline: &mut Option<Baseline>,
) -> anyhow::Result<Run> {
    let model_dir = args.model.model_dir()?;
    let guard = GuardConfig::default();
    tch::manual_seed(seed as i64);
    let config = TrainerConfig {
        mode: args.mode,
        lr,
        model: args.model.overrides(),
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(&model_dir, Device::Cpu, config, None)?;
    if baseline.is_none() {
        *baseline = Some(baseline_of(&trainer, &guard, args)?);
    }
    let base = baseline
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no baseline"))?;
    install_adapter(engine, 0, None)?;
    let (mut version, mut serving): (u64, Option<Arc<AdapterSnapshot>>) = (0, None);
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        let started = Instant::now();
        let (samples, corrected) = serve_round(engine, args, seed, r)?;
        let served_s = started.elapsed().as_secs_f64();
        let metrics = trainer.step(&samples)?;
        let report = guard_report(&trainer, &base.probes, &guard)?;
        let held = held_out(&trainer, &base.held_out_prompts, args, true)?;
        // As the training loop: a passing version serves, a failing one sends the trainer back
        // to the serving version.
        if report.passed {
            version += 1;
            let snapshot = Arc::new(trainer.snapshot());
            install_adapter(engine, version, Some(Arc::clone(&snapshot)))?;
            serving = Some(snapshot);
        } else {
            trainer.reset_to(serving.as_deref())?;
        }
        eprintln!(
            "lr {lr:e} seed {seed} round {}: {corrected}/{} corrected, {} samples, serve {served_s:.1}s, step {:.1}s, guard {} (KL {:.3}, {:.1} tok vs base {:.1}), held-out {:.1} words, {:.0}% ≤ {}",
            r + 1,
            args.per_round,
            samples.len(),
            metrics.step_seconds,
            if report.passed { "pass" } else { "FAIL" },
            report.mean_kl,
            report.mean_tokens,
            report.base_mean_tokens,
            held.mean_words,
            held.within * 100.0,
            args.word_limit,
        );
        if let Some(reason) = &report.reason {
            eprintln!("  guard: {reason}");
        }
        rounds.push(Round {
            corrected,
            samples: samples.len(),
            step_seconds: metrics.step_seconds,
            guard: report,
            held_out: held,
        });
    }
    Ok(Run { lr, seed, rounds })
}

fn baseline_of(
    trainer: &Trainer,
    guard: &GuardConfig,
    args: &LearnArgs,
) -> anyhow::Result<Baseline> {
    let base = baseline(trainer, guard, args)?;
    eprintln!(
        "base: held-out {:.1} words, {:.0}% ≤ {}; probe replies {:.1} tokens",
        base.held_out.mean_words,
        base.held_out.within * 100.0,
        args.word_limit,
        base.probes.base_tokens.iter().sum::<usize>() as f64
            / base.probes.base_tokens.len().max(1) as f64
    );
    Ok(base)
}

fn cell(h: &HeldOut) -> String {
    format!("{:.1} / {:.0}%", h.mean_words, h.within * 100.0)
}

fn print_tables(args: &LearnArgs, base: &HeldOut, runs: &[Run]) {
    println!(
        "Held-out greedy replies after each step: mean words / share ≤ {} words / guard (✓ promoted, ✗ held back)\n",
        args.word_limit
    );
    let header: Vec<String> = (1..=args.rounds).map(|r| format!("step {r}")).collect();
    println!("| lr | seed | base | {} |", header.join(" | "));
    println!("|---|---|---|{}", "---|".repeat(args.rounds));
    for run in runs {
        let cells: Vec<String> = run
            .rounds
            .iter()
            .map(|r| {
                let mark = if r.guard.passed { "✓" } else { "✗" };
                format!("{} / {mark}", cell(&r.held_out))
            })
            .collect();
        println!(
            "| {:e} | {} | {} | {} |",
            run.lr,
            run.seed,
            cell(base),
            cells.join(" | ")
        );
    }
    println!(
        "\n| lr | seed | corrected per round (of {}) | samples | guard KL per step | step seconds | median step s |",
        args.per_round
    );
    println!("|---|---|---|---|---|---|---|");
    for run in runs {
        let join = |f: &dyn Fn(&Round) -> String| -> String {
            run.rounds.iter().map(f).collect::<Vec<_>>().join(", ")
        };
        let mut secs: Vec<f64> = run.rounds.iter().map(|r| r.step_seconds).collect();
        secs.sort_by(f64::total_cmp);
        println!(
            "| {:e} | {} | {} | {} | {} | {} | {:.1} |",
            run.lr,
            run.seed,
            join(&|r| r.corrected.to_string()),
            join(&|r| r.samples.to_string()),
            join(&|r| format!("{:.2}", r.guard.mean_kl)),
            join(&|r| format!("{:.1}", r.step_seconds)),
            secs.get(secs.len() / 2).copied().unwrap_or(f64::NAN),
        );
    }
}

pub fn run(args: LearnArgs) -> anyhow::Result<()> {
    args.validate()?;
    let mut options = args.model.engine_options()?;
    options.max_batch = args.per_round;
    options.queue_capacity = args.per_round * 2;
    let engine = LocalEngine::start(options)?;
    let mut baseline = None;
    let mut runs = Vec::new();
    for &seed in &args.seeds {
        for &lr in &args.lrs {
            runs.push(run_one(&engine, &args, lr, seed, &mut baseline)?);
        }
    }
    let base = baseline
        .as_ref()
        .map(|b| b.held_out)
        .ok_or_else(|| anyhow::anyhow!("no run finished"))?;
    print_tables(&args, &base, &runs);
    Ok(())
}
