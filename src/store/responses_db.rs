//! The `responses` table: SQL for both backends, and the background writer that puts stored
//! responses into it (batched transactions, retried while the database is unreachable) so the
//! request that creates a response never waits on the database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::db::{dispatch, Db};
use super::error::is_transient;
use super::responses::{Cache, StoredResponse};

type Time = chrono::DateTime<chrono::Utc>;

/// Ops written per transaction at most.
const BATCH: usize = 256;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Tries of a batch once shutdown has begun (then what is left is dropped, loudly).
const SHUTDOWN_ATTEMPTS: u32 = 3;

/// One write, applied in arrival order.
#[derive(Debug, Clone)]
pub enum ResponseOp {
    Save(Arc<StoredResponse>),
    Delete { id: String, key_id: String },
}

impl ResponseOp {
    pub fn id(&self) -> &str {
        match self {
            ResponseOp::Save(record) => &record.id,
            ResponseOp::Delete { id, .. } => id,
        }
    }
}

pub enum Msg {
    Op(ResponseOp),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

macro_rules! backend_responses {
    ($module:ident, $db:ty) => {
        pub mod $module {
            use super::*;
            type Db = $db;
            type Pool = sqlx::Pool<Db>;

            /// Applies `ops` in order in one transaction.
            pub async fn apply(pool: &Pool, ops: &[ResponseOp]) -> Result<(), sqlx::Error> {
                let mut tx = pool.begin().await?;
                for op in ops {
                    match op {
                        ResponseOp::Save(record) => {
                            sqlx::query(
                                "INSERT INTO responses (id, key_id, session_id, body, conversation, \
                                 created_at) VALUES ($1, $2, $3, $4, $5, $6) \
                                 ON CONFLICT (id) DO NOTHING",
                            )
                            .bind(&record.id)
                            .bind(&record.key_id)
                            .bind(&record.session_id)
                            .bind(Json(&record.body))
                            .bind(Json(&record.conversation))
                            .bind(record.created_at)
                            .execute(&mut *tx)
                            .await?;
                        }
                        ResponseOp::Delete { id, key_id } => {
                            sqlx::query("DELETE FROM responses WHERE id = $1 AND key_id = $2")
                                .bind(id)
                                .bind(key_id)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                tx.commit().await
            }

            /// The key's response `id`, if stored.
            pub async fn fetch(
                pool: &Pool,
                id: &str,
                key_id: &str,
            ) -> Result<Option<StoredResponse>, sqlx::Error> {
                let row = sqlx::query(
                    "SELECT session_id, body, conversation, created_at FROM responses \
                     WHERE id = $1 AND key_id = $2",
                )
                .bind(id)
                .bind(key_id)
                .fetch_optional(pool)
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let body: Json<Value> = row.try_get("body")?;
                let conversation: Json<Vec<Value>> = row.try_get("conversation")?;
                let created_at: Time = row.try_get("created_at")?;
                Ok(Some(StoredResponse {
                    id: id.to_string(),
                    key_id: key_id.to_string(),
                    session_id: row.try_get("session_id")?,
                    body: body.0,
                    conversation: conversation.0,
                    created_at,
                }))
            }

            /// Deletes the key's response `id`; false when there was none.
            pub async fn delete(pool: &Pool, id: &str, key_id: &str) -> Result<bool, sqlx::Error> {
                let done = sqlx::query("DELETE FROM responses WHERE id = $1 AND key_id = $2")
                    .bind(id)
                    .bind(key_id)
                    .execute(pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }
        }
    };
}

backend_responses!(pg, sqlx::Postgres);
backend_responses!(lite, sqlx::Sqlite);

pub async fn fetch(db: &Db, id: &str, key_id: &str) -> Result<Option<StoredResponse>, sqlx::Error> {
    dispatch!(db, self::fetch(id, key_id))
}

pub async fn delete(db: &Db, id: &str, key_id: &str) -> Result<bool, sqlx::Error> {
    dispatch!(db, self::delete(id, key_id))
}

async fn apply(db: &Db, ops: &[ResponseOp]) -> Result<(), sqlx::Error> {
    dispatch!(db, self::apply(ops))
}

/// Takes ops off the queue and writes them; tells the cache which ids reached the database.
pub struct ResponseWriter {
    pub db: Db,
    pub rx: mpsc::Receiver<Msg>,
    pub cache: Arc<std::sync::Mutex<Cache>>,
    pub stopping: Arc<AtomicBool>,
}

impl ResponseWriter {
    pub async fn run(mut self) {
        let mut migrated = false;
        loop {
            let Some(first) = self.rx.recv().await else {
                return;
            };
            let mut ops = Vec::new();
            let mut control = None;
            match first {
                Msg::Op(op) => ops.push(op),
                other => control = Some(other),
            }
            while control.is_none() && ops.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(Msg::Op(op)) => ops.push(op),
                    Ok(other) => control = Some(other),
                    Err(_) => break,
                }
            }
            if !ops.is_empty() {
                self.write(&ops, &mut migrated).await;
            }
            match control {
                Some(Msg::Flush(done)) => {
                    let _ = done.send(());
                }
                Some(Msg::Shutdown(done)) => {
                    self.stopping.store(true, Ordering::SeqCst);
                    self.rx.close();
                    let mut rest = Vec::new();
                    while let Ok(msg) = self.rx.try_recv() {
                        match msg {
                            Msg::Op(op) => rest.push(op),
                            Msg::Flush(tx) | Msg::Shutdown(tx) => {
                                let _ = tx.send(());
                            }
                        }
                    }
                    for chunk in rest.chunks(BATCH) {
                        self.write(chunk, &mut migrated).await;
                    }
                    let _ = done.send(());
                    return;
                }
                _ => {}
            }
        }
    }

    /// Writes a batch: retried with backoff while the database is unreachable (the cache keeps
    /// serving the ops meanwhile); ops the database refuses for good are dropped one by one.
    async fn write(&self, ops: &[ResponseOp], migrated: &mut bool) {
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = match *migrated {
                true => apply(&self.db, ops).await,
                false => match self.db.migrate().await {
                    Ok(()) => {
                        *migrated = true;
                        apply(&self.db, ops).await
                    }
                    Err(err) => Err(sqlx::Error::Protocol(err.to_string())),
                },
            };
            match result {
                Ok(()) => return self.written(ops),
                Err(err) if is_transient(&err) => {
                    if self.stopping.load(Ordering::SeqCst) && attempts >= SHUTDOWN_ATTEMPTS {
                        tracing::error!(
                            "responses: {} stored-response writes lost at shutdown: {err}",
                            ops.len()
                        );
                        return self.written(ops);
                    }
                    if attempts == 1 {
                        tracing::warn!("responses: database unavailable, retrying: {err}");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(err) if ops.len() > 1 => {
                    tracing::warn!("responses: batch rejected ({err}); writing one by one");
                    for op in ops {
                        Box::pin(self.write(std::slice::from_ref(op), migrated)).await;
                    }
                    return;
                }
                Err(err) => {
                    tracing::error!(
                        id = ops[0].id(),
                        "responses: write rejected, dropped: {err}"
                    );
                    return self.written(ops);
                }
            }
        }
    }

    fn written(&self, ops: &[ResponseOp]) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for op in ops {
            cache.written(op.id());
        }
    }
}
