//! Rotary position embedding tables (HF `rotate_half` convention), computed once at load.

use tch::{Device, Kind, Tensor};

use super::config::{Llama3RopeScaling, ModelConfig, RopeScaling, YarnRopeScaling};

/// cos and signed-sin tables, [max_positions, head_dim] f32. `sin` holds `-sin` in its first
/// half so that rope is `x * cos + roll(x, head_dim / 2) * sin` (roll swaps the halves). Both
/// carry the rope's attention factor (YaRN's mscale), so every path that reads them (the tensor
/// path and `fused_decode`) applies it.
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Inverse frequencies with the configured scaling, in the f32 arithmetic of transformers'
/// `modeling_rope_utils.py` (its Python-float intermediates in f64), so the tables match.
pub fn inverse_frequencies(config: &ModelConfig) -> Vec<f32> {
    let dim = config.head_dim;
    // `base ** (arange(0, dim, 2).float() / dim)` with `base` a Python float.
    let default = |base: f64| -> Vec<f32> {
        let base = base as f32;
        (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
            .collect()
    };
    let Some(scaling) = config.rope_scaling else {
        return default(config.rope_theta);
    };
    match scaling {
        RopeScaling::Linear { factor, .. } => default(config.rope_theta)
            .into_iter()
            .map(|f| f / factor as f32)
            .collect(),
        RopeScaling::Dynamic {
            factor,
            original_max_position_embeddings,
        } => {
            // `_compute_dynamic_ntk_parameters` at seq_len = original × factor (see RopeScaling).
            let original = original_max_position_embeddings as f64;
            let seq_len = (original * factor).floor().max(original);
            let d = dim as f64;
            let base = config.rope_theta
                * ((factor * seq_len / original) - (factor - 1.0)).powf(d / (d - 2.0));
            default(base)
        }
        RopeScaling::Yarn(y) => yarn(config.rope_theta, dim, &y),
        RopeScaling::Llama3(s) => llama3(default(config.rope_theta), &s),
    }
}

/// `_compute_yarn_parameters` (without the attention factor, applied to the tables).
fn yarn(base: f64, dim: usize, y: &YarnRopeScaling) -> Vec<f32> {
    let d = dim as f64;
    let correction_dim = |rotations: f64| {
        (d * (y.original_max_position_embeddings / (rotations * 2.0 * std::f64::consts::PI)).ln())
            / (2.0 * base.ln())
    };
    let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
    if y.truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
    if low == high {
        high += 0.001; // prevent singularity
    }
    let (low_f, span) = (low as f32, (high - low) as f32);
    let factor = y.factor as f32;
    let base = base as f32;
    (0..dim / 2)
        .map(|i| {
            let pos_freq = base.powf((2 * i) as f32 / dim as f32);
            let extrapolation = 1.0 / pos_freq;
            let interpolation = 1.0 / (factor * pos_freq);
            let ramp = ((i as f32 - low_f) / span).clamp(0.0, 1.0);
            let extrapolation_factor = 1.0 - ramp;
            interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
        })
        .collect()
}

/// `_compute_llama3_parameters`: low frequencies divided by `factor`, a smooth blend between.
fn llama3(mut inv: Vec<f32>, s: &Llama3RopeScaling) -> Vec<f32> {
    let old = s.original_max_position_embeddings;
    let factor = s.factor as f32;
    let low_wavelen = (old / s.low_freq_factor) as f32;
    let high_wavelen = (old / s.high_freq_factor) as f32;
    let span = (s.high_freq_factor - s.low_freq_factor) as f32;
    for f in inv.iter_mut() {
        // `2 * math.pi / inv_freq` is `inv_freq.reciprocal() * 2π` in torch.
        let wavelen = (1.0 / *f) * (2.0 * std::f64::consts::PI) as f32;
        if wavelen > low_wavelen {
            *f /= factor;
        } else if wavelen >= high_wavelen {
            let smooth = ((1.0 / wavelen) * old as f32 - s.low_freq_factor as f32) / span;
            *f = (1.0 - smooth) * *f / factor + smooth * *f;
        }
    }
    inv
}

impl RopeTables {
    pub fn new(config: &ModelConfig, device: Device) -> Self {
        let inv = inverse_frequencies(config);
        // transformers: `emb.cos() * attention_scaling` (a Python float on an f32 tensor).
        let scale = config.rope_scaling.map_or(1.0, |r| r.attention_factor()) as f32;
        let half = inv.len();
        let positions = config.max_position_embeddings;
        let mut cos = Vec::with_capacity(positions * half * 2);
        let mut sin = Vec::with_capacity(positions * half * 2);
        for p in 0..positions {
            let angles: Vec<f32> = inv.iter().map(|f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos() * scale));
            }
            sin.extend(angles.iter().map(|a| -(a.sin() * scale)));
            sin.extend(angles.iter().map(|a| a.sin() * scale));
        }
        let shape = [positions as i64, 2 * half as i64];
        RopeTables {
            cos: Tensor::from_slice(&cos).view(shape).to_device(device),
            sin: Tensor::from_slice(&sin).view(shape).to_device(device),
        }
    }
}

/// Applies rope to `x` [.., heads, head_dim] with cos/sin broadcastable to it (f32 math).
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let rotated = xf.roll([half], [-1]);
    (xf * cos).addcmul(&rotated, sin).to_kind(kind)
}
