//! The serving loop: one thread owns the model and every serving tensor. Requests arrive over a
//! channel; sequences that arrive while others decode join the next step (continuous batching),
//! and all decoding sequences advance together in one batched forward. Constrained sequences
//! carry a grammar matcher: its next-token mask is computed while the model runs
//! (`masks::overlapped`) and applied to the sequence's logits row before sampling.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Instant;

use llguidance::Matcher;
use tch::Tensor;
use tokio::sync::mpsc;

use super::detokenize::{Decode, IncrementalText};
use super::masks::{overlapped, RowMask};
use super::sampling::{sample_batch, SequenceSampler};
pub use super::step_model::StepModel;
use super::stop::{StopMatcher, StopOutcome};
use super::types::*;

/// Most prompt tokens prefilled per loop iteration (the chunk when nothing else decodes).
pub const PREFILL_CHUNK: usize = 512;

/// While other sequences decode, a prefill chunk is sized to take about this long, so that a
/// long prompt delays each of their tokens by at most this much (a 10k-token prompt deep in
/// its context prefills at a few hundred tokens a second on two cores: a fixed 512-token
/// chunk would hold every decoding stream for seconds).
const PREFILL_SLICE_SECONDS: f64 = 0.15;

/// The smallest chunk: below it per-call overhead dominates.
const MIN_PREFILL_CHUNK: usize = 32;

/// After a prefill chunk, while other sequences decode, the next chunk waits until decode
/// steps have run for this fraction of the chunk's time: decoding streams keep about a third
/// of their speed while a long prompt prefills at about two thirds of its own.
const DECODE_SHARE: f64 = 0.5;

/// A change to the model made on the serving thread between steps; returns the new policy
/// version.
pub type ModelUpdate = Box<dyn FnOnce(&mut dyn StepModel) -> Result<u64, String> + Send>;

/// A request on its way to the serving thread, with its grammar compiled by the submitter.
pub struct Submission {
    pub request: GenerateRequest,
    pub grammar: Option<Matcher>,
    pub events: mpsc::Sender<GenerateEvent>,
}

/// Messages to the serving thread.
pub enum Command {
    Generate(Box<Submission>),
    /// Install a new model state between steps (e.g. an adapter swap); the closure runs on the
    /// serving thread with the model, and the new policy version takes effect for new requests.
    Update(ModelUpdate),
    Shutdown,
}

/// Counters shared with the handle, for metrics and admission control.
#[derive(Debug, Default)]
pub struct SharedCounters {
    pub queued: AtomicUsize,
    pub active: AtomicUsize,
    pub policy_version: AtomicU64,
    /// Grammar masks computed, and the time they took (on the mask worker, beside the forward).
    pub grammar_masks: AtomicU64,
    pub grammar_mask_nanos: AtomicU64,
    /// Time the serving thread spent feeding sampled tokens to grammar matchers.
    pub grammar_consume_nanos: AtomicU64,
    /// Prompt tokens admitted, and those whose keys and values came from the prefix cache.
    pub prompt_tokens: AtomicU64,
    pub cached_prompt_tokens: AtomicU64,
}

struct Sequence {
    request: GenerateRequest,
    events: mpsc::Sender<GenerateEvent>,
    slot: usize,
    sampler: SequenceSampler,
    /// The constraint's matcher, advanced by every sampled token.
    grammar: Option<Matcher>,
    stop: StopMatcher,
    text: IncrementalText,
    prefilled: usize,
    /// Prompt tokens that came from the prefix cache.
    cached: usize,
    generated: usize,
    /// The sampled tokens, in order (the keys and values of all but the last are cached).
    generated_ids: Vec<u32>,
    /// The token to feed at the next decode step.
    next_input: Option<u32>,
    policy_version: u64,
    /// The adapter this sequence runs on from its first token to its last (None: the base).
    adapter: Option<u64>,
}

impl Sequence {
    fn prefill_done(&self) -> bool {
        self.prefilled >= self.request.prompt_tokens.len()
    }
}

/// The serving loop's state.
pub struct Scheduler<M: StepModel> {
    model: M,
    decoder: Arc<dyn Decode>,
    eos_tokens: Vec<u32>,
    max_context: usize,
    counters: Arc<SharedCounters>,
    waiting_user: VecDeque<Submission>,
    waiting_background: VecDeque<Submission>,
    running: Vec<Sequence>,
    /// Recent prefill speed (tokens per second), to size chunks while others decode.
    prefill_tok_s: Option<f64>,
    /// Decode time still owed to decoding sequences since the last prefill chunk (seconds).
    decode_owed: f64,
}

impl<M: StepModel> Scheduler<M> {
    pub fn new(
        model: M,
        decoder: Arc<dyn Decode>,
        eos_tokens: Vec<u32>,
        max_context: usize,
        counters: Arc<SharedCounters>,
    ) -> Self {
        Self {
            model,
            decoder,
            eos_tokens,
            max_context,
            counters,
            waiting_user: VecDeque::new(),
            waiting_background: VecDeque::new(),
            running: Vec::new(),
            prefill_tok_s: None,
            decode_owed: 0.0,
        }
    }

    /// Runs until a Shutdown command or until every sender is gone, then finishes what runs.
    pub fn run(mut self, commands: std_mpsc::Receiver<Command>) {
        let _no_grad = tch::no_grad_guard();
        let mut open = true;
        loop {
            let idle = self.running.is_empty() && self.waiting() == 0;
            if idle && !open {
                return;
            }
            if idle {
                match commands.recv() {
                    Ok(command) => open &= self.accept(command),
                    Err(_) => return,
                }
            }
            while open {
                match commands.try_recv() {
                    Ok(command) => open &= self.accept(command),
                    Err(std_mpsc::TryRecvError::Empty) => break,
                    Err(std_mpsc::TryRecvError::Disconnected) => open = false,
                }
            }
            self.step();
        }
    }

    fn waiting(&self) -> usize {
        self.waiting_user.len() + self.waiting_background.len()
    }

    /// Returns false when the loop should stop taking commands.
    fn accept(&mut self, command: Command) -> bool {
        match command {
            Command::Generate(submission) => {
                if submission.request.priority == Priority::User {
                    self.waiting_user.push_back(*submission);
                } else {
                    self.waiting_background.push_back(*submission);
                }
                true
            }
            Command::Update(update) => {
                match update(&mut self.model) {
                    Ok(version) => {
                        self.counters
                            .policy_version
                            .store(version, Ordering::SeqCst);
                        self.release_adapters();
                    }
                    Err(err) => {
                        tracing::error!(%err, "model update failed; serving goes on unchanged")
                    }
                }
                true
            }
            Command::Shutdown => false,
        }
    }

    /// One iteration: drop cancelled sequences, admit, prefill a chunk, decode one token for all.
    pub fn step(&mut self) {
        self.drop_cancelled();
        self.admit();
        self.prefill_some();
        self.decode_all();
        self.counters
            .active
            .store(self.running.len(), Ordering::Relaxed);
    }

    fn drop_cancelled(&mut self) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|s| s.events.is_closed());
        for seq in gone {
            self.free(&seq);
        }
        self.running = kept;
    }

    fn admit(&mut self) {
        while self.running.len() < self.model.max_slots() {
            let next = self
                .waiting_user
                .pop_front()
                .or_else(|| self.waiting_background.pop_front());
            let Some(Submission {
                request,
                grammar,
                events,
            }) = next
            else {
                break;
            };
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            if events.is_closed() {
                continue;
            }
            let Some(slot) = self.model.alloc_slot() else {
                let _ = events.try_send(GenerateEvent::Error("no free sequence slot".into()));
                continue;
            };
            let version = self.counters.policy_version.load(Ordering::SeqCst);
            let adapter = (request.adapter == AdapterChoice::Current).then_some(version);
            let prompt = &request.prompt_tokens;
            let cached = self.model.reuse_prefix(slot, prompt, adapter);
            // Room for the prompt and a typical reply; longer replies grow the cache.
            let reply = request.stop.max_tokens.min(256);
            self.model.reserve(slot, prompt.len() + reply);
            self.counters
                .prompt_tokens
                .fetch_add(prompt.len() as u64, Ordering::Relaxed);
            self.counters
                .cached_prompt_tokens
                .fetch_add(cached as u64, Ordering::Relaxed);
            metrics::counter!("hindsight_prompt_tokens_total").increment(prompt.len() as u64);
            metrics::counter!("hindsight_prompt_tokens_cached_total").increment(cached as u64);
            self.running.push(Sequence {
                sampler: SequenceSampler::new(request.sampling.clone()),
                grammar,
                stop: StopMatcher::new(&request.stop.stop_strings),
                text: IncrementalText::default(),
                prefilled: cached,
                cached,
                generated: 0,
                generated_ids: Vec::new(),
                next_input: None,
                policy_version: version,
                adapter,
                slot,
                request,
                events,
            });
        }
    }

    /// How many prompt tokens this iteration prefills: PREFILL_CHUNK when no sequence is
    /// decoding, else what takes about PREFILL_SLICE_SECONDS at the recent speed.
    fn prefill_budget(&self) -> usize {
        let decoding = self.running.iter().any(|s| s.next_input.is_some());
        match self.prefill_tok_s {
            Some(speed) if decoding => {
                ((speed * PREFILL_SLICE_SECONDS) as usize).clamp(MIN_PREFILL_CHUNK, PREFILL_CHUNK)
            }
            _ => PREFILL_CHUNK,
        }
    }

    /// Prefills up to `prefill_budget` prompt tokens across the sequences that need it, once
    /// decoding sequences have had their share of time since the last chunk.
    fn prefill_some(&mut self) {
        let decoding = self.running.iter().any(|s| s.next_input.is_some());
        if !decoding {
            self.decode_owed = 0.0;
        } else if self.decode_owed > 0.0 {
            return;
        }
        let mut budget = self.prefill_budget();
        let started = Instant::now();
        let total = budget;
        let mut finished = Vec::new();
        for index in 0..self.running.len() {
            if budget == 0 {
                break;
            }
            let seq = &mut self.running[index];
            if seq.prefill_done() {
                continue;
            }
            let end = (seq.prefilled + budget).min(seq.request.prompt_tokens.len());
            let chunk = &seq.request.prompt_tokens[seq.prefilled..end];
            budget -= chunk.len();
            let (slot, adapter) = (seq.slot, seq.adapter);
            // The first token's mask is computed beside the prompt's last chunk.
            let last_chunk = end == seq.request.prompt_tokens.len();
            let matchers = match seq.grammar.as_mut() {
                Some(matcher) if last_chunk => vec![(0, matcher)],
                _ => Vec::new(),
            };
            let model = &mut self.model;
            let (logits, masks) = overlapped(1, matchers, &self.counters, || {
                model.prefill(slot, chunk, adapter)
            });
            seq.prefilled = end;
            match logits {
                Err(err) => {
                    let _ = seq.events.try_send(GenerateEvent::Error(err));
                    finished.push(index);
                }
                Ok(logits) if seq.prefill_done() => {
                    finished.extend(self.emit_batch(&[index], &logits.reshape([1, -1]), masks));
                }
                Ok(_) => {}
            }
        }
        let done = total - budget;
        if decoding && done > 0 {
            self.decode_owed = started.elapsed().as_secs_f64() * DECODE_SHARE;
        }
        if done >= MIN_PREFILL_CHUNK {
            let speed = done as f64 / started.elapsed().as_secs_f64().max(1e-6);
            // Deeper chunks are slower (attention grows with the context): follow the recent.
            self.prefill_tok_s = Some(match self.prefill_tok_s {
                Some(old) => 0.5 * old + 0.5 * speed,
                None => speed,
            });
        }
        self.retire(finished);
    }

    fn decode_all(&mut self) {
        let ready: Vec<usize> = (0..self.running.len())
            .filter(|&i| self.running[i].next_input.is_some())
            .collect();
        if ready.is_empty() {
            return;
        }
        let started = Instant::now();
        let slots: Vec<usize> = ready.iter().map(|&i| self.running[i].slot).collect();
        let tokens: Vec<u32> = ready
            .iter()
            .map(|&i| self.running[i].next_input.unwrap_or(0))
            .collect();
        let adapters: Vec<Option<u64>> = ready.iter().map(|&i| self.running[i].adapter).collect();
        let mut finished = Vec::new();
        // `ready` is ascending: a sequence's row is its position there.
        let matchers: Vec<(usize, &mut Matcher)> = self
            .running
            .iter_mut()
            .enumerate()
            .filter_map(|(i, seq)| {
                let row = ready.binary_search(&i).ok()?;
                seq.grammar.as_mut().map(|m| (row, m))
            })
            .collect();
        let model = &mut self.model;
        let (logits, masks) = overlapped(ready.len(), matchers, &self.counters, || {
            model.decode(&slots, &tokens, &adapters)
        });
        match logits {
            Err(err) => {
                for &i in &ready {
                    let _ = self.running[i]
                        .events
                        .try_send(GenerateEvent::Error(err.clone()));
                    finished.push(i);
                }
            }
            Ok(logits) => finished.extend(self.emit_batch(&ready, &logits, masks)),
        }
        self.decode_owed -= started.elapsed().as_secs_f64();
        self.retire(finished);
    }

    /// Samples one token for each listed sequence from its row of `logits` (masked by
    /// `masks[row]` where the sequence has a grammar) and sends it.
    /// Returns the indices of sequences that finished.
    fn emit_batch(
        &mut self,
        indices: &[usize],
        logits: &Tensor,
        masks: Vec<RowMask>,
    ) -> Vec<usize> {
        let top_n: Vec<usize> = indices
            .iter()
            .map(|&i| self.running[i].request.top_logprobs)
            .collect();
        // A row whose grammar failed is still sampled (unmasked, with the batch) but not sent.
        let width = logits.size().last().copied().unwrap_or(0) as usize;
        let mut failed: Vec<Option<String>> = vec![None; indices.len()];
        let masks: Vec<Option<Vec<f32>>> = masks
            .into_iter()
            .enumerate()
            .map(|(row, mask)| match mask? {
                Ok(mask) if mask.len() == width => Some(mask),
                Ok(mask) => {
                    failed[row] = Some(format!(
                        "the grammar's vocabulary ({}) does not match the model's logits ({width})",
                        mask.len()
                    ));
                    None
                }
                Err(err) => {
                    failed[row] = Some(err);
                    None
                }
            })
            .collect();
        let sampled = {
            let mut samplers: Vec<&mut SequenceSampler> = Vec::with_capacity(indices.len());
            let mut rest: &mut [Sequence] = &mut self.running;
            let mut offset = 0;
            // Disjoint mutable borrows of the listed sequences' samplers, in order.
            for &i in indices {
                let (_, tail) = rest.split_at_mut(i - offset);
                let (head, tail) = tail.split_at_mut(1);
                samplers.push(&mut head[0].sampler);
                rest = tail;
                offset = i + 1;
            }
            sample_batch(logits, &mut samplers, &top_n, &masks)
        };
        let mut finished = Vec::new();
        for ((&i, s), failure) in indices.iter().zip(sampled).zip(failed) {
            if let Some(err) = failure {
                let _ = self.running[i].events.try_send(GenerateEvent::Error(err));
                finished.push(i);
            } else if self.deliver(i, s) {
                finished.push(i);
            }
        }
        finished
    }

    /// Sends one sampled token; returns true when the sequence is finished.
    fn deliver(&mut self, index: usize, sampled: super::sampling::Sampled) -> bool {
        let decoder = Arc::clone(&self.decoder);
        let max_context = self.max_context;
        let is_eos = self.eos_tokens.contains(&sampled.token);
        let is_eos = is_eos && !self.running[index].request.stop.ignore_eos;
        let seq = &mut self.running[index];
        seq.generated += 1;
        seq.generated_ids.push(sampled.token);
        // The grammar takes the token before anything is sent: when it is complete the sequence
        // ends here, with no extra token.
        let mut grammar_done = false;
        if let Some(matcher) = seq.grammar.as_mut() {
            let start = Instant::now();
            let consumed = matcher.consume_token(sampled.token);
            grammar_done = matcher.is_stopped();
            self.counters
                .grammar_consume_nanos
                .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if let Err(err) = consumed {
                let _ = seq.events.try_send(GenerateEvent::Error(format!(
                    "constrained decoding failed: {err}"
                )));
                return true;
            }
        }
        let is_stop_token = is_eos || seq.request.stop.stop_token_ids.contains(&sampled.token);
        let (text, matched_stop) = if is_stop_token {
            (seq.stop.finish(), None)
        } else {
            let delta = seq.text.push(decoder.as_ref(), sampled.token);
            match seq.stop.push(&delta) {
                StopOutcome::Continue(text) => (text, None),
                StopOutcome::Stopped { text, stop } => (text, Some(stop)),
            }
        };
        let top_logprobs = sampled
            .top
            .iter()
            .map(|&(token_id, logprob)| TokenLogprob {
                token_id,
                text: decoder.decode(&[token_id]),
                logprob,
            })
            .collect();
        let total = seq.request.prompt_tokens.len() + seq.generated;
        let reason = if is_stop_token || grammar_done || matched_stop.is_some() {
            Some(FinishReason::Stop)
        } else if seq.generated >= seq.request.stop.max_tokens || total >= max_context {
            Some(FinishReason::Length)
        } else {
            None
        };
        let mut text = text;
        if reason.is_some() && matched_stop.is_none() {
            // Text held back as a possible stop string start is released with the last token.
            text.push_str(&seq.stop.finish());
        }
        let event = GenerateEvent::Token(TokenEvent {
            token_id: sampled.token,
            text,
            logprob: sampled.logprob,
            top_logprobs,
        });
        if seq.events.try_send(event).is_err() {
            return true;
        }
        match reason {
            None => {
                seq.next_input = Some(sampled.token);
                false
            }
            Some(reason) => {
                let _ = seq.events.try_send(GenerateEvent::Finish(FinishEvent {
                    reason,
                    prompt_tokens: seq.request.prompt_tokens.len(),
                    completion_tokens: seq.generated,
                    cached_tokens: seq.cached,
                    policy_version: seq.policy_version,
                    matched_stop,
                }));
                true
            }
        }
    }

    fn retire(&mut self, mut indices: Vec<usize>) {
        if indices.is_empty() {
            return;
        }
        indices.sort_unstable();
        indices.dedup();
        for &i in indices.iter().rev() {
            let seq = self.running.remove(i);
            self.free(&seq);
        }
        self.release_adapters();
    }

    /// Frees a sequence's slot, offering what it computed to the prefix cache.
    fn free(&mut self, seq: &Sequence) {
        let mut tokens = seq.request.prompt_tokens.clone();
        tokens.extend_from_slice(&seq.generated_ids);
        self.model.free_slot_keeping(seq.slot, &tokens, seq.adapter);
    }

    /// Lets the model drop the adapters of versions no running sequence uses any more.
    fn release_adapters(&mut self) {
        let mut live: Vec<u64> = self.running.iter().filter_map(|s| s.adapter).collect();
        live.push(self.counters.policy_version.load(Ordering::SeqCst));
        self.model.retain_adapters(&live);
    }
}
