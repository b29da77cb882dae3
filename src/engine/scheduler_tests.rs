//! The scheduler against a tiny deterministic model: token t is always followed by t + 1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tch::Tensor;

use super::detokenize::Decode;
use super::handle::{EngineHandle, LoadedModel};
use super::scheduler::StepModel;
use super::types::*;

const VOCAB: i64 = 32;
const EOS: u32 = 31;

struct Counting {
    free: Vec<usize>,
    last: Vec<u32>,
    probe: Probe,
    step_delay: Duration,
    /// Prefill time per prompt token.
    token_delay: Duration,
    /// Adapter ids: the current one and those still leased.
    current: u64,
    leased: Vec<u64>,
}

/// What the fake model saw, for the tests to check.
#[derive(Clone, Default)]
struct Probe {
    widest_batch: Arc<AtomicUsize>,
    /// The adapter of each row, per decode step.
    decoded_adapters: Arc<Mutex<Vec<Vec<Option<u64>>>>>,
    /// Adapter ids held after each change (current first).
    held: Arc<Mutex<Vec<u64>>>,
    /// The length of every prefill chunk, and whether a sequence was decoding then.
    chunks: Arc<Mutex<Vec<usize>>>,
}

impl Counting {
    fn report_held(&self) {
        let mut held = vec![self.current];
        held.extend(&self.leased);
        *self.probe.held.lock().unwrap() = held;
    }
}

fn next_logits(tokens: &[u32]) -> Tensor {
    let rows: Vec<f32> = tokens
        .iter()
        .flat_map(|&t| {
            (0..VOCAB).map(move |v| {
                if v == (i64::from(t) + 1) % VOCAB {
                    5.0
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_slice(&rows).reshape([tokens.len() as i64, VOCAB])
}

impl StepModel for Counting {
    fn max_slots(&self) -> usize {
        self.last.len()
    }
    fn alloc_slot(&mut self) -> Option<usize> {
        self.free.pop()
    }
    fn free_slot(&mut self, slot: usize) {
        self.free.push(slot);
    }
    fn prefill(&mut self, slot: usize, tokens: &[u32], _: Option<u64>) -> Result<Tensor, String> {
        let last = *tokens.last().ok_or("empty chunk")?;
        std::thread::sleep(self.token_delay * tokens.len() as u32);
        self.probe.chunks.lock().unwrap().push(tokens.len());
        self.last[slot] = last;
        Ok(next_logits(&[last]).squeeze_dim(0))
    }
    fn decode(
        &mut self,
        slots: &[usize],
        tokens: &[u32],
        adapters: &[Option<u64>],
    ) -> Result<Tensor, String> {
        std::thread::sleep(self.step_delay);
        self.probe
            .widest_batch
            .fetch_max(slots.len(), Ordering::SeqCst);
        self.probe
            .decoded_adapters
            .lock()
            .unwrap()
            .push(adapters.to_vec());
        Ok(next_logits(tokens))
    }
    fn install_adapter(
        &mut self,
        id: u64,
        _: Option<&crate::model::peft::AdapterSnapshot>,
    ) -> Result<(), String> {
        self.leased.push(std::mem::replace(&mut self.current, id));
        self.report_held();
        Ok(())
    }
    fn retain_adapters(&mut self, ids: &[u64]) {
        self.leased.retain(|id| ids.contains(id));
        self.report_held();
    }
}

struct Letters;
impl Decode for Letters {
    fn decode(&self, tokens: &[u32]) -> String {
        tokens
            .iter()
            .map(|&t| char::from(b'a' + (t % 26) as u8))
            .collect()
    }
}

fn engine(slots: usize, queue: usize, delay_ms: u64) -> (EngineHandle, Probe) {
    slow_prefill_engine(slots, queue, delay_ms, Duration::ZERO)
}

fn slow_prefill_engine(
    slots: usize,
    queue: usize,
    delay_ms: u64,
    token_delay: Duration,
) -> (EngineHandle, Probe) {
    let probe = Probe::default();
    let p = probe.clone();
    let handle = EngineHandle::spawn(
        move || {
            Ok(LoadedModel {
                model: Counting {
                    free: (0..slots).rev().collect(),
                    last: vec![0; slots],
                    probe: p,
                    step_delay: Duration::from_millis(delay_ms),
                    token_delay,
                    current: 0,
                    leased: Vec::new(),
                },
                decoder: Arc::new(Letters),
                eos_tokens: vec![EOS],
                max_context: 64,
            })
        },
        queue,
    )
    .expect("engine starts");
    (handle, probe)
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        request_id: "t".into(),
        prompt_tokens: prompt,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        stop: StopCriteria {
            max_tokens,
            ..Default::default()
        },
        top_logprobs: 0,
        adapter: AdapterChoice::Current,
        priority: Priority::User,
        constraint: None,
    }
}

fn collect(mut stream: EventStream) -> (Vec<u32>, String, Option<FinishEvent>) {
    let (mut ids, mut text, mut finish) = (Vec::new(), String::new(), None);
    while let Some(event) = stream.blocking_recv() {
        match event {
            GenerateEvent::Token(t) => {
                ids.push(t.token_id);
                text.push_str(&t.text);
            }
            GenerateEvent::Finish(f) => finish = Some(f),
            GenerateEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    (ids, text, finish)
}

#[test]
fn generates_until_length_then_until_eos() {
    let (engine, _) = engine(4, 8, 0);
    let (ids, text, finish) = collect(engine.submit(request(vec![1, 2], 3)).unwrap());
    assert_eq!(ids, [3, 4, 5]);
    assert_eq!(text, "def");
    let finish = finish.unwrap();
    assert_eq!(finish.reason, FinishReason::Length);
    assert_eq!((finish.prompt_tokens, finish.completion_tokens), (2, 3));

    let (ids, text, finish) = collect(engine.submit(request(vec![28], 10)).unwrap());
    assert_eq!(ids, [29, 30, 31], "EOS ends the sequence and is reported");
    assert_eq!(text, "de", "EOS has no text");
    assert_eq!(finish.unwrap().reason, FinishReason::Stop);
}

#[test]
fn stop_strings_and_stop_tokens_end_generation() {
    let (engine, _) = engine(4, 8, 0);
    let mut req = request(vec![0], 10);
    req.stop.stop_strings = vec!["de".into()];
    let (ids, text, finish) = collect(engine.submit(req).unwrap());
    assert_eq!(text, "bc");
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(finish.unwrap().matched_stop.as_deref(), Some("de"));

    let mut req = request(vec![0], 10);
    req.stop.stop_token_ids = vec![3];
    let (ids, text, _) = collect(engine.submit(req).unwrap());
    assert_eq!((ids, text.as_str()), (vec![1, 2, 3], "bc"));
}

#[test]
fn concurrent_sequences_decode_in_one_batch() {
    let (engine, probe) = engine(8, 16, 2);
    let streams: Vec<_> = (0..6)
        .map(|i| engine.submit(request(vec![i], 20)).unwrap())
        .collect();
    for (i, stream) in streams.into_iter().enumerate() {
        let (ids, _, finish) = collect(stream);
        let expected: Vec<u32> = (1..=20).map(|k| (i as u32 + k) % 32).collect();
        let cut = expected
            .iter()
            .position(|&t| t == EOS)
            .map_or(20, |p| p + 1);
        assert_eq!(ids, expected[..cut]);
        assert!(finish.is_some());
    }
    assert!(
        probe.widest_batch.load(Ordering::SeqCst) >= 4,
        "batched decode"
    );
}

#[test]
fn admission_errors_are_reported_before_starting() {
    let (engine, _) = engine(1, 1, 20);
    assert!(matches!(
        engine.submit(request(vec![1; 60], 10)),
        Err(SubmitError::ContextTooLong {
            max: 64,
            requested: 70,
            ..
        })
    ));
    assert!(matches!(
        engine.submit(request(vec![], 10)),
        Err(SubmitError::Invalid(_))
    ));
    // One running (slot), then the queue of one fills.
    let running = engine.submit(request(vec![1], 30)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let queued = engine.submit(request(vec![1], 30)).unwrap();
    assert_eq!(
        engine.submit(request(vec![1], 30)).unwrap_err(),
        SubmitError::QueueFull
    );
    drop(running);
    drop(queued);
}

#[test]
fn dropping_the_stream_frees_the_slot() {
    let (engine, _) = engine(1, 4, 5);
    let mut first = engine.submit(request(vec![1], 60)).unwrap();
    let _ = first.blocking_recv();
    drop(first);
    let (ids, _, finish) = collect(engine.submit(request(vec![5], 2)).unwrap());
    assert_eq!(ids, [6, 7]);
    assert!(finish.is_some());
}

#[test]
fn a_sequence_keeps_its_adapter_across_an_update_until_it_finishes() {
    let (engine, probe) = engine(4, 8, 5);
    let mut long = engine.submit(request(vec![0], 30)).unwrap();
    assert!(matches!(
        long.blocking_recv(),
        Some(GenerateEvent::Token(_))
    ));
    engine
        .update(|model| model.install_adapter(1, None).map(|()| 1))
        .unwrap();
    let (_, _, short) = collect(engine.submit(request(vec![0], 3)).unwrap());
    assert_eq!(short.unwrap().policy_version, 1);
    assert_eq!(
        *probe.held.lock().unwrap(),
        [1, 0],
        "version 0 stays while the long sequence runs on it"
    );
    let (ids, _, long) = collect(long);
    assert_eq!((ids.len(), long.unwrap().policy_version), (29, 0));
    let steps = probe.decoded_adapters.lock().unwrap().clone();
    assert!(
        steps
            .iter()
            .any(|rows| rows.contains(&Some(0)) && rows.contains(&Some(1))),
        "one batch served both versions: {steps:?}"
    );
    // The stream closes as the sequence is retired; the release follows in the same step.
    let released = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        *probe.held.lock().unwrap() == [1]
    });
    assert!(released, "version 0 is released with its last sequence");
}

/// The fake model's vocabulary as text: 31 one-character tokens and an EOS.
const CHARS: &str = "{}[]\":,abcdeflnrstu0123456789-.";

struct Chars;
impl Decode for Chars {
    fn decode(&self, tokens: &[u32]) -> String {
        tokens
            .iter()
            .filter_map(|&t| CHARS.chars().nth(t as usize))
            .collect()
    }
}

/// A byte-level tokenizer.json for the fake model's 32 ids (31 is `<|im_end|>`).
fn grammar_compiler() -> (tempfile::TempDir, crate::model::grammar::GrammarCompiler) {
    assert_eq!(CHARS.chars().count(), 31);
    let vocab: serde_json::Map<String, serde_json::Value> = CHARS
        .chars()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i.into()))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "normalizer": null,
        "added_tokens": [{"id": EOS, "content": "<|im_end|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
            "vocab": vocab, "merges": []},
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
    let compiler =
        crate::model::grammar::GrammarCompiler::from_model_dir(dir.path(), VOCAB as usize, &[EOS])
            .expect("grammar compiler");
    (dir, compiler)
}

fn grammar_engine() -> (EngineHandle, tempfile::TempDir) {
    let (dir, compiler) = grammar_compiler();
    let handle = EngineHandle::spawn(
        move || {
            Ok(LoadedModel {
                model: Counting {
                    free: (0..4).rev().collect(),
                    last: vec![0; 4],
                    probe: Probe::default(),
                    step_delay: Duration::from_millis(2),
                    token_delay: Duration::ZERO,
                    current: 0,
                    leased: Vec::new(),
                },
                decoder: Arc::new(Chars),
                eos_tokens: vec![EOS],
                max_context: 64,
            })
        },
        8,
    )
    .expect("engine starts")
    .with_grammar(Ok(compiler));
    (handle, dir)
}

fn constrained(prompt: Vec<u32>, max_tokens: usize, constraint: Constraint) -> GenerateRequest {
    GenerateRequest {
        constraint: Some(constraint),
        ..request(prompt, max_tokens)
    }
}

#[test]
fn a_grammar_steers_greedy_decoding_and_ends_it_when_complete() {
    let (engine, _dir) = grammar_engine();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"a": {"type": "integer", "enum": [1, 2]}},
        "required": ["a"],
        "additionalProperties": false,
    });
    // The model wants t + 1 after t; where that is forbidden every allowed token ties at 0 and
    // the lowest id wins. The unconstrained neighbour in the same batch must not notice.
    let json = engine
        .submit(constrained(vec![3], 20, Constraint::JsonSchema(schema)))
        .unwrap();
    let plain = engine.submit(request(vec![3], 6)).unwrap();
    let (ids, text, finish) = collect(json);
    assert_eq!(text, r#"{"a":1}"#);
    let finish = finish.unwrap();
    assert_eq!(finish.reason, FinishReason::Stop);
    assert_eq!(
        finish.completion_tokens,
        ids.len(),
        "no token after the grammar completes"
    );
    let (ids, _, _) = collect(plain);
    assert_eq!(ids, [4, 5, 6, 7, 8, 9]);

    // EOS is allowed exactly where the grammar accepts: "-" then any number of ".".
    let dash: u32 = 29;
    let lark = |g: &str| Constraint::Lark(g.into());
    let (ids, text, finish) = collect(
        engine
            .submit(constrained(vec![1], 10, lark(r#"start: "-" "."*"#)))
            .unwrap(),
    );
    assert_eq!((ids, text.as_str()), (vec![dash, 30, EOS], "-."));
    assert_eq!(finish.unwrap().reason, FinishReason::Stop);
    // Here EOS (the model's favourite after ".") is forbidden until "..".
    let (ids, text, _) = collect(
        engine
            .submit(constrained(vec![1], 10, lark(r#"start: "-" "." "." "#)))
            .unwrap(),
    );
    assert_eq!((ids, text.as_str()), (vec![dash, 30, 30], "-.."));
    let stats = engine.grammar_stats();
    assert!(stats.masks >= 10, "{stats:?}");
}

#[test]
fn logit_bias_and_forbidden_tokens_in_the_reported_logprobs() {
    let (engine, _dir) = grammar_engine();
    let mut req = request(vec![0], 3);
    req.sampling.logit_bias = vec![(9, 7.0)];
    req.top_logprobs = 2;
    let mut stream = engine.submit(req).unwrap();
    let mut tokens = Vec::new();
    while let Some(GenerateEvent::Token(t)) = stream.blocking_recv() {
        tokens.push(t);
    }
    assert_eq!(
        tokens.iter().map(|t| t.token_id).collect::<Vec<_>>(),
        [9, 9, 9]
    );
    // logits: 7 at the biased token, 5 at t + 1, 0 at the 30 others.
    let total = 7f32.exp() + 5f32.exp() + 30.0;
    assert!((tokens[1].logprob - (7.0 - total.ln())).abs() < 1e-5);
    // A forced token has probability one among the allowed, and no alternative.
    let mut req = constrained(vec![0], 2, Constraint::Lark(r#"start: "ab""#.into()));
    req.top_logprobs = 3;
    let mut stream = engine.submit(req).unwrap();
    while let Some(GenerateEvent::Token(t)) = stream.blocking_recv() {
        assert_eq!(t.logprob, 0.0);
        assert_eq!(t.top_logprobs.len(), 1);
    }
}

#[test]
fn bad_grammars_and_engines_without_a_compiler_refuse_at_submit() {
    let (constrained_engine, _dir) = grammar_engine();
    let bad = constrained(
        vec![1],
        4,
        Constraint::JsonSchema(serde_json::json!({"type": "array", "uniqueItems": true})),
    );
    match constrained_engine.submit(bad.clone()) {
        Err(SubmitError::UnsupportedConstraint(msg)) => assert!(msg.contains("uniqueItems")),
        other => panic!(
            "expected UnsupportedConstraint, got {:?}",
            other.map(|_| ())
        ),
    }
    let (plain, _) = engine(1, 1, 0);
    assert!(matches!(
        plain.submit(bad),
        Err(SubmitError::UnsupportedConstraint(_))
    ));
}

#[test]
fn a_long_prompt_prefills_in_small_chunks_while_others_decode() {
    // 10 ms per prompt token: 100 tokens/s, so a 0.15 s slice is the 32-token minimum.
    let (engine, probe) = slow_prefill_engine(3, 8, 5, Duration::from_millis(10));
    // Alone, a prompt is one chunk (and the scheduler learns the prefill speed).
    collect(engine.submit(request((1..41).collect(), 1)).unwrap());
    assert_eq!(*probe.chunks.lock().unwrap(), vec![40]);
    let mut decoding = engine.submit(request(vec![1], 60)).unwrap();
    assert!(matches!(
        decoding.blocking_recv(),
        Some(GenerateEvent::Token(_))
    ));
    let (ids, _, finish) = collect(engine.submit(request((1..61).collect(), 1)).unwrap());
    assert_eq!((ids.len(), finish.unwrap().prompt_tokens), (1, 60));
    let chunks = probe.chunks.lock().unwrap().clone();
    assert_eq!(
        &chunks[2..],
        &[32, 28],
        "chunks while another decodes: {chunks:?}"
    );
    drop(decoding);
}
