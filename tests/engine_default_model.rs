//! The engine on the real default model: batching does not change results, seeds reproduce,
//! and the behaviour log-probs sent with each token equal a teacher-forced recompute (under the
//! grammar's masks for constrained output).

use std::path::PathBuf;
use std::sync::OnceLock;

use hindsight::engine::{
    Backend, Constraint, EngineOptions, FinishEvent, FinishReason, GenerateEvent, GenerateRequest,
    LocalEngine, SamplingParams, StopCriteria, SubmitError, TokenEvent,
};
use serde_json::{json, Value};

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

// ---- Constrained decoding (grammar masks) and logit_bias ----

fn constrained(
    engine: &LocalEngine,
    text: &str,
    sampling: SamplingParams,
    max_tokens: usize,
    constraint: Constraint,
) -> GenerateRequest {
    GenerateRequest {
        constraint: Some(constraint),
        ..request(engine, text, sampling, max_tokens)
    }
}

/// Every token event and the finish of one request.
fn events(engine: &LocalEngine, req: GenerateRequest) -> (Vec<TokenEvent>, FinishEvent) {
    let mut stream = engine.submit(req).expect("accepted");
    let mut tokens = Vec::new();
    while let Some(event) = stream.blocking_recv() {
        match event {
            GenerateEvent::Token(t) => tokens.push(t),
            GenerateEvent::Finish(f) => return (tokens, f),
            GenerateEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("the stream ended without a finish")
}

fn text_of(tokens: &[TokenEvent]) -> String {
    tokens.iter().map(|t| t.text.as_str()).collect()
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        ..Default::default()
    }
}

fn pet_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "legs": {"type": "integer", "enum": [2, 4, 6]},
        },
        "required": ["name", "legs"],
        "additionalProperties": false,
    })
}

const PET_PROMPT: &str = "Describe a pet as JSON with its name and number of legs.";

fn assert_valid_pet(text: &str) {
    let value: Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let object = value.as_object().expect("an object");
    assert_eq!(object.len(), 2, "{text}");
    let name = object["name"].as_str().expect("name is a string");
    assert!(name.chars().count() <= 24, "{text}");
    assert!(
        [2, 4, 6].contains(&object["legs"].as_i64().expect("legs")),
        "{text}"
    );
}

#[test]
fn json_schema_output_parses_and_validates_for_every_seed() {
    let engine = engine(8);
    let schema = Constraint::JsonSchema(pet_schema());
    let streams: Vec<_> = (0..5)
        .map(|seed| {
            let req = constrained(&engine, PET_PROMPT, sampled(seed), 96, schema.clone());
            engine.submit(req).expect("accepted")
        })
        .collect();
    for mut stream in streams {
        let mut text = String::new();
        let mut finish = None;
        while let Some(event) = stream.blocking_recv() {
            match event {
                GenerateEvent::Token(t) => text.push_str(&t.text),
                GenerateEvent::Finish(f) => finish = Some(f),
                GenerateEvent::Error(e) => panic!("engine error: {e}"),
            }
        }
        assert_eq!(
            finish.expect("finished").reason,
            FinishReason::Stop,
            "{text}"
        );
        assert_valid_pet(&text);
    }
    let (tokens, _) = events(
        &engine,
        constrained(
            &engine,
            "Answer with a JSON object: the keys are city and country, for Paris.",
            greedy(),
            96,
            Constraint::JsonSchema(json!({"type": "object"})),
        ),
    );
    let text = text_of(&tokens);
    let value: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("json_object output is not JSON ({e}): {text:?}"));
    assert!(value.is_object(), "{text}");
}

#[test]
fn forced_tool_call_grammar_yields_a_parsable_call() {
    let engine = engine(2);
    let call = json!({
        "type": "object",
        "properties": {
            "name": {"const": "get_weather"},
            "arguments": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 30}},
                "required": ["city"],
                "additionalProperties": false,
            },
        },
        "required": ["name", "arguments"],
        "additionalProperties": false,
    });
    let grammar = format!("start: \"<tool_call>\\n\" %json {call} \"\\n</tool_call>\"");
    let req = constrained(
        &engine,
        "What is the weather in Paris?",
        greedy(),
        64,
        Constraint::Lark(grammar),
    );
    let (tokens, finish) = events(&engine, req);
    let text = text_of(&tokens);
    assert_eq!(finish.reason, FinishReason::Stop, "{text}");
    let body = text
        .strip_prefix("<tool_call>\n")
        .and_then(|t| t.strip_suffix("\n</tool_call>"))
        .unwrap_or_else(|| panic!("not a tool call: {text:?}"));
    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(value["name"], "get_weather");
    assert!(value["arguments"]["city"].is_string(), "{body}");
}

#[test]
fn unsupported_schema_fails_at_submit_and_logit_bias_steers_greedy() {
    let engine = engine(2);
    let bad = constrained(
        &engine,
        "hi",
        greedy(),
        8,
        Constraint::JsonSchema(json!({"type": "array", "uniqueItems": true})),
    );
    match engine.submit(bad) {
        Err(SubmitError::UnsupportedConstraint(msg)) => {
            assert!(msg.contains("uniqueItems"), "{msg}")
        }
        other => panic!(
            "expected UnsupportedConstraint, got {:?}",
            other.map(|_| ())
        ),
    }
    let banana = engine.encode(" banana")[0];
    let mut biased = greedy();
    biased.logit_bias = vec![(banana, 100.0)];
    let (tokens, _) = events(&engine, request(&engine, QUESTIONS[0], biased, 3));
    assert!(tokens.iter().all(|t| t.token_id == banana), "{tokens:?}");
    // Reported under the biased distribution the token was drawn from: nearly certain.
    assert!(tokens.iter().all(|t| t.logprob > -1e-3), "{tokens:?}");
}

#[test]
fn constrained_and_plain_requests_share_a_batch_and_logprobs_follow_the_masks() {
    let engine = engine(4);
    let plain = || request(&engine, QUESTIONS[3], greedy(), 24);
    let alone = run_all(&engine, vec![plain()]).remove(0);
    let schema = Constraint::JsonSchema(pet_schema());
    let req = constrained(&engine, PET_PROMPT, sampled(3), 96, schema.clone());
    let prompt = req.prompt_tokens.clone();
    let stream = engine.submit(req).expect("accepted");
    let together = run_all(&engine, vec![plain()]).remove(0);
    assert_eq!(
        together.ids, alone.ids,
        "a constrained neighbour changed a greedy output"
    );
    let mut tokens = Vec::new();
    let mut stream = stream;
    while let Some(event) = stream.blocking_recv() {
        match event {
            GenerateEvent::Token(t) => tokens.push(t),
            GenerateEvent::Finish(_) => break,
            GenerateEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    assert_valid_pet(&text_of(&tokens));

    // Teacher-forced: log-softmax of the logits with the replayed masks' forbidden tokens at
    // -inf must equal what was served.
    let ids: Vec<u32> = tokens.iter().map(|t| t.token_id).collect();
    let compiler = engine.grammar().expect("a grammar compiler");
    let masks = compiler
        .replay_masks(&schema, &ids)
        .expect("the output replays");
    let model = hindsight::model::transformer::Transformer::load(
        &model_dir(),
        tch::Device::Cpu,
        tch::Kind::Float,
    )
    .expect("model loads");
    let all: Vec<i64> = prompt.iter().chain(&ids).map(|&t| i64::from(t)).collect();
    let input = tch::Tensor::from_slice(&all).unsqueeze(0);
    let attention = tch::Tensor::ones_like(&input);
    let logits = tch::no_grad(|| model.forward_logits(&input, &attention, false))
        .expect("forward")
        .squeeze_dim(0);
    let vocab = compiler.n_vocab();
    for (i, (token, mask)) in tokens.iter().zip(&masks).enumerate() {
        let row = logits.get((prompt.len() + i - 1) as i64);
        let forbidden: Vec<bool> = mask.iter().map(|&a| !a).collect();
        let forbidden = tch::Tensor::from_slice(&forbidden).view([vocab as i64]);
        let lp = row
            .masked_fill(&forbidden, f64::NEG_INFINITY)
            .log_softmax(-1, tch::Kind::Float)
            .double_value(&[i64::from(token.token_id)]) as f32;
        assert!(
            (token.logprob - lp).abs() < 1e-3,
            "token {i}: served {} vs recomputed {lp}",
            token.logprob
        );
        for alt in &token.top_logprobs {
            assert!(
                mask[alt.token_id as usize],
                "a forbidden alternative at {i}"
            );
        }
    }
}
