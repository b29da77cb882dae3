//! `GET /admin/api/live`: server-sent events for new turns, next states, feedback, judgements,
//! training steps, versions and serving changes.
//!
//! Each client polls the store about once a second for rows with ids past the last it saw (one
//! cheap query of max ids; rows are read only when one moved). Polling rather than an in-process
//! broadcast because the rows come from everywhere: other replicas behind the same Postgres, the
//! judge workers and the trainer (possibly in another process) and the journal replay all write
//! to the database, and only the database sees them all.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::{store_error, Admin, Denied};
use crate::api::error::ApiError;
use crate::api::openapi::Unavailable;

/// Events buffered for a slow client before polling waits for it.
const BUFFER: usize = 256;

#[utoipa::path(
    get,
    path = "/admin/api/live",
    tag = "admin",
    operation_id = "admin_live",
    summary = "Live feed of new rows",
    responses(
        (status = 200, description = "A text/event-stream: `hello` ({cursor, poll_ms}), then \
            an event per new turn, next state, feedback, judgement, step, version or serving \
            change, and `store` when the store fails or recovers",
            content_type = "text/event-stream", body = String),
        Denied, Unavailable,
    ),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn live(State(admin): State<Admin>) -> Result<Response, ApiError> {
    let cursor = admin.store.live_cursor().await.map_err(store_error)?;
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(BUFFER);
    let hello = json!({"cursor": cursor, "poll_ms": admin.live_poll.as_millis() as u64});
    let _ = tx.try_send(Ok(Event::default().event("hello").data(hello.to_string())));
    tokio::spawn(poll(admin, cursor, tx));
    let stream = ReceiverStream::new(rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Resolves once the server is shutting down (never without a signal).
async fn shutting_down(shutdown: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = shutdown {
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    }
    std::future::pending::<()>().await
}

async fn poll(
    admin: Admin,
    mut cursor: crate::store::dashboard::LiveCursor,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut shutdown = admin.shutdown.clone();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = shutting_down(&mut shutdown) => return,
            _ = tokio::time::sleep(admin.live_poll) => {}
        }
        match admin.store.live_events(&cursor).await {
            Ok((events, next)) => {
                cursor = next;
                if failing {
                    failing = false;
                    let _ = tx
                        .send(Ok(Event::default().event("store").data(r#"{"ok":true}"#)))
                        .await;
                }
                for event in events {
                    let data = serde_json::to_string(&event.data).unwrap_or_else(|_| "null".into());
                    if tx
                        .send(Ok(Event::default().event(event.kind).data(data)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(err) => {
                // Tell the page once per outage; keep polling.
                if !failing {
                    tracing::warn!("live feed: store read failed: {err}");
                    failing = true;
                    let message =
                        json!({"ok": false, "message": "the store is unavailable; retrying"});
                    let _ = tx
                        .send(Ok(Event::default()
                            .event("store")
                            .data(message.to_string())))
                        .await;
                }
            }
        }
    }
}
