//! The official OpenAI SDKs (Python and Node) against `hindsight serve` on the real default
//! model, with keys and a small queue; then SIGTERM drains, and every turn is in the store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "sk-default-model-test";

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

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(port: u16, db: &Path) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_hindsight"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--api-key",
            KEY,
        ])
        .args([
            "--max-concurrent",
            "2",
            "--max-queue",
            "2",
            "--device",
            "cpu",
        ])
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

fn run_suite(command: &mut Command, base_url: &str) {
    let output = command
        .current_dir(repo())
        .env("HINDSIGHT_BASE_URL", base_url)
        .env("HINDSIGHT_API_KEY", KEY)
        .env("HINDSIGHT_EXPECT_AUTH", "1")
        .env("HINDSIGHT_EXPECT_429", "1")
        .env_remove("HINDSIGHT_MODEL")
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(output.status.success(), "{command:?} failed:\n{text}");
}

#[test]
fn official_sdks_pass_against_the_default_model_and_turns_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("turns.db");
    let port = free_port();
    let mut server = start_server(port, &db);
    let base_url = format!("http://127.0.0.1:{port}/v1");
    run_suite(
        Command::new(repo().join(".venv/bin/python")).arg("tests/sdk/test_openai_python.py"),
        &base_url,
    );
    run_suite(
        Command::new("node").args(["--test", "tests/sdk/openai_node.test.mjs"]),
        &base_url,
    );

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
    // Both suites make well over ten successful chat completions.
    assert!(lines >= 10, "only {lines} turns were exported");
}
