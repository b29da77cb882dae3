//! LoRA: training raises a target continuation's log-prob without touching the base weights,
//! and our PEFT files load into the real `peft` package with the same logits.

#[path = "reference/hf_model_fixtures.rs"]
mod fixtures;

use hindsight::model::logprobs::response_logprobs;
use hindsight::model::lora::{LoraConfig, LoraTarget, TrainableAdapter};
use hindsight::model::peft::AdapterSnapshot;
use hindsight::model::transformer::Transformer;
use serde_json::json;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

fn load(name: &str) -> Transformer {
    Transformer::load(&fixtures::model_dir(name), Device::Cpu, Kind::Float).expect("load model")
}

fn mean_logprob(model: &Transformer, batch: &[(Vec<u32>, Vec<u32>)], use_adapter: bool) -> Tensor {
    let (lp, mask) = response_logprobs(model, batch, use_adapter).unwrap();
    lp.sum(Kind::Float) / mask.sum(Kind::Float)
}

#[test]
fn adamw_steps_raise_target_logprob_and_leave_base_bit_identical() {
    let mut model = load("smollm2");
    let frozen: Vec<(String, Tensor)> = model
        .base_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let adapter =
        TrainableAdapter::new(model.config(), LoraConfig::default(), Device::Cpu).unwrap();
    model.attach_trainable(&adapter).unwrap();
    let batch = vec![
        (
            vec![1u32, 504, 3458, 282, 4649, 314],
            vec![2116u32, 30, 3751, 2],
        ),
        (vec![1u32, 9, 77, 1200], vec![906u32, 1146, 30]),
    ];
    let before = tch::no_grad(|| mean_logprob(&model, &batch, true)).double_value(&[]);
    let base_before = tch::no_grad(|| mean_logprob(&model, &batch, false)).double_value(&[]);
    assert!(
        (before - base_before).abs() < 1e-6,
        "B = 0 so a fresh adapter changes nothing"
    );
    let mut opt = nn::AdamW::default()
        .build(adapter.var_store(), 1e-3)
        .unwrap();
    for _ in 0..4 {
        let loss = -mean_logprob(&model, &batch, true);
        opt.backward_step(&loss);
    }
    let after = tch::no_grad(|| mean_logprob(&model, &batch, true)).double_value(&[]);
    let base_after = tch::no_grad(|| mean_logprob(&model, &batch, false)).double_value(&[]);
    assert!(
        after > before + 0.5,
        "mean log-prob {before:.3} → {after:.3}"
    );
    assert_eq!(
        base_after, base_before,
        "the base model's log-probs must not move"
    );
    for ((name, now), (_, then)) in model.base_tensors().iter().zip(&frozen) {
        assert!(!now.requires_grad(), "{name} requires grad");
        assert!(now.equal(then), "{name} changed");
    }
    // The same adapter served through a snapshot gives the trained log-probs.
    let snapshot = adapter.snapshot();
    let mut server = load("smollm2");
    server.install_adapter(1, Some(&snapshot)).unwrap();
    let served = tch::no_grad(|| mean_logprob(&server, &batch, true)).double_value(&[]);
    assert!(
        (served - after).abs() < 1e-4,
        "served {served} vs trained {after}"
    );
}

#[test]
fn peft_files_load_in_peft_with_the_same_logits() {
    let mut model = load("smollm2");
    // Only some targets, so the fused q/k/v and gate/up deltas must leave the others' slices alone.
    let config = LoraConfig {
        rank: 8,
        alpha: 16.0,
        target_modules: vec![
            LoraTarget::Q,
            LoraTarget::V,
            LoraTarget::O,
            LoraTarget::Up,
            LoraTarget::Down,
        ],
    };
    let adapter = TrainableAdapter::new(model.config(), config, Device::Cpu).unwrap();
    let mut snapshot = adapter.snapshot();
    // A fresh adapter has B = 0: give B values so the adapter changes the output.
    tch::manual_seed(7);
    for t in snapshot
        .tensors
        .iter_mut()
        .filter(|t| t.name.contains("lora_B"))
    {
        let noise = Tensor::randn([t.data.len() as i64], (Kind::Float, Device::Cpu)) * 0.02;
        noise.copy_data(&mut t.data, noise.numel());
    }
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = dir.path().join("adapter");
    snapshot.save_peft(&adapter_dir).unwrap();
    snapshot.save_peft(&adapter_dir).unwrap(); // replacing an existing adapter works too
    let loaded = AdapterSnapshot::load_peft(&adapter_dir).unwrap();
    assert!(loaded == snapshot, "PEFT round trip changed the adapter");
    model.install_adapter(1, Some(&loaded)).unwrap();

    let prompts: Vec<Vec<u32>> = vec![
        vec![1, 504, 3458, 282, 4649, 314],
        (0..17).map(|i| 300 + i * 29).collect(),
    ];
    let reference = fixtures::run_reference(
        "hf_model_peft.py",
        &json!({"model": fixtures::model_dir("smollm2"), "adapter": adapter_dir, "prompts": prompts}),
    );
    let _guard = tch::no_grad_guard();
    let mut cache = model.new_cache(4, 8);
    for (i, prompt) in prompts.iter().enumerate() {
        let expected = Tensor::from_slice(&fixtures::floats(&reference["adapted"][i]));
        let slot = cache.alloc().unwrap();
        let ours = model.prefill(&mut cache, slot, prompt, Some(1)).unwrap();
        let diff = (&ours - &expected).abs().max().double_value(&[]);
        assert!(diff < 1e-3, "prompt {i}: max |Δ logit| vs peft = {diff}");
        let base = {
            let other = cache.alloc().unwrap();
            let base = model.prefill(&mut cache, other, prompt, None).unwrap();
            cache.free(other);
            base
        };
        assert!(
            (&base - &expected).abs().max().double_value(&[]) > 1e-2,
            "the adapter must matter"
        );
        cache.free(slot);
    }
    // Mixed batch: each row uses its own adapter (1, the base, or a second adapter 2 installed
    // later while 1 stays leased), as sequences that straddle a hot-swap do.
    let mut second = loaded.clone();
    for t in second
        .tensors
        .iter_mut()
        .filter(|t| t.name.contains("lora_B"))
    {
        t.data.iter_mut().for_each(|x| *x = -*x);
    }
    model.install_adapter(2, Some(&second)).unwrap();
    let rows = [Some(1), None, Some(2)];
    let slots: Vec<usize> = rows.iter().map(|_| cache.alloc().unwrap()).collect();
    for (&slot, &adapter) in slots.iter().zip(&rows) {
        let _ = model
            .prefill(&mut cache, slot, &prompts[0], adapter)
            .unwrap();
    }
    let mixed = model
        .decode(&mut cache, &slots, &[42, 42, 42], &rows)
        .unwrap();
    let mut alone = |adapter: Option<u64>| {
        let s = cache.alloc().unwrap();
        let _ = model.prefill(&mut cache, s, &prompts[0], adapter).unwrap();
        let out = model
            .decode(&mut cache, &[s], &[42], &[adapter])
            .unwrap()
            .get(0);
        cache.free(s);
        out
    };
    let each: Vec<Tensor> = rows.iter().map(|&a| alone(a)).collect();
    for (i, expected) in each.iter().enumerate() {
        let diff = (mixed.get(i as i64) - expected)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-4, "row {i} ({:?}): max |Δ| = {diff}", rows[i]);
    }
    assert!(
        (&each[0] - &each[2]).abs().max().double_value(&[]) > 1e-2,
        "the two adapters must differ"
    );
    // Once no sequence uses adapter 1 it can be dropped; the current one (2) stays.
    model.retain_adapters(&[]);
    assert!(model.prefill(&mut cache, slots[0], &[1], Some(1)).is_err());
    assert!(model.prefill(&mut cache, slots[2], &[1], Some(2)).is_ok());
    model.install_adapter(3, None).unwrap();
    assert!(!model.has_adapter());
}
