//! The dashboard in headless chromium (playwright-core) against `hindsight serve` on the
//! default model: sign in, a turn appearing live, thumbs-down with a correction, injected markup
//! staying inert, version roll back when a learner serves versions; screenshots of each page go
//! to target/browser-artifacts/.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "browser-test-admin-token";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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

fn start_server(port: u16, data_dir: &Path) -> Server {
    // The model is shared with the other default-model tests so the GGUF is imported once; the
    // data dir (database, adapters) is this test's own.
    let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hindsight-data");
    let model = hindsight::model::default_model::default_model_dir(&shared).expect("model");
    let db = data_dir.join("dashboard.db");
    let child = Command::new(env!("CARGO_BIN_EXE_hindsight"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--device",
            "cpu",
        ])
        .args(["--admin-token", ADMIN_TOKEN])
        // One judged turn is enough for a step, so the roll back step has a version to undo.
        .args(["--learn-batch", "1"])
        .arg("--model")
        .arg(model)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("hindsight serve starts");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let ready = Command::new("curl")
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

#[test]
fn dashboard_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (scripts/test.sh does) or set CHROMIUM"
    );
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = start_server(port, tmp.path());
    let artifacts = repo().join("target/browser-artifacts");
    let output = Command::new("node")
        .args([
            "--test",
            "--test-concurrency=1",
            "tests/browser/dashboard.test.mjs",
        ])
        .current_dir(repo())
        .env("HINDSIGHT_BASE", format!("http://127.0.0.1:{port}"))
        .env("HINDSIGHT_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("HINDSIGHT_ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(output.status.success(), "the browser test failed:\n{text}");
    assert!(artifacts.join("4-timeline.png").exists());
}
