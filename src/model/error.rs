//! Errors of the model layer: loading, running and adapting the transformer.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    InvalidConfig { path: PathBuf, message: String },
    #[error("unsupported architecture {0:?} (supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)")]
    UnsupportedArchitecture(String),
    #[error("{file}: cannot read safetensors: {message}")]
    Safetensors { file: PathBuf, message: String },
    #[error("{dir}: tensor {tensor} is missing")]
    MissingTensor { dir: PathBuf, tensor: String },
    #[error("{file}: tensor {tensor} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        file: PathBuf,
        tensor: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("{file}: tensor {tensor} has unsupported dtype {dtype} (expected F32, F16 or BF16)")]
    UnsupportedDtype {
        file: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("unsupported compute dtype {0:?} (use Float or BFloat16)")]
    UnsupportedKind(tch::Kind),
    #[error("sequence of {needed} tokens exceeds the model's {max} positions")]
    ContextOverflow { needed: usize, max: usize },
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { token: u32, vocab: usize },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("adapter: {0}")]
    Adapter(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
