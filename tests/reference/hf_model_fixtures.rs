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

/// The directory of fixture model `name`: smollm2 is the bundled GGUF imported by our own
/// importer; qwen3, qwen2 and llama3 are tiny random models saved by transformers on first use.
pub fn model_dir(name: &str) -> PathBuf {
    if name == "smollm2" {
        static SMOLLM2: OnceLock<PathBuf> = OnceLock::new();
        return SMOLLM2
            .get_or_init(|| {
                hindsight::model::default_model::default_model_dir(&fixture_root().join("data"))
                    .expect("the bundled GGUF imports")
            })
            .clone();
    }
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

/// How the python reference loads model `name`: smollm2 straight from the bundled GGUF (so the
/// reference never sees our import), the tiny models from their directories.
pub fn reference_source(name: &str) -> serde_json::Value {
    if name == "smollm2" {
        let gguf = hindsight::model::default_model::find_bundled_gguf().expect("bundled GGUF");
        let dir = gguf.parent().expect("GGUF has a parent dir");
        let file = gguf.file_name().expect("GGUF has a name");
        return serde_json::json!({"dir": dir, "gguf_file": file.to_string_lossy()});
    }
    serde_json::json!({ "dir": model_dir(name) })
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
