//! LoRA: configuration, the trainable adapter (a `VarStore` of A/B pairs) and the low-rank
//! deltas applied to the fused base projections.

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::config::ModelConfig;
use super::error::ModelError;

/// A projection LoRA can adapt, named like PEFT's `target_modules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LoraTarget {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    pub fn module_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    pub fn from_module_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.module_name() == name)
    }

    /// The HF submodule holding the projection: `self_attn` or `mlp`.
    pub fn parent(self) -> &'static str {
        match self {
            LoraTarget::Q | LoraTarget::K | LoraTarget::V | LoraTarget::O => "self_attn",
            _ => "mlp",
        }
    }

    /// (in_features, out_features) of the base projection.
    pub fn dims(self, config: &ModelConfig) -> (usize, usize) {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        match self {
            LoraTarget::Q => (h, config.q_dim()),
            LoraTarget::K | LoraTarget::V => (h, config.kv_dim()),
            LoraTarget::O => (config.q_dim(), h),
            LoraTarget::Gate | LoraTarget::Up => (h, i),
            LoraTarget::Down => (i, h),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub target_modules: Vec<LoraTarget>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 16,
            alpha: 32.0,
            target_modules: LoraTarget::ALL.to_vec(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        if self.rank == 0 {
            return Err(ModelError::Adapter("rank must be positive".into()));
        }
        if self.target_modules.is_empty() {
            return Err(ModelError::Adapter("target_modules is empty".into()));
        }
        Ok(())
    }
}

/// A [rank, in] and B [out, rank] of one target in one layer.
pub(crate) struct LoraPair {
    pub target: LoraTarget,
    pub a: Tensor,
    pub b: Tensor,
}

impl LoraPair {
    pub fn shallow_clone(&self) -> Self {
        LoraPair {
            target: self.target,
            a: self.a.shallow_clone(),
            b: self.b.shallow_clone(),
        }
    }
}

/// The low-rank delta of one fused base projection: `delta = (x Aᵀ) Bᵀ`, with the LoRA
/// scale folded into B and B block-structured so each target only touches its output slice.
pub(crate) struct FusedLora {
    a: Tensor,
    b: Tensor,
}

/// Deltas for the four fused projections of one layer.
#[derive(Default)]
pub(crate) struct LayerLora {
    pub qkv: Option<FusedLora>,
    pub o: Option<FusedLora>,
    pub gate_up: Option<FusedLora>,
    pub down: Option<FusedLora>,
}

/// Serving adapters pad their fused rank to a multiple of this with zeros, so that the
/// `skinny_matmul` kernels (64 output features per task) can run both low-rank products in
/// the fused decode step. The zeros add nothing to the delta.
const SERVING_RANK_MULTIPLE: i64 = 64;

impl FusedLora {
    /// A [rank, in] and B [out, rank] (B already scaled).
    pub(crate) fn parts(&self) -> (&Tensor, &Tensor) {
        (&self.a, &self.b)
    }
}

fn fuse(
    pairs: &[LoraPair],
    members: &[LoraTarget],
    config: &ModelConfig,
    scale: f64,
    serving: bool,
) -> Option<FusedLora> {
    let present: Vec<&LoraPair> = members
        .iter()
        .filter_map(|m| pairs.iter().find(|p| p.target == *m))
        .collect();
    let first = present.first()?;
    let (kind, device) = (first.b.kind(), first.b.device());
    let ranks: Vec<i64> = present.iter().map(|p| p.a.size()[0]).collect();
    let total_rank: i64 = ranks.iter().sum();
    let a = Tensor::cat(&present.iter().map(|p| &p.a).collect::<Vec<_>>(), 0);
    let mut rows = Vec::new();
    for member in members {
        let out = member.dims(config).1 as i64;
        match present.iter().position(|p| p.target == *member) {
            Some(j) => {
                let before: i64 = ranks[..j].iter().sum();
                let after = total_rank - before - ranks[j];
                let zeros = |cols: i64| Tensor::zeros([out, cols], (kind, device));
                rows.push(Tensor::cat(
                    &[zeros(before), &present[j].b * scale, zeros(after)],
                    1,
                ));
            }
            None => rows.push(Tensor::zeros([out, total_rank], (kind, device))),
        }
    }
    let b = Tensor::cat(&rows, 0);
    let pad = (SERVING_RANK_MULTIPLE - total_rank % SERVING_RANK_MULTIPLE) % SERVING_RANK_MULTIPLE;
    if serving && pad > 0 {
        let (fan_in, out) = (a.size()[1], b.size()[0]);
        return Some(FusedLora {
            a: Tensor::cat(&[a, Tensor::zeros([pad, fan_in], (kind, device))], 0),
            b: Tensor::cat(&[b, Tensor::zeros([out, pad], (kind, device))], 1),
        });
    }
    Some(FusedLora { a, b })
}

/// Groups one layer's pairs into the fused shapes the base weights use; `serving` pads the
/// rank for the fused decode step (see `SERVING_RANK_MULTIPLE`), a trainable adapter's
/// autograd graph does without.
pub(crate) fn fuse_layer(
    pairs: &[LoraPair],
    config: &ModelConfig,
    scale: f64,
    serving: bool,
) -> LayerLora {
    use LoraTarget::*;
    LayerLora {
        qkv: fuse(pairs, &[Q, K, V], config, scale, serving),
        o: fuse(pairs, &[O], config, scale, serving),
        gate_up: fuse(pairs, &[Gate, Up], config, scale, serving),
        down: fuse(pairs, &[Down], config, scale, serving),
    }
}

/// `base + (x Aᵀ) Bᵀ`; `row_mask` [B, 1, 1] zeroes the delta of rows that use the base model.
pub(crate) fn add_delta(
    base: Tensor,
    x: &Tensor,
    lora: Option<&FusedLora>,
    row_mask: Option<&Tensor>,
) -> Tensor {
    let Some(lora) = lora else { return base };
    let low = x.to_kind(lora.a.kind()).linear::<Tensor>(&lora.a, None);
    let low = match row_mask {
        Some(mask) => low * mask,
        None => low,
    };
    base + low.linear::<Tensor>(&lora.b, None).to_kind(x.kind())
}

/// An adapter being trained: f32 A/B pairs in a `VarStore` (train them with any `nn` optimizer,
/// e.g. `nn::AdamW::default().build(adapter.var_store(), 1e-3)`). Attach it to a `Transformer`
/// with `Transformer::attach_trainable` so that `forward_logits(.., true)` uses it.
pub struct TrainableAdapter {
    vs: nn::VarStore,
    config: LoraConfig,
    num_layers: usize,
    pairs: Vec<Vec<LoraPair>>,
}

impl TrainableAdapter {
    /// A fresh adapter: A kaiming-uniform like PEFT (bound 1/sqrt(in)), B zeros.
    pub fn new(
        model_config: &ModelConfig,
        mut config: LoraConfig,
        device: Device,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        // Canonical target order (as PEFT files are read back), without duplicates.
        config.target_modules = LoraTarget::ALL
            .into_iter()
            .filter(|t| config.target_modules.contains(t))
            .collect();
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let r = config.rank as i64;
        let mut pairs = Vec::new();
        for layer in 0..model_config.num_layers {
            let mut layer_pairs = Vec::new();
            for &target in &config.target_modules {
                let (fan_in, out) = target.dims(model_config);
                let bound = 1.0 / (fan_in as f64).sqrt();
                let name = format!("layers_{layer}_{}", target.module_name());
                let a = root.f_var(
                    &format!("{name}_lora_A"),
                    &[r, fan_in as i64],
                    nn::Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                )?;
                let b = root.f_var(
                    &format!("{name}_lora_B"),
                    &[out as i64, r],
                    nn::Init::Const(0.0),
                )?;
                layer_pairs.push(LoraPair { target, a, b });
            }
            pairs.push(layer_pairs);
        }
        Ok(TrainableAdapter {
            vs,
            config,
            num_layers: model_config.num_layers,
            pairs,
        })
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    /// The pairs of each layer, sharing storage and gradients with the variables.
    pub(crate) fn pairs(&self) -> Vec<Vec<LoraPair>> {
        self.pairs
            .iter()
            .map(|layer| layer.iter().map(LoraPair::shallow_clone).collect())
            .collect()
    }

    /// Copies values (e.g. from a snapshot) into the variables, keeping them trainable.
    pub(crate) fn set_values(
        &mut self,
        layer: usize,
        target: LoraTarget,
        a: &Tensor,
        b: &Tensor,
    ) -> Result<(), ModelError> {
        let pair = self
            .pairs
            .get_mut(layer)
            .and_then(|l| l.iter_mut().find(|p| p.target == target))
            .ok_or_else(|| {
                ModelError::Adapter(format!(
                    "layer {layer} has no {} adapter",
                    target.module_name()
                ))
            })?;
        let _guard = tch::no_grad_guard();
        if pair.a.size() != a.size() || pair.b.size() != b.size() {
            return Err(ModelError::Adapter(format!(
                "layer {layer} {}: shapes {:?}/{:?}, expected {:?}/{:?}",
                target.module_name(),
                a.size(),
                b.size(),
                pair.a.size(),
                pair.b.size()
            )));
        }
        pair.a.f_copy_(&a.to_kind(Kind::Float))?;
        pair.b.f_copy_(&b.to_kind(Kind::Float))?;
        Ok(())
    }
}
