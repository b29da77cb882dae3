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
    server.set_adapter(Some(&snapshot)).unwrap();
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
    model.set_adapter(Some(&loaded)).unwrap();

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
        let ours = model.prefill(&mut cache, slot, prompt, true).unwrap();
        let diff = (&ours - &expected).abs().max().double_value(&[]);
        assert!(diff < 1e-3, "prompt {i}: max |Δ logit| vs peft = {diff}");
        let base = {
            let other = cache.alloc().unwrap();
            let base = model.prefill(&mut cache, other, prompt, false).unwrap();
            cache.free(other);
            base
        };
        assert!(
            (&base - &expected).abs().max().double_value(&[]) > 1e-2,
            "the adapter must matter"
        );
        cache.free(slot);
    }
    // Mixed batch: the adapter applies per row.
    let (a, b) = (cache.alloc().unwrap(), cache.alloc().unwrap());
    let _ = model.prefill(&mut cache, a, &prompts[0], true).unwrap();
    let _ = model.prefill(&mut cache, b, &prompts[0], false).unwrap();
    let mixed = model
        .decode(&mut cache, &[a, b], &[42, 42], &[true, false])
        .unwrap();
    let mut alone = |flag: bool| {
        let s = cache.alloc().unwrap();
        let _ = model.prefill(&mut cache, s, &prompts[0], flag).unwrap();
        let out = model
            .decode(&mut cache, &[s], &[42], &[flag])
            .unwrap()
            .get(0);
        cache.free(s);
        out
    };
    let (with, without) = (alone(true), alone(false));
    assert!((mixed.get(0) - with).abs().max().double_value(&[]) < 1e-4);
    assert!((mixed.get(1) - without).abs().max().double_value(&[]) < 1e-4);
    model.set_adapter(None).unwrap();
    assert!(!model.has_adapter());
}
