//! The write path under database failure: a PostgreSQL restart in the middle of a run, and a
//! store killed while the database is down (its journal is replayed at the next start).

mod store_support;

use std::process::Command;
use std::time::{Duration, Instant};

use hindsight::store::TurnSink;
use store_support::{settle, Backend, Conversation, TestDb};

fn cluster_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql lists the cluster versions")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL cluster")
}

fn pg_ctl(action: &str) -> bool {
    Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &cluster_version(),
            "main",
            action,
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// The outage test stops the server: the tests of this file never overlap.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts PostgreSQL again if the test leaves it down, even when the test panics: other
/// tests on this machine share the server.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        if !pg_ctl("status") {
            pg_ctl("start");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run_loses_no_turn() {
    let _serial = SERIAL.lock().await;
    let _guard = RestartGuard;
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.open().await;
    const CONVERSATIONS: usize = 40;
    const TURNS_EACH: usize = 10;
    let mut conversations: Vec<_> = (0..CONVERSATIONS)
        .map(|i| Conversation::new(Some("k"), &format!("conversation {i}")))
        .collect();
    let mut restart = None;
    let mut saw_down = false;
    let mut peak_journal = 0;
    let started = Instant::now();
    for round in 0..TURNS_EACH {
        for (i, c) in conversations.iter_mut().enumerate() {
            store.record(c.say(&format!("q{round}-{i}"), &format!("a{round}-{i}")));
            tokio::time::sleep(Duration::from_millis(3)).await;
            saw_down |= !store.health().connected;
            peak_journal = peak_journal.max(store.health().journal_rows);
        }
        if round == 2 {
            // Longer than the writer's retries (3 × 1 s acquire timeout), so writes do fail and get journaled.
            restart = Some(tokio::task::spawn_blocking(|| {
                let stopped = pg_ctl("stop");
                std::thread::sleep(Duration::from_secs(4));
                stopped && pg_ctl("start")
            }));
        }
    }
    let restart = restart.unwrap();
    while !restart.is_finished() {
        saw_down |= !store.health().connected;
        peak_journal = peak_journal.max(store.health().journal_rows);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(restart.await.unwrap(), "pg_ctlcluster stop/start failed");
    settle(&store).await;
    eprintln!(
        "run took {:?}, saw the database down: {saw_down}, peak journal rows {peak_journal}",
        started.elapsed()
    );
    assert!(
        saw_down && peak_journal > 0,
        "the outage never reached the write path"
    );
    assert_eq!(
        store.count("turns").await.unwrap(),
        (CONVERSATIONS * TURNS_EACH) as i64
    );
    // Order survived the outage: every conversation is still one session.
    assert_eq!(store.count("sessions").await.unwrap(), CONVERSATIONS as i64);
    assert_eq!(
        store.count("next_states").await.unwrap(),
        (CONVERSATIONS * (TURNS_EACH - 1)) as i64
    );
    assert!(store.health().connected);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_of_a_killed_store_is_replayed_at_next_start() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new(Backend::Postgres).await;
    let mut config = db.config();
    config.database_url = Some("postgres://postgres@127.0.0.1:1/down".into());
    const TURNS: usize = 30;
    // The first store runs in its own runtime, dropped without shutdown: like a killed process.
    let health = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = hindsight::store::Store::open(config)
                .await
                .expect("opens with the database down");
            let mut a = Conversation::new(Some("k"), "a");
            let mut b = Conversation::new(Some("k"), "b");
            for i in 0..TURNS / 2 {
                store.record(a.say(&format!("a{i}"), &format!("ra{i}")));
                store.record(b.say(&format!("b{i}"), &format!("rb{i}")));
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while store.health().journal_rows < TURNS as u64 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            store.health()
        })
    })
    .join()
    .unwrap();
    assert_eq!(health.journal_rows, TURNS as u64, "{health:?}");
    assert!(!health.connected);
    assert!(health.last_error.is_some());

    let store = db.open().await;
    settle(&store).await;
    assert_eq!(store.count("turns").await.unwrap(), TURNS as i64);
    assert_eq!(store.count("sessions").await.unwrap(), 2);
    assert_eq!(
        store.count("next_states").await.unwrap(),
        (TURNS - 2) as i64
    );
    assert_eq!(store.health().journal_rows, 0);
    assert!(!db.dir.path().join("journal.jsonl").exists());
    store.shutdown().await;
}
