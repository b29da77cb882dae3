//! The model's shape, read from a Hugging Face `config.json`.

use std::path::Path;

use serde::Deserialize;

use super::error::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
}

/// Llama 3 style frequency-dependent rope scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// YaRN (`rope_type: "yarn"`), as transformers' `_compute_yarn_parameters`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnRopeScaling {
    pub factor: f64,
    pub original_max_position_embeddings: f64,
    /// Explicit `attention_factor`; None: inferred from `factor`, `mscale`, `mscale_all_dim`.
    pub attention_factor: Option<f64>,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    /// Round the correction range outwards to whole dimensions (default true).
    pub truncate: bool,
}

impl YarnRopeScaling {
    /// The factor on cos and sin ("mscale"): `attention_factor`, else
    /// `get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)` when both are set and
    /// non-zero, else `get_mscale(factor)` = 0.1 ln(factor) + 1.
    pub fn attention_factor(&self) -> f64 {
        let get_mscale = |scale: f64, mscale: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * mscale * scale.ln() + 1.0
            }
        };
        match (self.attention_factor, self.mscale, self.mscale_all_dim) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                get_mscale(self.factor, m) / get_mscale(self.factor, all)
            }
            _ => get_mscale(self.factor, 1.0),
        }
    }
}

/// Rope scaling of `config.json` (`rope_scaling`, or transformers 5's `rope_parameters`) or of
/// `--rope-scaling`. Inverse frequencies follow transformers' `modeling_rope_utils.py`
/// (see `rope::inverse_frequencies`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `linear`: every inverse frequency divided by `factor` (position interpolation).
    Linear {
        factor: f64,
        /// `max_position_embeddings` of config.json: the window before scaling.
        original_max_position_embeddings: usize,
    },
    /// `dynamic` (NTK-aware): transformers recomputes the rope base in every forward from the
    /// current length, which a KV cache cannot follow (cached keys were rotated with the old
    /// base). Like vLLM we compute fixed tables for the longest sequence, `original × factor`,
    /// i.e. `_compute_dynamic_ntk_parameters(seq_len = original × factor)`.
    Dynamic {
        factor: f64,
        /// `max_position_embeddings` of config.json (transformers' `max_position_embeddings`).
        original_max_position_embeddings: usize,
    },
    Yarn(YarnRopeScaling),
    Llama3(Llama3RopeScaling),
}

impl RopeScaling {
    pub fn kind(&self) -> &'static str {
        match self {
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Yarn(_) => "yarn",
            RopeScaling::Llama3(_) => "llama3",
        }
    }

    pub fn factor(&self) -> f64 {
        match self {
            RopeScaling::Linear { factor, .. } | RopeScaling::Dynamic { factor, .. } => *factor,
            RopeScaling::Yarn(y) => y.factor,
            RopeScaling::Llama3(l) => l.factor,
        }
    }

    /// The longest sequence the scaled rope is meant for (vLLM's choice): `original × factor`
    /// for linear, dynamic and yarn; config.json's `max_position_embeddings` for llama3, whose
    /// configs already state the extended window.
    pub fn max_positions(&self, config_max_position_embeddings: usize) -> usize {
        let scaled = |original: f64, factor: f64| (original * factor).floor() as usize;
        match self {
            RopeScaling::Linear {
                factor,
                original_max_position_embeddings: o,
            }
            | RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings: o,
            } => scaled(*o as f64, *factor),
            RopeScaling::Yarn(y) => scaled(y.original_max_position_embeddings, y.factor),
            RopeScaling::Llama3(_) => config_max_position_embeddings,
        }
    }

    /// The factor on cos and sin (YaRN's mscale; 1 for the others).
    pub fn attention_factor(&self) -> f64 {
        match self {
            RopeScaling::Yarn(y) => y.attention_factor(),
            _ => 1.0,
        }
    }
}

/// The rope types `parse_rope` knows.
pub const ROPE_TYPES: &str = "default, linear, dynamic, yarn, llama3";

/// Parses a rope scaling object (`field` names it in errors: `rope_scaling`, `rope_parameters`
/// or `--rope-scaling`). Missing `original_max_position_embeddings` defaults to
/// `config_max_position_embeddings`, as transformers' `standardize_rope_params` does.
pub fn parse_rope(
    rope: &serde_json::Map<String, serde_json::Value>,
    field: &str,
    config_max_position_embeddings: usize,
) -> Result<Option<RopeScaling>, String> {
    let number = |key: &str| -> Result<Option<f64>, String> {
        match rope.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("{field}.{key} must be a number, got {v}")),
        }
    };
    let kind = match rope.get("rope_type").or_else(|| rope.get("type")) {
        None | Some(serde_json::Value::Null) => "default",
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(other) => return Err(format!("{field}.rope_type must be a string, got {other}")),
    };
    let need =
        |key: &str| number(key)?.ok_or_else(|| format!("{field}: {kind} rope scaling lacks {key}"));
    let factor = || -> Result<f64, String> {
        let f = need("factor")?;
        if f.is_finite() && f > 0.0 {
            Ok(f)
        } else {
            Err(format!("{field}.factor must be a positive number, got {f}"))
        }
    };
    let config_max = config_max_position_embeddings;
    let original = || -> Result<f64, String> {
        Ok(number("original_max_position_embeddings")?.unwrap_or(config_max as f64))
    };
    Ok(Some(match kind {
        "default" => return Ok(None),
        "linear" => RopeScaling::Linear {
            factor: factor()?,
            original_max_position_embeddings: config_max,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: factor()?,
            original_max_position_embeddings: config_max,
        },
        "yarn" => {
            let truncate = match rope.get("truncate") {
                None | Some(serde_json::Value::Null) => true,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(format!(
                        "{field}.truncate must be true or false, got {other}"
                    ))
                }
            };
            // transformers: `rope_parameters.get("beta_fast") or 32` (0 also means the default).
            let or_default = |v: Option<f64>, d: f64| v.filter(|x| *x != 0.0).unwrap_or(d);
            RopeScaling::Yarn(YarnRopeScaling {
                factor: factor()?,
                original_max_position_embeddings: original()?,
                attention_factor: number("attention_factor")?,
                beta_fast: or_default(number("beta_fast")?, 32.0),
                beta_slow: or_default(number("beta_slow")?, 1.0),
                mscale: number("mscale")?,
                mscale_all_dim: number("mscale_all_dim")?,
                truncate,
            })
        }
        "llama3" => RopeScaling::Llama3(Llama3RopeScaling {
            factor: factor()?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: original()?,
        }),
        other => {
            return Err(format!(
                "{field}.rope_type {other:?} is not supported (supported: {ROPE_TYPES})"
            ))
        }
    }))
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// The served window: positions the rope tables and the KV cache hold. By default what the
    /// rope supports (`RopeScaling::max_positions`); `ModelOverrides` may change it.
    pub max_position_embeddings: usize,
    /// `max_position_embeddings` as config.json states it.
    pub config_max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v (always for Qwen2, `attention_bias` for the others).
    pub qkv_bias: bool,
    /// Bias on o_proj (`attention_bias` for Llama and Qwen3).
    pub o_bias: bool,
    /// Per-head RMSNorm of q and k before rope (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5 writes rope settings here instead of `rope_theta` / `rope_scaling`.
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: usize,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn token_ids(value: &Option<serde_json::Value>) -> Vec<u32> {
    match value {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        Self::from_json(&text, &path)
    }

    /// Parses config.json text; `path` only names the source in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ModelError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |message: String| ModelError::InvalidConfig {
            path: path.to_path_buf(),
            message,
        };
        let arch_name = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| raw.model_type.clone())
            .unwrap_or_default();
        let architecture = match arch_name.as_str() {
            "LlamaForCausalLM" | "llama" => Architecture::Llama,
            "Qwen2ForCausalLM" | "qwen2" => Architecture::Qwen2,
            "Qwen3ForCausalLM" | "qwen3" => Architecture::Qwen3,
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        if raw.mlp_bias == Some(true) {
            return Err(invalid("mlp_bias = true is not supported".into()));
        }
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if raw.num_attention_heads == 0
            || num_kv_heads == 0
            || !raw.num_attention_heads.is_multiple_of(num_kv_heads)
        {
            return Err(invalid(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {num_kv_heads}",
                raw.num_attention_heads
            )));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(raw.num_attention_heads) => {
                raw.hidden_size / raw.num_attention_heads
            }
            None => {
                return Err(invalid(
                    "hidden_size is not a multiple of num_attention_heads".into(),
                ))
            }
        };
        if !head_dim.is_multiple_of(2) {
            return Err(invalid(format!(
                "head_dim {head_dim} must be even for rope"
            )));
        }
        // transformers 5 (`convert_rope_params_to_dict`): a non-empty `rope_scaling` wins over
        // `rope_parameters`, and the object's own `rope_theta` over the top-level one.
        let object = |field: &'static str, value: &Option<serde_json::Value>| match value {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Object(map)) if map.is_empty() => Ok(None),
            Some(serde_json::Value::Object(map)) => Ok(Some((field, map.clone()))),
            Some(other) => Err(invalid(format!("{field} must be an object, got {other}"))),
        };
        let rope = match object("rope_scaling", &raw.rope_scaling)? {
            Some(found) => Some(found),
            None => object("rope_parameters", &raw.rope_parameters)?,
        };
        let rope_theta = match &rope {
            Some((field, map)) => match map.get("rope_theta") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(v.as_f64().ok_or_else(|| {
                    invalid(format!("{field}.rope_theta must be a number, got {v}"))
                })?),
            },
            None => None,
        }
        .or(raw.rope_theta)
        .unwrap_or(10_000.0);
        let rope_scaling = match &rope {
            Some((field, map)) => {
                parse_rope(map, field, raw.max_position_embeddings).map_err(invalid)?
            }
            None => None,
        };
        let max_position_embeddings = rope_scaling.map_or(raw.max_position_embeddings, |r| {
            r.max_positions(raw.max_position_embeddings)
        });
        let attention_bias = raw.attention_bias.unwrap_or(false);
        Ok(ModelConfig {
            architecture,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            config_max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: architecture == Architecture::Qwen2 || attention_bias,
            o_bias: architecture != Architecture::Qwen2 && attention_bias,
            qk_norm: architecture == Architecture::Qwen3,
            bos_token_id: token_ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&raw.eos_token_id),
        })
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// The longest window the rope supports: config.json's `max_position_embeddings`, or the
    /// scaled window of `rope_scaling`.
    pub fn rope_max_positions(&self) -> usize {
        let native = self.config_max_position_embeddings;
        self.rope_scaling
            .map_or(native, |r| r.max_positions(native))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_architecture() {
        let text = r#"{"architectures":["GPT2LMHeadModel"],"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"vocab_size":10,"max_position_embeddings":8}"#;
        let err = ModelConfig::from_json(text, Path::new("config.json")).unwrap_err();
        assert!(err.to_string().contains("GPT2LMHeadModel"), "{err}");
    }

    fn parse(rope: &str) -> Result<ModelConfig, ModelError> {
        let text = format!(
            r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"vocab_size":10,
            "rope_theta":10000.0,"max_position_embeddings":64{rope}}}"#
        );
        ModelConfig::from_json(&text, Path::new("/models/m/config.json"))
    }

    #[test]
    fn reads_llama3_rope_parameters() {
        let c = parse(
            r#","rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":16}"#,
        )
        .unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.head_dim, 4);
        let Some(RopeScaling::Llama3(l)) = c.rope_scaling else {
            panic!("{:?}", c.rope_scaling)
        };
        assert_eq!((l.factor, l.original_max_position_embeddings), (8.0, 16.0));
        // llama3 configs state the extended window themselves.
        assert_eq!(c.max_position_embeddings, 64);
    }

    #[test]
    fn reads_yarn_with_defaults_and_mscale() {
        let c = parse(r#","rope_scaling":{"rope_type":"yarn","factor":4}"#).unwrap();
        let Some(RopeScaling::Yarn(y)) = c.rope_scaling else {
            panic!("{:?}", c.rope_scaling)
        };
        assert_eq!(
            y.original_max_position_embeddings, 64.0,
            "defaults to the config's"
        );
        assert_eq!((y.beta_fast, y.beta_slow, y.truncate), (32.0, 1.0, true));
        assert!((y.attention_factor() - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        assert_eq!(
            (c.max_position_embeddings, c.config_max_position_embeddings),
            (256, 64)
        );
        let c = parse(
            r#","rope_scaling":{"type":"yarn","factor":40,"original_max_position_embeddings":4,
            "beta_fast":0,"beta_slow":2,"mscale":1.0,"mscale_all_dim":0.5,"truncate":false}"#,
        )
        .unwrap();
        let Some(RopeScaling::Yarn(y)) = c.rope_scaling else {
            panic!()
        };
        assert_eq!((y.beta_fast, y.beta_slow, y.truncate), (32.0, 2.0, false));
        let m = |s: f64| 0.1 * s * 40f64.ln() + 1.0;
        assert!((y.attention_factor() - m(1.0) / m(0.5)).abs() < 1e-12);
        assert_eq!(c.max_position_embeddings, 160);
        let c = parse(r#","rope_scaling":{"rope_type":"yarn","factor":2,"attention_factor":1.5}"#)
            .unwrap();
        assert_eq!(c.rope_scaling.unwrap().attention_factor(), 1.5);
    }

    #[test]
    fn reads_linear_and_dynamic() {
        let c = parse(r#","rope_scaling":{"rope_type":"linear","factor":2.0}"#).unwrap();
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Linear {
                factor: 2.0,
                original_max_position_embeddings: 64
            })
        );
        assert_eq!(c.max_position_embeddings, 128);
        let c = parse(
            r#","rope_parameters":{"rope_type":"dynamic","factor":4.0,"rope_theta":20000.0}"#,
        )
        .unwrap();
        assert_eq!(c.rope_scaling.unwrap().kind(), "dynamic");
        assert_eq!(c.rope_theta, 20000.0, "the rope object's theta wins");
        assert_eq!(c.max_position_embeddings, 256);
        // rope_scaling wins over rope_parameters; "default" means none.
        let c = parse(
            r#","rope_scaling":{"rope_type":"default"},"rope_parameters":{"rope_type":"linear","factor":2}"#,
        )
        .unwrap();
        assert_eq!((c.rope_scaling, c.max_position_embeddings), (None, 64));
    }

    #[test]
    fn bad_rope_scaling_names_the_file_and_field() {
        let err = parse(r#","rope_scaling":{"rope_type":"longrope","factor":2}"#).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/models/m/config.json")
                && text.contains("rope_scaling.rope_type")
                && text.contains("longrope")
                && text.contains("yarn"),
            "{text}"
        );
        let err = parse(r#","rope_parameters":{"rope_type":"yarn"}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("rope_parameters: yarn rope scaling lacks factor"),
            "{err}"
        );
        let err = parse(r#","rope_scaling":{"rope_type":"linear","factor":"2"}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("rope_scaling.factor must be a number"),
            "{err}"
        );
        let err =
            parse(r#","rope_scaling":{"rope_type":"yarn","factor":2,"truncate":1}"#).unwrap_err();
        assert!(err.to_string().contains("rope_scaling.truncate"), "{err}");
        let err = parse(r#","rope_scaling":"yarn""#).unwrap_err();
        assert!(
            err.to_string().contains("rope_scaling must be an object"),
            "{err}"
        );
        let err = parse(r#","rope_scaling":{"rope_type":"llama3","factor":8}"#).unwrap_err();
        assert!(err.to_string().contains("lacks low_freq_factor"), "{err}");
    }
}
