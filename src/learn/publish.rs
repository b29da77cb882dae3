//! Published versions on disk: one PEFT directory per policy version (adapter_config.json +
//! adapter_model.safetensors), loadable by PEFT and vLLM, written atomically.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::model::peft::{sync_path, AdapterSnapshot};

/// The files of a published version, in the order the checksum covers them.
const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

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
    // save_peft synced the files; the rename itself is durable once the directory is.
    sync_path(root).with_context(|| format!("syncing {}", root.display()))?;
    Ok(target)
}

/// SHA-256 (hex) over a published version's files: each file's name, length and bytes.
pub fn adapter_checksum(dir: &Path) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    for name in ADAPTER_FILES {
        let path = dir.join(name);
        let mut file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(len.to_le_bytes());
        std::io::copy(&mut file, &mut hasher)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Reads a published version back after checking it against its recorded checksum (None:
/// recorded before checksums were kept, only parsing checks it).
pub fn read_verified(path: &Path, checksum: Option<&str>) -> anyhow::Result<AdapterSnapshot> {
    if let Some(expected) = checksum {
        let found = adapter_checksum(path)?;
        anyhow::ensure!(
            found.eq_ignore_ascii_case(expected),
            "checksum mismatch at {}: recorded {expected}, found {found}",
            path.display()
        );
    }
    read_version(path)
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

        let sum = adapter_checksum(&path).unwrap();
        assert_eq!(sum.len(), 64);
        assert_eq!(
            adapter_checksum(&path).unwrap(),
            sum,
            "the checksum is stable"
        );
        assert!(read_verified(&path, Some(&sum)).is_ok());
        assert!(read_verified(&path, None).is_ok());
        // One flipped byte: same size, still parses, wrong checksum.
        let weights = path.join("adapter_model.safetensors");
        let mut bytes = std::fs::read(&weights).unwrap();
        *bytes.last_mut().unwrap() ^= 0xff;
        std::fs::write(&weights, &bytes).unwrap();
        assert!(read_version(&path).is_ok());
        let err = read_verified(&path, Some(&sum)).unwrap_err();
        assert!(format!("{err:#}").contains("checksum mismatch"), "{err:#}");
        // Torn: truncated to nothing, unparsable whether or not a checksum was recorded.
        std::fs::File::create(&weights).unwrap();
        assert!(read_verified(&path, None).is_err());
        assert!(read_verified(&path, Some(&sum)).is_err());
    }
}
