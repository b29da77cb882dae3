//! The serving forward passes over the per-sequence KV cache: `prefill` (a prompt chunk of one
//! sequence) and batched `decode` (one token for each of several sequences).

use tch::{Device, Kind, Tensor};

use super::error::ModelError;
use super::fused_decode::StepRow;
use super::kv_cache::{KvCache, SlotKv};
use super::lora::LayerLora;
use super::transformer::{AdapterGroup, KvSource, StepContext, Transformer};

/// Prefill of one sequence: writes the chunk at `start` and reads back positions 0..start+T.
struct PrefillKv<'a> {
    kv: &'a SlotKv,
    start: i64,
}

impl KvSource for PrefillKv<'_> {
    fn keys_values(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[1];
        let end = self.start + t;
        let read = |cache: &Tensor, new: &Tensor| {
            // new: [1, T, kv_heads, head_dim] → [kv_heads, T, head_dim] at start.
            cache
                .narrow(1, self.start, t)
                .copy_(&new.get(0).transpose(0, 1));
            cache.narrow(1, 0, end).unsqueeze(0)
        };
        (
            read(&self.kv.keys[layer], k),
            read(&self.kv.values[layer], v),
        )
    }
}

/// Batched decode on the tensor path: each row writes its new key and value at its own
/// position and attends over its own cache, so rows of different lengths need neither
/// padding nor a copy of their histories into one batch tensor.
struct DecodeKv<'a> {
    rows: Vec<(&'a SlotKv, i64)>,
}

impl KvSource for DecodeKv<'_> {
    fn keys_values(&mut self, _layer: usize, _k: &Tensor, _v: &Tensor) -> (Tensor, Tensor) {
        unreachable!("DecodeKv attends row by row (attention)")
    }

    fn attention(
        &mut self,
        model: &Transformer,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _mask: Option<&Tensor>,
    ) -> Tensor {
        let outputs: Vec<Tensor> = self
            .rows
            .iter()
            .enumerate()
            .map(|(r, &(kv, position))| {
                let r = r as i64;
                let view = |cache: &Tensor, new: &Tensor| {
                    // new: [B, 1, kv_heads, head_dim]; row r → [kv_heads, 1, head_dim].
                    cache
                        .narrow(1, position, 1)
                        .copy_(&new.get(r).transpose(0, 1));
                    cache.narrow(1, 0, position + 1).unsqueeze(0)
                };
                let keys = view(&kv.keys[layer], k);
                let values = view(&kv.values[layer], v);
                model.attend(&q.narrow(0, r, 1), &keys, &values, None)
            })
            .collect();
        Tensor::cat(&outputs, 0)
    }
}

impl Transformer {
    /// Runs the prompt (or its next chunk) of the sequence in `slot` with the adapter installed
    /// under `adapter` (None: the base weights); returns the logits of its last position,
    /// [vocab] f32.
    pub fn prefill(
        &self,
        cache: &mut KvCache,
        slot: usize,
        tokens: &[u32],
        adapter: Option<u64>,
    ) -> Result<Tensor, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::InvalidRequest(
                "prefill needs at least one token".into(),
            ));
        }
        self.check_tokens(tokens)?;
        let adapter = self.installed_adapter(adapter)?;
        let start = cache.len(slot);
        let end = start + tokens.len();
        cache.ensure_capacity(slot, end)?;
        let _guard = tch::no_grad_guard();
        let (t, s, hd) = (
            tokens.len() as i64,
            start as i64,
            self.config.head_dim as i64,
        );
        let ids = ids_tensor(tokens, self.device).view([1, t]);
        // Query i (absolute position start+i) sees keys 0..=start+i.
        let query_pos = Tensor::arange_start(s, s + t, (Kind::Int64, self.device)).view([t, 1]);
        let key_pos = Tensor::arange(end as i64, (Kind::Int64, self.device)).view([1, end as i64]);
        let mask = key_pos.le_tensor(&query_pos).view([1, 1, t, end as i64]);
        let kv = cache.slot_mut(slot)?;
        let logits = self.with_adapters(vec![(adapter, None)], |adapters| {
            let ctx = StepContext {
                cos: self.rope.cos.narrow(0, s, t).view([1, t, 1, hd]),
                sin: self.rope.sin.narrow(0, s, t).view([1, t, 1, hd]),
                mask: Some(self.grouped_mask(mask)),
                adapters,
            };
            let mut source = PrefillKv { kv, start: s };
            let x = self.run_layers(self.embed(&ids), &ctx, &mut source);
            self.logits(&x.get(0).get(t - 1))
        });
        kv.len = end;
        Ok(logits)
    }

    /// One token for each listed sequence, decoded together; returns [B, vocab] f32 logits
    /// in the order of `slots`. Row b uses the adapter installed under `adapters[b]` (None:
    /// the base weights), so one batch may mix adapters.
    pub fn decode(
        &self,
        cache: &mut KvCache,
        slots: &[usize],
        tokens: &[u32],
        adapters: &[Option<u64>],
    ) -> Result<Tensor, ModelError> {
        let b = slots.len();
        if b == 0 || tokens.len() != b || adapters.len() != b {
            return Err(ModelError::InvalidRequest(format!(
                "decode needs one token and one adapter per slot (slots {b}, tokens {}, adapters {})",
                tokens.len(),
                adapters.len()
            )));
        }
        self.check_tokens(tokens)?;
        for (i, &slot) in slots.iter().enumerate() {
            if slots[..i].contains(&slot) {
                return Err(ModelError::InvalidRequest(format!(
                    "slot {slot} is listed twice"
                )));
            }
            let len = cache.slot_mut(slot)?.len;
            cache.ensure_capacity(slot, len + 1)?;
        }
        let _guard = tch::no_grad_guard();
        let kvs: Vec<&SlotKv> = slots.iter().filter_map(|&s| cache.slot(s)).collect();
        let lens: Vec<usize> = kvs.iter().map(|kv| kv.len).collect();
        // Each row's fused serving adapter layers (None: the base), when the fused step
        // takes every one of them.
        let fused_adapters: Option<Vec<Option<&[LayerLora]>>> = adapters
            .iter()
            .map(|&id| match self.installed_adapter(id) {
                Ok(None) => Some(None),
                Ok(Some(a)) if Self::fused_decode_takes(a) => a.fused.as_deref().map(Some),
                _ => None,
            })
            .collect();
        let logits = match fused_adapters.filter(|_| self.fused_decode_covers(b)) {
            Some(fused_adapters) => {
                let step: Vec<StepRow> = (0..b)
                    .map(|i| StepRow {
                        kv: kvs[i],
                        position: lens[i],
                        token: tokens[i],
                    })
                    .collect();
                self.decode_fused(&step, &fused_adapters)
            }
            None => self.decode_tensors(&kvs, &lens, tokens, adapters)?,
        };
        for &slot in slots {
            cache.slot_mut(slot)?.len += 1;
        }
        Ok(logits)
    }

    /// The decode step through libtorch ops (other devices, adapters the fused step does
    /// not take, more rows than it covers).
    fn decode_tensors(
        &self,
        kvs: &[&SlotKv],
        lens: &[usize],
        tokens: &[u32],
        adapters: &[Option<u64>],
    ) -> Result<Tensor, ModelError> {
        let dev = self.device;
        let (b, hd) = (kvs.len() as i64, self.config.head_dim as i64);
        let positions =
            Tensor::from_slice(&lens.iter().map(|&l| l as i64).collect::<Vec<_>>()).to_device(dev);
        let ids = ids_tensor(tokens, dev).view([b, 1]);
        let groups = self.adapter_groups(adapters)?;
        Ok(self.with_adapters(groups, |adapters| {
            let ctx = StepContext {
                cos: self
                    .rope
                    .cos
                    .index_select(0, &positions)
                    .view([b, 1, 1, hd]),
                sin: self
                    .rope
                    .sin
                    .index_select(0, &positions)
                    .view([b, 1, 1, hd]),
                mask: None,
                adapters,
            };
            let mut source = DecodeKv {
                rows: kvs
                    .iter()
                    .zip(lens)
                    .map(|(&kv, &l)| (kv, l as i64))
                    .collect(),
            };
            let x = self.run_layers(self.embed(&ids), &ctx, &mut source);
            self.logits(&x.squeeze_dim(1))
        }))
    }

    /// The installed adapters of a batch with the rows each applies to (no row mask when one
    /// adapter serves every row).
    fn adapter_groups(
        &self,
        row_adapters: &[Option<u64>],
    ) -> Result<Vec<AdapterGroup<'_>>, ModelError> {
        let mut ids: Vec<u64> = row_adapters.iter().flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut groups = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(adapter) = self.installed_adapter(Some(id))? else {
                continue;
            };
            let rows = if row_adapters.iter().all(|&a| a == Some(id)) {
                None
            } else {
                let kind = adapter
                    .pairs
                    .first()
                    .and_then(|l| l.first())
                    .map_or(self.kind, |p| p.a.kind());
                let m: Vec<f32> = row_adapters
                    .iter()
                    .map(|&a| if a == Some(id) { 1.0 } else { 0.0 })
                    .collect();
                Some(
                    Tensor::from_slice(&m)
                        .to_device(self.device)
                        .to_kind(kind)
                        .view([m.len() as i64, 1, 1]),
                )
            };
            groups.push((Some(adapter), rows));
        }
        Ok(groups)
    }
}

fn ids_tensor(tokens: &[u32], device: Device) -> Tensor {
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    Tensor::from_slice(&ids).to_device(device)
}
