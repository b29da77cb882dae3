//! Test fixtures shared by the model tests: the Python interpreter and the HF model
//! directories, made once under `$CARGO_TARGET_DIR/test-fixtures/model`.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub fn python() -> PathBuf {
    std::env::var_os("HINDSIGHT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

fn fixture_root() -> PathBuf {
    let target = option_env!("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-fixtures").join("model")
}

/// The directory of fixture model `name` (smollm2, qwen3, qwen2, llama3), generating all of
/// them with transformers on first use. This is the one place to switch SmolLM2 to our own
/// GGUF importer.
pub fn model_dir(name: &str) -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let root = fixture_root();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/hf_model_fixtures.py");
        let status = Command::new(python())
            .arg(&script)
            .arg(&root)
            .status()
            .expect("run python to make the model fixtures");
        assert!(status.success(), "{} failed", script.display());
        root
    });
    root.join(name)
}

/// Runs `tests/reference/<script>` with `request` on stdin and parses its JSON stdout.
pub fn run_reference(script: &str, request: &serde_json::Value) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference")
        .join(script);
    let mut child = Command::new(python())
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("write request");
    let output = child.wait_with_output().expect("wait for python");
    assert!(output.status.success(), "{} failed", path.display());
    serde_json::from_slice(&output.stdout).expect("reference JSON")
}

pub fn floats(value: &serde_json::Value) -> Vec<f32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

pub fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}
