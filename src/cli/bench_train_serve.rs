//! `hindsight bench train-serve`: serving throughput while the trainer runs steps back to back,
//! versus idle, and the step time with and without serving load — for a few ways of running
//! the trainer thread (OS priority, torch threads), since both share the same cores.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tch::Device;

use super::bench::generate_timed;
use super::bench_train::{median, synthetic_samples};
use super::model_args::ModelArgs;
use crate::engine::{Backend, LocalEngine};
use crate::learn::samples::LearnMode;
use crate::learn::trainer::{Trainer, TrainerConfig};

/// How the trainer thread is set up before it builds its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainerThread {
    /// Normal priority, torch's default thread count (how the real trainer thread runs).
    Default,
    /// Lower OS priority (`--nice`) for the thread and the OpenMP workers it creates.
    Nice,
    /// `tch::set_num_threads(1)` on the trainer thread.
    OneThread,
    /// Both.
    NiceOneThread,
}

impl TrainerThread {
    fn nice(self) -> bool {
        matches!(self, TrainerThread::Nice | TrainerThread::NiceOneThread)
    }
    fn one_thread(self) -> bool {
        matches!(
            self,
            TrainerThread::OneThread | TrainerThread::NiceOneThread
        )
    }
    fn label(self, nice: i32) -> String {
        match self {
            TrainerThread::Default => "trainer, default thread".into(),
            TrainerThread::Nice => format!("trainer, nice {nice}"),
            TrainerThread::OneThread => "trainer, 1 torch thread".into(),
            TrainerThread::NiceOneThread => format!("trainer, nice {nice} + 1 torch thread"),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct TrainServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Concurrent greedy streams per serving burst.
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// New tokens per stream.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Serving bursts per phase (at least; under training, until `--steps` steps also ran).
    #[arg(long, default_value_t = 3)]
    pub bursts: usize,
    /// Timed train steps alone and under serving load, per variant (at least).
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Samples per step.
    #[arg(long, default_value_t = 16)]
    pub samples: usize,
    /// Prompt tokens per sample.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Response tokens per sample.
    #[arg(long, default_value_t = 128)]
    pub response_tokens: usize,
    /// Trainer thread set-ups to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "default,nice,one-thread,nice-one-thread"
    )]
    pub variants: Vec<TrainerThread>,
    /// Nice value for the `nice` variants (0–19; higher yields more).
    #[arg(long, default_value_t = 10)]
    pub nice: i32,
}

/// Makes the calling thread a background one: a higher nice value (Linux: nice is per thread,
/// and the OpenMP workers it creates later inherit it) and/or one torch thread. Torch's thread
/// count is per thread except the default for threads that have not run an op yet; that
/// default is put back so later threads (serving) keep theirs. Not applied to the real trainer:
/// see BENCHMARKS.md, "Serving throughput during training versus idle".
pub fn run_in_background(nice: Option<i32>, one_torch_thread: bool) -> std::io::Result<()> {
    if one_torch_thread {
        let before = tch::get_num_threads();
        tch::set_num_threads(1);
        std::thread::spawn(move || tch::set_num_threads(before))
            .join()
            .map_err(|_| std::io::Error::other("restoring torch's default thread count failed"))?;
    }
    match nice {
        Some(nice) => set_thread_nice(nice),
        None => Ok(()),
    }
}

#[cfg(target_os = "linux")]
fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    extern "C" {
        fn gettid() -> i32;
        fn setpriority(which: i32, who: u32, prio: i32) -> i32;
    }
    const PRIO_PROCESS: i32 = 0;
    // SAFETY: plain libc calls about the calling thread; no memory is passed.
    if unsafe { setpriority(PRIO_PROCESS, gettid() as u32, nice) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_thread_nice(_nice: i32) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "a per-thread priority is only set on Linux",
    ))
}

/// One measured phase.
struct Phase {
    label: String,
    /// Serving with the trainer thread set up (threads, priority) but not stepping.
    idle_bursts: Vec<f64>,
    bursts: Vec<f64>,
    alone: Vec<f64>,
    loaded: Vec<f64>,
}

/// Aggregate tok/s of one burst: every stream's tokens over the wall time of the slowest.
fn burst(engine: &LocalEngine, prompts: &[Vec<u32>], new_tokens: usize) -> anyhow::Result<f64> {
    let timings = generate_timed(engine, prompts, new_tokens)?;
    let tokens: usize = timings.iter().map(|t| t.tokens()).sum();
    let wall = timings.iter().map(|t| t.total_s).fold(0.0, f64::max);
    Ok(tokens as f64 / wall)
}

type StepLog = Arc<Mutex<Vec<(Instant, Instant)>>>;

/// Starts a trainer thread; once warmed up it reports and waits for `go` (or its sender's
/// drop), then steps back to back until `stop`.
fn spawn_trainer(
    args: &TrainServeArgs,
    variant: TrainerThread,
    stop: Arc<AtomicBool>,
    log: StepLog,
    go: mpsc::Receiver<()>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let model_dir = args.model.model_dir()?;
    let overrides = args.model.overrides();
    let (n, prompt, response, nice) = (
        args.samples,
        args.prompt_tokens,
        args.response_tokens,
        args.nice,
    );
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let thread = std::thread::Builder::new()
        .name("bench-trainer".into())
        .spawn(move || -> anyhow::Result<()> {
            let setup = || -> anyhow::Result<(Trainer, Vec<_>)> {
                run_in_background(variant.nice().then_some(nice), variant.one_thread())?;
                let config = TrainerConfig {
                    mode: LearnMode::Rl,
                    model: overrides.clone(),
                    ..TrainerConfig::default()
                };
                let mut trainer = Trainer::new(&model_dir, Device::Cpu, config, None)?;
                let batch =
                    synthetic_samples(n, prompt, response, trainer.model().config().vocab_size);
                trainer.step(&batch)?; // warm-up
                Ok((trainer, batch))
            };
            let (mut trainer, batch) = match setup() {
                Ok(ok) => ok,
                Err(err) => {
                    let _ = ready_tx.send(Err(format!("{err:#}")));
                    return Err(err);
                }
            };
            let _ = ready_tx.send(Ok(()));
            let _ = go.recv();
            while !stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                trainer.step(&batch)?;
                log.lock()
                    .map_err(|_| anyhow::anyhow!("step log poisoned"))?
                    .push((start, Instant::now()));
            }
            Ok(())
        })?;
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the trainer thread stopped while starting"))?
        .map_err(|e| anyhow::anyhow!("the trainer thread failed to start: {e}"))?;
    Ok(thread)
}

fn steps_between(log: &StepLog, from: Option<Instant>, to: Instant) -> Vec<f64> {
    log.lock()
        .map(|log| {
            log.iter()
                .filter(|(s, e)| from.is_none_or(|f| *s >= f) && *e <= to)
                .map(|(s, e)| (*e - *s).as_secs_f64())
                .collect()
        })
        .unwrap_or_default()
}

fn measure_variant(
    args: &TrainServeArgs,
    engine: &LocalEngine,
    prompts: &[Vec<u32>],
    variant: TrainerThread,
) -> anyhow::Result<Phase> {
    let threads = tch::get_num_threads();
    let stop = Arc::new(AtomicBool::new(false));
    let log: StepLog = Arc::default();
    let (go, gate) = mpsc::channel();
    let thread = spawn_trainer(args, variant, Arc::clone(&stop), Arc::clone(&log), gate)?;
    let outcome = (|| -> anyhow::Result<Phase> {
        // The variant's settings can reach serving even while the trainer waits (torch's
        // thread count is partly process-wide).
        let idle_bursts = (0..args.bursts)
            .map(|_| burst(engine, prompts, args.new_tokens))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let _ = go.send(());
        // Steps alone first, then serving bursts until enough steps ran under load.
        while steps_between(&log, None, Instant::now()).len() < args.steps {
            if thread.is_finished() {
                anyhow::bail!("the trainer thread stopped");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let from = Instant::now();
        let mut bursts = Vec::new();
        loop {
            bursts.push(burst(engine, prompts, args.new_tokens)?);
            let loaded = steps_between(&log, Some(from), Instant::now()).len();
            if bursts.len() >= args.bursts && loaded >= args.steps {
                break;
            }
            if thread.is_finished() {
                anyhow::bail!("the trainer thread stopped");
            }
        }
        let to = Instant::now();
        Ok(Phase {
            label: variant.label(args.nice),
            idle_bursts,
            bursts,
            alone: steps_between(&log, None, from),
            loaded: steps_between(&log, Some(from), to),
        })
    })();
    stop.store(true, Ordering::SeqCst);
    drop(go);
    let joined = thread
        .join()
        .map_err(|_| anyhow::anyhow!("the trainer thread panicked"))?;
    // Threads started later (a new serving thread) must still get torch's default count.
    let fresh = std::thread::spawn(tch::get_num_threads)
        .join()
        .map_err(|_| anyhow::anyhow!("a probe thread panicked"))?;
    if fresh != threads {
        anyhow::bail!("the trainer changed torch's default thread count: {threads} → {fresh}");
    }
    let phase = outcome?;
    joined?;
    Ok(phase)
}

fn idle(
    args: &TrainServeArgs,
    engine: &LocalEngine,
    prompts: &[Vec<u32>],
    label: &str,
) -> anyhow::Result<Phase> {
    let bursts = (0..args.bursts)
        .map(|_| burst(engine, prompts, args.new_tokens))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Phase {
        label: label.into(),
        idle_bursts: Vec::new(),
        bursts,
        alone: Vec::new(),
        loaded: Vec::new(),
    })
}

fn fmt_list(values: &[f64], digits: usize) -> String {
    if values.is_empty() {
        return "–".into();
    }
    values
        .iter()
        .map(|v| format!("{v:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(args: TrainServeArgs) -> anyhow::Result<()> {
    if args.streams == 0 || args.new_tokens == 0 || args.bursts == 0 || args.steps == 0 {
        anyhow::bail!("--streams, --new-tokens, --bursts and --steps must be at least 1");
    }
    if args.samples == 0 || args.response_tokens == 0 || args.prompt_tokens == 0 {
        anyhow::bail!("--samples, --prompt-tokens and --response-tokens must be at least 1");
    }
    if !(0..=19).contains(&args.nice) {
        anyhow::bail!("--nice must be within 0–19, got {}", args.nice);
    }
    let mut options = args.model.engine_options()?;
    options.max_batch = args.streams;
    let engine = LocalEngine::start(options)?;
    let prompts = (0..args.streams)
        .map(|i| {
            let q = format!("Question {i}: explain how a bicycle stays upright, step by step.");
            engine.chat_prompt(&[json!({"role": "user", "content": q})], None)
        })
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "serving: {} greedy streams × {} tokens; training: {} samples × ({} + {}) tokens; torch threads {}",
        args.streams,
        args.new_tokens,
        args.samples,
        args.prompt_tokens,
        args.response_tokens,
        tch::get_num_threads()
    );
    burst(&engine, &prompts, args.new_tokens)?; // warm-up: a full burst
    let mut phases = vec![idle(&args, &engine, &prompts, "idle (no trainer)")?];
    for &variant in &args.variants {
        eprintln!("measuring: {}", variant.label(args.nice));
        phases.push(measure_variant(&args, &engine, &prompts, variant)?);
    }
    phases.push(idle(&args, &engine, &prompts, "idle again (drift check)")?);
    let idle_tok_s = median(phases[0].bursts.clone());
    println!(
        "| phase | serving tok/s, trainer set up but idle | serving tok/s, trainer stepping | vs idle | bursts tok/s (stepping) | train step s alone | train step s under serving | steps alone / under load |",
    );
    println!("|---|---:|---:|---:|---|---:|---:|---|");
    let med = |v: &[f64], digits: usize| {
        if v.is_empty() {
            "–".to_string()
        } else {
            format!("{:.digits$}", median(v.to_vec()))
        }
    };
    for p in &phases {
        let tok_s = median(p.bursts.clone());
        println!(
            "| {} | {} | {tok_s:.1} | {:.2} | {} | {} | {} | {} / {} |",
            p.label,
            med(&p.idle_bursts, 1),
            tok_s / idle_tok_s,
            fmt_list(&p.bursts, 1),
            med(&p.alone, 2),
            med(&p.loaded, 2),
            fmt_list(&p.alone, 1),
            fmt_list(&p.loaded, 1),
        );
    }
    println!(
        "\nServing: {} concurrent greedy streams × {} new tokens per burst (aggregate tok/s, medians). Training: {} samples × ({} + {}) tokens per step, RL, back to back.",
        args.streams, args.new_tokens, args.samples, args.prompt_tokens, args.response_tokens
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_thread_keeps_other_threads_defaults() {
        let default = std::thread::spawn(tch::get_num_threads).join().unwrap();
        let inside = std::thread::spawn(|| {
            let outcome = run_in_background(Some(10), true);
            (
                outcome.is_ok() || !cfg!(target_os = "linux"),
                tch::get_num_threads(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(inside, (true, 1));
        let after = std::thread::spawn(tch::get_num_threads).join().unwrap();
        assert_eq!(after, default);
    }
}
