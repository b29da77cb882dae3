//! Stored responses of the Responses API (`store: true`): the response object GET returns and
//! the conversation `previous_response_id` replays, scoped to the key that created them.
//!
//! Saving never waits: the record goes into an in-memory map of recent responses (so a
//! follow-up that arrives before the database write still finds its predecessor) and onto the
//! queue of a background writer ([`super::responses_db`]). Reads look in the map, then in the
//! `responses` table. Without a database ([`ResponseStore::in_memory`]) the map is all there
//! is: bounded, and lost at exit.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::error::StoreError;
use super::handle::Store;
use super::responses_db::{self, Msg, ResponseOp, ResponseWriter};

/// Responses kept in memory once written to the database.
pub const CACHED_RESPONSES: usize = 1024;
/// Responses kept by a store without a database (the oldest are forgotten).
pub const IN_MEMORY_RESPONSES: usize = 10_000;
const QUEUE_CAPACITY: usize = 16_384;

/// One stored response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// `resp_…`.
    pub id: String,
    /// The key that created it ('' with auth off); only that key can read or delete it.
    pub key_id: String,
    /// The session its turn was logged under (None: linked by the store, not named).
    pub session_id: Option<String>,
    /// The response object as returned to the client.
    pub body: Value,
    /// Chat messages (input history, this request's input, then its output) without the
    /// request's instructions, which a follow-up does not inherit.
    pub conversation: Vec<Value>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

struct Entry {
    record: Arc<StoredResponse>,
    deleted: bool,
    /// Ops about this id queued and not yet written; the entry stays while any is.
    unwritten: u32,
}

/// Recent responses, oldest first in `order`.
pub struct Cache {
    entries: HashMap<String, Entry>,
    order: VecDeque<String>,
    capacity: usize,
    /// False without a database: every entry may be forgotten.
    persistent: bool,
}

impl Cache {
    fn new(capacity: usize, persistent: bool) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            persistent,
        }
    }

    fn insert(&mut self, record: Arc<StoredResponse>) {
        let id = record.id.clone();
        let unwritten = u32::from(self.persistent);
        let previous = self.entries.insert(
            id.clone(),
            Entry {
                record,
                deleted: false,
                unwritten,
            },
        );
        if previous.is_none() {
            self.order.push_back(id);
        }
        self.evict();
    }

    /// Forgets the oldest entries beyond capacity, keeping any whose write is still queued.
    fn evict(&mut self) {
        let mut excess = self.entries.len().saturating_sub(self.capacity);
        if excess == 0 {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.order.len());
        while let Some(id) = self.order.pop_front() {
            let evictable = self.entries.get(&id).is_none_or(|e| e.unwritten == 0);
            if excess > 0 && evictable {
                if self.entries.remove(&id).is_some() {
                    excess -= 1;
                }
            } else if self.entries.contains_key(&id) {
                kept.push_back(id);
            }
            if excess == 0 {
                kept.extend(self.order.drain(..));
            }
        }
        self.order = kept;
    }

    /// The writer applied one op about `id`.
    pub fn written(&mut self, id: &str) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        entry.unwritten = entry.unwritten.saturating_sub(1);
        if entry.deleted && entry.unwritten == 0 {
            self.entries.remove(id);
            self.order.retain(|other| other != id);
        } else {
            self.evict();
        }
    }

    /// Some(Some(record)) when cached, Some(None) when cached as deleted, None when unknown.
    fn get(&self, id: &str) -> Option<Option<Arc<StoredResponse>>> {
        self.entries
            .get(id)
            .map(|e| (!e.deleted).then(|| e.record.clone()))
    }
}

struct Inner {
    cache: Arc<Mutex<Cache>>,
    /// None: memory only.
    db: Option<Persistence>,
}

struct Persistence {
    db: super::db::Db,
    tx: mpsc::Sender<Msg>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Cheap to clone; every clone shares the map and the writer.
#[derive(Clone)]
pub struct ResponseStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ResponseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStore")
            .field("persistent", &self.inner.db.is_some())
            .finish()
    }
}

impl Default for ResponseStore {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl ResponseStore {
    /// Responses kept in memory only (tests, or a server without a store).
    pub fn in_memory() -> Self {
        Self {
            inner: Arc::new(Inner {
                cache: Arc::new(Mutex::new(Cache::new(IN_MEMORY_RESPONSES, false))),
                db: None,
            }),
        }
    }

    /// Responses written to the store's database (the `responses` table) by a writer task of
    /// their own. Must be called inside a tokio runtime; call [`ResponseStore::shutdown`]
    /// before [`Store::shutdown`] closes the pool.
    pub fn persistent(store: &Store) -> Self {
        let cache = Arc::new(Mutex::new(Cache::new(CACHED_RESPONSES, true)));
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = ResponseWriter {
            db: store.db().clone(),
            rx,
            cache: cache.clone(),
            stopping: Arc::new(AtomicBool::new(false)),
        };
        let handle = tokio::spawn(writer.run());
        Self {
            inner: Arc::new(Inner {
                cache,
                db: Some(Persistence {
                    db: store.db().clone(),
                    tx,
                    writer: Mutex::new(Some(handle)),
                }),
            }),
        }
    }

    pub fn is_persistent(&self) -> bool {
        self.inner.db.is_some()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `record`; returns at once (the database write is queued).
    pub fn save(&self, record: StoredResponse) {
        let record = Arc::new(record);
        self.cache().insert(record.clone());
        self.enqueue(ResponseOp::Save(record));
    }

    fn enqueue(&self, op: ResponseOp) {
        let Some(db) = &self.inner.db else {
            return;
        };
        if let Err(err) = db.tx.try_send(Msg::Op(op)) {
            let (mpsc::error::TrySendError::Full(Msg::Op(op))
            | mpsc::error::TrySendError::Closed(Msg::Op(op))) = err
            else {
                unreachable!("only ops are sent here");
            };
            // The entry stays in memory (its write is counted as pending) for this process.
            tracing::error!(id = %op.id(), "responses: write queue full or closed; kept in memory only");
        }
    }

    /// The key's response `id`, from memory or the database.
    pub async fn load(
        &self,
        id: &str,
        key_id: &str,
    ) -> Result<Option<Arc<StoredResponse>>, StoreError> {
        if let Some(cached) = self.cache().get(id) {
            return Ok(cached.filter(|record| record.key_id == key_id));
        }
        let Some(db) = &self.inner.db else {
            return Ok(None);
        };
        Ok(responses_db::fetch(&db.db, id, key_id).await?.map(Arc::new))
    }

    /// Deletes the key's response `id`; false when the key has no such response.
    pub async fn delete(&self, id: &str, key_id: &str) -> Result<bool, StoreError> {
        {
            let mut cache = self.cache();
            let persistent = cache.persistent;
            if let Some(entry) = cache.entries.get_mut(id) {
                if entry.deleted || entry.record.key_id != key_id {
                    return Ok(false);
                }
                if persistent {
                    // Queued behind the save, so the row cannot come back after the delete.
                    entry.deleted = true;
                    entry.unwritten += 1;
                } else {
                    cache.entries.remove(id);
                    cache.order.retain(|other| other != id);
                }
                drop(cache);
                self.enqueue(ResponseOp::Delete {
                    id: id.to_string(),
                    key_id: key_id.to_string(),
                });
                return Ok(true);
            }
        }
        // Not in memory: either written already or never saved.
        let Some(db) = &self.inner.db else {
            return Ok(false);
        };
        Ok(responses_db::delete(&db.db, id, key_id).await?)
    }

    /// Waits until every write queued before this call is applied (or given up).
    pub async fn flush(&self) {
        let Some(db) = &self.inner.db else {
            return;
        };
        let (done, wait) = oneshot::channel();
        if db.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Writes what is queued and stops the writer; must run before the store's pool closes.
    pub async fn shutdown(&self) {
        let Some(db) = &self.inner.db else {
            return;
        };
        let (done, wait) = oneshot::channel();
        if db.tx.send(Msg::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
        let handle = db.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, key: &str) -> StoredResponse {
        StoredResponse {
            id: id.into(),
            key_id: key.into(),
            session_id: None,
            body: serde_json::json!({"id": id}),
            conversation: Vec::new(),
            created_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn memory_store_is_scoped_to_the_key_and_forgets_deleted() {
        let store = ResponseStore::in_memory();
        store.save(record("resp_1", "a"));
        assert!(store.load("resp_1", "a").await.unwrap().is_some());
        assert!(store.load("resp_1", "b").await.unwrap().is_none());
        assert!(!store.delete("resp_1", "b").await.unwrap());
        assert!(store.delete("resp_1", "a").await.unwrap());
        assert!(store.load("resp_1", "a").await.unwrap().is_none());
        assert!(!store.delete("resp_1", "a").await.unwrap());
    }

    #[test]
    fn eviction_keeps_unwritten_entries() {
        let mut cache = Cache::new(2, true);
        for id in ["a", "b", "c"] {
            cache.insert(Arc::new(record(id, "")));
        }
        // Nothing is written yet: all three stay.
        assert_eq!(cache.entries.len(), 3);
        cache.written("a");
        assert_eq!(cache.entries.len(), 2);
        assert!(cache.get("a").is_none());
        assert!(cache.get("b").is_some() && cache.get("c").is_some());
        let mut memory = Cache::new(2, false);
        for id in ["a", "b", "c"] {
            memory.insert(Arc::new(record(id, "")));
        }
        assert_eq!(memory.order, ["b", "c"]);
    }
}
