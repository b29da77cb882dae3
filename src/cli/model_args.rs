//! Flags shared by the subcommands that load a model.

use std::path::PathBuf;

use crate::engine::EngineOptions;

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
}

impl ModelArgs {
    /// The model directory to load, importing the bundled model on first use.
    pub fn model_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.model {
            Some(dir) => Ok(dir.clone()),
            None => crate::model::default_model::default_model_dir(&self.data_dir),
        }
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
        Ok(options)
    }
}
