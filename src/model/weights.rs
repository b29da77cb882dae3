//! Reads tensors from `model.safetensors` or a sharded set (`model.safetensors.index.json`),
//! converting any stored f32/f16/bf16 data to the compute dtype on the target device.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use super::error::ModelError;

struct Shard {
    path: PathBuf,
    map: Mmap,
    header_len: usize,
    metadata: Metadata,
}

/// The safetensors files of one model directory, memory-mapped.
pub struct WeightFiles {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    index: HashMap<String, usize>,
}

fn open_shard(path: &Path) -> Result<Shard, ModelError> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the file is only read; a concurrent writer would be a misuse of the model directory.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(Shard {
        path: path.to_path_buf(),
        map,
        header_len,
        metadata,
    })
}

impl WeightFiles {
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::InvalidConfig {
                    path: index_path.clone(),
                    message: "no weight_map object".into(),
                })?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(ModelError::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "neither model.safetensors nor model.safetensors.index.json exists",
                ),
            ));
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let shard = open_shard(&path)?;
            for name in shard.metadata.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(shard);
        }
        Ok(WeightFiles {
            dir: dir.to_path_buf(),
            shards,
            index,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Loads `name`, checking its shape, as `kind` on `device`.
    pub fn load(
        &self,
        name: &str,
        expected: &[i64],
        kind: Kind,
        device: Device,
    ) -> Result<Tensor, ModelError> {
        let shard =
            &self.shards[*self
                .index
                .get(name)
                .ok_or_else(|| ModelError::MissingTensor {
                    dir: self.dir.clone(),
                    tensor: name.to_string(),
                })?];
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                dir: self.dir.clone(),
                tensor: name.to_string(),
            })?;
        let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if found != expected {
            return Err(ModelError::ShapeMismatch {
                file: shard.path.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found,
            });
        }
        let stored = match info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            other => {
                return Err(ModelError::UnsupportedDtype {
                    file: shard.path.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let start = shard.header_len + 8 + info.data_offsets.0;
        let end = shard.header_len + 8 + info.data_offsets.1;
        let bytes = shard
            .map
            .get(start..end)
            .ok_or_else(|| ModelError::Safetensors {
                file: shard.path.clone(),
                message: format!("tensor {name} lies outside the file"),
            })?;
        let tensor = Tensor::f_from_data_size(bytes, &found, stored)?;
        Ok(tensor.f_to_kind(kind)?.f_to_device(device)?)
    }
}
