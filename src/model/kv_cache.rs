//! Slot-based KV cache and the serving forward passes (`prefill`, batched `decode`).
//!
//! Live sequences are kept compacted in the first physical rows: when a slot is freed the last
//! live row is moved into its place once, so a decode over all live sequences reads the cache
//! through a `narrow` view instead of gathering B caches every step.

use tch::{Device, Kind, Tensor};

use super::error::ModelError;
use super::fused_decode::{LayerCache, StepRow};
use super::lora::LayerLora;
use super::transformer::{AdapterGroup, KvSource, StepContext, Transformer};

pub struct KvCache {
    /// Per layer [max_slots, kv_heads, capacity, head_dim] in the model's dtype.
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    capacity: usize,
    max_positions: usize,
    /// Logical slot → physical row (None when the slot is free).
    row_of: Vec<Option<usize>>,
    /// Physical row → logical slot, for the live rows.
    slot_of_row: Vec<usize>,
    lens: Vec<usize>,
}

impl Transformer {
    /// A cache for up to `max_slots` concurrent sequences; capacity (positions per slot) starts
    /// at `initial_capacity` and doubles as needed up to `max_position_embeddings`.
    pub fn new_cache(&self, max_slots: usize, initial_capacity: usize) -> KvCache {
        let c = &self.config;
        let capacity = initial_capacity.clamp(1, c.max_position_embeddings);
        let shape = [
            max_slots as i64,
            c.num_kv_heads as i64,
            capacity as i64,
            c.head_dim as i64,
        ];
        let make = || -> Vec<Tensor> {
            (0..c.num_layers)
                .map(|_| Tensor::zeros(shape, (self.kind, self.device)))
                .collect()
        };
        KvCache {
            keys: make(),
            values: make(),
            capacity,
            max_positions: c.max_position_embeddings,
            row_of: vec![None; max_slots],
            slot_of_row: Vec::with_capacity(max_slots),
            lens: vec![0; max_slots],
        }
    }
}

impl KvCache {
    /// Reserves a slot for a new sequence (length 0), or None when all slots are in use.
    pub fn alloc(&mut self) -> Option<usize> {
        let slot = self.row_of.iter().position(Option::is_none)?;
        self.row_of[slot] = Some(self.slot_of_row.len());
        self.slot_of_row.push(slot);
        self.lens[slot] = 0;
        Some(slot)
    }

    /// Releases `slot` (no-op if it is not allocated).
    pub fn free(&mut self, slot: usize) {
        let Some(row) = self.row_of.get(slot).copied().flatten() else {
            return;
        };
        let last = self.slot_of_row.len() - 1;
        if row != last {
            let moved = self.slot_of_row[last];
            let len = self.lens[moved] as i64;
            if len > 0 {
                let _guard = tch::no_grad_guard();
                for t in self.keys.iter().chain(self.values.iter()) {
                    t.get(row as i64)
                        .narrow(1, 0, len)
                        .copy_(&t.get(last as i64).narrow(1, 0, len));
                }
            }
            self.slot_of_row[row] = moved;
            self.row_of[moved] = Some(row);
        }
        self.slot_of_row.pop();
        self.row_of[slot] = None;
        self.lens[slot] = 0;
    }

    /// Tokens cached for `slot` (0 for a free or unknown slot).
    pub fn len(&self, slot: usize) -> usize {
        self.lens.get(slot).copied().unwrap_or(0)
    }

    pub fn is_empty(&self, slot: usize) -> bool {
        self.len(slot) == 0
    }

    pub fn max_slots(&self) -> usize {
        self.row_of.len()
    }

    pub fn live(&self) -> usize {
        self.slot_of_row.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn row(&self, slot: usize) -> Result<usize, ModelError> {
        self.row_of.get(slot).copied().flatten().ok_or_else(|| {
            ModelError::InvalidRequest(format!("KV cache slot {slot} is not allocated"))
        })
    }

    /// Makes room for `needed` positions per slot, doubling the capacity.
    fn ensure_capacity(&mut self, needed: usize) -> Result<(), ModelError> {
        if needed > self.max_positions {
            return Err(ModelError::ContextOverflow {
                needed,
                max: self.max_positions,
            });
        }
        if needed <= self.capacity {
            return Ok(());
        }
        let mut capacity = self.capacity;
        while capacity < needed {
            capacity *= 2;
        }
        let capacity = capacity.min(self.max_positions);
        let _guard = tch::no_grad_guard();
        let old_cap = self.capacity as i64;
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let mut shape = t.size();
            shape[2] = capacity as i64;
            let grown = Tensor::f_zeros(&shape, (t.kind(), t.device()))?;
            grown.narrow(2, 0, old_cap).f_copy_(t)?;
            *t = grown;
        }
        self.capacity = capacity;
        Ok(())
    }
}

/// Prefill of one row: writes the chunk at `start` and reads back positions 0..start+T.
struct PrefillKv<'a> {
    cache: &'a KvCache,
    row: i64,
    start: i64,
}

impl KvSource for PrefillKv<'_> {
    fn keys_values(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[1];
        let end = self.start + t;
        let read = |cache: &Tensor, new: &Tensor| {
            let row = cache.narrow(0, self.row, 1);
            row.narrow(2, self.start, t).copy_(&new.transpose(1, 2));
            row.narrow(2, 0, end)
        };
        (
            read(&self.cache.keys[layer], k),
            read(&self.cache.values[layer], v),
        )
    }
}

/// Batched decode: writes each row's new k/v at its own length, reads the first `len_max`
/// positions of the rows (a view when the batch is exactly the first B rows).
struct DecodeKv<'a> {
    cache: &'a KvCache,
    rows: Tensor,
    positions: Tensor,
    /// Some(B) when the batch covers rows 0..B in order.
    contiguous: Option<i64>,
    len_max: i64,
}

impl KvSource for DecodeKv<'_> {
    fn keys_values(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let indices = [
            Some(self.rows.shallow_clone()),
            None,
            Some(self.positions.shallow_clone()),
        ];
        let read = |cache: &Tensor, new: &Tensor| {
            let mut cache = cache.shallow_clone();
            // new: [B, 1, kv_heads, head_dim] → [B, kv_heads, head_dim] at (row, :, position).
            let _ = cache.index_put_(&indices, &new.squeeze_dim(1), false);
            match self.contiguous {
                Some(b) => cache.narrow(0, 0, b).narrow(2, 0, self.len_max),
                None => cache.index_select(0, &self.rows).narrow(2, 0, self.len_max),
            }
        };
        (
            read(&self.cache.keys[layer], k),
            read(&self.cache.values[layer], v),
        )
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
        let row = cache.row(slot)?;
        let start = cache.lens[slot];
        let end = start + tokens.len();
        cache.ensure_capacity(end)?;
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
        let logits = self.with_adapters(vec![(adapter, None)], |adapters| {
            let ctx = StepContext {
                cos: self.rope.cos.narrow(0, s, t).view([1, t, 1, hd]),
                sin: self.rope.sin.narrow(0, s, t).view([1, t, 1, hd]),
                mask: Some(self.grouped_mask(mask)),
                adapters,
            };
            let mut kv = PrefillKv {
                cache,
                row: row as i64,
                start: s,
            };
            let x = self.run_layers(self.embed(&ids), &ctx, &mut kv);
            self.logits(&x.get(0).get(t - 1))
        });
        cache.lens[slot] = end;
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
        let mut rows = Vec::with_capacity(b);
        for &slot in slots {
            let row = cache.row(slot)?;
            if rows.contains(&row) {
                return Err(ModelError::InvalidRequest(format!(
                    "slot {slot} is listed twice"
                )));
            }
            rows.push(row);
        }
        let lens: Vec<usize> = slots.iter().map(|&s| cache.lens[s]).collect();
        let len_max = lens.iter().copied().max().unwrap_or(0) + 1;
        let same_len = lens.iter().all(|&l| l + 1 == len_max);
        cache.ensure_capacity(len_max)?;
        let _guard = tch::no_grad_guard();
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
        if let Some(fused_adapters) = fused_adapters.filter(|_| self.fused_decode_covers(b)) {
            let step: Vec<StepRow> = (0..b)
                .map(|i| StepRow {
                    cache_row: rows[i],
                    position: lens[i],
                    token: tokens[i],
                })
                .collect();
            let layers: Vec<LayerCache> = cache
                .keys
                .iter()
                .zip(&cache.values)
                .map(|(keys, values)| LayerCache { keys, values })
                .collect();
            let logits = self.decode_fused(&layers, cache.capacity, &step, &fused_adapters);
            for &slot in slots {
                cache.lens[slot] += 1;
            }
            return Ok(logits);
        }

        // Process the batch in row order so that rows 0..B are read through a view.
        let mut order: Vec<usize> = (0..b).collect();
        order.sort_by_key(|&i| rows[i]);
        let contiguous = order.iter().enumerate().all(|(r, &i)| rows[i] == r);
        let pick = |v: &[i64]| -> Vec<i64> { order.iter().map(|&i| v[i]).collect() };
        let dev = self.device;
        let rows_t = Tensor::from_slice(&pick(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>()))
            .to_device(dev);
        let pos_vec = pick(&lens.iter().map(|&l| l as i64).collect::<Vec<_>>());
        let positions = Tensor::from_slice(&pos_vec).to_device(dev);
        let ids = Tensor::from_slice(&pick(&tokens.iter().map(|&t| t as i64).collect::<Vec<_>>()))
            .to_device(dev)
            .view([b as i64, 1]);
        let hd = self.config.head_dim as i64;
        let bi = b as i64;
        // Rows of one length see all len_max keys: no mask (batch 1 always).
        let mask = (!same_len).then(|| {
            let key_pos =
                Tensor::arange(len_max as i64, (Kind::Int64, dev)).view([1, len_max as i64]);
            let mask = key_pos
                .le_tensor(&positions.view([bi, 1]))
                .view([bi, 1, 1, len_max as i64]);
            self.grouped_mask(mask)
        });
        let row_adapters: Vec<Option<u64>> = order.iter().map(|&i| adapters[i]).collect();
        let groups = self.adapter_groups(&row_adapters)?;
        let logits = self.with_adapters(groups, |adapters| {
            let ctx = StepContext {
                cos: self
                    .rope
                    .cos
                    .index_select(0, &positions)
                    .view([bi, 1, 1, hd]),
                sin: self
                    .rope
                    .sin
                    .index_select(0, &positions)
                    .view([bi, 1, 1, hd]),
                mask,
                adapters,
            };
            let mut kv = DecodeKv {
                cache,
                rows: rows_t.shallow_clone(),
                positions: positions.shallow_clone(),
                contiguous: contiguous.then_some(bi),
                len_max: len_max as i64,
            };
            let x = self.run_layers(self.embed(&ids), &ctx, &mut kv);
            self.logits(&x.squeeze_dim(1))
        });
        for &slot in slots {
            cache.lens[slot] += 1;
        }
        if order.iter().enumerate().all(|(r, &i)| r == i) {
            return Ok(logits);
        }
        // Back to the caller's order: output row i came from sorted position inverse[i].
        let mut inverse = vec![0i64; b];
        for (sorted, &i) in order.iter().enumerate() {
            inverse[i] = sorted as i64;
        }
        Ok(logits.index_select(0, &Tensor::from_slice(&inverse).to_device(dev)))
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
