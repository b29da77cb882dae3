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
