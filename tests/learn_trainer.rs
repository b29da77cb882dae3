//! The trainer on the real default model: negative rewards with a hint make the corrected
//! replies less likely, positive rewards make approved replies more likely, samples without a
//! signal change nothing, and the base weights never move; a turn the engine sampled under a
//! grammar and logit_bias is scored under the same mask and bias (ratio 1 at the weights that
//! sampled it, no gradient on forced tokens). (That it learns a preference end to end is
//! tests/learn_end_to_end.rs.)

use std::path::PathBuf;
use std::sync::OnceLock;

use hindsight::engine::{
    Backend, Constraint, EngineOptions, GenerateEvent, GenerateRequest, LocalEngine,
    SamplingParams, StopCriteria,
};
use hindsight::learn::guard::{greedy_replies, reply_kl};
use hindsight::learn::samples::{LearnMode, TrainingSample};
use hindsight::learn::trainer::{Trainer, TrainerConfig};
use hindsight::model::grammar::GrammarCompiler;
use hindsight::model::logprobs::{
    response_logprobs, response_logprobs_transformed, LogitTransform,
};
use hindsight::model::lora::{LoraConfig, TrainableAdapter};
use hindsight::model::transformer::Transformer;
use serde_json::json;
use tch::{Device, Kind, Tensor};

fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hindsight-data");
        hindsight::model::default_model::default_model_dir(&data).expect("default model imports")
    })
    .clone()
}

const QUESTIONS: &[&str] = &[
    "What causes rain?",
    "Why do cats purr?",
    "What is gravity?",
    "How do airplanes fly?",
];
const HINT: &str = "Answer in one short sentence of at most 15 words.";
const MAX_TOKENS: usize = 32;

fn messages(question: &str) -> Vec<serde_json::Value> {
    vec![json!({"role": "user", "content": question})]
}

/// The policy's greedy replies to QUESTIONS as samples with `reward` (and the hint when the
/// reward is negative), with behaviour log-probs recomputed under the policy.
fn samples(trainer: &Trainer, reward: f64) -> Vec<TrainingSample> {
    let prompts: Vec<Vec<u32>> = QUESTIONS
        .iter()
        .map(|q| trainer.chat_prompt(&messages(q), None).unwrap())
        .collect();
    let eos = trainer.tokenizer().eos_token_ids();
    let replies = greedy_replies(trainer.model(), &prompts, MAX_TOKENS, &eos, true).unwrap();
    let batch: Vec<(Vec<u32>, Vec<u32>)> = prompts.iter().cloned().zip(replies.clone()).collect();
    let behaviour = tch::no_grad(|| response_logprobs(trainer.model(), &batch, true).unwrap().0);
    batch
        .into_iter()
        .enumerate()
        .map(|(i, (prompt, reply))| TrainingSample {
            id: i as i64,
            messages: messages(QUESTIONS[i]),
            tools: None,
            behaviour_logprobs: Vec::try_from(behaviour.get(i as i64).narrow(
                0,
                0,
                reply.len() as i64,
            ))
            .unwrap(),
            prompt_ids: prompt,
            response_ids: reply,
            policy_version: 0,
            reward,
            hint: (reward < 0.0).then(|| HINT.to_string()),
            constraint: None,
            logit_bias: Vec::new(),
        })
        .collect()
}

/// Mean log-prob per token of the samples' responses under the policy (or the base).
fn mean_logprob(trainer: &Trainer, samples: &[TrainingSample], adapter: bool) -> f64 {
    let batch: Vec<(Vec<u32>, Vec<u32>)> = samples
        .iter()
        .map(|s| (s.prompt_ids.clone(), s.response_ids.clone()))
        .collect();
    let (lp, mask) = tch::no_grad(|| response_logprobs(trainer.model(), &batch, adapter).unwrap());
    lp.sum(tch::Kind::Float).double_value(&[]) / mask.sum(tch::Kind::Float).double_value(&[])
}

fn trainer(mode: LearnMode) -> Trainer {
    let config = TrainerConfig {
        mode,
        ..TrainerConfig::default()
    };
    Trainer::new(&model_dir(), Device::Cpu, config, None).unwrap()
}

#[test]
fn rewards_and_hints_move_the_policy_their_way_and_leave_the_base() {
    // Corrected replies (r = -1 with a hint): their likelihood falls under the policy.
    let mut down = trainer(LearnMode::Combined);
    let corrected = samples(&down, -1.0);
    let base_before = mean_logprob(&down, &corrected, false);
    let before = mean_logprob(&down, &corrected, true);
    assert!(
        (before - base_before).abs() < 1e-6,
        "a fresh adapter changes nothing"
    );
    let mut last = None;
    for _ in 0..2 {
        last = Some(down.step(&corrected).unwrap());
    }
    let m = last.unwrap();
    assert_eq!(m.samples_both, QUESTIONS.len());
    assert!(
        m.mean_teacher_advantage.unwrap() < 0.0,
        "the hinted teacher finds long replies less likely: {m:?}"
    );
    let after = mean_logprob(&down, &corrected, true);
    assert!(
        after < before - 0.01,
        "corrected replies: {before:.4} → {after:.4}"
    );
    assert_eq!(
        mean_logprob(&down, &corrected, false),
        base_before,
        "the base must not move"
    );
    let prompt = down.chat_prompt(&messages(QUESTIONS[0]), None).unwrap();
    assert!(reply_kl(down.model(), &prompt, &corrected[0].response_ids).unwrap() > 0.0);

    // Approved replies (r = +1, RL only): their likelihood rises.
    let mut up = trainer(LearnMode::Rl);
    let approved = samples(&up, 1.0);
    let before = mean_logprob(&up, &approved, true);
    for _ in 0..2 {
        let m = up.step(&approved).unwrap();
        assert_eq!(m.samples_rl, QUESTIONS.len());
    }
    let after = mean_logprob(&up, &approved, true);
    assert!(
        after > before + 0.01,
        "approved replies: {before:.4} → {after:.4}"
    );
}

#[test]
fn samples_without_signal_change_nothing() {
    let mut t = trainer(LearnMode::Rl);
    let mut neutral = samples(&t, 0.0);
    neutral.truncate(2);
    let before = t.snapshot();
    let m = t.step(&neutral).unwrap();
    assert_eq!(m.samples_skipped, 2);
    assert_eq!(m.tokens, 0);
    assert_eq!(t.snapshot(), before, "no gradient, no update");
}

/// A JSON-schema turn sampled by the engine at temperature 1 with a logit_bias: its tokens,
/// behaviour log-probs and the request's prompt.
fn constrained_turn(
    engine: &LocalEngine,
    question: &str,
    constraint: &Constraint,
    logit_bias: &[(u32, f32)],
) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let prompt = engine.chat_prompt(&messages(question), None).unwrap();
    let request = GenerateRequest {
        request_id: question.into(),
        prompt_tokens: prompt.clone(),
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(11),
            logit_bias: logit_bias.to_vec(),
            ..SamplingParams::default()
        },
        stop: StopCriteria {
            max_tokens: 48,
            ..Default::default()
        },
        top_logprobs: 0,
        adapter: Default::default(),
        priority: Default::default(),
        constraint: Some(constraint.clone()),
    };
    let mut stream = engine.submit(request).expect("accepted");
    let (mut ids, mut logprobs) = (Vec::new(), Vec::new());
    while let Some(event) = stream.blocking_recv() {
        match event {
            GenerateEvent::Token(t) => {
                ids.push(t.token_id);
                logprobs.push(t.logprob);
            }
            GenerateEvent::Finish(_) => break,
            GenerateEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    (prompt, ids, logprobs)
}

#[test]
fn constrained_turns_are_scored_under_their_grammar_and_bias() {
    let dir = model_dir();
    let engine = LocalEngine::start(EngineOptions::new(dir.clone(), "smollm2")).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer"},
        },
        "required": ["name", "age"],
        "additionalProperties": false,
    });
    let constraint = Constraint::JsonSchema(schema);
    let tokenizer = engine.tokenizer();
    let digit = tokenizer.encode("7").unwrap()[0];
    let logit_bias = vec![(digit, 3.0), (tokenizer.encode(" the").unwrap()[0], -5.0)];
    let question = "Describe a person as JSON with a name and an age.";
    let (prompt, response, behaviour) =
        constrained_turn(&engine, question, &constraint, &logit_bias);
    assert!(response.len() > 5, "{response:?}");
    let text = engine.decode(&response);
    let sample = TrainingSample {
        id: 1,
        messages: messages(question),
        tools: None,
        prompt_ids: prompt.clone(),
        response_ids: response.clone(),
        behaviour_logprobs: behaviour.clone(),
        policy_version: 0,
        reward: -1.0,
        hint: Some("Use the name Ada.".into()),
        constraint: Some(constraint.clone()),
        logit_bias: logit_bias.clone(),
    };

    // Positions where the grammar allowed a single token: log q = 0 there.
    let vocab = engine.info().vocab_size;
    let eos = tokenizer.eos_token_ids();
    let compiler = GrammarCompiler::from_model_dir(&dir, vocab, &eos).unwrap();
    let masks = compiler.replay_masks(&constraint, &response).unwrap();
    let forced: Vec<usize> = (0..masks.len())
        .filter(|&i| masks[i].iter().filter(|&&a| a).count() == 1)
        .collect();
    assert!(!forced.is_empty(), "no forced token in {text:?}");
    assert!(forced.len() < response.len(), "all forced in {text:?}");
    for &i in &forced {
        assert!(
            behaviour[i].abs() < 1e-6,
            "forced token {i}: {}",
            behaviour[i]
        );
    }

    // At the weights that sampled it, the trainer's lp_new is the behaviour log-prob (ratio 1)...
    let mut trainer = trainer(LearnMode::Combined);
    let recomputed = trainer
        .sample_logprobs(std::slice::from_ref(&sample), true)
        .unwrap();
    let recomputed = recomputed[0].clone().expect("the constraint replays");
    let gap = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let masked_gap = gap(&recomputed, &behaviour);
    assert!(
        masked_gap < 1e-3,
        "masked recompute is off by {masked_gap} on {text:?}"
    );
    for &i in &forced {
        assert_eq!(recomputed[i], 0.0, "forced token {i}");
    }
    // ...while the unmasked policy's log-probs are not.
    let batch = [(prompt.clone(), response.clone())];
    let plain = tch::no_grad(|| response_logprobs(trainer.model(), &batch, true).unwrap().0);
    let plain: Vec<f32> = Vec::try_from(plain.get(0)).unwrap();
    let plain_gap = gap(&plain, &behaviour);
    assert!(
        plain_gap > 0.1,
        "unmasked recompute only off by {plain_gap}"
    );
    let excess: f32 = behaviour.iter().zip(&plain).map(|(b, p)| b - p).sum();
    assert!(excess > 0.0, "the mask concentrates mass: {excess}");
    eprintln!(
        "{text:?}: {} tokens, {} forced; masked gap {masked_gap:.2e}, unmasked gap {plain_gap:.3}",
        response.len(),
        forced.len()
    );

    // A step on it: finite loss, nothing clipped, no drift from the behaviour policy.
    let m = trainer.step(std::slice::from_ref(&sample)).unwrap();
    assert_eq!((m.samples_both, m.samples_skipped), (1, 0), "{m:?}");
    assert_eq!(m.tokens, response.len());
    assert!(
        m.loss.is_finite() && m.grad_norm.is_finite() && m.grad_norm > 0.0,
        "{m:?}"
    );
    assert!(m.kl.abs() < 1e-3 && m.clip_fraction == 0.0, "{m:?}");
    assert!(m.mean_teacher_advantage.unwrap().is_finite(), "{m:?}");

    // A constraint the logged tokens do not replay under is skipped, not guessed or a panic.
    let wrong = TrainingSample {
        constraint: Some(Constraint::JsonSchema(json!({"type": "array"}))),
        ..sample.clone()
    };
    let m = trainer.step(&[wrong]).unwrap();
    assert_eq!((m.samples_skipped, m.tokens), (1, 0), "{m:?}");

    // Forced positions carry no gradient to the adapter; a free position does.
    let mut model = Transformer::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let adapter =
        TrainableAdapter::new(model.config(), LoraConfig::default(), Device::Cpu).unwrap();
    model.attach_trainable(&adapter).unwrap();
    let transform = LogitTransform::new(vocab, &response, &logit_bias, Some(&masks), Device::Cpu)
        .unwrap()
        .expect("a transform");
    let grad_norm = |positions: &[usize]| -> f64 {
        let (lp, _) =
            response_logprobs_transformed(&model, &batch, true, &[Some(&transform)]).unwrap();
        let index: Vec<i64> = positions.iter().map(|&i| i as i64).collect();
        let picked = lp.get(0).index_select(0, &Tensor::from_slice(&index));
        let vars = adapter.var_store().trainable_variables();
        for v in &vars {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        picked.sum(Kind::Float).backward();
        vars.iter()
            .map(|v| v.grad())
            .filter(Tensor::defined)
            .map(|g| g.abs().sum(Kind::Double).double_value(&[]))
            .sum()
    };
    assert_eq!(
        grad_norm(&forced),
        0.0,
        "forced positions carry no gradient"
    );
    let free = (0..response.len()).find(|i| !forced.contains(i)).unwrap();
    assert!(grad_norm(&[free]) > 0.0, "a free position has a gradient");
}
