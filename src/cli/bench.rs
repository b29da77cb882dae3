//! `hindsight bench`: benchmarks that print a table (results are recorded in BENCHMARKS.md).

use std::path::PathBuf;
use std::time::Instant;

use crate::engine::{
    Backend, Constraint, GenerateEvent, GenerateRequest, LocalEngine, SamplingParams, StopCriteria,
};

use super::model_args::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// Decode and prefill speed of the engine on CPU, side by side with HF transformers.
    Engine(EngineArgs),
    /// Latency the HTTP layer adds over direct engine calls, on the real model.
    Proxy(ProxyArgs),
    /// One LoRA training step, side by side with the same step in PyTorch.
    Train(super::bench_train::TrainArgs),
    /// Learning-rate sweep: how fast a scripted user's preference is learned, guard verdicts.
    Learn(super::bench_learn::LearnArgs),
    /// Serving throughput while the trainer runs steps, versus idle.
    TrainServe(super::bench_train_serve::TrainServeArgs),
    /// Turns logged per second (synthetic turns, no model: the store is the bottleneck).
    Store(super::bench_store::StoreArgs),
    /// Long contexts: 10k-token TTFT, decode during prefill, prefix-cache turns, memory.
    Context(super::bench_context::ContextBenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sequential requests per path (max_tokens=1).
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Concurrent connections for the requests/s run.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Requests in the requests/s run.
    #[arg(long, default_value_t = 640)]
    pub concurrent_requests: usize,
    /// Sequences decoding together in the engine.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
}

#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Sequences decoding together in the concurrent run.
    #[arg(long, default_value_t = 8)]
    pub concurrent: usize,
    /// Python with transformers for the reference column; skipped when missing.
    #[arg(long, env = "HINDSIGHT_PYTHON", default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// Skip the HF transformers reference run.
    #[arg(long)]
    pub no_reference: bool,
    /// Skip the constrained-decoding comparison (half the concurrent streams under a JSON
    /// schema, against none).
    #[arg(long)]
    pub no_constrained: bool,
    /// Rounds of each configuration in the constrained comparison (alternated).
    #[arg(long, default_value_t = 3)]
    pub constrained_rounds: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.which {
        Which::Engine(args) => super::bench_engine::run(args),
        Which::Proxy(args) => run_proxy(args),
        Which::Train(args) => super::bench_train::run(args),
        Which::Store(args) => super::bench_store::run(args),
        Which::Learn(args) => super::bench_learn::run(args),
        Which::TrainServe(args) => super::bench_train_serve::run(args),
        Which::Context(args) => super::bench_context::run(args),
    }
}

fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let mut options = args.model.engine_options()?;
    options.max_batch = args.max_batch;
    options.queue_capacity = args.concurrent_requests.max(args.concurrency) * 2;
    let engine: std::sync::Arc<dyn crate::engine::Backend> =
        std::sync::Arc::new(LocalEngine::start(options)?);
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(crate::api::bench::proxy_overhead(
        engine,
        crate::api::bench::OverheadOptions {
            requests: args.requests,
            concurrency: args.concurrency,
            concurrent_requests: args.concurrent_requests,
            ..Default::default()
        },
    ))?;
    println!("{report}");
    Ok(())
}

/// Peak resident memory of this process so far, in MiB (VmHWM).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets VmHWM so the next phase's peak is its own.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Timing of one generation.
#[derive(Debug, Clone)]
pub struct Timing {
    pub total_s: f64,
    /// When each token arrived, seconds from submission.
    pub token_s: Vec<f64>,
}

impl Timing {
    pub fn tokens(&self) -> usize {
        self.token_s.len()
    }

    pub fn first_token_s(&self) -> f64 {
        self.token_s.first().copied().unwrap_or(f64::NAN)
    }
}

/// Submits greedy requests at once and waits for all; returns each one's timing.
pub fn generate_timed(
    engine: &LocalEngine,
    prompts: &[Vec<u32>],
    new_tokens: usize,
) -> anyhow::Result<Vec<Timing>> {
    generate_timed_constrained(engine, prompts, new_tokens, &[])
}

/// [`generate_timed`] with prompt i under `constraints[i]` (none past the end). EOS is ignored,
/// except where a grammar is complete: that ends its sequence.
pub fn generate_timed_constrained(
    engine: &LocalEngine,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    constraints: &[Option<Constraint>],
) -> anyhow::Result<Vec<Timing>> {
    let start = Instant::now();
    let streams = prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            engine.submit(GenerateRequest {
                request_id: "bench".into(),
                prompt_tokens: prompt.clone(),
                sampling: SamplingParams {
                    temperature: 0.0,
                    ..SamplingParams::default()
                },
                stop: StopCriteria {
                    max_tokens: new_tokens,
                    ignore_eos: true,
                    ..StopCriteria::default()
                },
                top_logprobs: 0,
                adapter: Default::default(),
                priority: Default::default(),
                constraint: constraints.get(i).cloned().flatten(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // One receiver thread per stream, so each token is timed when it arrives.
    let results: Vec<anyhow::Result<Timing>> = std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                scope.spawn(move || {
                    let mut token_s = Vec::new();
                    while let Some(event) = stream.blocking_recv() {
                        match event {
                            GenerateEvent::Token(_) => token_s.push(start.elapsed().as_secs_f64()),
                            GenerateEvent::Finish(_) => break,
                            GenerateEvent::Error(err) => {
                                anyhow::bail!("generation failed: {err}")
                            }
                        }
                    }
                    Ok(Timing {
                        total_s: start.elapsed().as_secs_f64(),
                        token_s,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("receiver panicked")))
            })
            .collect()
    });
    let timings = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(timings)
}
