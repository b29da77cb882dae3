//! Per-sequence KV cache storage, and the prefix cache that lets a request start from the keys
//! and values of an earlier one.
//!
//! Each live sequence owns its own tensors, one pair per layer of [kv_heads, capacity,
//! head_dim], that grow with the sequence (by half again, in steps of `GROWTH_STEP`
//! positions) up to the served window. A slot therefore costs what its sequence holds, not
//! the window: eight 10k-token conversations hold 80k positions, where a cache reserving the
//! window for every slot would hold 8 × 32k. The forward passes over this storage are in
//! `kv_forward.rs`.

use tch::{Device, Kind, Tensor};

use super::error::ModelError;
use super::prefix_cache::{PrefixCache, PrefixStats, Reuse};
use super::transformer::Transformer;

/// Capacities are multiples of this many positions.
const GROWTH_STEP: usize = 64;

/// One sequence's keys and values: per layer [kv_heads, capacity, head_dim], positions
/// `0..len` valid.
pub(crate) struct SlotKv {
    pub keys: Vec<Tensor>,
    pub values: Vec<Tensor>,
    pub capacity: usize,
    pub len: usize,
}

impl SlotKv {
    /// Bytes held by the tensors (capacity, not length).
    pub fn bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|t| t.numel() * t.kind().elt_size_in_bytes())
            .sum()
    }
}

/// The shape every slot's tensors share.
#[derive(Clone, Copy)]
struct Layout {
    layers: usize,
    kv_heads: i64,
    head_dim: i64,
    kind: Kind,
    device: Device,
}

impl Layout {
    fn empty(&self, capacity: usize) -> Result<SlotKv, ModelError> {
        let shape = [self.kv_heads, capacity as i64, self.head_dim];
        let make = || -> Result<Vec<Tensor>, ModelError> {
            (0..self.layers)
                .map(|_| Tensor::f_zeros(shape, (self.kind, self.device)).map_err(Into::into))
                .collect()
        };
        Ok(SlotKv {
            keys: make()?,
            values: make()?,
            capacity,
            len: 0,
        })
    }

    /// A copy of the first `len` positions of `from` in a new slot of `capacity` positions.
    fn copy_prefix(
        &self,
        from: &SlotKv,
        len: usize,
        capacity: usize,
    ) -> Result<SlotKv, ModelError> {
        let mut to = self.empty(capacity.max(len))?;
        let _guard = tch::no_grad_guard();
        for (dst, src) in to
            .keys
            .iter_mut()
            .zip(&from.keys)
            .chain(to.values.iter_mut().zip(&from.values))
        {
            dst.narrow(1, 0, len as i64)
                .f_copy_(&src.narrow(1, 0, len as i64))?;
        }
        to.len = len;
        Ok(to)
    }
}

/// The serving cache: up to `max_slots` live sequences, and the prefix cache of finished ones.
pub struct KvCache {
    layout: Layout,
    slots: Vec<Option<SlotKv>>,
    initial_capacity: usize,
    max_positions: usize,
    prefixes: PrefixCache,
}

impl Transformer {
    /// A cache for up to `max_slots` concurrent sequences; each slot starts with room for
    /// `initial_capacity` positions and grows as needed up to `max_position_embeddings`.
    /// The prefix cache starts disabled (`KvCache::set_prefix_budget`).
    pub fn new_cache(&self, max_slots: usize, initial_capacity: usize) -> KvCache {
        let c = &self.config;
        KvCache {
            layout: Layout {
                layers: c.num_layers,
                kv_heads: c.num_kv_heads as i64,
                head_dim: c.head_dim as i64,
                kind: self.kind,
                device: self.device,
            },
            slots: (0..max_slots).map(|_| None).collect(),
            initial_capacity: initial_capacity.clamp(1, c.max_position_embeddings),
            max_positions: c.max_position_embeddings,
            prefixes: PrefixCache::new(0),
        }
    }
}

impl KvCache {
    /// Reserves a slot for a new sequence (length 0), or None when all slots are in use.
    pub fn alloc(&mut self) -> Option<usize> {
        let slot = self.slots.iter().position(Option::is_none)?;
        let kv = self.layout.empty(self.initial_capacity).ok()?;
        self.slots[slot] = Some(kv);
        Some(slot)
    }

    /// Releases `slot` and its memory (no-op if it is not allocated).
    pub fn free(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = None;
        }
    }

    /// Releases `slot`, keeping its keys and values in the prefix cache under the tokens they
    /// hold (`tokens` may run past the cached length; the rest is ignored) and the adapter
    /// that computed them. Without a prefix budget this is `free`.
    pub fn free_keeping(&mut self, slot: usize, tokens: &[u32], adapter: Option<u64>) {
        let Some(kv) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if kv.len == 0 || tokens.len() < kv.len {
            return;
        }
        self.prefixes.insert(tokens[..kv.len].to_vec(), adapter, kv);
    }

    /// Starts the empty sequence in `slot` from the longest cached prefix of `prompt` computed
    /// with `adapter`, leaving at least the last prompt token to prefill (its logits start
    /// the reply). Returns how many prompt tokens are already in the cache.
    pub fn reuse_prefix(&mut self, slot: usize, prompt: &[u32], adapter: Option<u64>) -> usize {
        let limit = prompt.len().saturating_sub(1);
        match self.slots.get(slot) {
            Some(Some(kv)) if kv.len == 0 => {}
            _ => return 0,
        }
        let (layout, max_positions) = (self.layout, self.max_positions);
        let Some(found) = self.prefixes.find(&prompt[..limit], adapter) else {
            return 0;
        };
        let kv = match found {
            // The cached sequence is wholly a prefix of this one: this request continues it.
            Reuse::Take(mut kv, len) => {
                kv.len = len;
                kv
            }
            Reuse::Copy(from, len) => {
                let capacity = grown_capacity(max_positions, 0, len + 1).unwrap_or(len + 1);
                match layout.copy_prefix(from, len, capacity) {
                    Ok(kv) => kv,
                    Err(err) => {
                        tracing::warn!(%err, "copying a cached prefix failed; prefilling it");
                        return 0;
                    }
                }
            }
        };
        let len = kv.len;
        self.slots[slot] = Some(kv);
        len
    }

    /// Sets the memory the prefix cache may hold (0 disables it), evicting to fit.
    pub fn set_prefix_budget(&mut self, bytes: usize) {
        self.prefixes.set_budget(bytes);
    }

    /// Drops cached prefixes computed with adapters not listed (the base's are kept).
    pub fn retain_prefix_adapters(&mut self, ids: &[u64]) {
        self.prefixes.retain_adapters(ids);
    }

    pub fn prefix_stats(&self) -> PrefixStats {
        self.prefixes.stats()
    }

    /// Tokens cached for `slot` (0 for a free or unknown slot).
    pub fn len(&self, slot: usize) -> usize {
        self.slot(slot).map_or(0, |kv| kv.len)
    }

    pub fn is_empty(&self, slot: usize) -> bool {
        self.len(slot) == 0
    }

    pub fn max_slots(&self) -> usize {
        self.slots.len()
    }

    pub fn live(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Bytes held by the live slots' tensors.
    pub fn live_bytes(&self) -> usize {
        self.slots.iter().flatten().map(SlotKv::bytes).sum()
    }

    /// Positions `slot` can hold before it grows (0 for a free slot).
    pub fn capacity(&self, slot: usize) -> usize {
        self.slot(slot).map_or(0, |kv| kv.capacity)
    }

    /// Grows `slot` now to hold `positions` (e.g. a whole prompt), so that a long prefill
    /// does not regrow it chunk after chunk.
    pub fn reserve(&mut self, slot: usize, positions: usize) -> Result<(), ModelError> {
        self.ensure_capacity(slot, positions.min(self.max_positions))
    }

    pub(crate) fn slot(&self, slot: usize) -> Option<&SlotKv> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    pub(crate) fn slot_mut(&mut self, slot: usize) -> Result<&mut SlotKv, ModelError> {
        self.slots
            .get_mut(slot)
            .and_then(Option::as_mut)
            .ok_or_else(|| {
                ModelError::InvalidRequest(format!("KV cache slot {slot} is not allocated"))
            })
    }

    /// Makes room in `slot` for `needed` positions, copying into larger tensors if needed.
    pub(crate) fn ensure_capacity(&mut self, slot: usize, needed: usize) -> Result<(), ModelError> {
        let current = self.slot_mut(slot)?.capacity;
        if needed <= current {
            return Ok(());
        }
        let capacity = grown_capacity(self.max_positions, current, needed)?;
        let layout = self.layout;
        let kv = self.slot_mut(slot)?;
        let grown = layout.copy_prefix(kv, kv.len, capacity)?;
        *kv = grown;
        Ok(())
    }
}

/// The capacity to grow to from `current` for `needed` positions (at most `max`).
fn grown_capacity(max: usize, current: usize, needed: usize) -> Result<usize, ModelError> {
    if needed > max {
        return Err(ModelError::ContextOverflow { needed, max });
    }
    let wanted = needed.max(current + current / 2);
    Ok((wanted.div_ceil(GROWTH_STEP) * GROWTH_STEP).min(max))
}
