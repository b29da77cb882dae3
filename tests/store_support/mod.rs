//! Shared by the store tests: a fresh database per test (PostgreSQL at 127.0.0.1:5432 with
//! trust auth, or SQLite in a temp dir), turn builders, and raw SQL for assertions.
#![allow(dead_code)]

use hindsight::store::{CapturedChoice, CapturedTurn, Store, StoreConfig, TurnType, WriterConfig};
use serde_json::{json, Value};
use sqlx::Connection;
use std::time::Duration;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => TestDb {
                backend,
                url: format!("sqlite://{}", dir.path().join("test.db").display()),
                dir,
                pg_name: None,
            },
            Backend::Postgres => {
                let name = format!("hindsight_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
                    .await
                    .expect("PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres)");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("create test database");
                TestDb {
                    backend,
                    url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }

    pub fn config(&self) -> StoreConfig {
        let mut config = StoreConfig::new(Some(self.url.clone()), self.dir.path());
        config.writer = WriterConfig {
            retry_backoff: Duration::from_millis(20),
            max_probe_interval: Duration::from_millis(500),
            ..WriterConfig::default()
        };
        config
    }

    pub async fn open(&self) -> Store {
        Store::open(self.config()).await.expect("open store")
    }

    /// Runs a statement directly on the test database (learner rows, assertions).
    pub async fn exec(&self, sql: &str) {
        match self.backend {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query(sql).execute(&mut conn).await.expect(sql);
            }
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query(sql).execute(&mut conn).await.expect(sql);
            }
        }
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        match self.backend {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut conn)
                    .await
                    .expect(sql)
            }
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut conn)
                    .await
                    .expect(sql)
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop runs outside async: a helper thread with its own runtime drops the database.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN_URL).await {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&mut admin)
                            .await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

/// Runs one async test body against each backend.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = store_support::TestDb::new(store_support::Backend::Postgres).await;
                $body(&db).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = store_support::TestDb::new(store_support::Backend::Sqlite).await;
                $body(&db).await;
            }
        }
    };
}

pub fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

pub fn assistant(text: &str) -> Value {
    json!({"role": "assistant", "content": text})
}

/// A served turn with `messages` as the request and `reply` as the response.
pub fn turn(key: Option<&str>, messages: Vec<Value>, reply: &str) -> CapturedTurn {
    CapturedTurn {
        response_id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        session_id: None,
        session_source: None,
        user: None,
        session_done: false,
        turn_type: TurnType::Main,
        api_key_id: key.map(str::to_string),
        model: "test-model".into(),
        endpoint: "chat".into(),
        messages: Value::Array(messages),
        tools: None,
        prompt_token_ids: vec![1, 2, 3, 70000],
        choices: vec![CapturedChoice {
            text: reply.to_string(),
            token_ids: vec![10, 11, 12],
            logprobs: vec![-0.5, -1.25, -0.125],
            finish_reason: "stop".into(),
            tool_calls: None,
        }],
        sampling: json!({"temperature": 0.7}),
        policy_version: 3,
        prompt_tokens: 4,
        completion_tokens: 3,
        latency_ms: 42,
        time_to_first_token_ms: Some(7),
        created_at: chrono::Utc::now(),
    }
}

/// A client that resends its whole history each time, as OpenAI clients do.
pub struct Conversation {
    pub key: Option<String>,
    pub history: Vec<Value>,
}

impl Conversation {
    pub fn new(key: Option<&str>, system: &str) -> Conversation {
        Conversation {
            key: key.map(str::to_string),
            history: vec![json!({"role": "system", "content": system})],
        }
    }

    /// The next turn: history + the user's message; the reply is appended to the history.
    pub fn say(&mut self, text: &str, reply: &str) -> CapturedTurn {
        self.history.push(user(text));
        let turn = turn(self.key.as_deref(), self.history.clone(), reply);
        self.history.push(assistant(reply));
        turn
    }
}

/// Waits until the writer has written everything, journal included.
pub async fn settle(store: &Store) {
    for _ in 0..500 {
        store.flush().await;
        if store.health().journal_rows == 0 && store.health().queue_depth == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("store did not settle: {:?}", store.health());
}
