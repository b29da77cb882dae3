//! The background writer: takes ops off the bounded queue in arrival order and writes them in
//! batched transactions; while the database is unreachable it journals them, and it replays
//! the journal (in `seq` order) once the database answers again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::apply;
use super::db::{dispatch, Db};
use super::error::{is_transient, StoreError};
use super::journal::Journal;
use super::ops::Sequenced;

/// Tunables of the write path.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Ops the in-memory queue holds before `record` spills to the journal.
    pub queue_capacity: usize,
    /// Ops written per transaction at most.
    pub batch_size: usize,
    /// Tries of one batch before it is journaled (backoff doubles from `retry_backoff`).
    pub write_attempts: u32,
    pub retry_backoff: Duration,
    /// Longest wait between probes of a database that is down.
    pub max_probe_interval: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue_capacity: 16_384,
            batch_size: 512,
            write_attempts: 3,
            retry_backoff: Duration::from_millis(50),
            max_probe_interval: Duration::from_secs(5),
        }
    }
}

pub enum Msg {
    Op(Sequenced),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// State the writer shares with `Store` handles.
pub struct Shared {
    pub db: Db,
    pub journal: Journal,
    /// Turns recorded but not yet in the database: response id → key id. Feedback on them is
    /// queued behind the turn instead of answered with 404.
    pub pending: Mutex<HashMap<String, String>>,
    pub connected: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

impl Shared {
    fn set_error(&self, err: impl ToString) {
        self.connected.store(false, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(err.to_string());
    }

    /// Back in touch with the database: the error that took it away is history.
    fn set_ok(&self) {
        if !self.connected.swap(true, Ordering::Relaxed) {
            tracing::info!("store: database reachable again");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn forget_pending(&self, ops: &[Sequenced]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for op in ops {
            if let Some((response_id, _)) = op.op.pending_response() {
                pending.remove(response_id);
            }
        }
    }
}

pub struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    config: WriterConfig,
    known_keys: HashSet<String>,
    migrated: bool,
    /// While the database is down: when to try it again, and how long the next wait is.
    down_until: Option<Instant>,
    probe_interval: Duration,
}

/// Outcome of trying to put ops into the database.
enum Written {
    Done,
    /// The database is unreachable; the ops from this index on were not written.
    Down(usize),
}

impl Writer {
    pub fn new(shared: Arc<Shared>, rx: mpsc::Receiver<Msg>, config: WriterConfig) -> Writer {
        Writer {
            shared,
            rx,
            known_keys: HashSet::new(),
            migrated: false,
            down_until: None,
            probe_interval: config.retry_backoff * 4,
            config,
        }
    }

    pub async fn run(mut self) {
        loop {
            // A journal to replay, or a database that is down: wake up to probe it.
            let probing =
                self.shared.journal.rows() > 0 || !self.shared.connected.load(Ordering::Relaxed);
            let first = if probing {
                let wait = self.until_probe().max(Duration::from_millis(20));
                match tokio::time::timeout(wait, self.rx.recv()).await {
                    Ok(msg) => msg.map(Some),
                    Err(_) => Some(None),
                }
            } else {
                self.rx.recv().await.map(Some)
            };
            let Some(first) = first else {
                return; // every Store handle is gone and the queue is drained
            };
            let mut ops = Vec::new();
            let mut control = None;
            match first {
                Some(Msg::Op(op)) => ops.push(op),
                Some(other) => control = Some(other),
                None => {}
            }
            while control.is_none() && ops.len() < self.config.batch_size {
                match self.rx.try_recv() {
                    Ok(Msg::Op(op)) => ops.push(op),
                    Ok(other) => control = Some(other),
                    Err(_) => break,
                }
            }
            let idle = ops.is_empty() && control.is_none();
            self.write(ops).await;
            if idle && self.shared.journal.rows() == 0 {
                self.probe().await;
            }
            let shutting_down = matches!(control, Some(Msg::Shutdown(_)));
            if self.shared.journal.rows() > 0 && (self.rx.is_empty() || control.is_some()) {
                if shutting_down {
                    self.down_until = None; // one last try before exit
                }
                self.replay().await;
            }
            match control {
                Some(Msg::Flush(done)) => {
                    let _ = done.send(());
                }
                Some(Msg::Shutdown(done)) => {
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
                    self.write(rest).await;
                    let _ = done.send(());
                    return;
                }
                _ => {}
            }
        }
    }

    fn until_probe(&self) -> Duration {
        self.down_until.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        })
    }

    /// Ready to talk to the database: not inside a down window, migrations applied.
    async fn ready(&mut self) -> bool {
        if self.until_probe() > Duration::ZERO {
            return false;
        }
        if !self.migrated {
            match self.shared.db.migrate().await {
                Ok(()) => self.migrated = true,
                Err(err) => {
                    self.mark_down(&err);
                    return false;
                }
            }
        }
        true
    }

    /// Checks a database that is down (nothing to write meanwhile), so health tells the truth.
    async fn probe(&mut self) {
        if self.shared.connected.load(Ordering::Relaxed) || !self.ready().await {
            return;
        }
        match self.shared.db.ping().await {
            Ok(()) => self.mark_up(),
            Err(err) => self.mark_down(&err),
        }
    }

    fn mark_down(&mut self, err: &dyn std::fmt::Display) {
        tracing::warn!("store: database unavailable, journaling writes: {err}");
        self.shared.set_error(err);
        self.down_until = Some(Instant::now() + self.probe_interval);
        self.probe_interval = (self.probe_interval * 2).min(self.config.max_probe_interval);
    }

    fn mark_up(&mut self) {
        self.shared.set_ok();
        self.down_until = None;
        self.probe_interval = self.config.retry_backoff * 4;
    }

    fn journal(&self, ops: &[Sequenced]) {
        if let Err(err) = self.shared.journal.append(ops) {
            // Nothing left to fall back on: say so loudly with the count of ops at stake.
            tracing::error!("store: {} ops could not be journaled: {err}", ops.len());
            self.shared.set_error(&err);
        }
    }

    async fn write(&mut self, ops: Vec<Sequenced>) {
        if ops.is_empty() {
            return;
        }
        // Journaled ops are older than queued ones unless a spill is under way; in both cases
        // the journal must reach the database first.
        if self.shared.journal.rows() > 0
            && (self.shared.journal.is_overflowing() || !self.ready().await || !self.replay().await)
        {
            self.journal(&ops);
            return;
        }
        if !self.ready().await {
            self.journal(&ops);
            return;
        }
        if let Written::Down(from) = self.apply(&ops, false).await {
            self.journal(&ops[from..]);
        }
    }

    /// Writes ops: one transaction with retries; rows the database rejects for good are
    /// retried one by one and the culprits set aside in the rejected-ops file.
    async fn apply(&mut self, ops: &[Sequenced], replay: bool) -> Written {
        let mut backoff = self.config.retry_backoff;
        let mut last_error = String::new();
        let plain: Vec<_> = ops.iter().map(|s| s.op.clone()).collect();
        for attempt in 0..self.config.write_attempts.max(1) {
            // After a failed commit the rows may have landed: re-check before re-inserting.
            let check = replay || attempt > 0;
            let result = apply::apply_ops(&self.shared.db, &plain, check, &self.known_keys).await;
            match result {
                Ok(applied) => {
                    self.known_keys.extend(applied.new_keys);
                    self.shared.forget_pending(ops);
                    self.mark_up();
                    return Written::Done;
                }
                Err(err) if is_transient(&err) => {
                    last_error = err.to_string();
                    self.shared.set_error(&last_error);
                    if attempt + 1 < self.config.write_attempts {
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                }
                Err(err) => return self.apply_one_by_one(ops, &err).await,
            }
        }
        self.mark_down(&last_error);
        Written::Down(0)
    }

    async fn apply_one_by_one(&mut self, ops: &[Sequenced], batch_err: &sqlx::Error) -> Written {
        tracing::warn!("store: batch rejected ({batch_err}); writing its ops one by one");
        for (i, op) in ops.iter().enumerate() {
            let one = std::slice::from_ref(&op.op);
            match dispatch!(
                &self.shared.db,
                apply::apply_batch(one, true, &self.known_keys)
            ) {
                Ok(applied) => self.known_keys.extend(applied.new_keys),
                Err(err) if is_transient(&err) => {
                    self.mark_down(&err);
                    return Written::Down(i);
                }
                Err(err) => {
                    tracing::error!("store: op rejected by the database, set aside: {err}");
                    self.shared.set_error(&err);
                    if let Err(io) = self.shared.journal.reject(op, &err.to_string()) {
                        tracing::error!("store: cannot keep rejected op: {io}");
                    }
                }
            }
            self.shared.forget_pending(std::slice::from_ref(op));
        }
        self.mark_up();
        Written::Done
    }

    /// Replays the journal; true when it is empty afterwards.
    async fn replay(&mut self) -> bool {
        loop {
            if !self.ready().await {
                return false;
            }
            let ops = match self.shared.journal.take_for_replay() {
                Ok(ops) => ops,
                Err(err) => {
                    self.fail_journal(err);
                    return false;
                }
            };
            if !ops.is_empty() {
                tracing::info!("store: replaying {} journaled ops", ops.len());
            }
            for chunk in ops.chunks(self.config.batch_size) {
                if let Written::Down(_) = self.apply(chunk, true).await {
                    return false;
                }
            }
            if let Err(err) = self.shared.journal.finish_replay(ops.len() as u64) {
                self.fail_journal(err);
                return false;
            }
            // Spills that arrived during the replay are newer than it: go round again.
            if self.shared.journal.clear_overflow_if_drained() {
                return true;
            }
            if self.shared.journal.rows() > 0 && !self.rx.is_empty() {
                return false; // the queue holds older ops than the new spills
            }
        }
    }

    fn fail_journal(&mut self, err: StoreError) {
        tracing::error!("store: journal unreadable: {err}");
        self.shared.set_error(&err);
    }
}
