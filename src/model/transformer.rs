//! The decoder-only transformer (Llama / Qwen2 / Qwen3) as plain tensors, with q/k/v and
//! gate/up fused at load time. The serving paths live in `kv_cache.rs`, the adapter in `lora.rs`.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::config::ModelConfig;
use super::error::ModelError;
use super::lora::{self, FusedLora, LayerLora, LoraConfig, LoraPair, TrainableAdapter};
use super::overrides::ModelOverrides;
use super::rope::{self, RopeTables};
use super::skinny_matmul;
use super::weights::WeightFiles;

pub(crate) struct Layer {
    pub(crate) input_norm: Tensor,
    /// [q_dim + 2 kv_dim, hidden]
    pub(crate) qkv_w: Tensor,
    pub(crate) qkv_b: Option<Tensor>,
    pub(crate) o_w: Tensor,
    pub(crate) o_b: Option<Tensor>,
    pub(crate) q_norm: Option<Tensor>,
    pub(crate) k_norm: Option<Tensor>,
    pub(crate) post_norm: Tensor,
    /// [2 intermediate, hidden]
    pub(crate) gate_up_w: Tensor,
    pub(crate) down_w: Tensor,
}

/// The installed adapter: pairs per layer, and for serving adapters their fused form
/// (trainable adapters are fused anew in every forward so gradients reach the variables).
pub(crate) struct InstalledAdapter {
    pub config: LoraConfig,
    pub pairs: Vec<Vec<LoraPair>>,
    pub fused: Option<Vec<LayerLora>>,
}

pub struct Transformer {
    pub(crate) config: ModelConfig,
    pub(crate) device: Device,
    pub(crate) kind: Kind,
    pub(crate) embed: Tensor,
    /// None when tied to `embed`.
    pub(crate) lm_head: Option<Tensor>,
    pub(crate) final_norm: Tensor,
    pub(crate) layers: Vec<Layer>,
    pub(crate) rope: RopeTables,
    /// The current adapter (serving or trainable), installed under `adapter_id`.
    pub(crate) adapter: Option<InstalledAdapter>,
    pub(crate) adapter_id: u64,
    /// Earlier serving adapters kept for the sequences that started on them (see `peft.rs`).
    pub(crate) leased: Vec<(u64, Option<InstalledAdapter>)>,
    /// bf16 on a CPU without native bf16 matmuls: f32 room for the largest weight (see
    /// `Transformer::linear`).
    scratch: Option<Tensor>,
    /// Decode steps may run in `fused_decode` (checked at load).
    pub(crate) fused_decode: bool,
}

/// Output rows of the lm_head converted to f32 at a time (bf16 on CPU, several rows).
const HEAD_CHUNK: i64 = 4096;

/// Where a layer's keys and values come from: the training path uses the chunk's own, the
/// serving paths write them into the cache and read back the whole history.
pub(crate) trait KvSource {
    /// k, v: [B, T, kv_heads, head_dim] → keys, values [B, kv_heads, L, head_dim].
    fn keys_values(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor);

    /// Attention of q [B, T, heads, head_dim] given this step's k and v; by default one
    /// call over `keys_values`. A source whose rows keep separate histories overrides it.
    fn attention(
        &mut self,
        model: &Transformer,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let (keys, values) = self.keys_values(layer, k, v);
        model.attend(q, &keys, &values, mask)
    }
}

pub(crate) struct NoCache;

impl KvSource for NoCache {
    fn keys_values(&mut self, _layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        (k.transpose(1, 2), v.transpose(1, 2))
    }
}

/// An adapter applied to some rows of a batch.
pub(crate) struct RowsAdapter<'a> {
    pub layers: &'a [LayerLora],
    /// [B, 1, 1] 0/1 factor on the adapter delta of each row; None applies it to all rows.
    pub rows: Option<Tensor>,
}

/// An installed adapter (None: the base) and the [B, 1, 1] 0/1 mask of the rows it serves
/// (None: every row).
pub(crate) type AdapterGroup<'a> = (Option<&'a InstalledAdapter>, Option<Tensor>);

/// Per-forward inputs shared by all layers.
pub(crate) struct StepContext<'a> {
    /// Broadcastable to [B, T, heads, head_dim], f32.
    pub cos: Tensor,
    pub sin: Tensor,
    /// Bool [B, 1, groups * T, L] (see `Transformer::grouped_mask`); true = may attend.
    /// None when every query sees every key it is given (a cheaper SDPA path).
    pub mask: Option<Tensor>,
    /// Rows without an adapter use the base weights.
    pub adapters: Vec<RowsAdapter<'a>>,
}

impl Transformer {
    /// Loads `dir/config.json` and its safetensors weights as `kind` (Float or BFloat16) on `device`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self, ModelError> {
        Self::load_with(dir, device, kind, &ModelOverrides::default())
    }

    /// `load` with `overrides` (rope scaling, served window) applied to the parsed config.
    pub fn load_with(
        dir: &Path,
        device: Device,
        kind: Kind,
        overrides: &ModelOverrides,
    ) -> Result<Self, ModelError> {
        if !matches!(kind, Kind::Float | Kind::BFloat16) {
            return Err(ModelError::UnsupportedKind(kind));
        }
        let config = ModelConfig::from_dir_with(dir, overrides)?;
        let files = WeightFiles::open(dir)?;
        let _guard = tch::no_grad_guard();
        let c = &config;
        let (h, i, v) = (
            c.hidden_size as i64,
            c.intermediate_size as i64,
            c.vocab_size as i64,
        );
        let (qd, kvd, hd) = (c.q_dim() as i64, c.kv_dim() as i64, c.head_dim as i64);
        let w = |name: &str, shape: &[i64]| files.load(name, shape, kind, device);
        let norm = |name: &str, shape: &[i64]| files.load(name, shape, Kind::Float, device);
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}.");
            let attn = |n: &str| format!("{p}self_attn.{n}");
            let qkv_w = Tensor::cat(
                &[
                    w(&attn("q_proj.weight"), &[qd, h])?,
                    w(&attn("k_proj.weight"), &[kvd, h])?,
                    w(&attn("v_proj.weight"), &[kvd, h])?,
                ],
                0,
            );
            let qkv_b = if c.qkv_bias {
                Some(Tensor::cat(
                    &[
                        w(&attn("q_proj.bias"), &[qd])?,
                        w(&attn("k_proj.bias"), &[kvd])?,
                        w(&attn("v_proj.bias"), &[kvd])?,
                    ],
                    0,
                ))
            } else {
                None
            };
            let gate_up_w = Tensor::cat(
                &[
                    w(&format!("{p}mlp.gate_proj.weight"), &[i, h])?,
                    w(&format!("{p}mlp.up_proj.weight"), &[i, h])?,
                ],
                0,
            );
            layers.push(Layer {
                input_norm: norm(&format!("{p}input_layernorm.weight"), &[h])?,
                qkv_w,
                qkv_b,
                o_w: w(&attn("o_proj.weight"), &[h, qd])?,
                o_b: if c.o_bias {
                    Some(w(&attn("o_proj.bias"), &[h])?)
                } else {
                    None
                },
                q_norm: if c.qk_norm {
                    Some(norm(&attn("q_norm.weight"), &[hd])?)
                } else {
                    None
                },
                k_norm: if c.qk_norm {
                    Some(norm(&attn("k_norm.weight"), &[hd])?)
                } else {
                    None
                },
                post_norm: norm(&format!("{p}post_attention_layernorm.weight"), &[h])?,
                gate_up_w,
                down_w: w(&format!("{p}mlp.down_proj.weight"), &[h, i])?,
            });
        }
        let embed = w("model.embed_tokens.weight", &[v, h])?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(w("lm_head.weight", &[v, h])?)
        };
        let widen_bf16 =
            kind == Kind::BFloat16 && device == Device::Cpu && !super::cpu::native_bf16_matmul();
        let scratch = widen_bf16.then(|| {
            let largest = layers
                .iter()
                .flat_map(|l| [&l.qkv_w, &l.o_w, &l.gate_up_w, &l.down_w])
                .map(Tensor::numel)
                .max()
                .unwrap_or(0)
                .max((HEAD_CHUNK * h) as usize);
            Tensor::empty([largest as i64], (Kind::Float, device))
        });
        let mut model = Transformer {
            fused_decode: false,
            scratch,
            final_norm: norm("model.norm.weight", &[h])?,
            rope: RopeTables::new(c, device),
            config,
            device,
            kind,
            embed,
            lm_head,
            layers,
            adapter: None,
            adapter_id: 0,
            leased: Vec::new(),
        };
        model.fused_decode = model.fused_decode_model();
        Ok(model)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Every frozen base tensor (for checks that training leaves them untouched).
    pub fn base_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![
            ("embed".to_string(), &self.embed),
            ("final_norm".to_string(), &self.final_norm),
        ];
        if let Some(head) = &self.lm_head {
            out.push(("lm_head".into(), head));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let named = [
                ("input_norm", Some(&l.input_norm)),
                ("qkv_w", Some(&l.qkv_w)),
                ("qkv_b", l.qkv_b.as_ref()),
                ("o_w", Some(&l.o_w)),
                ("o_b", l.o_b.as_ref()),
                ("q_norm", l.q_norm.as_ref()),
                ("k_norm", l.k_norm.as_ref()),
                ("post_norm", Some(&l.post_norm)),
                ("gate_up_w", Some(&l.gate_up_w)),
                ("down_w", Some(&l.down_w)),
            ];
            out.extend(
                named
                    .into_iter()
                    .filter_map(|(n, t)| t.map(|t| (format!("layers.{i}.{n}"), t))),
            );
        }
        out
    }

    /// Installs a trainable adapter as the current one (id 0): `forward_logits(.., true)` then
    /// trains its variables.
    pub fn attach_trainable(&mut self, adapter: &TrainableAdapter) -> Result<(), ModelError> {
        if adapter.num_layers() != self.config.num_layers {
            return Err(ModelError::Adapter(format!(
                "adapter has {} layers, model has {}",
                adapter.num_layers(),
                self.config.num_layers
            )));
        }
        self.adapter = Some(InstalledAdapter {
            config: adapter.config().clone(),
            pairs: adapter.pairs(),
            fused: None,
        });
        self.adapter_id = 0;
        self.leased.clear();
        Ok(())
    }

    pub fn has_adapter(&self) -> bool {
        self.adapter.is_some()
    }

    /// The id the current adapter is installed under (rows pass it to use that adapter).
    pub fn adapter_id(&self) -> u64 {
        self.adapter_id
    }

    pub(crate) fn check_tokens(&self, tokens: &[u32]) -> Result<(), ModelError> {
        let vocab = self.config.vocab_size;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(&token) => Err(ModelError::TokenOutOfRange { token, vocab }),
            None => Ok(()),
        }
    }

    /// Embeds `ids` (i64 of any shape) into the f32 residual stream.
    pub(crate) fn embed(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed, ids, -1, false, false).to_kind(Kind::Float)
    }

    /// Final norm and lm_head: [.., hidden] f32 → [.., vocab] f32.
    pub(crate) fn logits(&self, hidden: &Tensor) -> Tensor {
        let eps = self.config.rms_norm_eps;
        let h = hidden.rms_norm(
            [self.config.hidden_size as i64],
            Some(&self.final_norm),
            eps,
        );
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let h = h.to_kind(self.kind);
        if let Some(logits) = skinny_matmul::linear(&h, head, None) {
            return logits.to_kind(Kind::Float);
        }
        if self.scratch.is_some() && rows(&h) > 1 {
            // Through `linear` in chunks of the vocabulary, so the f32 scratch stays small.
            let vocab = head.size()[0];
            let parts: Vec<Tensor> = (0..vocab)
                .step_by(HEAD_CHUNK as usize)
                .map(|start| {
                    let w = head.narrow(0, start, HEAD_CHUNK.min(vocab - start));
                    self.linear(&h, &w, None).to_kind(Kind::Float)
                })
                .collect();
            return Tensor::cat(&parts, -1);
        }
        self.linear(&h, head, None).to_kind(Kind::Float)
    }

    /// `x Wᵀ + b` in the model's dtype. The few rows of a decode step go through
    /// `skinny_matmul` when it applies. Otherwise: libtorch's bf16 gemm on a CPU without native
    /// bf16 is several times slower than MKL's sgemm, so with more than one row a bf16 weight
    /// is first widened into the f32 scratch (exact) and multiplied in f32, then rounded back
    /// to bf16 like a bf16 gemm with f32 accumulation. A single row keeps the bf16 gemv, which
    /// streams half the bytes. The scratch is reused, so only when no autograd graph can keep it.
    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        if let Some(y) = skinny_matmul::linear(x, w, b) {
            return y;
        }
        match &self.scratch {
            Some(scratch) if rows(x) > 1 && !x.requires_grad() && w.numel() <= scratch.numel() => {
                let mut wide = scratch
                    .narrow(0, 0, w.numel() as i64)
                    .view(w.size().as_slice());
                wide.copy_(w);
                let b = b.map(|b| b.to_kind(Kind::Float));
                x.to_kind(Kind::Float)
                    .linear(&wide, b.as_ref())
                    .to_kind(self.kind)
            }
            _ => x.linear(w, b),
        }
    }

    /// Runs every layer over the residual stream `x` [B, T, hidden] f32.
    pub(crate) fn run_layers(
        &self,
        mut x: Tensor,
        ctx: &StepContext,
        kv: &mut dyn KvSource,
    ) -> Tensor {
        for index in 0..self.layers.len() {
            x = self.layer(index, &x, ctx, kv);
        }
        x
    }

    fn layer(&self, index: usize, x: &Tensor, ctx: &StepContext, kv: &mut dyn KvSource) -> Tensor {
        let c = &self.config;
        let l = &self.layers[index];
        let (b, t) = (x.size()[0], x.size()[1]);
        let (nh, nkv, hd) = (c.num_heads as i64, c.num_kv_heads as i64, c.head_dim as i64);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let eps = c.rms_norm_eps;

        let h = x
            .rms_norm([c.hidden_size as i64], Some(&l.input_norm), eps)
            .to_kind(self.kind);
        let qkv = adapted(self.linear(&h, &l.qkv_w, l.qkv_b.as_ref()), &h, ctx, |a| {
            a[index].qkv.as_ref()
        });
        let v = qkv.narrow(-1, qd + kvd, kvd).view([b, t, nkv, hd]);
        let (q, k) = match (&l.q_norm, &l.k_norm) {
            (Some(qn), Some(kn)) => {
                let q = qkv
                    .narrow(-1, 0, qd)
                    .view([b, t, nh, hd])
                    .to_kind(Kind::Float)
                    .rms_norm([hd], Some(qn), eps);
                let k = qkv
                    .narrow(-1, qd, kvd)
                    .view([b, t, nkv, hd])
                    .to_kind(Kind::Float)
                    .rms_norm([hd], Some(kn), eps);
                (
                    rope::apply(&q, &ctx.cos, &ctx.sin).to_kind(self.kind),
                    rope::apply(&k, &ctx.cos, &ctx.sin).to_kind(self.kind),
                )
            }
            _ => {
                // q and k are adjacent in the fused output: rotate both in one pass.
                let qk = rope::apply(
                    &qkv.narrow(-1, 0, qd + kvd).view([b, t, nh + nkv, hd]),
                    &ctx.cos,
                    &ctx.sin,
                );
                (qk.narrow(2, 0, nh), qk.narrow(2, nh, nkv))
            }
        };
        let attn = kv.attention(self, index, &q, &k, &v, ctx.mask.as_ref());
        let o = adapted(
            self.linear(&attn, &l.o_w, l.o_b.as_ref()),
            &attn,
            ctx,
            |a| a[index].o.as_ref(),
        );
        let x = x + o;

        let h = x
            .rms_norm([c.hidden_size as i64], Some(&l.post_norm), eps)
            .to_kind(self.kind);
        let gu = adapted(self.linear(&h, &l.gate_up_w, None), &h, ctx, |a| {
            a[index].gate_up.as_ref()
        });
        let inter = c.intermediate_size as i64;
        let act = gu.narrow(-1, 0, inter).silu() * gu.narrow(-1, inter, inter);
        let down = adapted(self.linear(&act, &l.down_w, None), &act, ctx, |a| {
            a[index].down.as_ref()
        });
        x + down
    }

    /// Runs `f` with the fused layers of each adapter in `groups` (adapter, rows it applies
    /// to): serving adapters are fused once at install, a trainable adapter is fused now so
    /// the autograd graph reaches its variables. Groups without an adapter use the base.
    pub(crate) fn with_adapters<R>(
        &self,
        groups: Vec<AdapterGroup>,
        f: impl FnOnce(Vec<RowsAdapter>) -> R,
    ) -> R {
        let groups: Vec<(&InstalledAdapter, Option<Tensor>)> = groups
            .into_iter()
            .filter_map(|(a, rows)| a.map(|a| (a, rows)))
            .collect();
        let fused_now: Vec<Option<Vec<LayerLora>>> = groups
            .iter()
            .map(|(a, _)| {
                a.fused.is_none().then(|| {
                    let scale = a.config.scale();
                    a.pairs
                        .iter()
                        .map(|p| lora::fuse_layer(p, &self.config, scale, false))
                        .collect()
                })
            })
            .collect();
        let adapters = groups
            .into_iter()
            .zip(&fused_now)
            .map(|((a, rows), now)| RowsAdapter {
                layers: now.as_deref().or(a.fused.as_deref()).unwrap_or(&[]),
                rows,
            })
            .collect();
        f(adapters)
    }

    /// The current adapter for every row (`use_adapter`), or none.
    pub(crate) fn with_current_adapter<R>(
        &self,
        use_adapter: bool,
        f: impl FnOnce(Vec<RowsAdapter>) -> R,
    ) -> R {
        let current = if use_adapter {
            self.adapter.as_ref()
        } else {
            None
        };
        self.with_adapters(vec![(current, None)], f)
    }

    /// Residual stream after the last layer, [B, T, hidden] f32, for right-padded `input_ids`
    /// [B, T] i64 with `attention_mask` [B, T] (1 = token). Autograd follows the thread's mode.
    pub(crate) fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        use_adapter: bool,
    ) -> Result<Tensor, ModelError> {
        let size = input_ids.size();
        if size.len() != 2 || attention_mask.size() != size {
            return Err(ModelError::InvalidRequest(format!(
                "input_ids {:?} and attention_mask {:?} must both be [B, T]",
                size,
                attention_mask.size()
            )));
        }
        let (b, t) = (size[0], size[1]);
        if t as usize > self.config.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                needed: t as usize,
                max: self.config.max_position_embeddings,
            });
        }
        let ids = input_ids.f_to_kind(Kind::Int64)?.f_to_device(self.device)?;
        let (lo, hi) = (ids.f_min()?.int64_value(&[]), ids.f_max()?.int64_value(&[]));
        if lo < 0 || hi as usize >= self.config.vocab_size {
            return Err(ModelError::TokenOutOfRange {
                token: if lo < 0 { 0 } else { hi as u32 },
                vocab: self.config.vocab_size,
            });
        }
        let keys_valid = attention_mask
            .f_to_device(self.device)?
            .f_ne(0)?
            .view([b, 1, 1, t]);
        let causal = Tensor::ones([t, t], (Kind::Bool, self.device)).tril(0);
        let hd = self.config.head_dim as i64;
        let ctx_mask = causal.logical_and(&keys_valid);
        let cos = self.rope.cos.narrow(0, 0, t).view([1, t, 1, hd]);
        let sin = self.rope.sin.narrow(0, 0, t).view([1, t, 1, hd]);
        Ok(self.with_current_adapter(use_adapter, |adapters| {
            let ctx = StepContext {
                cos,
                sin,
                mask: Some(self.grouped_mask(ctx_mask)),
                adapters,
            };
            self.run_layers(self.embed(&ids), &ctx, &mut NoCache)
        }))
    }

    /// Logits [B, T, vocab] f32 for right-padded batches (training path, autograd on).
    pub fn forward_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        use_adapter: bool,
    ) -> Result<Tensor, ModelError> {
        Ok(self.logits(&self.forward_hidden(input_ids, attention_mask, use_adapter)?))
    }
}

/// `base` plus the delta of every adapter of the step on its rows.
fn adapted(
    base: Tensor,
    x: &Tensor,
    ctx: &StepContext,
    pick: impl Fn(&[LayerLora]) -> Option<&FusedLora>,
) -> Tensor {
    ctx.adapters.iter().fold(base, |acc, a| {
        lora::add_delta(acc, x, pick(a.layers), a.rows.as_ref())
    })
}

/// Rows of a [.., features] input.
fn rows(x: &Tensor) -> i64 {
    let size = x.size();
    size[..size.len().saturating_sub(1)].iter().product()
}
