//! The trainer on the real default model: negative rewards with a hint make the corrected
//! replies less likely, positive rewards make approved replies more likely, samples without a
//! signal change nothing, and the base weights never move. (That it learns a preference end to
//! end is tests/learn_end_to_end.rs.)

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
