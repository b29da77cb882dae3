//! `hindsight bench engine`: prefill and decode speed, ours beside HF transformers `generate()`.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::engine::{Backend, LocalEngine};

use super::bench::{generate_timed, peak_rss_mib, reset_peak_rss, EngineArgs};

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
    let all_started = all.iter().map(|t| t.first_token_s()).fold(0.0, f64::max);
    let decoded = all
        .iter()
        .flat_map(|t| &t.token_s)
        .filter(|&&at| at > all_started)
        .count();
    Ok(Row {
        concurrent_decode_tok_s: decoded as f64 / (wall - all_started),
        prefill_tok_s: prompt.len() as f64 / prefill.first_token_s(),
        decode_tok_s,
        concurrent_tok_s: tokens as f64 / wall,
        peak_rss_mib: peak_rss_mib(),
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
    Ok(())
}
