//! Driving one response to its end: the streamed path (typed SSE events, each `event: <type>`
//! with `type` and `sequence_number` in its data), the non-streamed one, and what both do when
//! the response is finished — log the turn, keep the response if `store` is on.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::input::{items_to_messages, Messages};
use super::output::{Echo, OutputBuilder, Status};
use crate::api::error::ApiError;
use crate::api::generation::{usage_of, ChoiceState};
use crate::api::turn_record::TurnContext;
use crate::engine::{EventStream, FinishReason, GenerateEvent};
use crate::store::responses::{ResponseStore, StoredResponse};
use crate::store::TurnSink;

/// Where a finished response goes.
pub struct Finish {
    pub sink: Arc<dyn TurnSink>,
    pub turn: TurnContext,
    pub policy_version: u64,
    pub prompt_len: usize,
    /// None with `store: false`.
    pub save: Option<Save>,
}

/// What is kept of a response with `store: true`.
pub struct Save {
    pub store: ResponseStore,
    pub key_id: String,
    /// The conversation before this response's output (no instructions).
    pub conversation: Messages,
}

impl Finish {
    /// Keeps the response (before the client can see it end, so a follow-up finds it) and logs
    /// the turn; a failed response is kept but not logged, as a failed chat turn is not.
    fn done(self, state: ChoiceState, builder: &OutputBuilder, object: &Value, status: Status) {
        if let Some(save) = self.save {
            let mut conversation = save.conversation;
            let mut output = Messages::default();
            let known = conversation.call_ids();
            match items_to_messages(&builder.items(), "output", known, &mut output) {
                Ok(()) => conversation.extend(output),
                Err(err) => tracing::error!(error = %err, "responses: output did not convert"),
            }
            save.store.save(StoredResponse {
                id: self.turn.response_id.clone(),
                key_id: save.key_id,
                session_id: self.turn.session.session_id.clone(),
                body: object.clone(),
                conversation: conversation.messages,
                created_at: self.turn.created_at,
            });
        }
        if status != Status::Failed {
            self.turn
                .record(self.sink.as_ref(), &[state], self.policy_version);
        }
    }
}

fn status_of(reason: FinishReason) -> Status {
    match reason {
        FinishReason::Length => Status::Incomplete,
        _ => Status::Completed,
    }
}

/// The non-streamed response: drains the engine, then finishes. Dropping the future (the
/// client went away) cancels generation.
pub async fn collect(
    mut rx: EventStream,
    mut state: ChoiceState,
    mut builder: OutputBuilder,
    echo: Echo,
    finish: Finish,
) -> Result<Value, ApiError> {
    let status = loop {
        match rx.recv().await {
            Some(GenerateEvent::Token(token)) => {
                for delta in state.on_token(token) {
                    builder.apply(delta);
                }
            }
            Some(GenerateEvent::Finish(end)) => {
                let status = status_of(end.reason);
                for delta in state.on_finish(end) {
                    builder.apply(delta);
                }
                break status;
            }
            Some(GenerateEvent::Error(detail)) => return Err(ApiError::engine_failure(detail)),
            None => {
                return Err(ApiError::internal(
                    "the engine closed a stream without finishing",
                ))
            }
        }
    };
    builder.finish(status);
    let usage = usage_of(std::slice::from_ref(&state), finish.prompt_len);
    let object = echo.object(status, builder.items(), Some(usage), false);
    finish.done(state, &builder, &object, status);
    Ok(object)
}

/// Numbers events and sends them as SSE.
struct Emitter {
    tx: mpsc::UnboundedSender<Event>,
    sequence: u64,
}

impl Emitter {
    fn send(&mut self, mut event: Value) -> bool {
        let kind = event["type"].as_str().unwrap_or("error").to_string();
        event["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        self.tx
            .send(Event::default().event(kind).data(event.to_string()))
            .is_ok()
    }

    fn send_all(&mut self, events: Vec<Value>) -> bool {
        events.into_iter().all(|event| self.send(event))
    }
}

/// The streamed response, pumped on a task of its own that stops (dropping the engine stream,
/// which cancels generation) as soon as the client disconnects.
pub fn stream(
    mut rx: EventStream,
    mut state: ChoiceState,
    mut builder: OutputBuilder,
    echo: Echo,
    finish: Finish,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let (tx, out) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let mut emitter = Emitter { tx, sequence: 0 };
        let opening = echo.object(Status::Completed, Vec::new(), None, true);
        let mut alive = emitter.send(json!({"type": "response.created", "response": opening}))
            && emitter.send(json!({"type": "response.in_progress", "response": opening}));
        let mut outcome = None;
        while alive {
            let next = tokio::select! {
                _ = emitter.tx.closed() => { alive = false; continue; }
                next = rx.recv() => next,
            };
            match next {
                Some(GenerateEvent::Token(token)) => {
                    for delta in state.on_token(token) {
                        alive &= emitter.send_all(builder.apply(delta));
                    }
                }
                Some(GenerateEvent::Finish(end)) => {
                    let status = status_of(end.reason);
                    for delta in state.on_finish(end) {
                        alive &= emitter.send_all(builder.apply(delta));
                    }
                    outcome = Some(status);
                    break;
                }
                Some(GenerateEvent::Error(detail)) => {
                    tracing::error!(error = %detail, "responses: generation failed mid-stream");
                    outcome = Some(Status::Failed);
                    break;
                }
                None => {
                    tracing::error!("responses: the engine closed a stream without finishing");
                    outcome = Some(Status::Failed);
                    break;
                }
            }
        }
        drop(rx);
        let Some(status) = outcome.filter(|_| alive) else {
            crate::api::metrics::count_cancelled("responses");
            return;
        };
        emitter.send_all(builder.finish(status));
        let usage = (status != Status::Failed)
            .then(|| usage_of(std::slice::from_ref(&state), finish.prompt_len));
        let object = echo.object(status, builder.items(), usage, false);
        finish.done(state, &builder, &object, status);
        emitter.send(json!({"type": status.final_event(), "response": object}));
    });
    Sse::new(UnboundedReceiverStream::new(out).map(Ok)).keep_alive(KeepAlive::default())
}
