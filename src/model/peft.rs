//! Adapter exchange: `AdapterSnapshot` (plain data, crosses threads) and the PEFT directory
//! format (adapter_config.json + adapter_model.safetensors).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::json;
use tch::{Kind, Tensor};

use super::config::ModelConfig;
use super::error::ModelError;
use super::lora::{self, LoraConfig, LoraPair, LoraTarget, TrainableAdapter};
use super::transformer::{InstalledAdapter, Transformer};

/// One adapter tensor by its PEFT name, e.g.
/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

/// An adapter as plain data, to hand from the trainer's thread to the serving thread.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSnapshot {
    pub config: LoraConfig,
    pub tensors: Vec<AdapterTensor>,
}

pub fn peft_name(layer: usize, target: LoraTarget, matrix: char) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.lora_{matrix}.weight",
        target.parent(),
        target.module_name()
    )
}

/// (layer, target, 'A' | 'B') of a PEFT tensor name.
fn parse_peft_name(name: &str) -> Option<(usize, LoraTarget, char)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let parts: Vec<&str> = rest.split('.').collect();
    // parent.module.lora_X[.adapter_name].weight
    if parts.len() < 4 || *parts.last()? != "weight" {
        return None;
    }
    let target = LoraTarget::from_module_name(parts[1])?;
    if parts[0] != target.parent() {
        return None;
    }
    let matrix = match parts[2] {
        "lora_A" => 'A',
        "lora_B" => 'B',
        _ => return None,
    };
    Some((layer.parse().ok()?, target, matrix))
}

fn tensor_to_vec(t: &Tensor) -> Vec<f32> {
    let flat = t
        .detach()
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .contiguous()
        .view([-1]);
    let numel = flat.numel();
    let mut data = vec![0f32; numel];
    flat.copy_data(&mut data, numel);
    data
}

impl TrainableAdapter {
    pub fn snapshot(&self) -> AdapterSnapshot {
        let mut tensors = Vec::new();
        for (layer, pairs) in self.pairs().iter().enumerate() {
            for p in pairs {
                for (matrix, t) in [('A', &p.a), ('B', &p.b)] {
                    tensors.push(AdapterTensor {
                        name: peft_name(layer, p.target, matrix),
                        shape: t.size(),
                        data: tensor_to_vec(t),
                    });
                }
            }
        }
        AdapterSnapshot {
            config: self.config().clone(),
            tensors,
        }
    }

    pub fn save_peft(&self, dir: &Path) -> Result<(), ModelError> {
        self.snapshot().save_peft(dir)
    }

    /// A trainable adapter holding the snapshot's values (to resume training).
    pub fn from_snapshot(
        model_config: &ModelConfig,
        snapshot: &AdapterSnapshot,
        device: tch::Device,
    ) -> Result<Self, ModelError> {
        let mut adapter = TrainableAdapter::new(model_config, snapshot.config.clone(), device)?;
        for (layer, pairs) in snapshot
            .to_pairs(model_config, Kind::Float, device)?
            .into_iter()
            .enumerate()
        {
            for p in pairs {
                adapter.set_values(layer, p.target, &p.a, &p.b)?;
            }
        }
        Ok(adapter)
    }
}

impl AdapterSnapshot {
    /// Checks every tensor against the model and builds each layer's pairs.
    pub(crate) fn to_pairs(
        &self,
        model: &ModelConfig,
        kind: Kind,
        device: tch::Device,
    ) -> Result<Vec<Vec<LoraPair>>, ModelError> {
        self.config.validate()?;
        let mut by_name: HashMap<&str, &AdapterTensor> = HashMap::new();
        for t in &self.tensors {
            parse_peft_name(&t.name)
                .ok_or_else(|| ModelError::Adapter(format!("unexpected tensor name {}", t.name)))?;
            let expected: i64 = t.shape.iter().product();
            if expected as usize != t.data.len() {
                return Err(ModelError::Adapter(format!(
                    "{}: {} values for shape {:?}",
                    t.name,
                    t.data.len(),
                    t.shape
                )));
            }
            by_name.insert(&t.name, t);
        }
        let r = self.config.rank as i64;
        let mut layers = Vec::with_capacity(model.num_layers);
        for layer in 0..model.num_layers {
            let mut pairs = Vec::new();
            for &target in &self.config.target_modules {
                let (fan_in, out) = target.dims(model);
                let get = |m: char, shape: [i64; 2]| -> Result<Tensor, ModelError> {
                    let name = peft_name(layer, target, m);
                    let t = by_name
                        .get(name.as_str())
                        .ok_or_else(|| ModelError::Adapter(format!("tensor {name} is missing")))?;
                    if t.shape != shape {
                        return Err(ModelError::Adapter(format!(
                            "{name} has shape {:?}, expected {shape:?}",
                            t.shape
                        )));
                    }
                    Ok(Tensor::from_slice(&t.data)
                        .view(shape)
                        .to_kind(kind)
                        .to_device(device))
                };
                pairs.push(LoraPair {
                    target,
                    a: get('A', [r, fan_in as i64])?,
                    b: get('B', [out as i64, r])?,
                });
            }
            layers.push(pairs);
        }
        if by_name.len() != 2 * model.num_layers * self.config.target_modules.len() {
            return Err(ModelError::Adapter(format!(
                "{} tensors do not match {} layers × {} targets",
                by_name.len(),
                model.num_layers,
                self.config.target_modules.len()
            )));
        }
        Ok(layers)
    }

    /// Writes PEFT's adapter_config.json and adapter_model.safetensors into `dir`, via a
    /// temporary sibling directory renamed into place so readers never see half a directory.
    pub fn save_peft(&self, dir: &Path) -> Result<(), ModelError> {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
        let staged = parent.join(format!(".adapter-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&staged).map_err(|e| ModelError::io(&staged, e))?;
        // Files and the staged directory reach the disk before the rename, the rename before
        // returning: a power cut leaves the old directory or the whole new one, never a torn one.
        let result = self.write_peft_files(&staged).and_then(|()| {
            sync_path(&staged)?;
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
            }
            std::fs::rename(&staged, dir).map_err(|e| ModelError::io(dir, e))?;
            sync_path(parent)
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staged);
        }
        result
    }

    fn write_peft_files(&self, staged: &Path) -> Result<(), ModelError> {
        let targets: Vec<&str> = self
            .config
            .target_modules
            .iter()
            .map(|t| t.module_name())
            .collect();
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.config.rank,
            "lora_alpha": self.config.alpha,
            "target_modules": targets,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "base_model_name_or_path": null,
        });
        let config_path = staged.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&config).map_err(|source| ModelError::Json {
            path: config_path.clone(),
            source,
        })?;
        std::fs::write(&config_path, text).map_err(|e| ModelError::io(&config_path, e))?;
        sync_path(&config_path)?;
        let bytes: Vec<Vec<u8>> = self
            .tensors
            .iter()
            .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let weights_path = staged.join("adapter_model.safetensors");
        let safetensors_err = |e: safetensors::SafeTensorError| ModelError::Safetensors {
            file: weights_path.clone(),
            message: e.to_string(),
        };
        let mut views = Vec::new();
        for (t, data) in self.tensors.iter().zip(&bytes) {
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            views.push((
                t.name.clone(),
                TensorView::new(Dtype::F32, shape, data).map_err(safetensors_err)?,
            ));
        }
        let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        safetensors::serialize_to_file(views, metadata, &weights_path).map_err(safetensors_err)?;
        sync_path(&weights_path)
    }

    /// Reads a PEFT LoRA directory (f32/f16/bf16 tensors).
    pub fn load_peft(dir: &Path) -> Result<Self, ModelError> {
        let config_path = dir.join("adapter_config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: config_path.clone(),
                source,
            })?;
        let invalid = |message: String| ModelError::InvalidConfig {
            path: config_path.clone(),
            message,
        };
        if json.get("peft_type").and_then(|v| v.as_str()) != Some("LORA") {
            return Err(invalid("peft_type is not LORA".into()));
        }
        if json.get("use_rslora").and_then(|v| v.as_bool()) == Some(true) {
            return Err(invalid("use_rslora is not supported".into()));
        }
        let rank = json
            .get("r")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| invalid("missing r".into()))? as usize;
        let alpha = json
            .get("lora_alpha")
            .and_then(|v| v.as_f64())
            .ok_or_else(|| invalid("missing lora_alpha".into()))?;
        let names: Vec<String> = match json.get("target_modules") {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => return Err(invalid("missing target_modules".into())),
        };
        let mut target_modules = Vec::new();
        for name in &names {
            target_modules.push(
                LoraTarget::from_module_name(name)
                    .ok_or_else(|| invalid(format!("unsupported target module {name:?}")))?,
            );
        }
        target_modules.sort_by_key(|t| LoraTarget::ALL.iter().position(|a| a == t));
        let weights_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&weights_path).map_err(|e| ModelError::io(&weights_path, e))?;
        let safetensors_err = |message: String| ModelError::Safetensors {
            file: weights_path.clone(),
            message,
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| safetensors_err(e.to_string()))?;
        let mut tensors = Vec::new();
        for (name, view) in st.tensors() {
            let kind = match view.dtype() {
                Dtype::F32 => Kind::Float,
                Dtype::F16 => Kind::Half,
                Dtype::BF16 => Kind::BFloat16,
                other => {
                    return Err(safetensors_err(format!(
                        "{name}: unsupported dtype {other:?}"
                    )))
                }
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
            // PEFT names may carry the adapter name (`lora_A.default.weight`): normalise it.
            let (layer, target, matrix) = parse_peft_name(&name)
                .ok_or_else(|| safetensors_err(format!("unexpected tensor {name}")))?;
            tensors.push(AdapterTensor {
                name: peft_name(layer, target, matrix),
                shape,
                data: tensor_to_vec(&t),
            });
        }
        // The order `TrainableAdapter::snapshot` produces: by layer, target, then A before B.
        tensors.sort_by_key(|t| {
            let (layer, target, matrix) =
                parse_peft_name(&t.name).unwrap_or((usize::MAX, LoraTarget::Down, 'B'));
            (
                layer,
                LoraTarget::ALL.iter().position(|&a| a == target),
                matrix,
            )
        });
        Ok(AdapterSnapshot {
            config: LoraConfig {
                rank,
                alpha,
                target_modules,
            },
            tensors,
        })
    }
}

/// Serving adapters by id (the policy version). A sequence keeps the adapter it started on,
/// so a swap installs the new adapter as the current one and leases the old one until the
/// scheduler says no sequence uses it (`retain_adapters`).
impl Transformer {
    /// Installs `snapshot` (None: the base weights) as the current adapter under `id`; the
    /// previous current adapter stays usable under its id. The new adapter is fully built
    /// first, so a failure changes nothing.
    pub fn install_adapter(
        &mut self,
        id: u64,
        snapshot: Option<&AdapterSnapshot>,
    ) -> Result<(), ModelError> {
        let installed = snapshot.map(|s| self.build_adapter(s)).transpose()?;
        let previous = std::mem::replace(&mut self.adapter, installed);
        let previous_id = std::mem::replace(&mut self.adapter_id, id);
        self.leased.retain(|(leased, _)| *leased != id);
        if previous_id != id {
            self.leased.push((previous_id, previous));
        }
        Ok(())
    }

    /// Drops the leased adapters whose ids are not listed (the current one always stays).
    pub fn retain_adapters(&mut self, ids: &[u64]) {
        self.leased.retain(|(id, _)| ids.contains(id));
    }

    /// The adapter installed under `id` (None: the base weights, as is an id installed
    /// without an adapter); an id that is neither current nor leased is an error.
    pub(crate) fn installed_adapter(
        &self,
        id: Option<u64>,
    ) -> Result<Option<&InstalledAdapter>, ModelError> {
        let Some(id) = id else { return Ok(None) };
        if id == self.adapter_id {
            return Ok(self.adapter.as_ref());
        }
        self.leased
            .iter()
            .find(|(leased, _)| *leased == id)
            .map(|(_, adapter)| adapter.as_ref())
            .ok_or_else(|| ModelError::Adapter(format!("no adapter is installed under id {id}")))
    }

    fn build_adapter(&self, snapshot: &AdapterSnapshot) -> Result<InstalledAdapter, ModelError> {
        let _guard = tch::no_grad_guard();
        let pairs = snapshot.to_pairs(&self.config, self.kind, self.device)?;
        let scale = snapshot.config.scale();
        let fused = pairs
            .iter()
            .map(|p| lora::fuse_layer(p, &self.config, scale, true))
            .collect();
        Ok(InstalledAdapter {
            config: snapshot.config.clone(),
            pairs,
            fused: Some(fused),
        })
    }
}

/// Flushes a file, or a directory's entries, to the disk (fsync).
pub fn sync_path(path: &Path) -> Result<(), ModelError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| ModelError::io(path, e))
}
