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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stands in for the database coming back: forwards `port` to the real PostgreSQL.
async fn forward_to_postgres(port: u16) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the database port is still free");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut pg) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut pg).await;
                }
            });
        }
    })
}

async fn readyz(http: &reqwest::Client, base: &str) -> (u16, serde_json::Value) {
    let response = http.get(format!("{base}/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The admin API's learner status, as text (its note says whether it waits for the database).
async fn learner_note(http: &reqwest::Client, base: &str) -> String {
    let response = http.get(format!("{base}/admin/api/learner")).send().await;
    let body: serde_json::Value = response.unwrap().json().await.unwrap();
    body.to_string()
}

/// `serve` starts and answers while PostgreSQL is unreachable, /readyz says why it is not
/// ready, and once the database is reachable it turns ready (no stale error) and the turns
/// answered meanwhile reach the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_and_answers_while_the_database_is_unreachable() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new(Backend::Postgres).await;
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let db_port = free_port();
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let shared = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hindsight-data");
    let model = hindsight::model::default_model::default_model_dir(&shared).expect("model");
    let child = Command::new(env!("CARGO_BIN_EXE_hindsight"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .args([
            "--device",
            "cpu",
            "--learn-mode",
            "off",
            "--model-name",
            "m",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--data-dir")
        .arg(data.path())
        .arg("--database-url")
        .arg(format!("postgres://postgres@127.0.0.1:{db_port}/{name}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("hindsight serve starts");
    let mut server = Server(child);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            server.0.try_wait().unwrap().is_none(),
            "serve exited with the database down"
        );
        assert!(Instant::now() < deadline, "serve did not start");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, body) = readyz(&http, &base).await;
    assert_eq!(status, 503, "{body}");
    let store = &body["checks"]["store"];
    assert!(
        store["status"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
    assert_eq!(store["detail"]["connected"], false, "{body}");
    let learner = learner_note(&http, &base).await;
    assert!(learner.contains("has not started"), "{learner}");
    const TURNS: i64 = 2;
    for i in 0..TURNS {
        let response = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": "m", "max_tokens": 4,
                "messages": [{"role": "user", "content": format!("hello {i}")}],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }

    let forwarder = forward_to_postgres(db_port).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (status, body) = readyz(&http, &base).await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "never ready again: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let detail = &body["checks"]["store"]["detail"];
    assert_eq!(detail["connected"], true, "{body}");
    assert!(detail["last_error"].is_null(), "stale error: {body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.scalar("SELECT count(*) FROM turns").await < TURNS {
        assert!(
            Instant::now() < deadline,
            "the outage's turns never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(db.scalar("SELECT count(*) FROM turns").await, TURNS);
    // The learner, waiting for the database, starts once it is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let note = learner_note(&http, &base).await;
        if !note.contains("has not started") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the learner never started: {note}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.0.try_wait().unwrap().is_none(), "serve is still up");
    drop(server);
    forwarder.abort();
}
