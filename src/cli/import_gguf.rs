//! `hindsight import-gguf IN.gguf OUT_DIR`: convert a GGUF into a Hugging Face model directory.

use std::path::PathBuf;

use crate::model::gguf::{import_gguf, ImportOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The GGUF file to convert.
    pub input: PathBuf,
    /// The Hugging Face model directory to create.
    pub out_dir: PathBuf,
    /// Replace OUT_DIR if it already exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let options = ImportOptions {
        force: args.force,
        progress: true,
    };
    let summary = import_gguf(&args.input, &args.out_dir, &options)?;
    let hp = &summary.hparams;
    println!(
        "wrote {} ({:?}, {} layers, hidden {}, {} tensors as f32)",
        summary.out_dir.display(),
        hp.arch,
        hp.layers,
        hp.hidden,
        summary.tensors
    );
    Ok(())
}
