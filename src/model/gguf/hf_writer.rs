//! Maps a GGUF's architecture metadata and tensors onto a Hugging Face config and f32
//! safetensors, undoing llama.cpp's rotary row permutation for llama.

use std::borrow::Cow;
use std::path::Path;

use indicatif::ProgressBar;
use safetensors::{Dtype, View};
use serde_json::{json, Value};

use super::dequant::dequantize;
use super::reader::{GgufFile, TensorInfo};
use super::GgufError;

/// The architectures this importer maps, with their HF class and model_type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    fn parse(file: &GgufFile) -> Result<Self, GgufError> {
        match file.require_str("general.architecture")? {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "qwen3" => Ok(Arch::Qwen3),
            other => Err(GgufError::UnsupportedArchitecture {
                path: file.path.clone(),
                arch: other.to_string(),
            }),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// The hyper-parameters read from `<arch>.*` metadata.
#[derive(Debug, Clone)]
pub struct Hparams {
    pub arch: Arch,
    pub hidden: u64,
    pub intermediate: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub context_length: u64,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub vocab: u64,
    pub tied: bool,
}

impl Hparams {
    pub fn read(file: &GgufFile, tokenizer_vocab: usize) -> Result<Self, GgufError> {
        let arch = Arch::parse(file)?;
        let k = |name: &str| format!("{}.{name}", arch.key());
        let hidden = file.require_u64(&k("embedding_length"))?;
        let heads = file.require_u64(&k("attention.head_count"))?;
        if heads == 0 {
            return Err(GgufError::Corrupt {
                path: file.path.clone(),
                detail: "attention.head_count is 0".into(),
            });
        }
        let head_dim = match arch {
            Arch::Llama => file.opt_u64(&k("rope.dimension_count")),
            Arch::Qwen2 | Arch::Qwen3 => file.opt_u64(&k("attention.key_length")),
        }
        .unwrap_or(hidden / heads);
        Ok(Hparams {
            arch,
            hidden,
            intermediate: file.require_u64(&k("feed_forward_length"))?,
            layers: file.require_u64(&k("block_count"))?,
            heads,
            kv_heads: file.opt_u64(&k("attention.head_count_kv")).unwrap_or(heads),
            head_dim,
            context_length: file.require_u64(&k("context_length"))?,
            rms_eps: file
                .opt_f64(&k("attention.layer_norm_rms_epsilon"))
                .ok_or_else(|| file.missing(&k("attention.layer_norm_rms_epsilon")))?,
            rope_theta: file.opt_f64(&k("rope.freq_base")).unwrap_or(10000.0),
            vocab: file
                .opt_u64(&k("vocab_size"))
                .unwrap_or(tokenizer_vocab as u64),
            tied: file.tensor("output.weight").is_none(),
        })
    }

    pub fn config_json(&self, bos: Option<u32>, eos: Option<u32>) -> Value {
        let mut config = json!({
            "architectures": [self.arch.class()],
            "model_type": self.arch.key(),
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.context_length,
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_theta,
            "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied,
            "hidden_act": "silu",
            "bos_token_id": bos,
            "eos_token_id": eos,
            "torch_dtype": "float32",
            "use_cache": true,
        });
        if self.arch == Arch::Qwen2 {
            // Qwen2 always has q/k/v biases and derives head_dim from hidden / heads.
            if let Some(map) = config.as_object_mut() {
                map.remove("head_dim");
            }
        } else {
            config["attention_bias"] = json!(false);
        }
        if self.arch == Arch::Llama {
            config["mlp_bias"] = json!(false);
        }
        config
    }
}

/// HF name for a llama.cpp tensor name; None for tensors HF models do not hold.
fn hf_name(gguf: &str) -> Option<Result<String, ()>> {
    let global = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        // Precomputed llama3 rope frequencies: HF derives them from the config.
        "rope_freqs.weight" => return None,
        _ => None,
    };
    if let Some(name) = global {
        return Some(Ok(name.to_string()));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, suffix) = rest.rsplit_once('.')?;
    let hf_part = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return Some(Err(())),
    };
    if layer.parse::<u32>().is_err() {
        return Some(Err(()));
    }
    Some(Ok(format!("model.layers.{layer}.{hf_part}.{suffix}")))
}

/// One output tensor, dequantized only when the safetensors writer asks for its bytes so that
/// at most one f32 tensor is in memory at a time.
pub struct LazyTensor<'a> {
    file: &'a GgufFile,
    info: &'a TensorInfo,
    shape: Vec<usize>,
    /// Head count to undo llama.cpp's rotary permutation with, for llama q/k projections.
    unpermute_heads: Option<usize>,
    progress: &'a ProgressBar,
}

impl View for LazyTensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let mut values = vec![0f32; self.info.n_elements() as usize];
        dequantize(
            self.info.ggml_type,
            self.file.tensor_bytes(self.info),
            &mut values,
        );
        if let Some(heads) = self.unpermute_heads {
            values = unpermute_rows(&values, heads, self.shape[0], self.shape[1]);
        }
        self.progress.inc(1);
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        self.info.n_elements() as usize * 4
    }
}

/// Inverse of convert_hf_to_gguf's `w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2)`: GGUF row
/// `h*hd + 2i + j` holds HF row `h*hd + j*hd/2 + i`.
pub fn unpermute_rows(w: &[f32], heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * head_dim + 2 * i + j) * cols;
                let dst = (h * head_dim + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// Plans every output tensor, checking names and shapes before anything is written.
pub fn plan_tensors<'a>(
    file: &'a GgufFile,
    hp: &Hparams,
    progress: &'a ProgressBar,
) -> Result<Vec<(String, LazyTensor<'a>)>, GgufError> {
    let mismatch = |tensor: &str, detail: String| GgufError::ShapeMismatch {
        path: file.path.clone(),
        tensor: tensor.to_string(),
        detail,
    };
    let mut planned = Vec::new();
    for info in &file.tensors {
        let name = match hf_name(&info.name) {
            None if info.name == "rope_freqs.weight" => continue,
            Some(Ok(name)) => name,
            _ => {
                return Err(GgufError::UnsupportedTensor {
                    path: file.path.clone(),
                    tensor: info.name.clone(),
                })
            }
        };
        let shape = info.torch_shape();
        let (q_rows, kv_rows) = (
            (hp.heads * hp.head_dim) as usize,
            (hp.kv_heads * hp.head_dim) as usize,
        );
        let hidden = hp.hidden as usize;
        let expected: Option<Vec<usize>> = match info.name.rsplit('.').nth(1) {
            Some("token_embd") | Some("output") => Some(vec![hp.vocab as usize, hidden]),
            Some("attn_q") if info.name.ends_with(".weight") => Some(vec![q_rows, hidden]),
            Some("attn_k") | Some("attn_v") if info.name.ends_with(".weight") => {
                Some(vec![kv_rows, hidden])
            }
            Some("attn_output") => Some(vec![hidden, q_rows]),
            Some("ffn_gate") | Some("ffn_up") => Some(vec![hp.intermediate as usize, hidden]),
            Some("ffn_down") => Some(vec![hidden, hp.intermediate as usize]),
            Some("attn_norm") | Some("ffn_norm") | Some("output_norm") => Some(vec![hidden]),
            _ => None,
        };
        if let Some(expected) = expected {
            if shape != expected {
                return Err(mismatch(
                    &info.name,
                    format!("shape {shape:?}, but the metadata implies {expected:?}"),
                ));
            }
        }
        let is_weight = info.name.ends_with(".weight");
        let unpermute_heads = match (hp.arch, info.name.rsplit('.').nth(1)) {
            (Arch::Llama, Some("attn_q")) if is_weight => Some(hp.heads as usize),
            (Arch::Llama, Some("attn_k")) if is_weight => Some(hp.kv_heads as usize),
            _ => None,
        };
        if let Some(heads) = unpermute_heads {
            if shape.len() != 2 || shape[0] % (heads * 2) != 0 {
                return Err(mismatch(
                    &info.name,
                    format!("{} rows do not split into {heads} rotary heads", shape[0]),
                ));
            }
        }
        planned.push((
            name,
            LazyTensor {
                file,
                info,
                shape,
                unpermute_heads,
                progress,
            },
        ));
    }
    for required in ["model.embed_tokens.weight", "model.norm.weight"] {
        if !planned.iter().any(|(n, _)| n == required) {
            return Err(GgufError::MissingTensor {
                path: file.path.clone(),
                tensor: required.to_string(),
            });
        }
    }
    Ok(planned)
}

pub fn write_safetensors(
    planned: Vec<(String, LazyTensor<'_>)>,
    out: &Path,
) -> Result<(), GgufError> {
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(planned, Some(metadata), out).map_err(|e| GgufError::Write {
        path: out.to_path_buf(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies the HF -> GGUF permutation the way convert_hf_to_gguf.py does.
    fn permute(w: &[f32], heads: usize, rows: usize, cols: usize) -> Vec<f32> {
        let hd = rows / heads;
        let mut out = vec![0f32; w.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    // reshape(heads, 2, hd/2, cols).swapaxes(1, 2): out[h, i, j] = w[h, j, i]
                    let src = (h * hd + j * hd / 2 + i) * cols;
                    let dst = (h * hd + i * 2 + j) * cols;
                    out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        let (heads, rows, cols) = (3, 12, 2);
        let w: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        assert_eq!(
            unpermute_rows(&permute(&w, heads, rows, cols), heads, rows, cols),
            w
        );
        // Row 1 of head 0 in GGUF order is HF row hd/2 = 2.
        let p = permute(&w, heads, rows, cols);
        assert_eq!(&p[cols..2 * cols], &w[2 * cols..3 * cols]);
    }

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight"),
            Some(Ok("model.layers.12.self_attn.q_proj.weight".into()))
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight"),
            Some(Ok("model.layers.0.post_attention_layernorm.weight".into()))
        );
        assert_eq!(hf_name("blk.0.ssm_conv.weight"), Some(Err(())));
    }
}
