//! The fused CPU decode step (`src/model/fused_decode.rs`) against the tensor path, which
//! `model_reference.rs` checks against HF transformers: the same sequences, batched with
//! different lengths, step by step, a cache written by one path read by the other, and rows
//! of one batch on two different LoRA adapters and on the base weights.

#[path = "reference/hf_model_fixtures.rs"]
mod fixtures;

use hindsight::model::lora::{LoraConfig, TrainableAdapter};
use hindsight::model::peft::AdapterSnapshot;
use hindsight::model::transformer::Transformer;
use tch::{Device, Kind, Tensor};

const STEPS: usize = 6;

/// Three prompts of different lengths, with ids inside the model's vocabulary.
fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    let prompts: [Vec<u32>; 3] = [
        vec![1, 504, 3458, 282, 4649, 314],
        (0..37).map(|i| 200 + i * 13).collect(),
        vec![9],
    ];
    prompts
        .iter()
        .map(|p| p.iter().map(|&t| t % vocab as u32).collect())
        .collect()
}

/// A rank-`rank` adapter with random A and B (a fresh one has B = 0, no delta at all).
fn random_adapter(model: &Transformer, rank: usize, seed: i64) -> AdapterSnapshot {
    tch::manual_seed(seed);
    let config = LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        ..LoraConfig::default()
    };
    let mut snapshot = TrainableAdapter::new(model.config(), config, Device::Cpu)
        .unwrap()
        .snapshot();
    for t in &mut snapshot.tensors {
        let noise = Tensor::randn([t.data.len() as i64], (Kind::Float, Device::Cpu)) * 0.05;
        t.data = Vec::<f32>::try_from(&noise).unwrap();
    }
    snapshot
}

/// Logits of every decode step for the batch, with `fused(step)` choosing the path per step.
fn run(model: &mut Transformer, fused: impl Fn(usize) -> bool) -> Vec<Tensor> {
    run_with(model, &[None, None, None], fused)
}

/// `run` with row b on the adapter installed under `adapters[b]`.
fn run_with(
    model: &mut Transformer,
    adapters: &[Option<u64>],
    fused: impl Fn(usize) -> bool,
) -> Vec<Tensor> {
    let _guard = tch::no_grad_guard();
    let prompts = prompts(model.config().vocab_size);
    let mut cache = model.new_cache(prompts.len(), 8);
    let slots: Vec<usize> = prompts.iter().map(|_| cache.alloc().unwrap()).collect();
    let mut tokens: Vec<u32> = prompts
        .iter()
        .zip(&slots)
        .map(|(p, &slot)| {
            let logits = model.prefill(&mut cache, slot, p, None).unwrap();
            // (The prompts' keys come from the base weights for every row: the decode
            // steps below are what is compared.)
            logits.argmax(-1, false).int64_value(&[]) as u32
        })
        .collect();
    let mut out = Vec::new();
    for step in 0..STEPS {
        let wanted = fused(step);
        assert_eq!(
            model.set_fused_decode(wanted),
            wanted,
            "fused decode applies"
        );
        let logits = model.decode(&mut cache, &slots, &tokens, adapters).unwrap();
        // Fixed inputs (not the argmax) so both paths see the same tokens.
        tokens = tokens.iter().map(|t| (t * 7 + 13) % 1000).collect();
        out.push(logits);
    }
    out
}

fn compare(name: &str, kind: Kind, tolerance: f64) {
    let mut model = Transformer::load(&fixtures::model_dir(name), Device::Cpu, kind).unwrap();
    let tensor = run(&mut model, |_| false);
    let fused = run(&mut model, |_| true);
    // Alternating: each path reads keys and values the other wrote.
    let mixed = run(&mut model, |step| step % 2 == 0);
    check(
        name,
        kind,
        tolerance,
        &tensor,
        &[("fused", &fused), ("alternating", &mixed)],
    );
}

/// Every step of every `runs` entry against `want`, on log-probabilities where they matter.
fn check(name: &str, kind: Kind, tolerance: f64, tensor: &[Tensor], runs: &[(&str, &Vec<Tensor>)]) {
    let runs: Vec<(&str, &Vec<Tensor>)> = runs.to_vec();
    for (step, want) in tensor.iter().enumerate() {
        let want = want.log_softmax(-1, Kind::Float);
        for (label, run) in &runs {
            let got = run[step].log_softmax(-1, Kind::Float);
            // Where the distribution has real mass (within e^-10 of each row's top token).
            let keep = want.ge_tensor(&(want.amax([-1], true) - 10.0));
            let diff = (got.masked_select(&keep) - want.masked_select(&keep))
                .abs()
                .max()
                .double_value(&[]);
            eprintln!("{name} {kind:?} step {step} {label}: max |Δ log p| = {diff:.2e}");
            assert!(
                diff < tolerance,
                "{name} {kind:?} step {step} {label}: max |Δ log p| = {diff} ≥ {tolerance}"
            );
            // In bf16 the two paths round differently, so near-ties may break either way.
            if kind == Kind::Float {
                assert_eq!(
                    got.argmax(-1, false),
                    want.argmax(-1, false),
                    "{name} {kind:?} step {step} {label}: greedy tokens differ"
                );
            }
        }
    }
}

#[test]
fn smollm2_f32_fused_decode_equals_tensor_path() {
    compare("smollm2", Kind::Float, 1e-3);
}

#[test]
fn smollm2_bf16_fused_decode_stays_close_to_tensor_path() {
    // The tensor path rounds every activation to bf16, the fused one only projection inputs.
    compare("smollm2", Kind::BFloat16, 0.5);
}

#[test]
fn qwen3_qk_norm_fused_decode_equals_tensor_path() {
    compare("qwen3", Kind::Float, 1e-3);
}

#[test]
fn qwen2_qkv_bias_fused_decode_equals_tensor_path() {
    compare("qwen2", Kind::Float, 1e-3);
}

#[test]
fn models_the_kernels_do_not_cover_keep_the_tensor_path() {
    // The tiny Llama-3 fixture's 1000-row lm_head is not a multiple of the kernel's 64.
    let mut model =
        Transformer::load(&fixtures::model_dir("llama3"), Device::Cpu, Kind::Float).unwrap();
    assert!(!model.set_fused_decode(true));
}

#[test]
fn adapters_per_row_in_the_fused_step_equal_the_tensor_path() {
    for (kind, tolerance) in [(Kind::Float, 1e-3), (Kind::BFloat16, 0.5)] {
        let mut model =
            Transformer::load(&fixtures::model_dir("smollm2"), Device::Cpu, kind).unwrap();
        // Rank 16 on all seven modules (fused ranks 48/16/32/16, padded to 64) and rank 8.
        let first = random_adapter(&model, 16, 1);
        let second = random_adapter(&model, 8, 2);
        model.install_adapter(1, Some(&first)).unwrap();
        model.install_adapter(2, Some(&second)).unwrap();
        // Row 0 on the older (leased) adapter, row 1 on the current one, row 2 on the base.
        let rows = [Some(1), Some(2), None];
        let tensor = run_with(&mut model, &rows, |_| false);
        let fused = run_with(&mut model, &rows, |_| true);
        let base = run(&mut model, |_| true);
        check(
            "smollm2+adapters",
            kind,
            tolerance,
            &tensor,
            &[("fused", &fused)],
        );
        // The adapters change the logits of their rows (so the comparison above means
        // something), and only theirs.
        let moved = |row: i64| {
            (fused[0].get(row) - base[0].get(row))
                .abs()
                .max()
                .double_value(&[])
        };
        assert!(
            moved(0) > 0.05 && moved(1) > 0.05,
            "rows 0, 1: {} {}",
            moved(0),
            moved(1)
        );
        assert!(moved(2) < 1e-6, "row 2 (base) moved by {}", moved(2));
    }
}

/// Logits of prefilling `prompt` in a fresh cache, in one chunk.
fn fresh_prefill(model: &Transformer, prompt: &[u32]) -> Tensor {
    let mut cache = model.new_cache(1, 8);
    let slot = cache.alloc().unwrap();
    model.prefill(&mut cache, slot, prompt, None).unwrap()
}

fn assert_close(label: &str, got: &Tensor, want: &Tensor) {
    let diff = (got - want).abs().max().double_value(&[]);
    eprintln!("{label}: max |Δ logit| = {diff:.2e}");
    assert!(diff < 1e-3, "{label}: max |Δ logit| = {diff}");
}

#[test]
fn prefix_cache_continues_and_shares_sequences_exactly() {
    let _guard = tch::no_grad_guard();
    let model =
        Transformer::load(&fixtures::model_dir("smollm2"), Device::Cpu, Kind::Float).unwrap();
    let vocab = model.config().vocab_size as u32;
    let mut cache = model.new_cache(2, 8);
    cache.set_prefix_budget(1 << 30);
    // Turn 1: a 100-token prompt, prefilled in chunks, then 5 decoded tokens.
    let prompt: Vec<u32> = (0..100).map(|i| (i * 37 + 11) % vocab).collect();
    let slot = cache.alloc().unwrap();
    assert_eq!(
        cache.reuse_prefix(slot, &prompt, None),
        0,
        "an empty cache has nothing"
    );
    for chunk in prompt.chunks(32) {
        let _ = model.prefill(&mut cache, slot, chunk, None).unwrap();
    }
    let mut fed = prompt.clone();
    for step in 0..5u32 {
        let token = (step * 101 + 7) % vocab;
        let _ = model
            .decode(&mut cache, &[slot], &[token], &[None])
            .unwrap();
        fed.push(token);
    }
    assert_eq!(cache.len(slot), 105);
    assert!(
        cache.capacity(slot) >= 105,
        "the slot grew with its sequence"
    );
    cache.free_keeping(slot, &fed, None);
    assert_eq!(cache.prefix_stats().entries, 1);

    // Another adapter's request cannot use the base's keys and values.
    let slot = cache.alloc().unwrap();
    assert_eq!(cache.reuse_prefix(slot, &fed, Some(3)), 0);
    cache.free(slot);

    // Turn 2 continues turn 1: it takes the cached sequence over and prefills only its tail.
    let mut turn2 = fed.clone();
    turn2.extend((0..20).map(|i| (i * 53 + 3) % vocab));
    let slot = cache.alloc().unwrap();
    assert_eq!(cache.reuse_prefix(slot, &turn2, None), 105);
    assert_eq!(
        cache.prefix_stats().entries,
        0,
        "a continued sequence is taken, not copied"
    );
    let got = model
        .prefill(&mut cache, slot, &turn2[105..], None)
        .unwrap();
    assert_close("continued", &got, &fresh_prefill(&model, &turn2));
    // Decoding on after the reused prefix equals decoding after a full prefill.
    let mut full = model.new_cache(1, 8);
    let full_slot = full.alloc().unwrap();
    let _ = model.prefill(&mut full, full_slot, &turn2, None).unwrap();
    let a = model.decode(&mut cache, &[slot], &[42], &[None]).unwrap();
    let b = model
        .decode(&mut full, &[full_slot], &[42], &[None])
        .unwrap();
    assert_close("decode after reuse", &a, &b);
    let mut kept = turn2.clone();
    kept.push(42);
    cache.free_keeping(slot, &kept, None);

    // A request sharing only the first 30 tokens gets a copy; the entry stays for others.
    let mut other: Vec<u32> = kept[..30].to_vec();
    other.extend((0..10).map(|i| (i * 71 + 5) % vocab));
    let slot = cache.alloc().unwrap();
    assert_eq!(cache.reuse_prefix(slot, &other, None), 30);
    assert_eq!(cache.prefix_stats().entries, 1, "a shared prefix is copied");
    let got = model.prefill(&mut cache, slot, &other[30..], None).unwrap();
    assert_close("shared prefix", &got, &fresh_prefill(&model, &other));
    // The whole prompt cached: the last token is still prefilled (its logits start the reply).
    let slot2 = cache.alloc().unwrap();
    assert_eq!(cache.reuse_prefix(slot2, &kept[..60], None), 59);
    let stats = cache.prefix_stats();
    assert_eq!((stats.lookups, stats.hits), (5, 3), "{stats:?}");

    // A budget smaller than an entry keeps nothing.
    cache.set_prefix_budget(1);
    assert_eq!(cache.prefix_stats().entries, 0);
}
