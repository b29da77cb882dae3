//! `hindsight bench engine`: prefill and decode speed, ours beside HF transformers `generate()`,
//! and the cost of grammar-constrained decoding in a shared batch.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::engine::{Backend, Constraint, LocalEngine};

use super::bench::{
    generate_timed, generate_timed_constrained, peak_rss_mib, reset_peak_rss, EngineArgs, Timing,
};

/// A fixed chat prompt (~150 tokens) so every run measures the same work.
const PROMPT: &str = "You are reviewing a pull request for a Rust web service. The change adds \
a bounded in-memory queue in front of the database writer, a background task that writes rows \
in batches inside transactions, and an append-only journal that takes over when the database \
is unreachable. Explain, step by step, what could go wrong with ordering, with crash safety, \
and with back-pressure, and suggest the tests you would ask the author to add before merging. \
Be concrete and mention the failure modes one by one.";

#[derive(Debug, Default, Clone, Copy)]
struct Row {
    prefill_tok_s: f64,
    decode_tok_s: f64,
    concurrent_tok_s: f64,
    /// The same run from the moment every sequence has its first token: decode only.
    concurrent_decode_tok_s: f64,
    peak_rss_mib: f64,
    constrained: Option<ConstrainedRow>,
}

/// Decode-only aggregate tok/s of N streams with none constrained, then half constrained, in
/// alternating rounds on one engine; and the grammar's own time per constrained token.
#[derive(Debug, Default, Clone, Copy)]
struct ConstrainedRow {
    plain_tok_s: f64,
    mixed_tok_s: f64,
    /// Slowest and fastest round of each, to show the spread.
    plain_range: (f64, f64),
    mixed_range: (f64, f64),
    mask_us_per_token: f64,
    consume_us_per_token: f64,
    constrained_streams: usize,
}

/// A schema that cannot be complete before 40 objects (several hundred tokens), so every
/// constrained stream runs to `max_tokens` like the unconstrained ones with `ignore_eos`.
fn long_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "array",
        "minItems": 40,
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 24},
                "city": {"type": "string", "maxLength": 24},
                "role": {"type": "string", "maxLength": 24},
            },
            "required": ["name", "city", "role"],
            "additionalProperties": false,
        },
    })
}

/// Tokens per second over the part of a run where every stream had its first token.
fn decode_only_tok_s(all: &[Timing]) -> f64 {
    let wall = all.iter().map(|t| t.total_s).fold(0.0, f64::max);
    let all_started = all.iter().map(|t| t.first_token_s()).fold(0.0, f64::max);
    let decoded = all
        .iter()
        .flat_map(|t| &t.token_s)
        .filter(|&&at| at > all_started)
        .count();
    decoded as f64 / (wall - all_started)
}

fn measure_constrained(
    engine: &LocalEngine,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    rounds: usize,
) -> anyhow::Result<ConstrainedRow> {
    let schema = Some(Constraint::JsonSchema(long_schema()));
    let mixed: Vec<Option<Constraint>> = (0..prompts.len())
        .map(|i| if i % 2 == 0 { schema.clone() } else { None })
        .collect();
    let before = engine.handle().grammar_stats();
    let (mut plain, mut with_grammar) = (Vec::new(), Vec::new());
    // Alternated, so drift on a shared host hits both configurations alike.
    for _ in 0..rounds.max(1) {
        plain.push(decode_only_tok_s(&generate_timed(
            engine, prompts, new_tokens,
        )?));
        let all = generate_timed_constrained(engine, prompts, new_tokens, &mixed)?;
        if let Some(short) = all.iter().find(|t| t.tokens() != new_tokens) {
            anyhow::bail!(
                "a constrained stream ended after {} of {new_tokens} tokens",
                short.tokens()
            );
        }
        with_grammar.push(decode_only_tok_s(&all));
    }
    let after = engine.handle().grammar_stats();
    let masks = (after.masks - before.masks).max(1) as f64;
    let per_token =
        |a: std::time::Duration, b: std::time::Duration| (a - b).as_secs_f64() * 1e6 / masks;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        (lo, v.iter().copied().fold(0.0, f64::max))
    };
    Ok(ConstrainedRow {
        plain_tok_s: mean(&plain),
        mixed_tok_s: mean(&with_grammar),
        plain_range: range(&plain),
        mixed_range: range(&with_grammar),
        mask_us_per_token: per_token(after.mask_time, before.mask_time),
        consume_us_per_token: per_token(after.consume_time, before.consume_time),
        constrained_streams: mixed.iter().flatten().count(),
    })
}

fn measure_ours(args: &EngineArgs, dtype: &str, prompt: &[u32]) -> anyhow::Result<Row> {
    reset_peak_rss();
    let mut options = args.model.engine_options()?;
    options.dtype = dtype.to_string();
    options.max_batch = args.concurrent.max(1);
    let engine = LocalEngine::start(options)?;
    generate_timed(&engine, &[prompt.to_vec()], 8)?; // warm-up
    let prefill = &generate_timed(&engine, &[prompt.to_vec()], 1)?[0];
    let single = &generate_timed(&engine, &[prompt.to_vec()], args.new_tokens)?[0];
    let decode_tok_s = (single.tokens() - 1) as f64 / (single.total_s - single.first_token_s());
    let prompts: Vec<Vec<u32>> = (0..args.concurrent)
        .map(|i| engine.encode(&format!("Request {i}. {PROMPT}")))
        .collect();
    let all = generate_timed(&engine, &prompts, args.new_tokens)?;
    let wall = all.iter().map(|t| t.total_s).fold(0.0, f64::max);
    let tokens: usize = all.iter().map(|t| t.tokens()).sum();
    // Read before the constrained rounds, so this phase's peak is comparable with earlier runs.
    let peak_rss_mib = peak_rss_mib();
    let constrained = if args.no_constrained {
        None
    } else {
        Some(measure_constrained(
            &engine,
            &prompts,
            args.new_tokens,
            args.constrained_rounds,
        )?)
    };
    Ok(Row {
        concurrent_decode_tok_s: decode_only_tok_s(&all),
        prefill_tok_s: prompt.len() as f64 / prefill.first_token_s(),
        decode_tok_s,
        concurrent_tok_s: tokens as f64 / wall,
        peak_rss_mib,
        constrained,
    })
}

/// One python process per dtype, so each peak RSS is that run's own.
fn measure_reference(
    args: &EngineArgs,
    prompt: &[u32],
    dtype: &str,
) -> anyhow::Result<serde_json::Value> {
    let model_dir = args.model.model_dir()?;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/reference/bench_hf_generate.py"
    );
    let mut child = Command::new(&args.python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", args.python.display()))?;
    let input = serde_json::json!({
        "model_dir": model_dir,
        "prompt_ids": prompt,
        "new_tokens": args.new_tokens,
        "dtypes": [dtype],
        "threads": std::thread::available_parallelism().map_or(2, |n| n.get()),
    });
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin for the reference"))?
        .write_all(input.to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        anyhow::bail!("the HF reference benchmark failed ({})", output.status);
    }
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(result[dtype].clone())
}

pub fn run(args: EngineArgs) -> anyhow::Result<()> {
    let engine = LocalEngine::start(args.model.engine_options()?)?;
    let messages = [serde_json::json!({"role": "user", "content": PROMPT})];
    let prompt = engine.chat_prompt(&messages, None)?;
    drop(engine);
    eprintln!(
        "prompt: {} tokens; new tokens: {}",
        prompt.len(),
        args.new_tokens
    );
    let f32_row = measure_ours(&args, "f32", &prompt)?;
    let bf16_row = measure_ours(&args, "bf16", &prompt)?;
    let mut reference = serde_json::Map::new();
    for dtype in ["f32", "bf16"] {
        if args.no_reference {
            break;
        }
        match measure_reference(&args, &prompt, dtype) {
            Ok(v) => {
                reference.insert(dtype.to_string(), v);
            }
            Err(err) => eprintln!("reference {dtype} skipped: {err:#}"),
        }
    }
    let hf = |dtype: &str, key: &str| {
        reference
            .get(dtype)
            .and_then(|r| r[key].as_f64())
            .map_or("-".to_string(), |v| format!("{v:.1}"))
    };
    println!(
        "| metric (CPU, greedy, {} new tokens) | hindsight | HF transformers |",
        args.new_tokens
    );
    println!("| --- | ---: | ---: |");
    println!(
        "| prefill tok/s, f32 ({} tokens) | {:.1} | {} |",
        prompt.len(),
        f32_row.prefill_tok_s,
        hf("f32", "prefill_tok_s")
    );
    println!(
        "| batch-1 decode tok/s, f32 | {:.1} | {} |",
        f32_row.decode_tok_s,
        hf("f32", "decode_tok_s")
    );
    println!(
        "| batch-1 decode tok/s, bf16 | {:.1} | {} |",
        bf16_row.decode_tok_s,
        hf("bf16", "decode_tok_s")
    );
    println!(
        "| prefill tok/s, bf16 | {:.1} | {} |",
        bf16_row.prefill_tok_s,
        hf("bf16", "prefill_tok_s")
    );
    println!(
        "| {} concurrent, aggregate tok/s, f32 | {:.1} | - |",
        args.concurrent, f32_row.concurrent_tok_s
    );
    println!(
        "| {} concurrent, aggregate tok/s, bf16 | {:.1} | - |",
        args.concurrent, bf16_row.concurrent_tok_s
    );
    println!(
        "| {} concurrent, decode only (after every first token), f32 | {:.1} | - |",
        args.concurrent, f32_row.concurrent_decode_tok_s
    );
    println!(
        "| {} concurrent, decode only (after every first token), bf16 | {:.1} | - |",
        args.concurrent, bf16_row.concurrent_decode_tok_s
    );
    println!(
        "| peak RSS MiB, f32 phase | {:.0} | {} |",
        f32_row.peak_rss_mib,
        hf("f32", "peak_rss_mb")
    );
    println!(
        "| peak RSS MiB, bf16 phase | {:.0} | {} |",
        bf16_row.peak_rss_mib,
        hf("bf16", "peak_rss_mb")
    );
    for (dtype, row) in [("f32", &f32_row), ("bf16", &bf16_row)] {
        if let Some(c) = &row.constrained {
            print_constrained(dtype, &args, c);
        }
    }
    Ok(())
}

fn print_constrained(dtype: &str, args: &EngineArgs, c: &ConstrainedRow) {
    let (streams, new_tokens, rounds) = (args.concurrent, args.new_tokens, args.constrained_rounds);
    println!();
    println!(
        "| constrained decoding, {dtype}, {streams} streams x {new_tokens} tokens, greedy, \
         decode only, mean of {rounds} alternating rounds (min-max) | value |"
    );
    println!("| --- | ---: |");
    println!(
        "| none constrained, aggregate tok/s | {:.1} ({:.1}-{:.1}) |",
        c.plain_tok_s, c.plain_range.0, c.plain_range.1
    );
    println!(
        "| {} of {streams} JSON-schema-constrained, aggregate tok/s | {:.1} ({:.1}-{:.1}) |",
        c.constrained_streams, c.mixed_tok_s, c.mixed_range.0, c.mixed_range.1
    );
    println!(
        "| slowdown | {:.1} % |",
        (1.0 - c.mixed_tok_s / c.plain_tok_s) * 100.0
    );
    println!(
        "| mask time per constrained token (worker thread, beside the forward), µs | {:.1} |",
        c.mask_us_per_token
    );
    println!(
        "| matcher update per constrained token (serving thread), µs | {:.1} |",
        c.consume_us_per_token
    );
}
