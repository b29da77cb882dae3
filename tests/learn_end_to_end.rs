//! It learns, end to end on the default model through the HTTP API: a scripted user who wants
//! replies of at most 20 words corrects long replies (in varied wording) and moves on otherwise.
//! Once from thumbs + corrections through the feedback API, once from the chat alone (the next
//! message is the only signal). After a few training steps the held-out replies, answered
//! greedily by the served version, are clearly shorter than the base's.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hindsight::cli::bench_learn::{CORRECTIONS, HELD_OUT, MOVE_ON, TRAIN};
use serde_json::{json, Value};

const WORD_LIMIT: usize = 20;
const MAX_TOKENS: u64 = 64;
const PER_ROUND: usize = 8;

fn shared_model_dir() -> PathBuf {
    let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hindsight-data");
    hindsight::model::default_model::default_model_dir(&data).expect("default model imports")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Server {
    child: Child,
    base: String,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(extra: &[&str]) -> Server {
    let data = tempfile::tempdir().expect("temp data dir");
    let port = free_port();
    let db = data.path().join("hindsight.db");
    let child = Command::new(env!("CARGO_BIN_EXE_hindsight"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--device",
            "cpu",
        ])
        .arg("--model")
        .arg(shared_model_dir())
        .arg("--data-dir")
        .arg(data.path())
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()))
        .args([
            "--model-name",
            "learner",
            "--max-concurrent",
            "8",
            "--learn-batch",
            &PER_ROUND.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("hindsight serve starts");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _data: data,
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("the server did not start");
}

struct Client {
    http: reqwest::Client,
    base: String,
}

struct Reply {
    id: String,
    text: String,
    version: String,
}

impl Client {
    async fn chat(&self, messages: &[Value], temperature: f64, seed: u64, side: bool) -> Reply {
        let body = json!({
            "model": "learner", "messages": messages, "max_tokens": MAX_TOKENS,
            "temperature": temperature, "seed": seed,
        });
        let mut request = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&body);
        if side {
            request = request.header("X-Turn-Type", "side");
        }
        let response = request.send().await.expect("chat request");
        assert!(
            response.status().is_success(),
            "chat: {}",
            response.status()
        );
        let v: Value = response.json().await.expect("chat json");
        Reply {
            id: v["id"].as_str().unwrap_or_default().to_string(),
            text: v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            version: v["system_fingerprint"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        }
    }

    async fn feedback(&self, response_id: &str, up: bool, correction: Option<&str>) {
        let mut body =
            json!({"response_id": response_id, "rating": if up { "up" } else { "down" }});
        if let Some(c) = correction {
            body["correction"] = json!(c);
        }
        let mut tries = 0;
        loop {
            let r = self
                .http
                .post(format!("{}/v1/feedback", self.base))
                .json(&body)
                .send()
                .await
                .expect("feedback request");
            // The turn may still sit in the write queue for a moment.
            if r.status().is_success() || tries > 40 {
                assert!(r.status().is_success(), "feedback: {}", r.status());
                return;
            }
            tries += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Mean words and share within the limit of greedy replies to the held-out questions.
    async fn held_out(&self) -> (f64, f64, String) {
        let mut words = Vec::new();
        let mut version = String::new();
        for q in HELD_OUT {
            let reply = self
                .chat(&[json!({"role": "user", "content": q})], 0.0, 0, true)
                .await;
            words.push(count_words(&reply.text));
            version = reply.version;
        }
        let mean = words.iter().sum::<usize>() as f64 / words.len() as f64;
        let within = words.iter().filter(|&&w| w <= WORD_LIMIT).count() as f64 / words.len() as f64;
        (mean, within, version)
    }

    /// The newest version's number, status and guard reason, as the admin API lists them.
    async fn newest_version(&self) -> String {
        let v: Value = self
            .http
            .get(format!("{}/admin/api/versions", self.base))
            .send()
            .await
            .expect("versions")
            .json()
            .await
            .unwrap_or_default();
        let list = v.get("data").or(v.get("versions")).unwrap_or(&v);
        let newest = list.get(0).cloned().unwrap_or_default();
        format!(
            "v{} {} {}",
            newest["version"], newest["status"], newest["reason"]
        )
    }

    async fn wait_for_steps(&self, steps: f64) {
        let deadline = Instant::now() + Duration::from_secs(900);
        while self.metric("hindsight_train_steps_total").await < steps {
            assert!(
                Instant::now() < deadline,
                "training step {steps} never came"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn count_words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// One round: the scripted user asks PER_ROUND questions and reacts to each reply.
async fn round(client: &Client, round: usize, chat_only: bool) -> usize {
    let mut corrected = 0;
    for i in 0..PER_ROUND {
        let k = round * PER_ROUND + i;
        let question = TRAIN[k % TRAIN.len()];
        let first = [json!({"role": "user", "content": question})];
        let reply = client.chat(&first, 0.7, k as u64, false).await;
        let too_long = count_words(&reply.text) > WORD_LIMIT;
        let correction = CORRECTIONS[k % CORRECTIONS.len()];
        corrected += usize::from(too_long);
        if chat_only {
            let next = if too_long {
                correction.to_string()
            } else {
                format!(
                    "{}{}",
                    MOVE_ON[k % MOVE_ON.len()],
                    TRAIN[(k + 1) % TRAIN.len()]
                )
            };
            let history = [
                first[0].clone(),
                json!({"role": "assistant", "content": reply.text}),
                json!({"role": "user", "content": next}),
            ];
            // Only the message matters; its own reply is kept short.
            let _ = client.chat(&history, 0.7, k as u64, false).await;
        } else {
            client
                .feedback(&reply.id, !too_long, too_long.then_some(correction))
                .await;
        }
    }
    corrected
}

/// One learning server at a time: two would only share the two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn learns(chat_only: bool, extra: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = start_server(extra);
    let client = Client {
        http: reqwest::Client::new(),
        base: server.base.clone(),
    };
    let (base_mean, base_within, base_version) = client.held_out().await;
    eprintln!("base ({base_version}): held-out mean {base_mean:.1} words, {base_within:.2} within {WORD_LIMIT}");
    let rounds = 6;
    for r in 0..rounds {
        let corrected = round(&client, r, chat_only).await;
        // The step counter moves after the new version is swapped in (or held back).
        let last_signal = Instant::now();
        client.wait_for_steps((r + 1) as f64).await;
        let to_version = last_signal.elapsed().as_secs_f64();
        let (mean, within, version) = client.held_out().await;
        let newest = client.newest_version().await;
        eprintln!("round {r}: {corrected}/{PER_ROUND} corrected; {to_version:.1}s from the last signal to the new version; newest {newest}; served {version}: held-out mean {mean:.1} words, {within:.2} within {WORD_LIMIT}");
    }
    let (mean, within, version) = client.held_out().await;
    assert_ne!(version, base_version, "a trained version must be serving");
    assert!(
        mean < base_mean * 0.8,
        "held-out replies: {base_mean:.1} → {mean:.1} words, within {WORD_LIMIT}: {base_within:.2} → {within:.2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_from_thumbs_and_corrections() {
    learns(false, &["--learn-lr", "3e-4"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_from_the_chat_alone() {
    learns(true, &["--learn-lr", "3e-4"]).await;
}
