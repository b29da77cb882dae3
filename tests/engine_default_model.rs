//! The engine on the real default model: batching does not change results, seeds reproduce,
//! and the behaviour log-probs sent with each token equal a teacher-forced recompute.

use std::path::PathBuf;
use std::sync::OnceLock;

use hindsight::engine::{
    Backend, EngineOptions, GenerateEvent, GenerateRequest, LocalEngine, SamplingParams,
    StopCriteria, SubmitError,
};

fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hindsight-data");
        hindsight::model::default_model::default_model_dir(&data).expect("default model imports")
    })
    .clone()
}

fn engine(max_batch: usize) -> LocalEngine {
    let mut options = EngineOptions::new(model_dir(), "smollm2");
    options.max_batch = max_batch;
    LocalEngine::start(options).expect("engine starts")
}

fn request(
    engine: &LocalEngine,
    text: &str,
    sampling: SamplingParams,
    max_tokens: usize,
) -> GenerateRequest {
    let messages = [serde_json::json!({"role": "user", "content": text})];
    GenerateRequest {
        request_id: text.into(),
        prompt_tokens: engine
            .chat_prompt(&messages, None)
            .expect("template renders"),
        sampling,
        stop: StopCriteria {
            max_tokens,
            ..Default::default()
        },
        top_logprobs: 2,
        adapter: Default::default(),
        priority: Default::default(),
        constraint: None,
    }
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..Default::default()
    }
}

#[derive(Debug, PartialEq)]
struct Output {
    ids: Vec<u32>,
    text: String,
    logprobs: Vec<f32>,
}

fn run_all(engine: &LocalEngine, requests: Vec<GenerateRequest>) -> Vec<Output> {
    let streams: Vec<_> = requests
        .into_iter()
        .map(|r| engine.submit(r).expect("accepted"))
        .collect();
    streams
        .into_iter()
        .map(|mut s| {
            let mut out = Output {
                ids: vec![],
                text: String::new(),
                logprobs: vec![],
            };
            while let Some(event) = s.blocking_recv() {
                match event {
                    GenerateEvent::Token(t) => {
                        out.ids.push(t.token_id);
                        out.text.push_str(&t.text);
                        out.logprobs.push(t.logprob);
                        assert_eq!(t.top_logprobs.len(), 2);
                        assert!(t.top_logprobs[0].logprob >= t.logprob - 1e-4);
                    }
                    GenerateEvent::Finish(_) => break,
                    GenerateEvent::Error(e) => panic!("engine error: {e}"),
                }
            }
            out
        })
        .collect()
}

const QUESTIONS: [&str; 4] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain recursion in one sentence to a child who likes trains.",
];

#[test]
fn batched_greedy_equals_each_alone_and_text_matches_decode() {
    let engine = engine(8);
    let alone: Vec<Output> = QUESTIONS
        .iter()
        .map(|q| run_all(&engine, vec![request(&engine, q, greedy(), 24)]).remove(0))
        .collect();
    let together = run_all(
        &engine,
        QUESTIONS
            .iter()
            .map(|q| request(&engine, q, greedy(), 24))
            .collect(),
    );
    for (a, t) in alone.iter().zip(&together) {
        assert_eq!(a.ids, t.ids, "batching changed a greedy output");
        for (x, y) in a.logprobs.iter().zip(&t.logprobs) {
            assert!((x - y).abs() < 1e-3, "logprob {x} vs {y}");
        }
        assert_eq!(a.text, engine.decode(&a.ids).trim_end_matches("<|im_end|>"));
        assert!(!a.text.trim().is_empty());
    }
}

#[test]
fn same_seed_same_sample_and_other_seed_differs() {
    let engine = engine(4);
    let sampled = |seed| SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        seed: Some(seed),
        ..Default::default()
    };
    let q = "Tell me a short story about a robot.";
    let a = run_all(&engine, vec![request(&engine, q, sampled(11), 32)]).remove(0);
    let b = run_all(&engine, vec![request(&engine, q, sampled(11), 32)]).remove(0);
    let c = run_all(&engine, vec![request(&engine, q, sampled(12), 32)]).remove(0);
    assert_eq!(a.ids, b.ids);
    assert_ne!(a.ids, c.ids);
}

#[test]
fn behaviour_logprobs_equal_teacher_forced_recompute() {
    let engine = engine(2);
    let req = request(&engine, QUESTIONS[1], greedy(), 20);
    let prompt = req.prompt_tokens.clone();
    let out = run_all(&engine, vec![req]).remove(0);
    let model = hindsight::model::transformer::Transformer::load(
        &model_dir(),
        tch::Device::Cpu,
        tch::Kind::Float,
    )
    .expect("model loads");
    let (logprobs, mask) =
        hindsight::model::logprobs::response_logprobs(&model, &[(prompt, out.ids.clone())], false)
            .expect("recompute");
    let recomputed: Vec<f32> = Vec::<f32>::try_from(logprobs.get(0).reshape(-1)).unwrap();
    assert_eq!(
        f64::try_from(mask.sum(tch::Kind::Float)).unwrap() as usize,
        out.ids.len()
    );
    for (i, (served, teacher)) in out.logprobs.iter().zip(&recomputed).enumerate() {
        assert!(
            (served - teacher).abs() < 1e-3,
            "token {i}: served {served} vs recomputed {teacher}"
        );
    }
}

#[test]
fn context_limit_is_checked_before_prefill() {
    let engine = engine(1);
    let mut req = request(&engine, "hi", greedy(), 4);
    req.stop.max_tokens = engine.info().context_length;
    assert!(matches!(
        engine.submit(req),
        Err(SubmitError::ContextTooLong { .. })
    ));
}
