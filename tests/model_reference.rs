//! The tch transformer against HF transformers on the same weights: SmolLM2-135M (from the
//! bundled GGUF) and tiny random Qwen3 / Qwen2 / Llama-3 models; SmolLM2 also under each rope
//! scaling (yarn, dynamic, linear, llama3), from config.json and from `--rope-scaling`.

#[path = "reference/hf_model_fixtures.rs"]
mod fixtures;

use std::sync::OnceLock;

use hindsight::engine::{Backend, EngineOptions, LocalEngine};
use hindsight::model::error::ModelError;
use hindsight::model::overrides::ModelOverrides;
use hindsight::model::rope::inverse_frequencies;
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
        let rope = json!({
            "text": include_str!("../README.md"),
            "length": ROPE_LENGTH,
            "positions": ROPE_POSITIONS,
            "variants": rope_variants()
                .iter()
                .map(|(max, params)| json!({"max_position_embeddings": max, "rope_parameters": params}))
                .collect::<Vec<_>>(),
        });
        let mut models = vec![with(
            "smollm2",
            json!({"texts": TEXTS, "generate": GENERATE, "rope": rope}),
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

/// Rope scaling tests: SmolLM2 pretends its window is 128 positions, so a 512-token prompt
/// runs at 4 × the original window and the scaling changes nearly every frequency.
const ROPE_ORIGINAL: usize = 128;
const ROPE_LENGTH: usize = 4 * ROPE_ORIGINAL;
/// Logits compared at these positions; the last four are also decoded one token at a time.
const ROPE_POSITIONS: [usize; 8] = [127, 255, 383, 507, 508, 509, 510, 511];
const DECODED: usize = 4;

/// (max_position_embeddings, rope_parameters) of each variant, as config.json states them.
/// Dynamic NTK: transformers recomputes the base from the current length, here 512 =
/// original × factor, exactly the length our fixed tables are computed for, so the comparison
/// holds at every position of the forward.
fn rope_variants() -> Vec<(usize, serde_json::Value)> {
    let o = ROPE_ORIGINAL;
    vec![
        (
            o,
            json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": o}),
        ),
        (
            o,
            json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": o,
                   "beta_fast": 16.0, "beta_slow": 2.0, "truncate": false,
                   "mscale": 1.0, "mscale_all_dim": 0.5}),
        ),
        (o, json!({"rope_type": "dynamic", "factor": 4.0})),
        (o, json!({"rope_type": "linear", "factor": 4.0})),
        (
            4 * o,
            json!({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": o}),
        ),
    ]
}

/// The imported SmolLM2 with its config.json changed: `max_position_embeddings` and
/// `rope_scaling` (None: no scaling); the other files are links to the real ones.
fn smollm2_with_config(max: usize, rope: Option<&serde_json::Value>) -> tempfile::TempDir {
    let src = fixtures::model_dir("smollm2");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name != "config.json" {
            std::os::unix::fs::symlink(&path, dir.path().join(name)).unwrap();
        }
    }
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["max_position_embeddings"] = json!(max);
    if let Some(rope) = rope {
        config["rope_scaling"] = rope.clone();
    }
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

/// max |Δ log p| between our logits and the reference's.
fn logprob_diff(ours: &Tensor, expected: &serde_json::Value) -> f64 {
    let expected = Tensor::from_slice(&fixtures::floats(expected)).log_softmax(-1, Kind::Float);
    max_abs_diff(&ours.log_softmax(-1, Kind::Float), &expected)
}

/// Checks `model` against reference variant `index`: the inverse frequencies, the training
/// path over the whole prompt, and the serving path (prefill, then decode one token at a
/// time over the last positions). Returns the largest |Δ log p|.
fn check_rope_variant(label: &str, model: &Transformer, index: usize) -> f64 {
    let r = &model_ref(0)["rope"];
    let reference = &r["variants"][index];
    let prompt = fixtures::ids(&r["prompt"]);
    assert_eq!(
        model.config().max_position_embeddings,
        ROPE_LENGTH,
        "{label}"
    );
    let ours = Tensor::from_slice(&inverse_frequencies(model.config()));
    let theirs = Tensor::from_slice(&fixtures::floats(&reference["inv_freq"]));
    let inv_diff = ((&ours - &theirs).abs() / theirs.abs())
        .max()
        .double_value(&[]);
    assert!(
        inv_diff < 1e-6,
        "{label}: inverse frequencies, max relative Δ = {inv_diff}"
    );
    let scaling = reference["attention_scaling"].as_f64().unwrap();
    let ours_scaling = model
        .config()
        .rope_scaling
        .map_or(1.0, |s| s.attention_factor());
    assert!(
        (ours_scaling - scaling).abs() < 1e-12,
        "{label}: {ours_scaling} vs {scaling}"
    );

    let _guard = tch::no_grad_guard();
    let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let shape = [1, ids.len() as i64];
    let logits = model
        .forward_logits(
            &Tensor::from_slice(&ids).view(shape),
            &Tensor::ones(shape, (Kind::Int64, Device::Cpu)),
            false,
        )
        .unwrap()
        .get(0);
    let mut worst = 0f64;
    for (k, &p) in ROPE_POSITIONS.iter().enumerate() {
        let diff = logprob_diff(&logits.get(p as i64), &reference["logits"][k]);
        assert!(
            diff < 1e-3,
            "{label} forward_logits position {p}: max |Δ log p| = {diff}"
        );
        worst = worst.max(diff);
    }
    // Serving: prefill up to the first decoded position, then one token per decode step.
    let first = ROPE_LENGTH - DECODED;
    let mut cache = model.new_cache(1, 64);
    let slot = cache.alloc().unwrap();
    let mut step = model
        .prefill(&mut cache, slot, &prompt[..first], None)
        .unwrap();
    for (k, &p) in ROPE_POSITIONS
        .iter()
        .enumerate()
        .skip(ROPE_POSITIONS.len() - DECODED - 1)
    {
        let diff = logprob_diff(&step, &reference["logits"][k]);
        assert!(
            diff < 1e-3,
            "{label} serving position {p}: max |Δ log p| = {diff}"
        );
        worst = worst.max(diff);
        if p + 1 < ROPE_LENGTH {
            step = model
                .decode(&mut cache, &[slot], &[prompt[p + 1]], &[None])
                .unwrap()
                .get(0);
        }
    }
    eprintln!(
        "{label}: max |Δ log p| = {worst:.2e}, inverse frequencies max relative Δ = {inv_diff:.1e}"
    );
    worst
}

#[test]
fn smollm2_rope_scaling_from_config_matches_transformers() {
    for (index, (max, rope)) in rope_variants().iter().enumerate() {
        let dir = smollm2_with_config(*max, Some(rope));
        let model = Transformer::load(dir.path(), Device::Cpu, Kind::Float).expect("load");
        let label = format!("config.json {}", rope);
        check_rope_variant(&label, &model, index);
    }
}

#[test]
fn smollm2_rope_scaling_flags_match_transformers() {
    // `--rope-scaling yarn:4` / `dynamic:4` / `linear:4` on a config without scaling equal the
    // reference's yarn / dynamic / linear variants (original = config.json's window).
    let dir = smollm2_with_config(ROPE_ORIGINAL, None);
    for (spec, index) in [("yarn:4", 0), ("dynamic:4", 2), ("linear:4", 3)] {
        let overrides = ModelOverrides {
            rope_scaling: Some(spec.parse().unwrap()),
            max_context: None,
        };
        let model =
            Transformer::load_with(dir.path(), Device::Cpu, Kind::Float, &overrides).expect("load");
        check_rope_variant(&format!("--rope-scaling {spec}"), &model, index);
    }
    // `none` over a config.json with scaling serves the native window; --max-context trims it.
    let scaled = smollm2_with_config(ROPE_ORIGINAL, Some(&rope_variants()[0].1));
    let overrides = ModelOverrides {
        rope_scaling: Some("none".parse().unwrap()),
        max_context: Some(100),
    };
    let model =
        Transformer::load_with(scaled.path(), Device::Cpu, Kind::Float, &overrides).unwrap();
    assert_eq!(model.config().rope_scaling, None);
    assert_eq!(model.config().max_position_embeddings, 100);
    let too_long = ModelOverrides {
        rope_scaling: None,
        max_context: Some(ROPE_LENGTH + 1),
    };
    let err = Transformer::load_with(scaled.path(), Device::Cpu, Kind::Float, &too_long)
        .err()
        .expect("window beyond the rope");
    assert!(err.to_string().contains("--max-context 513"), "{err}");
}

#[test]
fn the_engine_reports_the_served_window() {
    let dir = smollm2_with_config(ROPE_ORIGINAL, None);
    let mut options = EngineOptions::new(dir.path().to_path_buf(), "smollm2");
    options.overrides = ModelOverrides {
        rope_scaling: Some("yarn:4".parse().unwrap()),
        max_context: Some(300),
    };
    let engine = LocalEngine::start(options).expect("engine");
    assert_eq!(engine.info().context_length, 300);
    assert_eq!(
        engine
            .overrides()
            .rope_scaling
            .as_ref()
            .unwrap()
            .to_string(),
        "yarn:4"
    );
}
