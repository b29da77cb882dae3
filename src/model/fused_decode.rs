//! The CPU decode step as one pass over plain f32 buffers.
//!
//! A decode step of a small model on a CPU spends much of its time outside the matmuls: each
//! layer runs some thirty libtorch ops (norms, rope, cache writes, attention, activation,
//! residual adds) on a few rows, each with its dispatch and allocation. Here a step keeps the
//! residual stream and every intermediate in f32 buffers, runs the projections through the
//! `skinny_matmul` kernels and does the rest in plain loops. Serving adapters apply per row,
//! their low-rank products through the same kernels. The tensor path (`kv_cache.rs`) stays
//! the reference: prefill, training, other devices, and steps this does not cover go there.
//! `HINDSIGHT_FUSED_DECODE=0` turns this path off, for A/B runs.
//!
//! Precision: activations stay f32 between the projections; with bf16 weights the inputs of
//! each projection are rounded to bf16 (as the tensor path's bf16 activations are) and the
//! KV cache holds bf16.

mod exp;

use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use super::kv_cache::SlotKv;
use super::lora::{FusedLora, LayerLora};
use super::omp_team;
use super::skinny_matmul::{self, MAX_ROWS};
use super::transformer::{InstalledAdapter, Transformer};

fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("HINDSIGHT_FUSED_DECODE").map_or(true, |v| v != "0"))
}

/// A row of the step: its sequence's cache (per layer [kv_heads, capacity, head_dim] in the
/// model's dtype), the position of its new token, the token.
#[derive(Clone, Copy)]
pub(crate) struct StepRow<'a> {
    pub kv: &'a SlotKv,
    pub position: usize,
    pub token: u32,
}

impl Transformer {
    /// Whether `decode_fused` can run `rows` rows on this model (see `fused_decode_model`).
    pub(crate) fn fused_decode_covers(&self, rows: usize) -> bool {
        self.fused_decode && enabled() && (1..=MAX_ROWS).contains(&rows)
    }

    /// Turns the fused decode step on or off for this model (on only where it applies), for
    /// A/B comparisons with the tensor path; returns whether it is on now.
    pub fn set_fused_decode(&mut self, on: bool) -> bool {
        self.fused_decode = on && self.fused_decode_model();
        self.fused_decode
    }

    /// Whether this model's decode steps can run fused: a CPU model whose every projection
    /// the kernels cover, with f32 norms and a head_dim the attention loop takes. Checked
    /// once at load (weights never change after it).
    pub(crate) fn fused_decode_model(&self) -> bool {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        self.device == Device::Cpu
            && skinny_matmul::covers(head)
            && self.config.head_dim.is_multiple_of(16)
            && self.layers.iter().all(|l| {
                [&l.qkv_w, &l.o_w, &l.gate_up_w, &l.down_w]
                    .into_iter()
                    .all(skinny_matmul::covers)
                    && [
                        Some(&l.input_norm),
                        Some(&l.post_norm),
                        l.q_norm.as_ref(),
                        l.k_norm.as_ref(),
                    ]
                    .into_iter()
                    .flatten()
                    .all(|n| n.kind() == Kind::Float && n.is_contiguous())
            })
    }

    /// Whether the fused step can apply `adapter`: a serving adapter (fused at install) whose
    /// low-rank factors the kernels cover.
    pub(crate) fn fused_decode_takes(adapter: &InstalledAdapter) -> bool {
        adapter.fused.as_ref().is_some_and(|layers| {
            layers.iter().all(|l| {
                [&l.qkv, &l.o, &l.gate_up, &l.down]
                    .into_iter()
                    .flatten()
                    .all(|lora| {
                        let (a, b) = lora.parts();
                        skinny_matmul::covers(a) && skinny_matmul::covers(b)
                    })
            })
        })
    }

    /// Logits [B, vocab] f32 for one new token per row, writing each row's keys and values at
    /// its position; row b adds the deltas of `adapters[b]` (fused serving layers; None: the
    /// base). The caller has checked `fused_decode_covers`, `fused_decode_takes` for every
    /// adapter, and that positions fit each row's cache capacity.
    pub(crate) fn decode_fused(
        &self,
        rows: &[StepRow],
        adapters: &[Option<&[LayerLora]>],
    ) -> Tensor {
        let c = &self.config;
        let b = rows.len();
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (qd, kvd, inter) = (c.q_dim(), c.kv_dim(), c.intermediate_size);
        let eps = c.rms_norm_eps as f32;
        let mut x = vec![0f32; b * h];
        for (r, row) in rows.iter().enumerate() {
            read_row(&self.embed, row.token as usize, &mut x[r * h..(r + 1) * h]);
        }
        let mut normed = vec![0f32; b * h];
        let mut qkv = vec![0f32; b * (qd + 2 * kvd)];
        let mut attn = vec![0f32; b * qd];
        let mut proj = vec![0f32; b * h];
        let mut gate_up = vec![0f32; b * 2 * inter];
        let mut act = vec![0f32; b * inter];
        for (index, layer) in self.layers.iter().enumerate() {
            let deltas = LoraDeltas {
                adapters,
                layer: index,
            };
            rms_norm_rows(&x, f32s(&layer.input_norm), eps, &mut normed);
            let bias = layer.qkv_b.as_ref().map(to_f32_vec);
            skinny_matmul::into(&normed, &layer.qkv_w, bias.as_deref(), &mut qkv);
            deltas.add(|l| l.qkv.as_ref(), &normed, &mut qkv);
            for (r, row) in rows.iter().enumerate() {
                let out = &mut qkv[r * (qd + 2 * kvd)..(r + 1) * (qd + 2 * kvd)];
                let (q, rest) = out.split_at_mut(qd);
                let (k, v) = rest.split_at_mut(kvd);
                if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                    rms_norm_in_place(q, f32s(qn), eps);
                    rms_norm_in_place(k, f32s(kn), eps);
                }
                self.rope_heads(q, row.position);
                self.rope_heads(k, row.position);
                let at = |head: usize| (head * row.kv.capacity + row.position) * hd;
                let (keys, values) = (&row.kv.keys[index], &row.kv.values[index]);
                for head in 0..c.num_kv_heads {
                    write_row(keys, at(head), &k[head * hd..(head + 1) * hd]);
                    write_row(values, at(head), &v[head * hd..(head + 1) * hd]);
                }
            }
            self.attend_rows(index, rows, &qkv, &mut attn);
            let bias = layer.o_b.as_ref().map(to_f32_vec);
            skinny_matmul::into(&attn, &layer.o_w, bias.as_deref(), &mut proj);
            deltas.add(|l| l.o.as_ref(), &attn, &mut proj);
            add_into(&mut x, &proj);
            rms_norm_rows(&x, f32s(&layer.post_norm), eps, &mut normed);
            skinny_matmul::into(&normed, &layer.gate_up_w, None, &mut gate_up);
            deltas.add(|l| l.gate_up.as_ref(), &normed, &mut gate_up);
            for r in 0..b {
                let gu = &gate_up[r * 2 * inter..(r + 1) * 2 * inter];
                let (gate, up) = gu.split_at(inter);
                let act = &mut act[r * inter..(r + 1) * inter];
                for (a, &g) in act.iter_mut().zip(gate) {
                    *a = -g;
                }
                // SAFETY: the fused step runs only where the AVX2 kernels do.
                unsafe { exp::exp_in_place(act) };
                for ((a, &g), &u) in act.iter_mut().zip(gate).zip(up) {
                    *a = g / (1.0 + *a) * u;
                }
            }
            skinny_matmul::into(&act, &layer.down_w, None, &mut proj);
            deltas.add(|l| l.down.as_ref(), &act, &mut proj);
            add_into(&mut x, &proj);
        }
        rms_norm_rows(&x, f32s(&self.final_norm), eps, &mut normed);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let vocab = head.size()[0];
        let logits = Tensor::empty([b as i64, vocab], (Kind::Float, Device::Cpu));
        // SAFETY: a new contiguous f32 tensor of b * vocab values, written only here.
        let out = unsafe {
            std::slice::from_raw_parts_mut(logits.data_ptr() as *mut f32, b * vocab as usize)
        };
        skinny_matmul::into(&normed, head, None, out);
        logits
    }

    /// Rotary embedding of each head of `x` [heads * head_dim] at `position`, with the
    /// tables of `RopeTables` (x·cos + roll(x, half)·signed sin).
    fn rope_heads(&self, x: &mut [f32], position: usize) {
        let hd = self.config.head_dim;
        let half = hd / 2;
        let cos = &f32s(&self.rope.cos)[position * hd..(position + 1) * hd];
        let sin = &f32s(&self.rope.sin)[position * hd..(position + 1) * hd];
        for head in x.chunks_exact_mut(hd) {
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * cos[i] + b * sin[i];
                hi[i] = b * cos[half + i] + a * sin[half + i];
            }
        }
    }

    /// Attention of every row's query heads over its cached positions 0..=position, into
    /// `attn` [B, q_dim]. The (row, kv head) pairs are split across the OpenMP team.
    fn attend_rows(&self, layer: usize, rows: &[StepRow], qkv: &[f32], attn: &mut [f32]) {
        let c = &self.config;
        let (nkv, hd, qd) = (c.num_kv_heads, c.head_dim, c.q_dim());
        let group = c.num_heads / nkv;
        let width = qd + 2 * c.kv_dim();
        let tasks = rows.len() * nkv;
        let out = SharedOut(attn.as_mut_ptr());
        let bf16 = self.kind == Kind::BFloat16;
        // Each row's cache pointers (as integers: the tasks run on other threads, and tensors
        // are not Sync), capacity and length.
        let plain: Vec<(usize, usize, usize, usize)> = rows
            .iter()
            .map(|row| {
                (
                    row.kv.keys[layer].data_ptr() as usize,
                    row.kv.values[layer].data_ptr() as usize,
                    row.kv.capacity,
                    row.position + 1,
                )
            })
            .collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let work = |task: usize| {
            let (r, head) = (task / nkv, task % nkv);
            let (keys, values, capacity, len) = plain[r];
            let base = head * capacity * hd;
            let q = &qkv[r * width + head * group * hd..r * width + (head + 1) * group * hd];
            // SAFETY: this task alone writes query heads head*group..(head+1)*group of row r.
            let out = unsafe {
                std::slice::from_raw_parts_mut(out.at(r * qd + head * group * hd), group * hd)
            };
            // SAFETY: the cache tensors hold `base + len * hd` values (len ≤ capacity), and
            // `fused_decode_covers` implies AVX2 and FMA (the skinny kernels need them).
            unsafe {
                if bf16 {
                    let k = (keys as *const u16).add(base);
                    let v = (values as *const u16).add(base);
                    attend_head::<u16>(q, k, v, len, hd, scale, out);
                } else {
                    let k = (keys as *const f32).add(base);
                    let v = (values as *const f32).add(base);
                    attend_head::<f32>(q, k, v, len, hd, scale, out);
                }
            }
        };
        if tasks > 1 && omp_team::threads() > 1 {
            omp_team::run(|index, count| {
                (index..tasks).step_by(count).for_each(&work);
            });
        } else {
            (0..tasks).for_each(work);
        }
    }
}

/// The adapter deltas of one layer for the rows of a step.
struct LoraDeltas<'a> {
    adapters: &'a [Option<&'a [LayerLora]>],
    layer: usize,
}

impl LoraDeltas<'_> {
    /// Adds `(x Aᵀ) Bᵀ` of the projection `pick` chooses to each adapted row of `out`, the
    /// rows that share an adapter together. `x` [B, in] is the projection's input.
    fn add(&self, pick: impl Fn(&LayerLora) -> Option<&FusedLora>, x: &[f32], out: &mut [f32]) {
        let b = self.adapters.len();
        let (inner, features) = (x.len() / b, out.len() / b);
        let mut done = vec![false; b];
        for first in 0..b {
            let Some(layers) = self.adapters[first].filter(|_| !done[first]) else {
                continue;
            };
            let same = |r: usize| self.adapters[r].is_some_and(|l| std::ptr::eq(l, layers));
            let members: Vec<usize> = (first..b).filter(|&r| same(r)).collect();
            members.iter().for_each(|&r| done[r] = true);
            let Some(lora) = pick(&layers[self.layer]) else {
                continue;
            };
            let (a, b_up) = lora.parts();
            let rank = a.size()[0] as usize;
            let xs: Vec<f32> = members
                .iter()
                .flat_map(|&r| x[r * inner..(r + 1) * inner].iter().copied())
                .collect();
            let mut low = vec![0f32; members.len() * rank];
            skinny_matmul::into(&xs, a, None, &mut low);
            let mut delta = vec![0f32; members.len() * features];
            skinny_matmul::into(&low, b_up, None, &mut delta);
            for (i, &r) in members.iter().enumerate() {
                add_into(
                    &mut out[r * features..(r + 1) * features],
                    &delta[i * features..(i + 1) * features],
                );
            }
        }
    }
}

/// The output pointer shared by the attention tasks (each writes its own heads).
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint ranges (see `attend_rows`).
unsafe impl Sync for SharedOut {}
unsafe impl Send for SharedOut {}
impl SharedOut {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: offsets stay inside the attention buffer.
        unsafe { self.0.add(offset) }
    }
}

/// A cache element: f32, or bf16 as its bits.
trait CacheValue: Copy {
    fn value(self) -> f32;
}

impl CacheValue for f32 {
    #[inline(always)]
    fn value(self) -> f32 {
        self
    }
}

impl CacheValue for u16 {
    #[inline(always)]
    fn value(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }
}

/// Softmax attention of `group` query heads (`q` [group * hd]) over `len` cached keys and
/// values of one kv head (`keys`, `values` [len, hd]) into `out` [group * hd].
///
/// # Safety
/// AVX2 and FMA are available; `keys` and `values` hold `len * hd` values.
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_head<E: CacheValue>(
    q: &[f32],
    keys: *const E,
    values: *const E,
    len: usize,
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    let group = q.len() / hd;
    let mut scores = vec![0f32; group * len];
    for t in 0..len {
        let key = std::slice::from_raw_parts(keys.add(t * hd), hd);
        for g in 0..group {
            scores[g * len + t] = dot(&q[g * hd..(g + 1) * hd], key) * scale;
        }
    }
    for g in 0..group {
        let s = &mut scores[g * len..(g + 1) * len];
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        s.iter_mut().for_each(|v| *v -= max);
        exp::exp_in_place(s);
        let total: f32 = s.iter().sum();
        let o = &mut out[g * hd..(g + 1) * hd];
        o.fill(0.0);
        for (t, &p) in s.iter().enumerate() {
            let value = std::slice::from_raw_parts(values.add(t * hd), hd);
            let w = p / total;
            for (acc, &v) in o.iter_mut().zip(value) {
                *acc += w * v.value();
            }
        }
    }
}

/// Σ a·b with eight independent partial sums (so the loop vectorizes without reassociation).
#[inline(always)]
fn dot<E: CacheValue>(a: &[f32], b: &[E]) -> f32 {
    let mut acc = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i].value();
        }
    }
    acc.iter().sum()
}

/// RMSNorm of each row of `x` (rows of `weight.len()` values) into `out`, in f32 like the
/// tensor path's `rms_norm`.
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    rms_norm_in_place(out, weight, eps);
}

/// `rms_norm_rows` of `x` onto itself.
fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let n = weight.len();
    for row in x.chunks_exact_mut(n) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for (v, &w) in row.iter_mut().zip(weight) {
            *v = *v * inv * w;
        }
    }
}

fn add_into(x: &mut [f32], delta: &[f32]) {
    for (a, d) in x.iter_mut().zip(delta) {
        *a += d;
    }
}

/// The values of a contiguous f32 CPU tensor.
fn f32s(t: &Tensor) -> &[f32] {
    debug_assert!(t.kind() == Kind::Float && t.is_contiguous());
    // SAFETY: a contiguous f32 tensor of numel values that outlives the borrow.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) }
}

fn to_f32_vec(t: &Tensor) -> Vec<f32> {
    let flat = t.to_kind(Kind::Float).contiguous().view(-1);
    Vec::<f32>::try_from(&flat).unwrap_or_default()
}

/// Row `index` of a [rows, n] f32 or bf16 tensor, widened into `out` [n].
fn read_row(t: &Tensor, index: usize, out: &mut [f32]) {
    let n = out.len();
    // SAFETY: a contiguous CPU tensor with at least index + 1 rows of n values.
    unsafe {
        if t.kind() == Kind::BFloat16 {
            let p = (t.data_ptr() as *const u16).add(index * n);
            for (i, o) in out.iter_mut().enumerate() {
                *o = (*p.add(i)).value();
            }
        } else {
            let p = (t.data_ptr() as *const f32).add(index * n);
            out.copy_from_slice(std::slice::from_raw_parts(p, n));
        }
    }
}

/// Writes `values` at element offset `at` of a contiguous f32 or bf16 CPU tensor.
fn write_row(t: &Tensor, at: usize, values: &[f32]) {
    // SAFETY: the caller's offset leaves room for values.len() elements; the cache tensors
    // are written only by the serving thread that owns them.
    unsafe {
        if t.kind() == Kind::BFloat16 {
            let p = (t.data_ptr() as *mut u16).add(at);
            for (i, &v) in values.iter().enumerate() {
                *p.add(i) = half::bf16::from_f32(v).to_bits();
            }
        } else {
            let p = (t.data_ptr() as *mut f32).add(at);
            std::ptr::copy_nonoverlapping(values.as_ptr(), p, values.len());
        }
    }
}
