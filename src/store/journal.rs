//! Append-only JSONL journal in the data dir: where writes go while the database is
//! unreachable (or the queue is full), replayed in order once it is back and at start-up.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::error::StoreError;
use super::ops::Sequenced;

pub struct Journal {
    /// New lines are appended here.
    active: PathBuf,
    /// While replaying, the lines being replayed live here so appends can continue.
    replaying: PathBuf,
    /// Rows the database rejected for good (kept, never dropped silently).
    rejected: PathBuf,
    state: Mutex<State>,
    rows: AtomicU64,
}

#[derive(Default)]
struct State {
    file: Option<File>,
    /// Set when a full queue spilled an op here: until the journal is drained, every new op
    /// must follow it here, or a newer op could reach the database before an older one.
    overflow: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Journal {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    pub fn open(data_dir: &Path) -> Result<Journal, StoreError> {
        let journal = Journal {
            active: data_dir.join("journal.jsonl"),
            replaying: data_dir.join("journal.replaying.jsonl"),
            rejected: data_dir.join("journal.rejected.jsonl"),
            state: Mutex::new(State::default()),
            rows: AtomicU64::new(0),
        };
        let rows = count_lines(&journal.replaying)? + count_lines(&journal.active)?;
        journal.rows.store(rows, Ordering::Relaxed);
        Ok(journal)
    }

    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_overflowing(&self) -> bool {
        self.lock().overflow
    }

    /// The queue is full: journal the op and keep journaling until the writer drains it.
    /// Not fsync'd (this runs on the serving path, and the queue it overflows is in memory
    /// anyway): it survives a killed process; the writer's next append syncs it to disk.
    pub fn spill(&self, op: Sequenced) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.overflow = true;
        self.append_locked(&mut state, std::slice::from_ref(&op), false)
    }

    /// Journals the op if an overflow is under way; otherwise hands it back for the queue.
    pub fn spill_if_overflowing(&self, op: Sequenced) -> Result<Option<Sequenced>, StoreError> {
        let mut state = self.lock();
        if !state.overflow {
            return Ok(Some(op));
        }
        self.append_locked(&mut state, std::slice::from_ref(&op), false)?;
        Ok(None)
    }

    /// Ends an overflow once nothing is left to replay.
    pub fn clear_overflow_if_drained(&self) -> bool {
        let mut state = self.lock();
        if self.rows() == 0 {
            state.overflow = false;
        }
        !state.overflow
    }

    /// Appends ops and fsyncs before returning, so an acknowledged spill survives a crash.
    pub fn append(&self, ops: &[Sequenced]) -> Result<(), StoreError> {
        let mut state = self.lock();
        self.append_locked(&mut state, ops, true)
    }

    fn append_locked(
        &self,
        state: &mut State,
        ops: &[Sequenced],
        sync: bool,
    ) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(ops.len() * 1024);
        for op in ops {
            serde_json::to_writer(&mut buf, op)
                .map_err(|e| io_err(&self.active)(std::io::Error::other(e)))?;
            buf.push(b'\n');
        }
        if state.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.active)
                .map_err(io_err(&self.active))?;
            state.file = Some(file);
        }
        let file = state.file.as_mut().expect("opened above");
        file.write_all(&buf).map_err(io_err(&self.active))?;
        if sync {
            file.sync_data().map_err(io_err(&self.active))?;
        }
        self.rows.fetch_add(ops.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Moves the active journal aside for replay (appending to the leftover of an interrupted
    /// replay) and returns every op to replay, oldest first.
    pub fn take_for_replay(&self) -> Result<Vec<Sequenced>, StoreError> {
        {
            let mut state = self.lock();
            state.file = None;
            if self.active.exists() {
                let data = std::fs::read(&self.active).map_err(io_err(&self.active))?;
                let mut out = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.replaying)
                    .map_err(io_err(&self.replaying))?;
                out.write_all(&data).map_err(io_err(&self.replaying))?;
                out.sync_data().map_err(io_err(&self.replaying))?;
                std::fs::remove_file(&self.active).map_err(io_err(&self.active))?;
            }
        }
        let mut ops = read_ops(&self.replaying)?;
        ops.sort_by_key(|op| op.seq);
        Ok(ops)
    }

    /// Called after every op returned by `take_for_replay` is in the database.
    pub fn finish_replay(&self, replayed: u64) -> Result<(), StoreError> {
        let _state = self.lock();
        if self.replaying.exists() {
            std::fs::remove_file(&self.replaying).map_err(io_err(&self.replaying))?;
        }
        self.rows.fetch_sub(
            replayed.min(self.rows.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Ops the database refuses (constraint or data errors) go to a dead-letter file.
    pub fn reject(&self, op: &Sequenced, error: &str) -> Result<(), StoreError> {
        let line = serde_json::json!({ "error": error, "op": op });
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.rejected)
            .map_err(io_err(&self.rejected))?;
        writeln!(file, "{line}").map_err(io_err(&self.rejected))?;
        file.sync_data().map_err(io_err(&self.rejected))
    }

    /// Every op waiting in the journal (to know which response ids are pending at start-up).
    pub fn peek(&self) -> Result<Vec<Sequenced>, StoreError> {
        let mut ops = read_ops(&self.replaying)?;
        ops.extend(read_ops(&self.active)?);
        Ok(ops)
    }
}

fn count_lines(path: &Path) -> Result<u64, StoreError> {
    match File::open(path) {
        Ok(file) => Ok(BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.trim().is_empty())
            .count() as u64),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Reads ops; a torn last line (crash mid-append) is skipped with a warning.
fn read_ops(path: &Path) -> Result<Vec<Sequenced>, StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut ops = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Sequenced>(&line) {
            Ok(op) => ops.push(op),
            Err(e) => tracing::warn!(
                "{}:{}: skipping unreadable line: {e}",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(ops)
}
