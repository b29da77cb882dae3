//! Flags shared by the subcommands that load a model.

use std::path::PathBuf;

use crate::engine::EngineOptions;
use crate::model::overrides::{ModelOverrides, RopeOverride};

/// The bundled SmolLM2-135M-Instruct has an 8192-token window; OpenClaw's default agent alone
/// sends a 10k-token prompt. Unless told otherwise it is served with YaRN ×4: 32768 tokens.
/// With a milder attention factor than YaRN's formula, measured on this 135M model (greedy,
/// release build, 2026-11-29): the formula's 1.139 (q·k × 1.30) turned the reply to
/// "Say hello." into a loop of one emoji; 1.0 answered short prompts as the native rope does but
/// gave an empty reply to a question after a 5k-token system prompt; 1.07 answered both.
pub const DEFAULT_MODEL_ROPE_SCALING: &str =
    r#"{"rope_type":"yarn","factor":4,"attention_factor":1.07}"#;

/// `--rope-scaling` and `--max-context`: shared by `serve` and the commands of [`ModelArgs`].
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct ContextArgs {
    /// Rope scaling: none, yarn:F, dynamic:F, linear:F (F: the factor), or a JSON object as
    /// config.json's rope_scaling, e.g. '{"rope_type":"yarn","factor":4,"beta_fast":32}'
    /// [default: YaRN ×4 with attention factor 1.07 for the bundled SmolLM2 (a 32768-token window
    /// instead of its native 8192); for --model, what its config.json says].
    #[arg(long, env = "HINDSIGHT_ROPE_SCALING", value_name = "SPEC")]
    pub rope_scaling: Option<RopeOverride>,
    /// The served window in tokens, prompt + completion; at most what the rope supports:
    /// max_position_embeddings without scaling, original × factor with it [default: all of it].
    #[arg(long, env = "HINDSIGHT_MAX_CONTEXT", value_name = "N")]
    pub max_context: Option<usize>,
    /// Memory in MiB for the keys and values of finished requests, so that a request resending
    /// the same system prompt and history prefills only what is new (0 turns it off)
    /// [default: 4096].
    #[arg(long, env = "HINDSIGHT_PREFIX_CACHE_MB", value_name = "MIB")]
    pub prefix_cache_mb: Option<usize>,
}

/// `--prefix-cache-mb` in bytes (the engine's default when not given).
pub fn prefix_cache_bytes(mb: Option<usize>) -> usize {
    mb.map_or(crate::engine::local::DEFAULT_PREFIX_CACHE_BYTES, |mb| {
        mb << 20
    })
}

impl ContextArgs {
    /// The overrides for a model: `bundled` (no --model) gets YaRN ×4 unless --rope-scaling
    /// says otherwise (`none`: the native 8192 tokens).
    pub fn overrides(&self, bundled: bool) -> ModelOverrides {
        model_overrides(self.rope_scaling.clone(), self.max_context, bundled)
    }
}

/// See [`ContextArgs::overrides`].
pub fn model_overrides(
    rope_scaling: Option<RopeOverride>,
    max_context: Option<usize>,
    bundled: bool,
) -> ModelOverrides {
    let rope_scaling = rope_scaling.or_else(|| {
        bundled.then(|| {
            DEFAULT_MODEL_ROPE_SCALING
                .parse()
                .expect("the default rope scaling parses")
        })
    });
    ModelOverrides {
        rope_scaling,
        max_context,
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A Hugging Face model directory; default: the bundled SmolLM2-135M-Instruct.
    #[arg(long, env = "HINDSIGHT_MODEL")]
    pub model: Option<PathBuf>,
    /// Where Hindsight keeps its database, journal, imported models and adapters.
    #[arg(long, env = "HINDSIGHT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Weights dtype: f32 or bf16.
    #[arg(long, env = "HINDSIGHT_DTYPE", default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, env = "HINDSIGHT_DEVICE", default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub context: ContextArgs,
}

impl ModelArgs {
    /// The model directory to load, importing the bundled model on first use.
    pub fn model_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.model {
            Some(dir) => Ok(dir.clone()),
            None => crate::model::default_model::default_model_dir(&self.data_dir),
        }
    }

    /// Rope scaling and window for the model (see [`ContextArgs::overrides`]).
    pub fn overrides(&self) -> ModelOverrides {
        self.context.overrides(self.model.is_none())
    }

    /// The id clients send as `model`: the directory's name.
    pub fn default_model_name(dir: &std::path::Path) -> String {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "hindsight".into())
    }

    pub fn engine_options(&self) -> anyhow::Result<EngineOptions> {
        let dir = self.model_dir()?;
        let mut options = EngineOptions::new(dir.clone(), Self::default_model_name(&dir));
        options.dtype = self.dtype.clone();
        options.device = self.device.clone();
        options.overrides = self.overrides();
        options.prefix_cache_bytes = prefix_cache_bytes(self.context.prefix_cache_mb);
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        model: ModelArgs,
    }

    #[test]
    fn the_bundled_model_defaults_to_yarn_4_and_flags_override_it() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["x"], args].concat()).map(|c| c.model);
        let bundled = parse(&[]).unwrap().overrides();
        let default: RopeOverride = DEFAULT_MODEL_ROPE_SCALING.parse().unwrap();
        assert_eq!(bundled.rope_scaling, Some(default));
        let native = parse(&["--rope-scaling", "none"]).unwrap().overrides();
        assert_eq!(native.rope_scaling, Some(RopeOverride::Off));
        let own = parse(&["--model", "/m"]).unwrap().overrides();
        assert_eq!(own, ModelOverrides::default());
        let both = parse(&[
            "--model",
            "/m",
            "--rope-scaling",
            "dynamic:2",
            "--max-context",
            "9000",
        ])
        .unwrap()
        .overrides();
        assert_eq!(both.rope_scaling.unwrap().to_string(), "dynamic:2");
        assert_eq!(both.max_context, Some(9000));
        let err = parse(&["--rope-scaling", "yarn:x"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("--rope-scaling") && err.contains("yarn:FACTOR"),
            "{err}"
        );
    }
}
