//! The official OpenAI SDKs (Python and Node) and the agent frameworks built on them (LangChain,
//! the OpenAI Agents SDK) against one `hindsight serve` on the real default model, with keys and
//! a small queue: chat completions, structured output (`response_format`, forced tool calls,
//! `parallel_tool_calls`), `logit_bias`, and the Responses API. Then SIGTERM drains, and every
//! turn is in the store.
//!
//! Every Python suite (`tests/sdk/test_*.py`) runs in one process and every Node suite in one
//! `node --test` run, against the one server (one model load): the CI budget is tight.
//!
//! OpenClaw's default agent against the default model is the second test (tests/openclaw/).
//! The two tests take turns: each starts its own server, and two would share the two cores.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod openclaw;

const KEY: &str = "sk-default-model-test";

/// A whole client suite gets this long; a hung client fails the test with its output so far.
const SUITE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared_data_dir() -> PathBuf {
    // Shared with the other default-model tests so the GGUF is imported once.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hindsight-data")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One test (and so one server) at a time.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(port: u16, db: &Path, extra: &[&str]) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_hindsight"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .args(["--device", "cpu"])
        .args(extra)
        .arg("--data-dir")
        .arg(shared_data_dir())
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("hindsight serve starts");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && Command::new("curl")
                .args(["-sf", &format!("http://127.0.0.1:{port}/readyz")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if ready {
            return server;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("the server did not become ready");
}

/// Waits for `child` (stdout and stderr piped) until `started + timeout`, killing it then;
/// returns its status (None: killed), stdout and stderr.
fn wait_output(
    mut child: Child,
    started: Instant,
    timeout: Duration,
) -> (Option<std::process::ExitStatus>, String, String) {
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    (
        status,
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    )
}

/// Runs a client suite against the server. Its output is printed when it passes; a failure (or
/// a hang past [`SUITE_TIMEOUT`]) comes back as an error carrying that output.
fn run_suite(command: &mut Command, base_url: &str) -> Result<(), String> {
    let started = Instant::now();
    let child = command
        .current_dir(repo())
        .env("HINDSIGHT_BASE_URL", base_url)
        .env("HINDSIGHT_API_KEY", KEY)
        .env("HINDSIGHT_EXPECT_AUTH", "1")
        .env("HINDSIGHT_EXPECT_429", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("HINDSIGHT_MODEL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    let (status, stdout, stderr) = wait_output(child, started, SUITE_TIMEOUT);
    let text = format!("{stdout}\n{stderr}");
    let took = started.elapsed();
    match status {
        None => Err(format!(
            "{command:?} ran past {SUITE_TIMEOUT:?} and was killed:\n{text}"
        )),
        Some(status) if !status.success() => Err(format!(
            "{command:?} failed ({status}) after {took:.0?}:\n{text}"
        )),
        Some(_) => {
            println!("{text}\n{command:?} passed in {took:.0?}");
            Ok(())
        }
    }
}

#[test]
fn official_sdks_pass_against_the_default_model_and_turns_are_kept() {
    let _turn = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("turns.db");
    let port = free_port();
    let mut server = start_server(
        port,
        &db,
        &[
            "--api-key",
            KEY,
            "--max-concurrent",
            "2",
            "--max-queue",
            "2",
        ],
    );
    let base_url = format!("http://127.0.0.1:{port}/v1");
    // One Python process: the plain SDK suite, structured output and tools, logit_bias, the
    // Responses API, LangChain and the Agents SDK (tests/sdk/test_*.py).
    let python = run_suite(
        Command::new(repo().join(".venv/bin/python")).args([
            "-m",
            "unittest",
            "discover",
            "-v",
            "-s",
            "tests/sdk",
            "-p",
            "test_*.py",
        ]),
        &base_url,
    );
    // The Node suites, one file at a time (the rate-limit test must not overlap another file).
    let node = run_suite(
        Command::new("node").args([
            "--test",
            "--test-concurrency=1",
            "tests/sdk/openai_node.test.mjs",
            "tests/sdk/structured_node.test.mjs",
        ]),
        &base_url,
    );
    // Both suites run whatever the other's result; either failing fails the test, with its output.
    let failures: Vec<String> = [python, node].into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // SIGTERM: in-flight work finishes, the store is flushed, the process exits cleanly.
    let status = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.0.wait().unwrap();
    assert!(exit.success(), "serve exited with {exit}");

    let export = Command::new(env!("CARGO_BIN_EXE_hindsight"))
        .args(["export", "--format", "openai-jsonl"])
        .arg("--data-dir")
        .arg(tmp.path())
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let lines = String::from_utf8_lossy(&export.stdout).lines().count();
    // The suites make well over ten successful chat completions.
    assert!(lines >= 10, "only {lines} turns were exported");
}

#[test]
fn openclaw_default_agent_turns_are_logged_linked_and_judged() {
    let _turn = one_at_a_time();
    openclaw::openclaw_default_agent_turns_are_logged_linked_and_judged();
}
