//! Rotary position embedding tables (HF `rotate_half` convention), computed once at load.

use tch::{Device, Kind, Tensor};

use super::config::ModelConfig;

/// cos and signed-sin tables, [max_positions, head_dim] f32. `sin` holds `-sin` in its first
/// half so that rope is `x * cos + roll(x, head_dim / 2) * sin` (roll swaps the halves).
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Inverse frequencies in f32 arithmetic like transformers, with llama3 scaling if configured.
pub fn inverse_frequencies(config: &ModelConfig) -> Vec<f32> {
    let dim = config.head_dim;
    let base = config.rope_theta as f32;
    let mut inv: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
        .collect();
    if let Some(s) = config.rope_scaling {
        let old = s.original_max_position_embeddings as f32;
        let (factor, low, high) = (
            s.factor as f32,
            s.low_freq_factor as f32,
            s.high_freq_factor as f32,
        );
        let low_wavelen = old / low;
        let high_wavelen = old / high;
        for f in inv.iter_mut() {
            let wavelen = 2.0 * std::f32::consts::PI / *f;
            if wavelen > low_wavelen {
                *f /= factor;
            } else if wavelen >= high_wavelen {
                let smooth = (old / wavelen - low) / (high - low);
                *f = (1.0 - smooth) * *f / factor + smooth * *f;
            }
        }
    }
    inv
}

impl RopeTables {
    pub fn new(config: &ModelConfig, device: Device) -> Self {
        let inv = inverse_frequencies(config);
        let half = inv.len();
        let positions = config.max_position_embeddings;
        let mut cos = Vec::with_capacity(positions * half * 2);
        let mut sin = Vec::with_capacity(positions * half * 2);
        for p in 0..positions {
            let angles: Vec<f32> = inv.iter().map(|f| p as f32 * f).collect();
            cos.extend(angles.iter().map(|a| a.cos()));
            cos.extend(angles.iter().map(|a| a.cos()));
            sin.extend(angles.iter().map(|a| -a.sin()));
            sin.extend(angles.iter().map(|a| a.sin()));
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
