//! A deterministic [`Backend`] for tests and benchmarks of the HTTP layer: bytes are tokens,
//! replies are scripted (or echo the prompt, or are seeded word salad when sampling), and
//! queue-full, context-limit, delay and mid-stream failure behaviour are configurable. Every
//! submitted request is recorded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::engine::{
    Backend, EngineLoad, EventStream, FinishEvent, FinishReason, GenerateEvent, GenerateRequest,
    ModelInfo, PromptError, SubmitError, TokenEvent, TokenLogprob,
};

/// A reply computed from the request and its decoded prompt.
pub type ReplyScript = Arc<dyn Fn(&GenerateRequest, &str) -> String + Send + Sync>;

/// What the fake answers.
#[derive(Clone)]
pub enum FakeReply {
    /// Greedy (temperature 0): "You said: <last user text>". Sampling: words drawn from a
    /// ChaCha generator seeded by the request seed (random without one), so a fixed seed
    /// always gives the same text.
    EchoOrSeeded,
    /// Always this text.
    Fixed(String),
    /// Computed from the request and its decoded prompt.
    Script(ReplyScript),
}

#[derive(Clone)]
pub struct FakeConfig {
    pub model_id: String,
    pub context_length: usize,
    pub reply: FakeReply,
    /// Sleep before each token.
    pub token_delay: Duration,
    /// Generations running at once beyond which submit answers QueueFull.
    pub max_in_flight: Option<usize>,
    /// Send an Error event after this many tokens.
    pub fail_after_tokens: Option<usize>,
    pub policy_version: u64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            model_id: "fake-model".into(),
            context_length: 4096,
            reply: FakeReply::EchoOrSeeded,
            token_delay: Duration::ZERO,
            max_in_flight: None,
            fail_after_tokens: None,
            policy_version: 3,
        }
    }
}

/// A chat_prompt call as the fake received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedPrompt {
    pub messages: Vec<Value>,
    pub tools: Option<Vec<Value>>,
}

#[derive(Default)]
struct Counters {
    in_flight: AtomicUsize,
    completed: AtomicUsize,
    cancelled: AtomicUsize,
}

pub struct FakeBackend {
    info: ModelInfo,
    config: FakeConfig,
    counters: Arc<Counters>,
    requests: Mutex<Vec<GenerateRequest>>,
    prompts: Mutex<Vec<RecordedPrompt>>,
}

const WORDS: &[&str] = &[
    "the", "quiet", "river", "bends", "past", "old", "stone", "bridges", "while", "café", "lights",
    "hum", "softly", "and", "birds", "return", "home", "—", "naïve", "dreams", "wander",
];

impl FakeBackend {
    pub fn new(config: FakeConfig) -> Self {
        Self {
            info: ModelInfo {
                id: config.model_id.clone(),
                context_length: config.context_length,
                vocab_size: 100_000,
                created: 1_700_000_000,
            },
            config,
            counters: Arc::default(),
            requests: Mutex::default(),
            prompts: Mutex::default(),
        }
    }

    pub fn with_reply(reply: &str) -> Self {
        Self::new(FakeConfig {
            reply: FakeReply::Fixed(reply.to_string()),
            ..FakeConfig::default()
        })
    }

    /// Every request submitted so far.
    pub fn requests(&self) -> Vec<GenerateRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Every chat_prompt call so far.
    pub fn prompts(&self) -> Vec<RecordedPrompt> {
        self.prompts.lock().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn in_flight(&self) -> usize {
        self.counters.in_flight.load(Ordering::SeqCst)
    }

    pub fn completed(&self) -> usize {
        self.counters.completed.load(Ordering::SeqCst)
    }

    /// Generations stopped because their receiver was dropped.
    pub fn cancelled(&self) -> usize {
        self.counters.cancelled.load(Ordering::SeqCst)
    }

    /// The prompt the fake renders for `messages`: `<|role|>content\n` per message, tools as
    /// JSON, then `<|assistant|>`.
    pub fn render(messages: &[Value], tools: Option<&[Value]>) -> String {
        let mut text = String::new();
        if let Some(tools) = tools {
            text.push_str(&format!("<|tools|>{}\n", Value::Array(tools.to_vec())));
        }
        for message in messages {
            let role = message["role"].as_str().unwrap_or("?");
            let content = message["content"].as_str().unwrap_or_default();
            text.push_str(&format!("<|{role}|>{content}\n"));
        }
        text.push_str("<|assistant|>");
        text
    }

    fn reply_for(&self, request: &GenerateRequest) -> String {
        let prompt = self.decode(&request.prompt_tokens);
        match &self.config.reply {
            FakeReply::Fixed(text) => text.clone(),
            FakeReply::Script(script) => script(request, &prompt),
            FakeReply::EchoOrSeeded => echo_or_seeded(request, &prompt),
        }
    }
}

/// The default reply: greedy echoes the last user message, sampling draws seeded words.
pub fn echo_or_seeded(request: &GenerateRequest, prompt: &str) -> String {
    if request.sampling.temperature == 0.0 {
        let last_user = prompt
            .rsplit("<|user|>")
            .next()
            .and_then(|tail| tail.split("\n<|").next())
            .unwrap_or(prompt)
            .trim_end();
        return format!("You said: {last_user}");
    }
    let mut rng = match request.sampling.seed {
        Some(seed) => rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        None => rand_chacha::ChaCha8Rng::seed_from_u64(rand::random()),
    };
    let count = rng.random_range(8..24);
    let words: Vec<&str> = (0..count)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect();
    words.join(" ") + "."
}

/// Decrements the in-flight count however the generation task ends.
struct InFlight(Arc<Counters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn fake_logprob(byte: u8) -> f32 {
    -0.01 - 0.05 * f32::from(byte % 7)
}

impl Backend for FakeBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn chat_prompt(
        &self,
        messages: &[Value],
        tools: Option<&[Value]>,
    ) -> Result<Vec<u32>, PromptError> {
        if let Ok(mut prompts) = self.prompts.lock() {
            prompts.push(RecordedPrompt {
                messages: messages.to_vec(),
                tools: tools.map(<[Value]>::to_vec),
            });
        }
        Ok(self.encode(&Self::render(messages, tools)))
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    fn decode(&self, tokens: &[u32]) -> String {
        let bytes: Vec<u8> = tokens
            .iter()
            .filter_map(|&t| u8::try_from(t).ok())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn submit(&self, request: GenerateRequest) -> Result<EventStream, SubmitError> {
        let prompt = request.prompt_tokens.len();
        let completion = request.stop.max_tokens;
        if prompt + completion > self.info.context_length {
            return Err(SubmitError::ContextTooLong {
                max: self.info.context_length,
                requested: prompt + completion,
                prompt,
                completion,
            });
        }
        let in_flight = self.counters.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.counters.clone());
        if self
            .config
            .max_in_flight
            .is_some_and(|max| in_flight >= max)
        {
            return Err(SubmitError::QueueFull);
        }
        if let Ok(mut requests) = self.requests.lock() {
            requests.push(request.clone());
        }

        let mut reply = self.reply_for(&request);
        let mut matched_stop = None;
        let earliest_stop = request
            .stop
            .stop_strings
            .iter()
            .filter_map(|stop| reply.find(stop.as_str()).map(|at| (at, stop)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = earliest_stop {
            matched_stop = Some(stop.clone());
            reply.truncate(at);
        }
        let mut bytes = reply.into_bytes();
        let reason = if bytes.len() > completion {
            bytes.truncate(completion);
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        let config = self.config.clone();
        let counters = self.counters.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let _guard = guard;
            let mut pending = Vec::new();
            for (i, &byte) in bytes.iter().enumerate() {
                if config.fail_after_tokens == Some(i) {
                    let _ = tx
                        .send(GenerateEvent::Error("fake engine failure".into()))
                        .await;
                    return;
                }
                if !config.token_delay.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(config.token_delay) => {}
                        _ = tx.closed() => {
                            counters.cancelled.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
                // A multi-byte character shows up with its last byte.
                pending.push(byte);
                let text = match std::str::from_utf8(&pending) {
                    Ok(text) => {
                        let text = text.to_string();
                        pending.clear();
                        text
                    }
                    Err(_) => String::new(),
                };
                let top_logprobs = (0..request.top_logprobs)
                    .map(|k| {
                        let alt = byte.wrapping_add(k as u8);
                        TokenLogprob {
                            token_id: u32::from(alt),
                            text: String::from_utf8_lossy(&[alt]).into_owned(),
                            logprob: fake_logprob(byte) - k as f32,
                        }
                    })
                    .collect();
                let event = GenerateEvent::Token(TokenEvent {
                    token_id: u32::from(byte),
                    text,
                    logprob: fake_logprob(byte),
                    top_logprobs,
                });
                if tx.send(event).await.is_err() {
                    counters.cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            let finish = GenerateEvent::Finish(FinishEvent {
                reason,
                prompt_tokens: prompt,
                completion_tokens: bytes.len(),
                cached_tokens: 0,
                policy_version: config.policy_version,
                matched_stop,
            });
            if tx.send(finish).await.is_ok() {
                counters.completed.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(rx)
    }

    fn load(&self) -> EngineLoad {
        EngineLoad {
            active_sequences: self.in_flight(),
            queued_requests: 0,
        }
    }

    fn policy_version(&self) -> u64 {
        self.config.policy_version
    }
}
