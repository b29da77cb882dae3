//! Decode speed of the tch transformer: ms/step for batch 1 and batch 8, f32 and bf16.
//!
//! usage: cargo run --example model_speed -- MODEL_DIR [STEPS]
//! (the dev profile is enough: the time is spent in libtorch, built with opt-level 3)

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use hindsight::model::transformer::Transformer;
use tch::{Device, Kind};

fn measure(model: &Transformer, batch: usize, steps: usize) -> anyhow::Result<f64> {
    let _guard = tch::no_grad_guard();
    let mut cache = model.new_cache(batch, 256);
    let slots: Vec<usize> = (0..batch)
        .map(|_| cache.alloc().context("no free slot"))
        .collect::<Result<_, _>>()?;
    for (i, &slot) in slots.iter().enumerate() {
        // Different prompt lengths, as in real serving.
        let prompt: Vec<u32> = (0..(48 + 8 * i) as u32).map(|t| 100 + t * 7).collect();
        let _ = model.prefill(&mut cache, slot, &prompt, None)?;
    }
    let mut tokens: Vec<u32> = vec![42; batch];
    let flags = vec![None; batch];
    let mut run = |n: usize| -> anyhow::Result<()> {
        for _ in 0..n {
            let logits = model.decode(&mut cache, &slots, &tokens, &flags)?;
            let next = logits.argmax(-1, false);
            for (b, t) in tokens.iter_mut().enumerate() {
                *t = next.int64_value(&[b as i64]) as u32;
            }
        }
        Ok(())
    };
    run(3)?; // warm-up
    let start = Instant::now();
    run(steps)?;
    Ok(start.elapsed().as_secs_f64() * 1000.0 / steps as f64)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .context("usage: model_speed MODEL_DIR [STEPS]")?,
    );
    let steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    // Intra-op threads: libtorch's default (one per core) or MODEL_SPEED_THREADS.
    if let Some(n) = std::env::var("MODEL_SPEED_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        tch::set_num_threads(n);
    }
    println!("torch threads: {}", tch::get_num_threads());
    // MODEL_SPEED_ONLY=bf16 / f32 / bf16:1 / f32:8 … narrows the runs (for profiling).
    let only = std::env::var("MODEL_SPEED_ONLY").unwrap_or_default();
    let wanted = |kind: Kind, batch: usize| {
        let name = if kind == Kind::Float { "f32" } else { "bf16" };
        only.is_empty() || only == name || only == format!("{name}:{batch}")
    };
    for kind in [Kind::Float, Kind::BFloat16] {
        if ![1, 8].iter().any(|&b| wanted(kind, b)) {
            continue;
        }
        let model = Transformer::load(&dir, Device::Cpu, kind)?;
        for batch in [1usize, 8].into_iter().filter(|&b| wanted(kind, b)) {
            let ms = measure(&model, batch, steps)?;
            println!(
                "{kind:?} batch {batch}: {ms:.2} ms/step, {:.1} tok/s aggregate",
                batch as f64 * 1000.0 / ms
            );
        }
    }
    Ok(())
}
