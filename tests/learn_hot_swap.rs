//! Hot-swap under load on the default model: streams in flight across several adapter swaps all
//! complete, no request fails or is refused, and requests admitted after a swap report the
//! version that served them.

use std::path::PathBuf;
use std::time::Duration;

use hindsight::engine::{
    Backend, EngineOptions, GenerateEvent, GenerateRequest, LocalEngine, SamplingParams,
    StopCriteria,
};
use hindsight::model::lora::{LoraConfig, TrainableAdapter};
use hindsight::model::peft::AdapterSnapshot;
use tch::Device;

fn model_dir() -> PathBuf {
    let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hindsight-data");
    hindsight::model::default_model::default_model_dir(&data).expect("default model imports")
}

fn request(engine: &LocalEngine, i: usize) -> GenerateRequest {
    let messages = [
        serde_json::json!({"role": "user", "content": format!("Tell me fact number {i} about the sea.")}),
    ];
    GenerateRequest {
        request_id: format!("r{i}"),
        prompt_tokens: engine.chat_prompt(&messages, None).unwrap(),
        sampling: SamplingParams {
            temperature: 0.8,
            seed: Some(i as u64),
            ..SamplingParams::default()
        },
        stop: StopCriteria {
            max_tokens: 24,
            ignore_eos: true,
            ..StopCriteria::default()
        },
        top_logprobs: 0,
        adapter: Default::default(),
        priority: Default::default(),
        constraint: None,
    }
}

/// A non-trivial adapter: B filled with a small constant that differs per version.
fn adapter(engine_dir: &std::path::Path, version: u64) -> AdapterSnapshot {
    adapter_scaled(engine_dir, version, 1e-4)
}

fn adapter_scaled(engine_dir: &std::path::Path, version: u64, scale: f32) -> AdapterSnapshot {
    let config = hindsight::model::config::ModelConfig::from_dir(engine_dir).unwrap();
    let mut snapshot = TrainableAdapter::new(&config, LoraConfig::default(), Device::Cpu)
        .unwrap()
        .snapshot();
    for t in &mut snapshot.tensors {
        if t.name.contains("lora_B") {
            t.data.iter_mut().for_each(|x| *x = scale * version as f32);
        }
    }
    snapshot
}

async fn finish(mut stream: hindsight::engine::EventStream) -> (usize, u64) {
    let mut tokens = 0;
    while let Some(event) = stream.recv().await {
        match event {
            GenerateEvent::Token(_) => tokens += 1,
            GenerateEvent::Finish(f) => return (tokens, f.policy_version),
            GenerateEvent::Error(e) => panic!("a stream failed during swaps: {e}"),
        }
    }
    panic!("a stream ended without a finish event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_survive_swaps_and_new_requests_get_the_new_version() {
    let dir = model_dir();
    let mut options = EngineOptions::new(dir.clone(), "swap");
    options.max_batch = 4;
    let engine = LocalEngine::start(options).unwrap();
    let mut in_flight = Vec::new();
    for i in 0..4 {
        in_flight.push(tokio::spawn(finish(
            engine.submit(request(&engine, i)).unwrap(),
        )));
    }
    for version in 1..=3u64 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let snapshot = adapter(&dir, version);
        let (done, installed) = tokio::sync::oneshot::channel();
        engine
            .handle()
            .update(move |model| {
                let outcome = model.install_adapter(version, Some(&snapshot));
                let _ = done.send(outcome.clone());
                outcome.map(|()| version)
            })
            .unwrap();
        installed.await.unwrap().expect("the adapter installs");
        // A request admitted now is served by this version.
        let i = 10 + version as usize;
        let (tokens, served) = finish(engine.submit(request(&engine, i)).unwrap()).await;
        assert_eq!((tokens, served), (24, version));
    }
    for task in in_flight {
        let (tokens, _) = task.await.unwrap();
        assert_eq!(tokens, 24, "every stream in flight completes");
    }
    engine.handle().shutdown();
}

/// Greedy, 32 tokens, whatever the model says.
fn greedy(engine: &LocalEngine, i: usize) -> GenerateRequest {
    let mut request = request(engine, i);
    request.sampling = SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    };
    request.stop.max_tokens = 32;
    request
}

async fn tokens_and_version(mut stream: hindsight::engine::EventStream) -> (Vec<u32>, u64) {
    let mut tokens = Vec::new();
    while let Some(event) = stream.recv().await {
        match event {
            GenerateEvent::Token(t) => tokens.push(t.token_id),
            GenerateEvent::Finish(f) => return (tokens, f.policy_version),
            GenerateEvent::Error(e) => panic!("the stream failed: {e}"),
        }
    }
    panic!("a stream ended without a finish event");
}

/// A sequence keeps the adapter it started on to its last token: a swap in the middle of a
/// greedy stream changes nothing in it (it is labelled with, and was produced by, the version
/// it started on), while a request admitted after the swap is answered by the new adapter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_finishes_on_the_version_it_started_on() {
    let dir = model_dir();
    let mut options = EngineOptions::new(dir.clone(), "lease");
    options.max_batch = 2;
    let engine = LocalEngine::start(options).unwrap();
    let (unswapped, version) = tokens_and_version(engine.submit(greedy(&engine, 1)).unwrap()).await;
    assert_eq!((unswapped.len(), version), (32, 0));

    let mut stream = engine.submit(greedy(&engine, 1)).unwrap();
    let mut head = Vec::new();
    while head.len() < 4 {
        match stream.recv().await {
            Some(GenerateEvent::Token(t)) => head.push(t.token_id),
            other => panic!("expected a token, got {other:?}"),
        }
    }
    let snapshot = adapter_scaled(&dir, 1, 0.05);
    let (done, installed) = tokio::sync::oneshot::channel();
    engine
        .handle()
        .update(move |model| {
            let outcome = model.install_adapter(1, Some(&snapshot));
            let _ = done.send(outcome.clone());
            outcome.map(|()| 1)
        })
        .unwrap();
    installed.await.unwrap().expect("the adapter installs");
    let (tail, version) = tokens_and_version(stream).await;
    head.extend(tail);
    assert_eq!(
        version, 0,
        "the stream is labelled with the version it started on"
    );
    assert_eq!(
        head, unswapped,
        "the stream was produced by the version it started on"
    );

    let (fresh, version) = tokens_and_version(engine.submit(greedy(&engine, 1)).unwrap()).await;
    assert_eq!(version, 1);
    assert_ne!(fresh, unswapped, "the new adapter must change the reply");
    engine.handle().shutdown();
}

/// Published versions 1..=3, then a power cut: version 3's weights are torn (empty) and a byte
/// of version 2's flipped (it still parses; only its checksum tells). The server still starts:
/// both are marked bad and version 1 serves. With version 1 gone as well, the base serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_adapters_at_start_are_marked_bad_and_the_last_good_version_serves() {
    use hindsight::learn::publish::{adapter_checksum, version_dir, write_version};
    use hindsight::learn::versions::{VersionControl, BAD, PROMOTED};
    use hindsight::store::{NewVersion, Store};
    use std::sync::Arc;

    let dir = model_dir();
    let engine = Arc::new(LocalEngine::start(EngineOptions::new(dir.clone(), "torn")).unwrap());
    let data = tempfile::tempdir().unwrap();
    let store = Store::connect(None, data.path()).await.unwrap();
    let adapters = data.path().join("adapters");
    for v in 1..=3i64 {
        let path = write_version(&adapters, v, &adapter(&dir, v as u64)).unwrap();
        store
            .insert_version(&NewVersion {
                version: v,
                step: Some(v),
                path: path.display().to_string(),
                status: PROMOTED.into(),
                reason: None,
                guard: None,
                metrics: None,
                checksum: Some(adapter_checksum(&path).unwrap()),
            })
            .await
            .unwrap();
    }
    let weights = |v: i64| version_dir(&adapters, v).join("adapter_model.safetensors");
    std::fs::File::create(weights(3)).unwrap();
    let mut bytes = std::fs::read(weights(2)).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(weights(2), &bytes).unwrap();

    let control = VersionControl::new(store.clone(), Arc::clone(&engine));
    let state = control
        .restore()
        .await
        .expect("a bad adapter must not stop the start");
    assert_eq!((state.serving_version, state.latest_promoted), (1, 1));
    let row = |v: i64| {
        let store = store.clone();
        async move { store.version(v).await.unwrap().unwrap() }
    };
    assert_eq!(row(3).await.status, BAD);
    assert_eq!(row(2).await.status, BAD);
    let reason = row(2).await.reason.unwrap();
    assert!(reason.contains("checksum mismatch"), "{reason}");
    assert_eq!(row(1).await.status, PROMOTED);
    let (tokens, served) = finish(engine.submit(request(&engine, 0)).unwrap()).await;
    assert_eq!((tokens, served), (24, 1));

    // Swapping to a bad version at run time fails, and what serves stays.
    assert!(control.pin(3).await.is_err());
    assert_eq!(control.state().await.unwrap().serving_version, 1);

    std::fs::remove_dir_all(version_dir(&adapters, 1)).unwrap();
    let state = control
        .restore()
        .await
        .expect("a missing adapter must not stop the start");
    assert_eq!(state.serving_version, 0);
    assert_eq!(row(1).await.status, BAD);
    let (_, served) = finish(engine.submit(request(&engine, 1)).unwrap()).await;
    assert_eq!(served, 0);
    engine.handle().shutdown();
}
