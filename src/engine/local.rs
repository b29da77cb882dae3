//! The in-process engine: the tch transformer on its serving thread, the tokenizer and chat
//! template on the caller's side.

use std::path::PathBuf;
use std::sync::Arc;

use tch::{Device, Kind};

use super::detokenize::Decode;
use super::handle::{EngineHandle, LoadedModel};
use super::scheduler::StepModel;
use super::types::*;
use crate::model::chat_template::ChatTemplate;
use crate::model::config::ModelConfig;
use crate::model::grammar::GrammarCompiler;
use crate::model::kv_cache::KvCache;
use crate::model::overrides::ModelOverrides;
use crate::model::peft::AdapterSnapshot;
use crate::model::tokenizer::TextTokenizer;
use crate::model::transformer::Transformer;

/// The prefix cache's default budget: 4 GiB holds about 90k positions of the default model
/// in f32 (46 KB each), some nine OpenClaw-sized conversations.
pub const DEFAULT_PREFIX_CACHE_BYTES: usize = 4 << 30;

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
    /// Rope scaling and the served window (longest prompt + completion), applied to the
    /// model's config at load; the default serves the config as it is.
    pub overrides: ModelOverrides,
    /// Memory for the keys and values of finished sequences, reused by later requests that
    /// share their prefix (0: no prefix caching).
    pub prefix_cache_bytes: usize,
}

impl EngineOptions {
    pub fn new(model_dir: PathBuf, model_name: impl Into<String>) -> Self {
        Self {
            model_dir,
            model_name: model_name.into(),
            dtype: "f32".into(),
            device: "cpu".into(),
            max_batch: 8,
            queue_capacity: 256,
            overrides: ModelOverrides::default(),
            prefix_cache_bytes: DEFAULT_PREFIX_CACHE_BYTES,
        }
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto`.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => Ok(Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Device::Cuda(n)),
            _ => anyhow::bail!("unknown device {other:?}: expected cpu, cuda, cuda:N or auto"),
        },
    }
    .and_then(|device| {
        if device.is_cuda() && !tch::Cuda::is_available() {
            anyhow::bail!("device {name:?} was asked for, but CUDA is not available here")
        }
        Ok(device)
    })
}

/// Parses `f32` or `bf16`.
pub fn parse_dtype(name: &str) -> anyhow::Result<Kind> {
    match name {
        "f32" | "float32" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        other => anyhow::bail!("unknown dtype {other:?}: expected f32 or bf16"),
    }
}

/// The transformer and its KV cache as the scheduler drives them.
pub struct TransformerRunner {
    pub model: Transformer,
    pub cache: KvCache,
}

impl StepModel for TransformerRunner {
    fn max_slots(&self) -> usize {
        self.cache.max_slots()
    }
    fn alloc_slot(&mut self) -> Option<usize> {
        self.cache.alloc()
    }
    fn free_slot(&mut self, slot: usize) {
        self.cache.free(slot)
    }
    fn prefill(
        &mut self,
        slot: usize,
        tokens: &[u32],
        adapter: Option<u64>,
    ) -> Result<tch::Tensor, String> {
        self.model
            .prefill(&mut self.cache, slot, tokens, adapter)
            .map_err(|e| e.to_string())
    }
    fn decode(
        &mut self,
        slots: &[usize],
        tokens: &[u32],
        adapters: &[Option<u64>],
    ) -> Result<tch::Tensor, String> {
        self.model
            .decode(&mut self.cache, slots, tokens, adapters)
            .map_err(|e| e.to_string())
    }
    fn install_adapter(
        &mut self,
        id: u64,
        adapter: Option<&AdapterSnapshot>,
    ) -> Result<(), String> {
        self.model
            .install_adapter(id, adapter)
            .map_err(|e| e.to_string())
    }
    fn retain_adapters(&mut self, ids: &[u64]) {
        self.model.retain_adapters(ids);
        self.cache.retain_prefix_adapters(ids);
    }
    fn reuse_prefix(&mut self, slot: usize, prompt: &[u32], adapter: Option<u64>) -> usize {
        self.cache.reuse_prefix(slot, prompt, adapter)
    }
    fn free_slot_keeping(&mut self, slot: usize, tokens: &[u32], adapter: Option<u64>) {
        self.cache.free_keeping(slot, tokens, adapter)
    }
    fn reserve(&mut self, slot: usize, positions: usize) {
        if let Err(err) = self.cache.reserve(slot, positions) {
            // Prefill reports an overflow with the request's own error; a failed allocation
            // here only means the cache grows later.
            tracing::debug!(%err, "reserving KV cache room failed");
        }
    }
}

struct TokenizerDecode(Arc<TextTokenizer>);

impl Decode for TokenizerDecode {
    fn decode(&self, tokens: &[u32]) -> String {
        decode_or_log(&self.0, tokens)
    }
}

/// Byte-level tokenizers decode any id list; an error here means a broken tokenizer file.
fn decode_or_log(tokenizer: &TextTokenizer, tokens: &[u32]) -> String {
    tokenizer.decode(tokens).unwrap_or_else(|err| {
        tracing::error!(%err, "decoding failed");
        String::new()
    })
}

/// Handle to the serving thread. Implements [`Backend`].
pub struct LocalEngine {
    handle: EngineHandle,
    tokenizer: Arc<TextTokenizer>,
    template: ChatTemplate,
    info: ModelInfo,
    overrides: ModelOverrides,
}

impl LocalEngine {
    /// Loads the model on a new serving thread; returns once it is ready to serve.
    pub fn start(options: EngineOptions) -> anyhow::Result<Self> {
        let device = parse_device(&options.device)?;
        let kind = parse_dtype(&options.dtype)?;
        let dir = options.model_dir.clone();
        let tokenizer = Arc::new(TextTokenizer::from_dir(&dir)?);
        let template = ChatTemplate::from_model_dir(&dir)?;
        let eos_tokens = tokenizer.eos_token_ids();
        let decoder: Arc<dyn Decode> = Arc::new(TokenizerDecode(Arc::clone(&tokenizer)));
        let max_batch = options.max_batch.max(1);
        let overrides = options.overrides.clone();
        let engine_overrides = overrides.clone();
        let prefix_cache_bytes = options.prefix_cache_bytes;
        // The grammar tokenizer's trie takes a moment: built while the model loads.
        let grammar = {
            let (dir, eos_tokens) = (dir.clone(), eos_tokens.clone());
            std::thread::spawn(move || build_grammar(&dir, &eos_tokens))
        };
        let handle = EngineHandle::spawn(
            move || {
                let model = Transformer::load_with(&dir, device, kind, &overrides)?;
                // The served window: the rope tables and the KV cache hold exactly this many.
                let max_context = model.config().max_position_embeddings;
                tracing::info!(
                    rope = %ModelOverrides::describe(model.config()),
                    "model loaded"
                );
                let mut cache = model.new_cache(max_batch, 256);
                cache.set_prefix_budget(prefix_cache_bytes);
                Ok(LoadedModel {
                    model: TransformerRunner { model, cache },
                    decoder,
                    eos_tokens,
                    max_context,
                })
            },
            options.queue_capacity,
        )?;
        let grammar = grammar
            .join()
            .unwrap_or_else(|_| Err("building the grammar compiler failed".into()));
        if let Err(err) = &grammar {
            tracing::warn!(%err, "constrained decoding (structured output) is unavailable");
        }
        let handle = handle.with_grammar(grammar);
        let info = ModelInfo {
            id: options.model_name,
            context_length: handle.max_context(),
            vocab_size: tokenizer.vocab_size(),
            created: chrono::Utc::now().timestamp(),
        };
        Ok(Self {
            handle,
            tokenizer,
            template,
            info,
            overrides: engine_overrides,
        })
    }

    /// The overrides the model was loaded with: the trainer loads its copy with the same, so
    /// its log-probs use exactly the serving rope.
    pub fn overrides(&self) -> &ModelOverrides {
        &self.overrides
    }

    pub fn handle(&self) -> &EngineHandle {
        &self.handle
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Compiles constraints against this model's tokenizer (None when it could not be built).
    pub fn grammar(&self) -> Option<&GrammarCompiler> {
        self.handle.grammar()
    }
}

/// The grammar compiler for a model directory, its masks as wide as the model's logits.
fn build_grammar(dir: &std::path::Path, eos_tokens: &[u32]) -> Result<GrammarCompiler, String> {
    let config = ModelConfig::from_dir(dir).map_err(|e| e.to_string())?;
    GrammarCompiler::from_model_dir(dir, config.vocab_size, eos_tokens)
        .map_err(|e| format!("{e:#}"))
}

impl Backend for LocalEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn chat_prompt(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<Vec<u32>, PromptError> {
        let text = self
            .template
            .render(messages, tools, true)
            .map_err(|e| PromptError(e.to_string()))?;
        self.tokenizer
            .encode(&text)
            .map_err(|e| PromptError(e.to_string()))
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text).unwrap_or_else(|err| {
            tracing::error!(%err, "encoding failed");
            Vec::new()
        })
    }

    fn decode(&self, tokens: &[u32]) -> String {
        decode_or_log(&self.tokenizer, tokens)
    }

    fn submit(&self, request: GenerateRequest) -> Result<EventStream, SubmitError> {
        self.handle.submit(request)
    }

    fn load(&self) -> EngineLoad {
        self.handle.load()
    }

    fn policy_version(&self) -> u64 {
        self.handle.policy_version()
    }
}
