//! The handle other threads hold: admission control, grammar compilation (on the submitting
//! thread, so the serving thread never compiles) and the channel to the serving thread.

use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

use super::detokenize::Decode;
use super::scheduler::{Command, Scheduler, SharedCounters, StepModel, Submission};
use super::types::*;
use crate::model::grammar::GrammarCompiler;

/// Room for every event a request can produce, so the serving thread never blocks on a slow
/// client (a token per generated token, the finish, and an error).
fn event_capacity(max_tokens: usize) -> usize {
    max_tokens.saturating_add(4).clamp(8, 1 << 16)
}

pub struct EngineHandle {
    commands: Mutex<std_mpsc::Sender<Command>>,
    counters: Arc<SharedCounters>,
    queue_capacity: usize,
    max_context: usize,
    /// Compiles constraints; Err says why this engine has none.
    grammar: Result<GrammarCompiler, String>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Grammar work so far: masks computed (beside the forward) and tokens fed to matchers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GrammarStats {
    pub masks: u64,
    pub mask_time: Duration,
    /// Serving-thread time spent advancing matchers by the sampled tokens.
    pub consume_time: Duration,
}

/// Static facts the serving thread reports once the model is loaded.
pub struct LoadedModel<M> {
    pub model: M,
    pub decoder: Arc<dyn Decode>,
    pub eos_tokens: Vec<u32>,
    pub max_context: usize,
}

impl EngineHandle {
    /// Starts the serving thread; `load` runs on it, so every tensor is created there.
    pub fn spawn<M, F>(load: F, queue_capacity: usize) -> anyhow::Result<Self>
    where
        M: StepModel + 'static,
        F: FnOnce() -> anyhow::Result<LoadedModel<M>> + Send + 'static,
    {
        let (commands, receiver) = std_mpsc::channel();
        let (ready_tx, ready_rx) = std_mpsc::channel::<anyhow::Result<usize>>();
        let counters = Arc::new(SharedCounters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("hindsight-engine".into())
            .spawn(move || {
                let loaded = match load() {
                    Ok(loaded) => loaded,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(loaded.max_context));
                Scheduler::new(
                    loaded.model,
                    loaded.decoder,
                    loaded.eos_tokens,
                    loaded.max_context,
                    thread_counters,
                )
                .run(receiver);
            })?;
        let max_context = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the engine thread stopped while loading the model"))??;
        Ok(Self {
            commands: Mutex::new(commands),
            counters,
            queue_capacity,
            max_context,
            grammar: Err("this engine has no grammar compiler".into()),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Sets the compiler for constrained requests (or why there is none).
    pub fn with_grammar(mut self, grammar: Result<GrammarCompiler, String>) -> Self {
        self.grammar = grammar;
        self
    }

    /// The compiler constraints go through (the trainer replays masks with it).
    pub fn grammar(&self) -> Option<&GrammarCompiler> {
        self.grammar.as_ref().ok()
    }

    pub fn grammar_stats(&self) -> GrammarStats {
        let nanos =
            |n: &std::sync::atomic::AtomicU64| Duration::from_nanos(n.load(Ordering::Relaxed));
        GrammarStats {
            masks: self.counters.grammar_masks.load(Ordering::Relaxed),
            mask_time: nanos(&self.counters.grammar_mask_nanos),
            consume_time: nanos(&self.counters.grammar_consume_nanos),
        }
    }

    pub fn max_context(&self) -> usize {
        self.max_context
    }

    pub fn submit(&self, request: GenerateRequest) -> Result<EventStream, SubmitError> {
        let prompt = request.prompt_tokens.len();
        if prompt == 0 {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        if request.stop.max_tokens == 0 {
            return Err(SubmitError::Invalid("max_tokens must be at least 1".into()));
        }
        let requested = prompt.saturating_add(request.stop.max_tokens);
        if requested > self.max_context {
            return Err(SubmitError::ContextTooLong {
                max: self.max_context,
                requested,
                prompt,
                completion: request.stop.max_tokens,
            });
        }
        // Compiled here, on the caller's thread: a bad grammar fails at once and the serving
        // thread only ever computes masks.
        let grammar = match &request.constraint {
            None => None,
            Some(constraint) => {
                let compiler = self.grammar.as_ref().map_err(|why| {
                    SubmitError::UnsupportedConstraint(format!(
                        "constrained decoding is not available: {why}"
                    ))
                })?;
                let matcher = compiler
                    .compile(constraint)
                    .map_err(SubmitError::UnsupportedConstraint)?;
                Some(matcher)
            }
        };
        let queued = self.counters.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.queue_capacity {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull);
        }
        let (events, stream) = mpsc::channel(event_capacity(request.stop.max_tokens));
        let submission = Box::new(Submission {
            request,
            grammar,
            events,
        });
        if self.send(Command::Generate(submission)).is_err() {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        Ok(stream)
    }

    /// Runs `update` on the serving thread between steps (adapter swaps).
    pub fn update<F>(&self, update: F) -> Result<(), SubmitError>
    where
        F: FnOnce(&mut dyn StepModel) -> Result<u64, String> + Send + 'static,
    {
        self.send(Command::Update(Box::new(update)))
    }

    fn send(&self, command: Command) -> Result<(), SubmitError> {
        let sender = self.commands.lock().map_err(|_| SubmitError::Stopped)?;
        sender.send(command).map_err(|_| SubmitError::Stopped)
    }

    pub fn load(&self) -> EngineLoad {
        EngineLoad {
            active_sequences: self.counters.active.load(Ordering::Relaxed),
            queued_requests: self.counters.queued.load(Ordering::Relaxed),
        }
    }

    pub fn policy_version(&self) -> u64 {
        self.counters.policy_version.load(Ordering::SeqCst)
    }

    /// Finishes running sequences and stops the thread.
    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
