//! The trainer on the real default model: a brevity preference, taught by rewards and hints on
//! the model's own replies, shortens its greedy replies to held-out questions; the base stays
//! untouched and the promotion guard accepts the result.

use std::path::PathBuf;
use std::sync::OnceLock;

use hindsight::learn::guard::{greedy_replies, reply_kl};
use hindsight::learn::samples::{LearnMode, TrainingSample};
use hindsight::learn::trainer::{Trainer, TrainerConfig};
use hindsight::model::logprobs::response_logprobs;
use serde_json::json;
use tch::Device;

fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hindsight-data");
        hindsight::model::default_model::default_model_dir(&data).expect("default model imports")
    })
    .clone()
}

const TRAIN: &[&str] = &[
    "What causes rain?",
    "How does a bicycle stay upright?",
    "Why do cats purr?",
    "What is photosynthesis?",
    "How do vaccines work?",
    "What is the internet?",
    "Why is the ocean salty?",
    "How do airplanes fly?",
    "What is gravity?",
    "How does a refrigerator keep food cold?",
    "Why do leaves change color in autumn?",
    "What is a black hole?",
];
const HELD_OUT: &[&str] = &[
    "How do bees make honey?",
    "What is electricity?",
    "Why do we sleep?",
    "How does a compass work?",
];
const WORD_LIMIT: usize = 20;
const HINT: &str = "Answer in one short sentence of at most 15 words.";
const MAX_TOKENS: usize = 64;

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

fn messages(question: &str) -> Vec<serde_json::Value> {
    vec![json!({"role": "user", "content": question})]
}

fn eos(trainer: &Trainer) -> Vec<u32> {
    trainer.tokenizer().eos_token_ids()
}

/// Greedy replies of the current policy; returns (prompt ids, reply ids, words) per question.
fn replies(trainer: &Trainer, questions: &[&str]) -> Vec<(Vec<u32>, Vec<u32>, usize)> {
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| trainer.chat_prompt(&messages(q), None).unwrap())
        .collect();
    let out = greedy_replies(trainer.model(), &prompts, MAX_TOKENS, &eos(trainer), true).unwrap();
    prompts
        .into_iter()
        .zip(out)
        .map(|(p, r)| {
            let text = trainer.tokenizer().decode(&r).unwrap();
            let n = words(&text);
            (p, r, n)
        })
        .collect()
}

fn mean_words(rows: &[(Vec<u32>, Vec<u32>, usize)]) -> f64 {
    rows.iter().map(|r| r.2 as f64).sum::<f64>() / rows.len() as f64
}

/// One round of the scripted user's judgement on the policy's own replies, then a step.
fn train_round(trainer: &mut Trainer, round: usize) -> hindsight::learn::trainer::StepMetrics {
    let rows = replies(trainer, TRAIN);
    let batch: Vec<(Vec<u32>, Vec<u32>)> = rows
        .iter()
        .filter(|r| !r.1.is_empty())
        .map(|r| (r.0.clone(), r.1.clone()))
        .collect();
    let behaviour = tch::no_grad(|| response_logprobs(trainer.model(), &batch, true).unwrap().0);
    let samples: Vec<TrainingSample> = rows
        .iter()
        .filter(|r| !r.1.is_empty())
        .enumerate()
        .map(|(i, (prompt, reply, n))| {
            let too_long = *n > WORD_LIMIT;
            let lp: Vec<f32> =
                Vec::try_from(behaviour.get(i as i64).narrow(0, 0, reply.len() as i64)).unwrap();
            TrainingSample {
                id: (round * 100 + i) as i64,
                messages: messages(TRAIN[i]),
                tools: None,
                prompt_ids: prompt.clone(),
                response_ids: reply.clone(),
                behaviour_logprobs: lp,
                policy_version: round as i64,
                reward: if too_long { -1.0 } else { 1.0 },
                hint: too_long.then(|| HINT.to_string()),
            }
        })
        .collect();
    trainer.step(&samples).unwrap()
}

fn run(mode: LearnMode, lr: f64, steps: usize) -> (f64, f64, Trainer) {
    let config = TrainerConfig {
        mode,
        lr,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(&model_dir(), Device::Cpu, config, None).unwrap();
    let before = mean_words(&replies(&trainer, HELD_OUT));
    for round in 0..steps {
        let m = train_round(&mut trainer, round);
        let now = mean_words(&replies(&trainer, HELD_OUT));
        eprintln!(
            "{} lr {lr:e} step {round}: held-out words {now:.1}; loss {:.3} clip {:.2} kl {:.4} reward {:.2} opd {:?} grad {:.2} tokens {} {:.1}s",
            mode.as_str(), m.loss, m.clip_fraction, m.kl, m.mean_reward, m.mean_teacher_advantage, m.grad_norm, m.tokens, m.step_seconds
        );
    }
    let after = mean_words(&replies(&trainer, HELD_OUT));
    (before, after, trainer)
}

#[test]
fn combined_learning_shortens_held_out_replies() {
    let lr = std::env::var("HINDSIGHT_TEST_LR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TrainerConfig::default().lr);
    let steps = std::env::var("HINDSIGHT_TEST_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let (before, after, trainer) = run(LearnMode::Combined, lr, steps);
    eprintln!("combined: held-out mean words {before:.1} → {after:.1}");
    assert!(
        after < before * 0.6,
        "held-out replies should shorten clearly: {before:.1} → {after:.1} words"
    );
    // The base itself is untouched: with the adapter off, replies keep their length.
    let prompts: Vec<Vec<u32>> = HELD_OUT
        .iter()
        .map(|q| trainer.chat_prompt(&messages(q), None).unwrap())
        .collect();
    let base = greedy_replies(trainer.model(), &prompts, MAX_TOKENS, &eos(&trainer), false).unwrap();
    let base_words: f64 = base
        .iter()
        .map(|r| words(&trainer.tokenizer().decode(r).unwrap()) as f64)
        .sum::<f64>()
        / base.len() as f64;
    assert!((base_words - before).abs() < 1e-9, "base {base_words} vs {before}");
    let kl = reply_kl(trainer.model(), &prompts[0], &base[0]).unwrap();
    assert!(kl > 0.0, "the adapter moved the policy away from the base");
}
