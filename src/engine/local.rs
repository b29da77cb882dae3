//! The in-process engine backed by the tch transformer.

use std::path::PathBuf;

/// How to start the local engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// A Hugging Face model directory (config.json, safetensors, tokenizer files).
    pub model_dir: PathBuf,
    /// The id clients send as `model`.
    pub model_name: String,
    /// `f32` or `bf16`.
    pub dtype: String,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
    pub device: String,
    /// Most sequences decoding together.
    pub max_batch: usize,
    /// Requests waiting beyond this are refused with QueueFull (HTTP 429).
    pub queue_capacity: usize,
    /// Longest prompt + completion; defaults to the model's own limit.
    pub max_context: Option<usize>,
}

/// Handle to the serving thread. Implements [`super::Backend`].
pub struct LocalEngine {}

impl LocalEngine {
    pub fn start(_options: EngineOptions) -> anyhow::Result<Self> {
        anyhow::bail!("the local engine is not built yet")
    }
}
