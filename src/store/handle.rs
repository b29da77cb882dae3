//! `Store`: the handle the server holds. `record` only enqueues; reads go straight to the pool.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::capture::{CapturedTurn, TurnSink};
use super::db::Db;
use super::error::StoreError;
use super::journal::Journal;
use super::ops::{Sequenced, WriteOp};
use super::writer::{Msg, Shared, Writer, WriterConfig};

/// Where the store lives and how its write path behaves.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `postgres://…` or `sqlite://…`; None → `sqlite://<data_dir>/hindsight.db`.
    pub database_url: Option<String>,
    /// Holds the SQLite file (by default) and the journal.
    pub data_dir: PathBuf,
    pub writer: WriterConfig,
}

impl StoreConfig {
    pub fn new(database_url: Option<String>, data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            database_url,
            data_dir: data_dir.into(),
            writer: WriterConfig::default(),
        }
    }
}

/// For /readyz and /metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreHealth {
    pub backend: &'static str,
    pub connected: bool,
    pub queue_depth: usize,
    pub journal_rows: u64,
    pub last_error: Option<String>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
    seq: AtomicU64,
    shut_down: AtomicBool,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("health", &self.health())
            .finish()
    }
}

impl Store {
    /// Opens `url` (None → embedded SQLite in `data_dir`) with the default write path.
    pub async fn connect(url: Option<&str>, data_dir: &Path) -> Result<Store, StoreError> {
        Store::open(StoreConfig::new(url.map(str::to_string), data_dir)).await
    }

    /// Opens the store and starts its writer. An unreachable database is not an error (serving
    /// goes on, writes are journaled); a malformed URL or an unusable data dir is.
    /// Must be called inside a tokio runtime.
    pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StoreError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let url = config
            .database_url
            .clone()
            .unwrap_or_else(|| super::db::default_url(&config.data_dir));
        let db = Db::lazy(&url)?;
        let journal = Journal::open(&config.data_dir)?;
        let journaled = journal.peek()?;
        let next_seq = journaled.iter().map(|s| s.seq + 1).max().unwrap_or(0);
        let pending = journaled
            .iter()
            .filter_map(|s| s.op.pending_response())
            .map(|(r, k)| (r.to_string(), k.to_string()))
            .collect();
        let connected = match db.migrate().await {
            Ok(()) => true,
            Err(StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e), _))
                if super::error::is_transient(&e) =>
            {
                tracing::warn!("store: {} unreachable at start-up: {e}", db.backend());
                false
            }
            Err(err) => return Err(err),
        };
        let shared = Arc::new(Shared {
            db,
            journal,
            pending: Mutex::new(pending),
            connected: AtomicBool::new(connected),
            last_error: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(config.writer.queue_capacity.max(1));
        let writer = Writer::new(shared.clone(), rx, config.writer.clone());
        let handle = tokio::spawn(writer.run());
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                tx,
                seq: AtomicU64::new(next_seq),
                shut_down: AtomicBool::new(false),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    pub(crate) fn db(&self) -> &Db {
        &self.inner.shared.db
    }

    pub fn backend(&self) -> &'static str {
        self.inner.shared.db.backend()
    }

    pub fn health(&self) -> StoreHealth {
        let shared = &self.inner.shared;
        StoreHealth {
            backend: shared.db.backend(),
            connected: shared.connected.load(Ordering::Relaxed),
            queue_depth: self.inner.tx.max_capacity() - self.inner.tx.capacity(),
            journal_rows: shared.journal.rows(),
            last_error: shared
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Enqueues an op without waiting; a full queue (or a stopped writer) spills to the journal.
    pub(crate) fn enqueue(&self, op: WriteOp) {
        if let Some((response_id, key)) = op.pending_response() {
            self.inner
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(response_id.to_string(), key.to_string());
        }
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let journal = &self.inner.shared.journal;
        let op = match journal.spill_if_overflowing(Sequenced { seq, op }) {
            Ok(Some(op)) => op,
            Ok(None) => return,
            Err(err) => return self.lost(err),
        };
        match self.inner.tx.try_send(Msg::Op(op)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Msg::Op(op)))
            | Err(mpsc::error::TrySendError::Closed(Msg::Op(op))) => {
                if let Err(err) = journal.spill(op) {
                    self.lost(err);
                }
            }
            Err(_) => unreachable!("only ops are sent here"),
        }
    }

    fn lost(&self, err: StoreError) {
        tracing::error!("store: an op could not be queued nor journaled: {err}");
        *self
            .inner
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(err.to_string());
    }

    /// Response id → key of a turn that is recorded but not yet in the database.
    pub(crate) fn pending_key(&self, response_id: &str) -> Option<String> {
        self.inner
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(response_id)
            .cloned()
    }

    /// Waits until every op recorded before this call is written (or journaled).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Drains the queue into the database (or the journal) and stops the writer. Later
    /// `record` calls go to the journal, replayed at the next start.
    pub async fn shutdown(&self) {
        if self.inner.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let (done, wait) = oneshot::channel();
        if self.inner.tx.send(Msg::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        self.inner.shared.db.close().await;
    }
}

impl TurnSink for Store {
    fn record(&self, turn: CapturedTurn) {
        self.enqueue(WriteOp::Turn {
            turn: Box::new(turn),
        });
    }
}
