//! Logging throughput on both backends: prints the report, fails if any row is lost or a
//! conversation is split. Size with HINDSIGHT_BENCH_TURNS (default 20000).

mod store_support;

use hindsight::store::bench::logging_throughput;
use store_support::{Backend, TestDb};

async fn measure(backend: Backend) {
    let turns = std::env::var("HINDSIGHT_BENCH_TURNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let db = TestDb::new(backend).await;
    let report = logging_throughput(&db.url, turns, 8)
        .await
        .expect("benchmark runs");
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    assert_eq!(report.rows_lost, 0);
    assert_eq!(report.sessions_stored, report.sessions_expected as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_throughput_postgres() {
    measure(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_throughput_sqlite() {
    measure(Backend::Sqlite).await;
}
