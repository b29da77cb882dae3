//! GGUF import against transformers' own GGUF loader, and the CLI's handling of bad files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use hindsight::model::default_model::{default_model_dir, find_bundled_gguf, IMPORT_MARKER};
use hindsight::model::gguf::{import_gguf, ImportOptions};

fn python() -> PathBuf {
    std::env::var_os("HINDSIGHT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

fn reference(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference")
        .join(script)
}

/// Small GGUFs written by the `gguf` package: every supported quant type, and a Q2_K one.
fn crafted() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(python())
            .arg(reference("make_test_ggufs.py"))
            .arg(dir.path())
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "make_test_ggufs.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

fn import(input: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hindsight"))
        .arg("import-gguf")
        .arg(input)
        .arg(out)
        .output()
        .expect("run hindsight")
}

/// The CLI must fail cleanly: non-zero exit, the file named, no panic, no output dir.
fn assert_clean_failure(input: &Path, expect_in_message: &str) {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let target = out_dir.path().join("model");
    let out = import(input, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "import of {} succeeded",
        input.display()
    );
    assert!(
        stderr.contains(&input.display().to_string()),
        "message does not name the file: {stderr}"
    );
    assert!(
        stderr.contains(expect_in_message),
        "message lacks {expect_in_message:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(
        !target.exists(),
        "a failed import left {}",
        target.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );
}

#[test]
fn import_matches_transformers_gguf_loader() {
    let gguf = find_bundled_gguf().expect("bundled GGUF (run scripts/setup.sh)");
    let out = tempfile::tempdir().expect("temp dir");
    let smol = out.path().join("smol");
    let options = ImportOptions {
        force: false,
        progress: false,
    };
    let summary = import_gguf(&gguf, &smol, &options).expect("import default GGUF");
    assert_eq!(summary.hparams.layers, 30);
    let multi_in = crafted().join("multi_quant.gguf");
    let multi = out.path().join("multi");
    let cli = import(&multi_in, &multi);
    assert!(
        String::from_utf8_lossy(&cli.stdout).contains("12 tensors"),
        "{}",
        String::from_utf8_lossy(&cli.stdout)
    );
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );

    let mut pairs = vec![gguf.clone(), smol.clone(), multi_in, multi.clone()];
    for arch in ["qwen2", "qwen3"] {
        let input = crafted().join(format!("{arch}.gguf"));
        let dir = out.path().join(arch);
        import_gguf(&input, &dir, &options).expect(arch);
        pairs.extend([input, dir]);
    }

    let result = Command::new(python())
        .arg(reference("gguf_model.py"))
        .args(&pairs)
        .output()
        .expect("run python");
    assert!(
        result.status.success(),
        "gguf_model.py failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let reports: Vec<serde_json::Value> =
        serde_json::from_slice(&result.stdout).expect("JSON from gguf_model.py");
    let expected = [
        ("default", 272),
        ("multi_quant", 12),
        ("qwen2", 15),
        ("qwen3", 14),
    ];
    assert_eq!(reports.len(), expected.len());
    for (report, (name, tensors)) in reports.iter().zip(expected) {
        assert_eq!(
            report["missing_in_ours"],
            serde_json::json!([]),
            "{name}: {report}"
        );
        assert_eq!(
            report["extra_in_ours"],
            serde_json::json!([]),
            "{name}: {report}"
        );
        assert_eq!(
            report["shape_mismatch"],
            serde_json::json!([]),
            "{name}: {report}"
        );
        assert_eq!(
            report["config_diff"],
            serde_json::json!({}),
            "{name}: {report}"
        );
        assert_eq!(report["compared"], tensors, "{name}: {report}");
        let diff = report["max_abs_diff"].as_f64().expect("a finite max diff");
        assert!(diff <= 1e-6, "{name}: max abs diff {diff}: {report}");
    }

    // The written files are complete JSON with what later loaders need.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(smol.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["tie_word_embeddings"], true);
    let tok_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(smol.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert!(tok_config["chat_template"]
        .as_str()
        .is_some_and(|t| t.contains("<|im_start|>")));
    let multi_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(multi.join("config.json")).unwrap()).unwrap();
    assert_eq!(multi_config["tie_word_embeddings"], false);
    let qwen3_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("qwen3/config.json")).unwrap())
            .unwrap();
    assert_eq!(qwen3_config["architectures"][0], "Qwen3ForCausalLM");
    assert_eq!(qwen3_config["head_dim"], 128);
}

#[test]
fn default_model_dir_imports_once_and_reuses() {
    let data = tempfile::tempdir().expect("temp dir");
    let dir = default_model_dir(data.path()).expect("default model");
    assert!(dir.ends_with("models/SmolLM2-135M-Instruct"));
    assert!(dir.join(IMPORT_MARKER).is_file());
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let written = std::fs::metadata(dir.join("model.safetensors"))
        .and_then(|m| m.modified())
        .unwrap();
    let again = default_model_dir(data.path()).expect("default model again");
    assert_eq!(again, dir);
    let after = std::fs::metadata(dir.join("model.safetensors"))
        .and_then(|m| m.modified())
        .unwrap();
    assert_eq!(written, after, "the second call re-imported");
}

#[test]
fn missing_file_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_clean_failure(&dir.path().join("nope.gguf"), "cannot open");
}

#[test]
fn bad_magic_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-gguf.gguf");
    std::fs::write(&path, b"GGML this is not a gguf file at all").unwrap();
    assert_clean_failure(&path, "not a GGUF file");
}

#[test]
fn unsupported_version_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(1u32.to_le_bytes());
    bytes.extend([0u8; 16]);
    std::fs::write(&path, bytes).unwrap();
    assert_clean_failure(&path, "version 1 is not supported");
}

#[test]
fn truncated_files_are_clean_errors() {
    let source = std::fs::read(find_bundled_gguf().expect("bundled GGUF")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Cut inside the metadata, then inside the tensor data.
    for (len, expect) in [(100_000, "truncated"), (3_000_000, "needs bytes up to")] {
        let path = dir.path().join(format!("cut-{len}.gguf"));
        std::fs::write(&path, &source[..len]).unwrap();
        assert_clean_failure(&path, expect);
    }
}

#[test]
fn unsupported_quant_type_is_named() {
    assert_clean_failure(
        &crafted().join("unsupported_quant.gguf"),
        "quantization type Q2_K",
    );
}

#[test]
fn existing_output_is_not_overwritten_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model");
    std::fs::create_dir(&target).unwrap();
    let out = import(&crafted().join("multi_quant.gguf"), &target);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}
