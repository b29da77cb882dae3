//! GGUF import: read a llama.cpp GGUF file and write a Hugging Face model directory
//! (config.json, f32 model.safetensors, tokenizer.json, tokenizer_config.json,
//! generation_config.json).

pub mod dequant;
pub mod hf_writer;
pub mod reader;
pub mod tokenizer_json;

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

pub use hf_writer::{Arch, Hparams};
pub use reader::{GgufFile, MetaValue, TensorInfo};

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: cannot open", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a GGUF file (the first 4 bytes are not \"GGUF\")", path.display())]
    BadMagic { path: PathBuf },
    #[error("{}: GGUF version {version} is not supported (only 2 and 3)", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{}: truncated file: {detail}", path.display())]
    Truncated { path: PathBuf, detail: String },
    #[error("{}: corrupt GGUF: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("{}: architecture {arch:?} is not supported (llama, qwen2, qwen3 are)", path.display())]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("{}: tensor {tensor} has quantization type {quant}, which is not supported", path.display())]
    UnsupportedQuant {
        path: PathBuf,
        tensor: String,
        quant: String,
    },
    #[error("{}: tensor {tensor} has no Hugging Face equivalent", path.display())]
    UnsupportedTensor { path: PathBuf, tensor: String },
    #[error("{}: tensor {tensor}: {detail}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        detail: String,
    },
    #[error("{}: required tensor {tensor} is missing", path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{}: required metadata key {key} is missing or has the wrong type", path.display())]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{}: tokenizer: {detail}", path.display())]
    Tokenizer { path: PathBuf, detail: String },
    #[error("{}: output already exists (pass --force to replace it)", path.display())]
    OutputExists { path: PathBuf },
    #[error("{}: cannot write: {detail}", path.display())]
    Write { path: PathBuf, detail: String },
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub out_dir: PathBuf,
    pub hparams: Hparams,
    pub tensors: usize,
}

pub struct ImportOptions {
    /// Replace `out_dir` if it exists.
    pub force: bool,
    /// Draw a progress bar on stderr (indicatif hides it when stderr is not a terminal).
    pub progress: bool,
}

/// Converts `input` into a Hugging Face model directory at `out_dir`. Everything is written to
/// a sibling temp dir first and renamed at the end, so an interrupted import leaves no `out_dir`.
pub fn import_gguf(
    input: &Path,
    out_dir: &Path,
    options: &ImportOptions,
) -> Result<ImportSummary, GgufError> {
    let file = GgufFile::open(input)?;
    if out_dir.exists() && !options.force {
        return Err(GgufError::OutputExists {
            path: out_dir.to_path_buf(),
        });
    }
    let arch_probe = file.require_str("general.architecture")?.to_string();
    let context_key = format!("{arch_probe}.context_length");
    let tok = tokenizer_json::build(&file, file.opt_u64(&context_key))?;
    let hp = Hparams::read(&file, tok.vocab_len)?;

    let write_err = |path: &Path, e: &dyn std::fmt::Display| GgufError::Write {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| write_err(&parent, &e))?;
    let name = out_dir
        .file_name()
        .ok_or_else(|| write_err(out_dir, &"the output path has no final component"))?;
    // A sibling temp dir: same filesystem, so the final rename is atomic; deleted if we fail.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.importing-", name.to_string_lossy()))
        .tempdir_in(&parent)
        .map_err(|e| write_err(&parent, &e))?;
    let tmp_path = tmp.path().to_path_buf();

    let progress = if options.progress {
        ProgressBar::new(file.tensors.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} tensors {elapsed}")
    {
        progress.set_style(style);
    }
    progress.set_message(format!("importing {}", input.display()));
    let planned = hf_writer::plan_tensors(&file, &hp, &progress)?;
    let tensors = planned.len();
    hf_writer::write_safetensors(planned, &tmp_path.join("model.safetensors"))?;
    progress.finish_and_clear();

    let write_json = |name: &str, value: &serde_json::Value| -> Result<(), GgufError> {
        let path = tmp_path.join(name);
        let text = serde_json::to_string_pretty(value).map_err(|e| write_err(&path, &e))?;
        std::fs::write(&path, text + "\n").map_err(|e| write_err(&path, &e))
    };
    write_json("config.json", &hp.config_json(tok.bos_id, tok.eos_id))?;
    write_json(
        "generation_config.json",
        &json!({ "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id }),
    )?;
    write_json("tokenizer_config.json", &tok.tokenizer_config)?;
    let tokenizer_path = tmp_path.join("tokenizer.json");
    tok.tokenizer
        .save(&tokenizer_path, false)
        .map_err(|e| write_err(&tokenizer_path, &e))?;

    if out_dir.exists() {
        std::fs::remove_dir_all(out_dir).map_err(|e| write_err(out_dir, &e))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, out_dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&kept);
        write_err(out_dir, &e)
    })?;
    Ok(ImportSummary {
        out_dir: out_dir.to_path_buf(),
        hparams: hp,
        tensors,
    })
}
