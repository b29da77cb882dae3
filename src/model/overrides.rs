//! Serve-time changes to a model's `config.json`: the rope scaling (`--rope-scaling`) and the
//! served window (`--max-context`), applied right after the config is parsed so that serving,
//! training and benchmarks run exactly the same rope.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::{Map, Value};

use super::config::{parse_rope, ModelConfig, ROPE_TYPES};
use super::error::ModelError;

/// A `--rope-scaling` value.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeOverride {
    /// `none`: plain rope, whatever config.json says.
    Off,
    /// A rope scaling object as in config.json's `rope_scaling` (`yarn:4` becomes
    /// `{"rope_type": "yarn", "factor": 4.0}`); missing fields take transformers' defaults, and
    /// `original_max_position_embeddings` defaults to config.json's `max_position_embeddings`.
    Params(Map<String, Value>),
}

impl FromStr for RopeOverride {
    type Err = String;

    /// `none`, `KIND:FACTOR` (KIND: linear, dynamic or yarn) or a JSON object.
    fn from_str(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let usage = "expected none, yarn:FACTOR, dynamic:FACTOR, linear:FACTOR or a JSON object \
                     such as {\"rope_type\":\"yarn\",\"factor\":4.0}";
        if spec == "none" || spec == "default" {
            return Ok(RopeOverride::Off);
        }
        let map = if spec.starts_with('{') {
            match serde_json::from_str::<Value>(spec) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err(format!("{spec:?} is not a JSON object; {usage}")),
                Err(err) => return Err(format!("{spec:?} is not valid JSON ({err}); {usage}")),
            }
        } else {
            let Some((kind, factor)) = spec.split_once(':') else {
                return Err(format!("{spec:?}: {usage}"));
            };
            if kind == "llama3" {
                return Err(format!(
                    "{spec:?}: llama3 rope scaling takes the JSON form; {usage}"
                ));
            }
            if !matches!(kind, "linear" | "dynamic" | "yarn") {
                return Err(format!(
                    "{spec:?}: rope type {kind:?} is not supported (supported: {ROPE_TYPES}); \
                     {usage}"
                ));
            }
            let factor: f64 = factor
                .parse()
                .ok()
                .filter(|f: &f64| f.is_finite() && *f >= 1.0)
                .ok_or_else(|| format!("{spec:?}: the factor must be a number ≥ 1; {usage}"))?;
            let mut map = Map::new();
            map.insert("rope_type".into(), Value::from(kind));
            map.insert("factor".into(), Value::from(factor));
            map
        };
        // Checked now (the config's window only fills in defaults) so a bad flag fails at start.
        parse_rope(&map, "--rope-scaling", 1).map_err(|e| format!("{e}; {usage}"))?;
        if let Some(theta) = map.get("rope_theta") {
            if !theta.as_f64().is_some_and(|t| t > 0.0) {
                return Err(format!(
                    "--rope-scaling.rope_theta must be a positive number, got {theta}"
                ));
            }
        }
        Ok(RopeOverride::Params(map))
    }
}

impl fmt::Display for RopeOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RopeOverride::Off => f.write_str("none"),
            RopeOverride::Params(map) => {
                let kind = map.get("rope_type").and_then(Value::as_str);
                match (kind, map.get("factor").and_then(Value::as_f64), map.len()) {
                    (Some(kind), Some(factor), 2) => write!(f, "{kind}:{factor}"),
                    _ => write!(f, "{}", Value::Object(map.clone())),
                }
            }
        }
    }
}

/// Changes applied to a model's config at load (`Transformer::load_with`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelOverrides {
    /// None: as config.json says.
    pub rope_scaling: Option<RopeOverride>,
    /// The served window in tokens (prompt + completion); None: all the rope supports.
    pub max_context: Option<usize>,
}

impl ModelOverrides {
    /// Applies the overrides to `config` as parsed from `path` (named in errors). The window is
    /// at most what the rope supports: config.json's `max_position_embeddings` without scaling,
    /// `original × factor` with linear, dynamic or yarn scaling.
    pub fn apply(&self, config: &mut ModelConfig, path: &Path) -> Result<(), ModelError> {
        let invalid = |message: String| ModelError::InvalidConfig {
            path: path.to_path_buf(),
            message,
        };
        match &self.rope_scaling {
            None => {}
            Some(RopeOverride::Off) => config.rope_scaling = None,
            Some(RopeOverride::Params(map)) => {
                config.rope_scaling =
                    parse_rope(map, "--rope-scaling", config.config_max_position_embeddings)
                        .map_err(invalid)?;
                if let Some(theta) = map.get("rope_theta").and_then(Value::as_f64) {
                    config.rope_theta = theta;
                }
            }
        }
        let limit = config.rope_max_positions();
        config.max_position_embeddings = match self.max_context {
            None => limit,
            Some(0) => return Err(invalid("--max-context must be at least 1".into())),
            Some(n) if n > limit => {
                let rope = match config.rope_scaling {
                    None => "without rope scaling".to_string(),
                    Some(r) => format!("with {} rope scaling (factor {})", r.kind(), r.factor()),
                };
                let factor = n.div_ceil(config.config_max_position_embeddings.max(1));
                return Err(invalid(format!(
                    "--max-context {n} exceeds the {limit} positions this model supports {rope}; \
                     extend the window with --rope-scaling, e.g. yarn:{}",
                    factor.max(2)
                )));
            }
            Some(n) => n,
        };
        Ok(())
    }

    /// A short description of the loaded rope for logs, e.g.
    /// `yarn:4 (attention factor 1.1386), window 32768`.
    pub fn describe(config: &ModelConfig) -> String {
        match config.rope_scaling {
            None => format!("default, window {}", config.max_position_embeddings),
            Some(r) => format!(
                "{}:{} (attention factor {:.4}), window {}",
                r.kind(),
                r.factor(),
                r.attention_factor(),
                config.max_position_embeddings
            ),
        }
    }
}

impl ModelConfig {
    /// Reads `dir/config.json` and applies `overrides`.
    pub fn from_dir_with(dir: &Path, overrides: &ModelOverrides) -> Result<Self, ModelError> {
        let mut config = Self::from_dir(dir)?;
        overrides.apply(&mut config, &dir.join("config.json"))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::RopeScaling;

    fn smollm2_like() -> ModelConfig {
        let text = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":576,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":9,"num_key_value_heads":3,"vocab_size":10,
            "rope_theta":100000.0,"max_position_embeddings":8192}"#;
        ModelConfig::from_json(text, Path::new("config.json")).unwrap()
    }

    fn apply(rope: Option<&str>, max_context: Option<usize>) -> Result<ModelConfig, ModelError> {
        let overrides = ModelOverrides {
            rope_scaling: rope.map(|s| s.parse().unwrap()),
            max_context,
        };
        let mut config = smollm2_like();
        overrides.apply(&mut config, Path::new("m/config.json"))?;
        Ok(config)
    }

    #[test]
    fn specs_parse_and_print() {
        for (spec, shown) in [
            ("none", "none"),
            ("yarn:4", "yarn:4"),
            ("dynamic:2.5", "dynamic:2.5"),
            ("linear:2", "linear:2"),
        ] {
            let parsed: RopeOverride = spec.parse().unwrap();
            assert_eq!(parsed.to_string(), shown);
        }
        let json: RopeOverride =
            r#"{"rope_type":"yarn","factor":4,"beta_fast":16}"#.parse().unwrap();
        assert!(json.to_string().contains("beta_fast"));
        for bad in [
            "yarn",
            "yarn:0.5",
            "yarn:x",
            "longrope:4",
            "llama3:8",
            "[1]",
            "{\"rope_type\":\"ntk\"}",
            "{\"rope_type\":\"yarn\"}",
        ] {
            let err = bad.parse::<RopeOverride>().unwrap_err();
            assert!(err.contains("yarn:FACTOR"), "{bad}: {err}");
        }
    }

    #[test]
    fn yarn_extends_the_window_from_the_config() {
        let c = apply(Some("yarn:4"), None).unwrap();
        let Some(RopeScaling::Yarn(y)) = c.rope_scaling else {
            panic!("{:?}", c.rope_scaling)
        };
        assert_eq!(y.original_max_position_embeddings, 8192.0);
        assert_eq!(c.max_position_embeddings, 32768);
        assert_eq!(c.config_max_position_embeddings, 8192);
        let c = apply(Some("yarn:4"), Some(16384)).unwrap();
        assert_eq!(c.max_position_embeddings, 16384);
        assert!(
            c.rope_scaling.is_some(),
            "a shorter window keeps the scaling"
        );
        let c = apply(Some("dynamic:2"), None).unwrap();
        assert_eq!(c.max_position_embeddings, 16384);
    }

    #[test]
    fn max_context_is_bounded_by_the_rope() {
        assert_eq!(apply(None, None).unwrap().max_position_embeddings, 8192);
        assert_eq!(
            apply(Some("none"), Some(4096))
                .unwrap()
                .max_position_embeddings,
            4096
        );
        let err = apply(None, Some(10_212)).unwrap_err().to_string();
        assert!(
            err.contains("--max-context 10212 exceeds the 8192")
                && err.contains("without rope scaling")
                && err.contains("yarn:2"),
            "{err}"
        );
        let err = apply(Some("yarn:4"), Some(40_000)).unwrap_err().to_string();
        assert!(
            err.contains("32768") && err.contains("yarn rope scaling"),
            "{err}"
        );
        assert!(apply(None, Some(0)).is_err());
        // `none` also drops a scaling that config.json states.
        let mut config = smollm2_like();
        ModelOverrides {
            rope_scaling: Some("linear:2".parse().unwrap()),
            max_context: None,
        }
        .apply(&mut config, Path::new("config.json"))
        .unwrap();
        assert_eq!(config.max_position_embeddings, 16384);
        ModelOverrides {
            rope_scaling: Some(RopeOverride::Off),
            max_context: None,
        }
        .apply(&mut config, Path::new("config.json"))
        .unwrap();
        assert_eq!(
            (config.rope_scaling, config.max_position_embeddings),
            (None, 8192)
        );
    }
}
