//! The tch transformer against HF transformers on the same weights: SmolLM2-135M (from the
//! bundled GGUF) and tiny random Qwen3 / Qwen2 / Llama-3 models.

#[path = "reference/hf_model_fixtures.rs"]
mod fixtures;

use std::sync::OnceLock;

use hindsight::model::error::ModelError;
use hindsight::model::transformer::Transformer;
use serde_json::json;
use tch::{Device, Kind, Tensor};

const TEXTS: [&str; 3] = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
];
const TINY: [&str; 3] = ["qwen3", "qwen2", "llama3"];
const GENERATE: usize = 32;

fn tiny_prompts(vocab: u32) -> Vec<Vec<u32>> {
    vec![
        vec![5, 17, 300, 42, 7],
        (0..40).map(|i| (i * 37 + 11) % vocab).collect(),
        vec![vocab - 1],
    ]
}

/// All reference outputs, from one python process: models in order smollm2, qwen3, qwen2, llama3.
fn reference() -> &'static serde_json::Value {
    static REF: OnceLock<serde_json::Value> = OnceLock::new();
    REF.get_or_init(|| {
        let with = |name: &str, extra: serde_json::Value| {
            let mut spec = fixtures::reference_source(name);
            for (k, v) in extra.as_object().into_iter().flatten() {
                spec[k] = v.clone();
            }
            spec
        };
        let mut models = vec![with(
            "smollm2",
            json!({"texts": TEXTS, "generate": GENERATE}),
        )];
        for name in TINY {
            models.push(with(name, json!({"prompts": tiny_prompts(1000)})));
        }
        fixtures::run_reference("hf_model_reference.py", &json!({ "models": models }))
    })
}

fn model_ref(index: usize) -> &'static serde_json::Value {
    &reference()["models"][index]
}

fn load(name: &str, kind: Kind) -> Transformer {
    let _guard = tch::no_grad_guard();
    Transformer::load(&fixtures::model_dir(name), Device::Cpu, kind).expect("load model")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn prefill_alone(model: &Transformer, tokens: &[u32]) -> Tensor {
    let mut cache = model.new_cache(1, 16);
    let slot = cache.alloc().unwrap();
    model.prefill(&mut cache, slot, tokens, None).unwrap()
}

#[test]
fn smollm2_last_logprobs_match_transformers() {
    let model = load("smollm2", Kind::Float);
    let r = model_ref(0);
    let prompts: Vec<Vec<u32>> = r["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(fixtures::ids)
        .collect();
    for (i, prompt) in prompts.iter().enumerate() {
        let expected = Tensor::from_slice(&fixtures::floats(&r["last_logits"][i]))
            .log_softmax(-1, Kind::Float);
        let ours = prefill_alone(&model, prompt).log_softmax(-1, Kind::Float);
        let diff = max_abs_diff(&ours, &expected);
        assert!(diff < 1e-3, "prompt {i}: max |Δ log p| = {diff}");
    }
    // The training path (batched, right-padded) agrees with the same references.
    let t = prompts.iter().map(Vec::len).max().unwrap();
    let mut ids = vec![0i64; prompts.len() * t];
    let mut mask = vec![0i64; prompts.len() * t];
    for (i, p) in prompts.iter().enumerate() {
        for (j, &tok) in p.iter().enumerate() {
            ids[i * t + j] = tok as i64;
            mask[i * t + j] = 1;
        }
    }
    let shape = [prompts.len() as i64, t as i64];
    let logits = tch::no_grad(|| {
        model
            .forward_logits(
                &Tensor::from_slice(&ids).view(shape),
                &Tensor::from_slice(&mask).view(shape),
                false,
            )
            .unwrap()
    });
    for (i, p) in prompts.iter().enumerate() {
        let expected = Tensor::from_slice(&fixtures::floats(&r["last_logits"][i]))
            .log_softmax(-1, Kind::Float);
        let ours = logits
            .get(i as i64)
            .get(p.len() as i64 - 1)
            .log_softmax(-1, Kind::Float);
        let diff = max_abs_diff(&ours, &expected);
        assert!(
            diff < 1e-3,
            "forward_logits prompt {i}: max |Δ log p| = {diff}"
        );
    }
}

#[test]
fn smollm2_greedy_generation_matches_transformers() {
    let model = load("smollm2", Kind::Float);
    let r = model_ref(0);
    let prompt = fixtures::ids(&r["prompts"][0]);
    let expected = fixtures::ids(&r["generated"]);
    assert!(!expected.is_empty());
    let _guard = tch::no_grad_guard();
    let mut cache = model.new_cache(2, 8); // small capacity: generation exercises cache growth
    let slot = cache.alloc().unwrap();
    let mut logits = model.prefill(&mut cache, slot, &prompt, None).unwrap();
    let mut ours = Vec::new();
    for _ in 0..expected.len() {
        let next = logits.argmax(-1, false).int64_value(&[]) as u32;
        ours.push(next);
        logits = model
            .decode(&mut cache, &[slot], &[next], &[None])
            .unwrap()
            .get(0);
    }
    assert_eq!(ours, expected);
    assert_eq!(cache.len(slot), prompt.len() + expected.len());
}

#[test]
fn batched_decode_equals_each_sequence_alone() {
    let model = load("smollm2", Kind::Float);
    let _guard = tch::no_grad_guard();
    let prompts: Vec<Vec<u32>> = vec![
        vec![1, 504, 3458, 282, 4649, 314],
        (0..23).map(|i| 200 + i * 13).collect(),
        vec![1, 9],
        (0..11).map(|i| 1000 + i * 7).collect(),
    ];
    let steps = [[17u32, 18, 19, 20], [33, 34, 35, 36], [41, 42, 43, 44]];
    // Alone: each sequence in its own cache.
    let alone: Vec<Vec<Tensor>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut cache = model.new_cache(1, 4);
            let slot = cache.alloc().unwrap();
            let _ = model.prefill(&mut cache, slot, p, None).unwrap();
            steps
                .iter()
                .map(|s| {
                    model
                        .decode(&mut cache, &[slot], &[s[i]], &[None])
                        .unwrap()
                        .get(0)
                })
                .collect()
        })
        .collect();
    // Together, with an extra sequence that is freed mid-way (forcing a compaction move) and a
    // caller order that is not the slot order.
    let mut cache = model.new_cache(6, 4);
    let slots: Vec<usize> = (0..5).map(|_| cache.alloc().unwrap()).collect();
    let (live, extra) = ([slots[0], slots[2], slots[3], slots[4]], slots[1]);
    for (i, p) in prompts.iter().enumerate() {
        let _ = model.prefill(&mut cache, live[i], p, None).unwrap();
    }
    let _ = model.prefill(&mut cache, extra, &[5, 6, 7], None).unwrap();
    for (step, s) in steps.iter().enumerate() {
        if step == 1 {
            cache.free(extra);
        }
        let order = [3usize, 0, 2, 1];
        let batch_slots: Vec<usize> = order.iter().map(|&i| live[i]).collect();
        let tokens: Vec<u32> = order.iter().map(|&i| s[i]).collect();
        let logits = model
            .decode(&mut cache, &batch_slots, &tokens, &[None; 4])
            .unwrap();
        for (row, &i) in order.iter().enumerate() {
            let diff = max_abs_diff(&logits.get(row as i64), &alone[i][step]);
            assert!(
                diff < 1e-4,
                "step {step} sequence {i}: max |Δ logit| = {diff}"
            );
        }
    }
    // A subset of the live sequences (not the first rows) decodes through the gather path.
    let logits = model
        .decode(&mut cache, &[live[2]], &[50], &[None])
        .unwrap();
    let mut solo = model.new_cache(1, 4);
    let slot = solo.alloc().unwrap();
    let _ = model.prefill(&mut solo, slot, &prompts[2], None).unwrap();
    for s in &steps {
        let _ = model.decode(&mut solo, &[slot], &[s[2]], &[None]).unwrap();
    }
    let expected = model.decode(&mut solo, &[slot], &[50], &[None]).unwrap();
    assert!(max_abs_diff(&logits, &expected) < 1e-4);
}

#[test]
fn chunked_prefill_equals_whole_prompt() {
    let model = load("qwen3", Kind::Float);
    let _guard = tch::no_grad_guard();
    let prompt: Vec<u32> = (0..30).map(|i| 100 + i * 3).collect();
    let whole = prefill_alone(&model, &prompt);
    let mut cache = model.new_cache(1, 4);
    let slot = cache.alloc().unwrap();
    let _ = model.prefill(&mut cache, slot, &prompt[..7], None).unwrap();
    let _ = model
        .prefill(&mut cache, slot, &prompt[7..19], None)
        .unwrap();
    let chunked = model
        .prefill(&mut cache, slot, &prompt[19..], None)
        .unwrap();
    assert!(max_abs_diff(&whole, &chunked) < 1e-4);
}

#[test]
fn bf16_stays_close_to_transformers() {
    let model = load("smollm2", Kind::BFloat16);
    let r = model_ref(0);
    for i in 0..TEXTS.len() {
        let prompt = fixtures::ids(&r["prompts"][i]);
        let expected = Tensor::from_slice(&fixtures::floats(&r["last_logits"][i]))
            .log_softmax(-1, Kind::Float);
        let ours = prefill_alone(&model, &prompt).log_softmax(-1, Kind::Float);
        assert_eq!(ours.kind(), Kind::Float);
        // Compare where the reference puts real mass (log p > -10): bf16 weights move logits a bit.
        let keep = expected.gt(-10.0);
        let diff = max_abs_diff(&ours.masked_select(&keep), &expected.masked_select(&keep));
        assert!(diff < 0.5, "prompt {i}: bf16 max |Δ log p| = {diff}");
        assert_eq!(
            ours.argmax(-1, false).int64_value(&[]),
            expected.argmax(-1, false).int64_value(&[])
        );
    }
}

#[test]
fn tiny_qwen3_qwen2_llama3_match_transformers() {
    for (k, name) in TINY.iter().enumerate() {
        let model = load(name, Kind::Float);
        let r = model_ref(k + 1);
        for (i, prompt) in tiny_prompts(1000).iter().enumerate() {
            let expected = Tensor::from_slice(&fixtures::floats(&r["last_logits"][i]));
            let ours = prefill_alone(&model, prompt);
            let diff = max_abs_diff(&ours, &expected);
            assert!(diff < 1e-4, "{name} prompt {i}: max |Δ logit| = {diff}");
        }
    }
}

#[test]
fn context_overflow_and_bad_tokens_are_errors() {
    let model = load("llama3", Kind::Float);
    let max = model.config().max_position_embeddings;
    let mut cache = model.new_cache(2, 8);
    let slot = cache.alloc().unwrap();
    let long: Vec<u32> = vec![3; max + 1];
    assert!(matches!(
        model.prefill(&mut cache, slot, &long, None),
        Err(ModelError::ContextOverflow { .. })
    ));
    let _ = model
        .prefill(&mut cache, slot, &vec![3; max], None)
        .unwrap();
    assert!(matches!(
        model.decode(&mut cache, &[slot], &[4], &[None]),
        Err(ModelError::ContextOverflow { .. })
    ));
    let other = cache.alloc().unwrap();
    assert!(matches!(
        model.prefill(&mut cache, other, &[1000], None),
        Err(ModelError::TokenOutOfRange { .. })
    ));
    assert!(model.prefill(&mut cache, 1, &[], None).is_err());
    cache.free(other);
    assert!(
        model.prefill(&mut cache, other, &[1], None).is_err(),
        "freed slot must be rejected"
    );
    assert!(
        cache.alloc().is_some() && cache.alloc().is_none(),
        "two slots at most"
    );
}

#[test]
fn missing_tensor_and_shape_mismatch_name_the_tensor() {
    let src = fixtures::model_dir("qwen2");
    let tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    let write = |dir: &std::path::Path, tensors: &[(String, Tensor)]| {
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        Tensor::write_safetensors(tensors, dir.join("model.safetensors")).unwrap();
    };
    let missing = tempfile::tempdir().unwrap();
    let dropped = "model.layers.1.self_attn.k_proj.bias";
    let kept: Vec<(String, Tensor)> = tensors
        .iter()
        .filter(|(n, _)| n != dropped)
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    write(missing.path(), &kept);
    let err = Transformer::load(missing.path(), Device::Cpu, Kind::Float)
        .err()
        .expect("missing tensor");
    assert!(err.to_string().contains(dropped), "{err}");

    let wrong = tempfile::tempdir().unwrap();
    let target = "model.layers.0.mlp.down_proj.weight";
    let reshaped: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                if n == target {
                    t.narrow(1, 0, 64).contiguous()
                } else {
                    t.shallow_clone()
                },
            )
        })
        .collect();
    write(wrong.path(), &reshaped);
    let err = Transformer::load(wrong.path(), Device::Cpu, Kind::Float)
        .err()
        .expect("shape mismatch");
    let text = err.to_string();
    assert!(
        text.contains(target) && text.contains("[64, 64]") && text.contains("[64, 128]"),
        "{text}"
    );
}
