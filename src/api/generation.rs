//! Driving engine streams: per-choice state shared by the streamed and non-streamed paths
//! (so both produce the same text and tool calls), submission of every choice, and the SSE
//! pump that cancels generation when the client goes away.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{select_all, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};

use super::dto::{FunctionCall, ToolCall, Usage};
use super::error::ApiError;
use super::tool_parse::{Piece, ToolCallStreamer};
use crate::engine::{
    Backend, EventStream, FinishEvent, FinishReason, GenerateEvent, GenerateRequest, TokenEvent,
};
use crate::store::CapturedChoice;

/// What one choice adds to the response at a step.
#[derive(Debug, Clone)]
pub enum ChoiceDelta {
    /// Visible text, with the tokens (for logprobs) it came from.
    Text {
        text: String,
        tokens: Vec<TokenEvent>,
    },
    ToolCall {
        position: usize,
        call: ToolCall,
    },
}

/// One choice as it is being generated.
#[derive(Debug)]
pub struct ChoiceState {
    pub index: usize,
    tools: Option<ToolCallStreamer>,
    parallel_tool_calls: bool,
    keep_logprobs: bool,
    /// Exactly what the model produced (tool-call markup included).
    pub raw_text: String,
    /// What the client sees as `content`.
    pub content: String,
    pub token_ids: Vec<u32>,
    pub token_logprobs: Vec<f32>,
    pub tool_calls: Vec<ToolCall>,
    /// Every token with its alternatives, when logprobs were requested.
    pub logprob_tokens: Vec<TokenEvent>,
    pending_tokens: Vec<TokenEvent>,
    pub finish: Option<FinishEvent>,
    pub first_token_at: Option<Instant>,
}

impl ChoiceState {
    pub fn new(index: usize, parse_tools: bool, parallel_tool_calls: bool, logprobs: bool) -> Self {
        Self {
            index,
            tools: parse_tools.then(ToolCallStreamer::new),
            parallel_tool_calls,
            keep_logprobs: logprobs,
            raw_text: String::new(),
            content: String::new(),
            token_ids: Vec::new(),
            token_logprobs: Vec::new(),
            tool_calls: Vec::new(),
            logprob_tokens: Vec::new(),
            pending_tokens: Vec::new(),
            finish: None,
            first_token_at: None,
        }
    }

    pub fn on_token(&mut self, token: TokenEvent) -> Vec<ChoiceDelta> {
        self.first_token_at.get_or_insert_with(Instant::now);
        self.raw_text.push_str(&token.text);
        self.token_ids.push(token.token_id);
        self.token_logprobs.push(token.logprob);
        let pieces = match &mut self.tools {
            Some(streamer) => streamer.push(&token.text),
            None if token.text.is_empty() => Vec::new(),
            None => vec![Piece::Text(token.text.clone())],
        };
        if self.keep_logprobs {
            self.logprob_tokens.push(token.clone());
            self.pending_tokens.push(token);
        }
        self.deltas(pieces)
    }

    /// Only calls naming one of these tools become tool calls (see [`ToolCallStreamer`]).
    pub fn with_tool_names(mut self, names: Vec<String>) -> Self {
        self.tools = self.tools.map(|streamer| streamer.with_tools(names));
        self
    }

    pub fn on_finish(&mut self, finish: FinishEvent) -> Vec<ChoiceDelta> {
        let cut = finish.reason == FinishReason::Length;
        let pieces = self
            .tools
            .as_mut()
            .map(|streamer| streamer.finish_cut(cut))
            .unwrap_or_default();
        let mut deltas = self.deltas(pieces);
        if !self.pending_tokens.is_empty() {
            deltas.push(ChoiceDelta::Text {
                text: String::new(),
                tokens: std::mem::take(&mut self.pending_tokens),
            });
        }
        self.finish = Some(finish);
        deltas
    }

    fn deltas(&mut self, pieces: Vec<Piece>) -> Vec<ChoiceDelta> {
        let mut out = Vec::with_capacity(pieces.len());
        for piece in pieces {
            match piece {
                Piece::Text(text) => {
                    self.content.push_str(&text);
                    out.push(ChoiceDelta::Text {
                        text,
                        tokens: std::mem::take(&mut self.pending_tokens),
                    });
                }
                Piece::Call(parsed) => {
                    if !self.parallel_tool_calls && !self.tool_calls.is_empty() {
                        continue;
                    }
                    let call = ToolCall {
                        id: format!("call_{}", uuid::Uuid::new_v4().simple()),
                        kind: "function",
                        function: FunctionCall {
                            name: parsed.name,
                            arguments: parsed.arguments,
                        },
                    };
                    self.tool_calls.push(call.clone());
                    out.push(ChoiceDelta::ToolCall {
                        position: self.tool_calls.len() - 1,
                        call,
                    });
                }
            }
        }
        out
    }

    /// As OpenAI: `length` whenever the token budget cut the output (even after complete
    /// calls), else `tool_calls` when the model called tools, else `stop`.
    pub fn finish_reason(&self) -> &'static str {
        match self.finish.as_ref().map(|f| f.reason) {
            Some(FinishReason::Length) => "length",
            _ if !self.tool_calls.is_empty() => "tool_calls",
            _ => "stop",
        }
    }

    /// The content as returned: None when the model only called tools.
    pub fn visible_content(&self) -> Option<String> {
        if self.tool_calls.is_empty() {
            Some(self.content.clone())
        } else {
            Some(self.content.trim().to_string()).filter(|text| !text.is_empty())
        }
    }

    pub fn completion_tokens(&self) -> usize {
        self.finish
            .as_ref()
            .map(|f| f.completion_tokens)
            .unwrap_or(self.token_ids.len())
    }

    pub fn captured(&self) -> CapturedChoice {
        CapturedChoice {
            text: self.raw_text.clone(),
            token_ids: self.token_ids.clone(),
            logprobs: self.token_logprobs.clone(),
            finish_reason: self.finish_reason().to_string(),
            tool_calls: (!self.tool_calls.is_empty())
                .then(|| serde_json::to_value(&self.tool_calls).unwrap_or_default()),
        }
    }
}

/// Usage of a finished response: the prompt counts once, completions add up over choices.
pub fn usage_of(states: &[ChoiceState], prompt_len: usize) -> Usage {
    let finish = states.first().and_then(|s| s.finish.as_ref());
    let prompt = finish.map(|f| f.prompt_tokens).unwrap_or(prompt_len);
    Usage::new(
        prompt,
        states.iter().map(ChoiceState::completion_tokens).sum(),
    )
    .with_cached(finish.map_or(0, |f| f.cached_tokens))
}

pub fn policy_version_of(states: &[ChoiceState], fallback: u64) -> u64 {
    states
        .iter()
        .filter_map(|s| s.finish.as_ref())
        .map(|f| f.policy_version)
        .max()
        .unwrap_or(fallback)
}

pub fn first_token_latency(states: &[ChoiceState], started: Instant) -> Option<Duration> {
    states
        .iter()
        .filter_map(|s| s.first_token_at)
        .min()
        .map(|at| at.duration_since(started))
}

/// Queues every choice; if one is refused, those already queued are cancelled (dropped).
pub fn submit_all(
    backend: &dyn Backend,
    requests: Vec<GenerateRequest>,
) -> Result<Vec<EventStream>, ApiError> {
    requests
        .into_iter()
        .map(|request| backend.submit(request).map_err(ApiError::from))
        .collect()
}

/// Drains every choice to its end, concurrently. Dropping the future cancels generation.
pub async fn collect(
    streams: Vec<EventStream>,
    states: Vec<ChoiceState>,
) -> Result<Vec<ChoiceState>, ApiError> {
    let drains = streams
        .into_iter()
        .zip(states)
        .map(|(mut rx, mut state)| async move {
            loop {
                match rx.recv().await {
                    Some(GenerateEvent::Token(token)) => {
                        state.on_token(token);
                    }
                    Some(GenerateEvent::Finish(finish)) => {
                        state.on_finish(finish);
                        return Ok(state);
                    }
                    Some(GenerateEvent::Error(detail)) => {
                        return Err(ApiError::engine_failure(detail))
                    }
                    None => {
                        return Err(ApiError::internal(
                            "the engine closed a stream without finishing",
                        ))
                    }
                }
            }
        });
    futures::future::try_join_all(drains).await
}

/// How a streamed response ended.
#[derive(Debug)]
pub enum StreamEnd {
    Completed(Vec<ChoiceState>),
    Failed,
    /// The client went away; generation was cancelled.
    Cancelled,
}

/// Formats the chunks of one streamed response (chat and legacy completions differ).
pub trait ChunkWriter: Send + 'static {
    /// Sent once per choice before any token (chat's `role: assistant` delta).
    fn opening(&mut self, index: usize) -> Option<String>;
    fn delta(&mut self, index: usize, delta: ChoiceDelta) -> Option<String>;
    /// The chunk carrying `finish_reason`.
    fn closing(&mut self, state: &ChoiceState) -> String;
    /// The final usage-only chunk (`stream_options.include_usage`).
    fn usage(&mut self, usage: Usage) -> String;
}

pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|err| {
        tracing::error!(error = %err, "could not serialize a chunk");
        String::from("{}")
    })
}

/// Pumps engine events into SSE events on a task of its own; the task stops (dropping the
/// engine streams, which cancels generation) as soon as the client disconnects. `on_end` runs
/// once, after `[DONE]` is sent or the stream is abandoned.
pub fn stream_sse(
    streams: Vec<EventStream>,
    mut states: Vec<ChoiceState>,
    mut writer: Box<dyn ChunkWriter>,
    include_usage: bool,
    prompt_len: usize,
    on_end: impl FnOnce(StreamEnd) + Send + 'static,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    // Unbounded is safe: the pump produces at most a few events per engine token.
    let (tx, rx) = mpsc::unbounded_channel::<Event>();
    let choices = streams.len();
    tokio::spawn(async move {
        let send = |data: String| tx.send(Event::default().data(data)).is_ok();
        let mut merged = select_all(
            streams
                .into_iter()
                .enumerate()
                .map(|(i, rx)| ReceiverStream::new(rx).map(move |event| (i, event))),
        );
        let mut alive = (0..choices).all(|i| writer.opening(i).map(send).unwrap_or(true));
        let mut finished = 0;
        let mut failed = false;
        while alive && finished < choices {
            let next = tokio::select! {
                _ = tx.closed() => { alive = false; continue; }
                next = merged.next() => next,
            };
            match next {
                Some((i, GenerateEvent::Token(token))) => {
                    for delta in states[i].on_token(token) {
                        alive &= writer.delta(i, delta).map(send).unwrap_or(true);
                    }
                }
                Some((i, GenerateEvent::Finish(finish))) => {
                    for delta in states[i].on_finish(finish) {
                        alive &= writer.delta(i, delta).map(send).unwrap_or(true);
                    }
                    alive &= send(writer.closing(&states[i]));
                    finished += 1;
                }
                Some((_, GenerateEvent::Error(detail))) => {
                    failed = true;
                    send(to_json(&ApiError::engine_failure(detail).envelope()));
                    break;
                }
                None => {
                    failed = true;
                    let err = ApiError::internal("the engine closed a stream without finishing");
                    send(to_json(&err.envelope()));
                    break;
                }
            }
        }
        drop(merged);
        let end = if failed {
            StreamEnd::Failed
        } else if !alive {
            StreamEnd::Cancelled
        } else {
            if include_usage {
                send(writer.usage(usage_of(&states, prompt_len)));
            }
            send("[DONE]".to_string());
            StreamEnd::Completed(states)
        };
        on_end(end);
    });
    Sse::new(UnboundedReceiverStream::new(rx).map(Ok)).keep_alive(KeepAlive::default())
}
