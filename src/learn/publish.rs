//! Published versions on disk: one PEFT directory per policy version (adapter_config.json +
//! adapter_model.safetensors), loadable by PEFT and vLLM, written atomically.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::model::peft::AdapterSnapshot;

/// Where version `version` lives under `root`.
pub fn version_dir(root: &Path, version: i64) -> PathBuf {
    root.join(format!("v{version:06}"))
}

/// Writes the adapter into a temporary directory next to its final place, then renames it, so
/// a reader never sees a half-written version.
pub fn write_version(
    root: &Path,
    version: i64,
    snapshot: &AdapterSnapshot,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(root)
        .with_context(|| format!("creating the adapters directory {}", root.display()))?;
    let target = version_dir(root, version);
    let staging = tempfile::Builder::new()
        .prefix(&format!(".v{version:06}-"))
        .tempdir_in(root)
        .with_context(|| format!("creating a staging directory in {}", root.display()))?;
    snapshot
        .save_peft(staging.path())
        .with_context(|| format!("writing version {version}"))?;
    if target.exists() {
        // A crash after rename but before the database row leaves an orphan: replace it.
        std::fs::remove_dir_all(&target)
            .with_context(|| format!("replacing {}", target.display()))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, &target)
        .with_context(|| format!("publishing {} as {}", staged.display(), target.display()))?;
    Ok(target)
}

/// Reads a published version back.
pub fn read_version(path: &Path) -> anyhow::Result<AdapterSnapshot> {
    AdapterSnapshot::load_peft(path)
        .with_context(|| format!("loading the adapter at {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lora::LoraConfig;
    use crate::model::peft::AdapterTensor;

    #[test]
    fn written_versions_read_back_and_leave_no_staging() {
        let root = tempfile::tempdir().unwrap();
        let snapshot = AdapterSnapshot {
            config: LoraConfig::default(),
            tensors: vec![
                AdapterTensor {
                    name: crate::model::peft::peft_name(0, crate::model::lora::LoraTarget::Q, 'A'),
                    shape: vec![16, 4],
                    data: (0..64).map(|i| i as f32).collect(),
                },
                AdapterTensor {
                    name: crate::model::peft::peft_name(0, crate::model::lora::LoraTarget::Q, 'B'),
                    shape: vec![4, 16],
                    data: vec![0.5; 64],
                },
            ],
        };
        let path = write_version(root.path(), 3, &snapshot).unwrap();
        assert_eq!(path, root.path().join("v000003"));
        assert!(path.join("adapter_config.json").exists());
        let again = write_version(root.path(), 3, &snapshot).unwrap();
        assert_eq!(again, path);
        let entries: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "no staging directories remain");
        let back = read_version(&path).unwrap();
        assert_eq!(back.tensors.len(), 2);
        assert_eq!(back.tensors[1].data, vec![0.5; 64]);
    }
}
