//! `hindsight bench context`: long contexts as agents send them. Time to first token of a
//! 10k-token prompt; the decode speed of other streams while it prefills; time to first
//! token of turns 2 and 3 of an OpenClaw-sized conversation against turn 1 (the prefix cache);
//! peak RSS with eight long conversations at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::engine::{
    Backend, GenerateEvent, GenerateRequest, LocalEngine, SamplingParams, StopCriteria,
};

use super::bench::{peak_rss_mib, reset_peak_rss};
use super::model_args::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct ContextBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokens in the long prompt.
    #[arg(long, default_value_t = 10_000)]
    pub prompt_tokens: usize,
    /// Streams decoding while the long prompt prefills.
    #[arg(long, default_value_t = 3)]
    pub streams: usize,
    /// Long conversations at once in the memory run (0 skips it).
    #[arg(long, default_value_t = 8)]
    pub conversations: usize,
    /// Reply tokens per turn.
    #[arg(long, default_value_t = 32)]
    pub reply_tokens: usize,
}

/// A varied text (no two sentences alike), so the prompt is not one repeated pattern.
fn filler(seed: usize, sentences: usize) -> String {
    const SUBJECTS: [&str; 6] = [
        "The agent",
        "The user",
        "A tool",
        "The planner",
        "The shell",
        "A reviewer",
    ];
    const VERBS: [&str; 6] = ["reads", "writes", "checks", "updates", "lists", "compares"];
    const OBJECTS: [&str; 6] = [
        "the config file",
        "a memory note",
        "the task list",
        "the calendar",
        "a git branch",
        "the web page",
    ];
    (0..sentences)
        .map(|i| {
            let k = i * 7 + seed * 13;
            format!(
                "Rule {}.{i}: {} {} {} before step {}.",
                seed,
                SUBJECTS[k % 6],
                VERBS[(k / 6) % 6],
                OBJECTS[(k / 36) % 6],
                (k * 31) % 97
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A prompt of about `tokens` tokens (chat-templated) that starts with `seed`'s own text.
fn long_messages(engine: &LocalEngine, seed: usize, tokens: usize) -> Vec<serde_json::Value> {
    let mut sentences = tokens / 20;
    loop {
        let messages = vec![
            serde_json::json!({"role": "system", "content": format!("Session {seed}. {}", filler(seed, sentences))}),
            serde_json::json!({"role": "user", "content": "Summarise the rules that mention the calendar."}),
        ];
        let len = engine.chat_prompt(&messages, None).map_or(0, |p| p.len());
        if len >= tokens || sentences > tokens {
            return messages;
        }
        sentences += (tokens - len) / 20 + 1;
    }
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        request_id: "bench-context".into(),
        prompt_tokens: prompt,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        stop: StopCriteria {
            max_tokens,
            ignore_eos: true,
            ..StopCriteria::default()
        },
        top_logprobs: 0,
        adapter: Default::default(),
        priority: Default::default(),
        constraint: None,
    }
}

/// One generation's token arrival times (seconds since `t0`), text and cached prompt tokens.
struct Run {
    token_s: Vec<f64>,
    text: String,
    cached: usize,
}

fn generate(
    engine: &LocalEngine,
    prompt: Vec<u32>,
    max_tokens: usize,
    t0: Instant,
) -> anyhow::Result<Run> {
    let mut stream = engine.submit(request(prompt, max_tokens))?;
    let mut run = Run {
        token_s: Vec::new(),
        text: String::new(),
        cached: 0,
    };
    while let Some(event) = stream.blocking_recv() {
        match event {
            GenerateEvent::Token(t) => {
                run.token_s.push(t0.elapsed().as_secs_f64());
                run.text.push_str(&t.text);
            }
            GenerateEvent::Finish(f) => {
                run.cached = f.cached_tokens;
                break;
            }
            GenerateEvent::Error(err) => anyhow::bail!("generation failed: {err}"),
        }
    }
    Ok(run)
}

pub fn run(args: ContextBenchArgs) -> anyhow::Result<()> {
    let mut options = args.model.engine_options()?;
    options.max_batch = options
        .max_batch
        .max(args.conversations)
        .max(args.streams + 1);
    reset_peak_rss();
    let engine = LocalEngine::start(options)?;
    let window = engine.info().context_length;
    println!(
        "model {} ({}), window {window} tokens, dtype {}, {} threads",
        engine.info().id,
        args.model.model_dir()?.display(),
        args.model.dtype,
        tch::get_num_threads()
    );
    let _ = generate(&engine, engine.encode("Warm up."), 4, Instant::now())?;

    // 1. Time to first token of a long prompt, alone.
    let prompt = engine.chat_prompt(&long_messages(&engine, 1, args.prompt_tokens), None)?;
    let t0 = Instant::now();
    let alone = generate(&engine, prompt.clone(), 1, t0)?;
    let ttft_alone = alone.token_s[0];

    // 2. The same length (other text) while short streams decode.
    let arrivals: Arc<Mutex<Vec<f64>>> = Arc::default();
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let (before, during, ttft_loaded) =
        std::thread::scope(|scope| -> anyhow::Result<(f64, f64, f64)> {
            let mut streams = Vec::new();
            for i in 0..args.streams {
                let mut stream = engine.submit(request(
                    engine.encode(&format!("Story {i}: once upon a time")),
                    window / 2,
                ))?;
                let (arrivals, stop) = (Arc::clone(&arrivals), &stop);
                // Dropping the stream (stop) cancels its generation.
                streams.push(scope.spawn(move || {
                    while let Some(GenerateEvent::Token(_)) = stream.blocking_recv() {
                        arrivals.lock().unwrap().push(t0.elapsed().as_secs_f64());
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }));
            }
            std::thread::sleep(std::time::Duration::from_secs(3));
            let submitted = t0.elapsed().as_secs_f64();
            let other = engine.chat_prompt(&long_messages(&engine, 2, args.prompt_tokens), None)?;
            let long = generate(&engine, other, 1, t0)?;
            let first = long.token_s[0];
            let rate = |from: f64, to: f64| {
                let n = arrivals
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|&&t| t >= from && t < to)
                    .count();
                n as f64 / (to - from) / args.streams as f64
            };
            stop.store(true, Ordering::Relaxed);
            Ok((
                rate(1.0, submitted),
                rate(submitted, first),
                first - submitted,
            ))
        })?;

    // 3. An agent conversation: each turn resends everything before it.
    let mut messages = long_messages(&engine, 3, args.prompt_tokens);
    let mut turns = Vec::new();
    for turn in 1..=3 {
        let prompt = engine.chat_prompt(&messages, None)?;
        let t0 = Instant::now();
        let run = generate(&engine, prompt.clone(), args.reply_tokens, t0)?;
        turns.push((prompt.len(), run.token_s[0], run.cached));
        messages.push(serde_json::json!({"role": "assistant", "content": run.text}));
        messages.push(serde_json::json!({"role": "user", "content": format!("Thanks. Now turn {} please: list two more rules.", turn + 1)}));
    }

    println!("\n| measure | value |\n|---|---|");
    println!(
        "| TTFT, {}-token prompt, alone | {:.2} s ({:.0} tok/s) |",
        prompt.len(),
        ttft_alone,
        prompt.len() as f64 / ttft_alone
    );
    println!(
        "| TTFT, same length, {} streams decoding | {:.2} s |",
        args.streams, ttft_loaded
    );
    println!("| decode per stream before the long prompt | {before:.1} tok/s |");
    println!(
        "| decode per stream while it prefills | {during:.1} tok/s ({:.0} %) |",
        100.0 * during / before
    );
    let t1 = turns[0].1;
    for (i, (len, ttft, cached)) in turns.iter().enumerate() {
        println!("| turn {}: {len}-token prompt, {cached} cached | TTFT {ttft:.2} s ({:.0} % of turn 1) |", i + 1, 100.0 * ttft / t1);
    }

    // 4. Peak memory with N long conversations at once.
    if args.conversations > 0 {
        let rss_before = current_rss_mib();
        reset_peak_rss();
        let prompts: Vec<Vec<u32>> = (0..args.conversations)
            .map(|i| engine.chat_prompt(&long_messages(&engine, 10 + i, args.prompt_tokens), None))
            .collect::<Result<_, _>>()?;
        let t0 = Instant::now();
        let runs: Vec<anyhow::Result<Run>> = std::thread::scope(|scope| {
            let handles: Vec<_> = prompts
                .into_iter()
                .map(|p| scope.spawn(|| generate(&engine, p, args.reply_tokens, t0)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
                })
                .collect()
        });
        let runs = runs.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        let wall = t0.elapsed().as_secs_f64();
        let tokens: usize = runs.iter().map(|r| r.token_s.len()).sum();
        println!(
            "| {} conversations of {} tokens at once | {wall:.0} s, {tokens} reply tokens; RSS {rss_before:.0} MiB before, peak {:.0} MiB |",
            args.conversations,
            args.prompt_tokens,
            peak_rss_mib()
        );
    }
    Ok(())
}

/// Resident memory of this process now, in MiB (VmRSS).
fn current_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
