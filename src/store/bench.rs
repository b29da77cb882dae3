//! Logging throughput: how many turns/s the write path sustains, how long `record()` takes,
//! and whether any row is lost.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::capture::{CapturedChoice, CapturedTurn, TurnSink, TurnType};
use super::error::StoreError;
use super::handle::{Store, StoreConfig};

/// Turns per simulated conversation (each resends its history, so linking is exercised).
const TURNS_PER_CONVERSATION: usize = 4;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub backend: &'static str,
    pub turns: usize,
    pub concurrency: usize,
    pub elapsed_s: f64,
    /// Recorded turns divided by the time until the last one was in the database.
    pub turns_per_s: f64,
    pub record_p50_us: f64,
    pub record_p99_us: f64,
    pub record_max_us: f64,
    /// Turns recorded minus turn rows stored: must be 0.
    pub rows_lost: i64,
    pub sessions_expected: usize,
    pub sessions_stored: i64,
    /// Most ops seen waiting in the journal (queue overflow or database trouble).
    pub peak_journal_rows: u64,
}

/// A realistic turn: a few hundred prompt tokens, 64 generated with log-probs.
pub fn synthetic_turn(
    conversation: &str,
    index: usize,
    history: &[serde_json::Value],
) -> CapturedTurn {
    let mut messages = history.to_vec();
    messages.push(json!({"role": "user", "content": format!("{conversation}: question {index} about something specific")}));
    CapturedTurn {
        response_id: format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
        session_id: None,
        session_source: None,
        user: None,
        session_done: false,
        turn_type: TurnType::Main,
        api_key_id: Some("bench-key".into()),
        model: "bench-model".into(),
        endpoint: "chat".into(),
        messages: serde_json::Value::Array(messages),
        tools: None,
        prompt_token_ids: (0..300).collect(),
        choices: vec![CapturedChoice {
            text: format!("{conversation}: answer {index} with a few sentences of text in it."),
            token_ids: (1000..1064).collect(),
            logprobs: (0..64).map(|i| -0.01 * i as f32).collect(),
            finish_reason: "stop".into(),
            tool_calls: None,
        }],
        sampling: json!({"temperature": 0.7, "top_p": 0.95, "max_tokens": 256}),
        policy_version: 0,
        prompt_tokens: 300,
        completion_tokens: 64,
        latency_ms: 120,
        time_to_first_token_ms: Some(15),
        created_at: chrono::Utc::now(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

/// Records `turns` turns from `concurrency` producers into the store at `store_url` (use a
/// scratch database: rows are added to it) and waits until all are written.
pub async fn logging_throughput(
    store_url: &str,
    turns: usize,
    concurrency: usize,
) -> Result<Report, StoreError> {
    let concurrency = concurrency.max(1);
    let data_dir: PathBuf =
        std::env::temp_dir().join(format!("hindsight-bench-{}", uuid::Uuid::now_v7().simple()));
    let store = Store::open(StoreConfig::new(Some(store_url.to_string()), &data_dir)).await?;
    let turns_before = store.count("turns").await?;
    let sessions_before = store.count("sessions").await?;

    let start = Instant::now();
    let peak_journal = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut producers = Vec::new();
    for producer in 0..concurrency {
        let store = store.clone();
        let peak_journal = peak_journal.clone();
        let share = turns / concurrency + usize::from(producer < turns % concurrency);
        producers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            let mut history: Vec<serde_json::Value> = Vec::new();
            let mut conversation = String::new();
            for i in 0..share {
                if i % TURNS_PER_CONVERSATION == 0 {
                    history.clear();
                    conversation = format!("p{producer}c{i}");
                }
                let turn = synthetic_turn(&conversation, i, &history);
                history = turn.messages.as_array().cloned().unwrap_or_default();
                history.push(json!({"role": "assistant", "content": turn.choices[0].text}));
                let t = Instant::now();
                store.record(turn);
                latencies.push(t.elapsed());
                if i % 64 == 0 {
                    peak_journal.fetch_max(
                        store.health().journal_rows,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    tokio::task::yield_now().await;
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(turns);
    let mut sessions_expected = 0;
    for (producer, handle) in producers.into_iter().enumerate() {
        let share = turns / concurrency + usize::from(producer < turns % concurrency);
        sessions_expected += share.div_ceil(TURNS_PER_CONVERSATION);
        latencies.extend(handle.await.unwrap_or_default());
    }
    store.flush().await;
    while store.health().journal_rows > 0 {
        peak_journal.fetch_max(
            store.health().journal_rows,
            std::sync::atomic::Ordering::Relaxed,
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.flush().await;
    }
    let elapsed = start.elapsed();
    let stored = store.count("turns").await? - turns_before;
    let sessions_stored = store.count("sessions").await? - sessions_before;
    store.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);

    latencies.sort();
    Ok(Report {
        backend: store.backend(),
        turns,
        concurrency,
        elapsed_s: elapsed.as_secs_f64(),
        turns_per_s: turns as f64 / elapsed.as_secs_f64(),
        record_p50_us: percentile(&latencies, 0.50),
        record_p99_us: percentile(&latencies, 0.99),
        record_max_us: percentile(&latencies, 1.0),
        rows_lost: turns as i64 - stored,
        sessions_expected,
        sessions_stored,
        peak_journal_rows: peak_journal.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// A scratch database on the Postgres server at `admin_url` (a URL whose user may create
/// databases): the benchmark writes there, never into a real store. Returns its URL.
pub async fn create_scratch_postgres(admin_url: &str) -> Result<String, StoreError> {
    use sqlx::Connection;
    let connect_err = |source| StoreError::Connect {
        backend: "postgres",
        url: admin_url.to_string(),
        source,
    };
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .map_err(connect_err)?;
    let name = format!("hindsight_bench_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    with_database(admin_url, &name)
}

/// `admin_url` with its database name replaced by `name` (query parameters kept).
fn with_database(admin_url: &str, name: &str) -> Result<String, StoreError> {
    let bad = || StoreError::UnsupportedUrl(admin_url.to_string());
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let (scheme, rest) = base.split_once("://").ok_or_else(bad)?;
    let authority = rest
        .split('/')
        .next()
        .filter(|a| !a.is_empty())
        .ok_or_else(bad)?;
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    Ok(format!("{scheme}://{authority}/{name}{query}"))
}

/// Drops a database made by `create_scratch_postgres`.
pub async fn drop_scratch_postgres(admin_url: &str, scratch_url: &str) -> Result<(), StoreError> {
    use sqlx::Connection;
    let name = scratch_url.rsplit('/').next().unwrap_or_default();
    let name = name.split('?').next().unwrap_or_default();
    if !name.starts_with("hindsight_bench_") {
        return Err(StoreError::Invalid(format!(
            "not a scratch benchmark database: {scratch_url}"
        )));
    }
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}
