//! The model side of the serving loop: what the scheduler drives (the tch transformer with its
//! KV cache in `local.rs`, a tiny fake in the scheduler's tests).

use tch::Tensor;

use crate::model::peft::AdapterSnapshot;

/// What the scheduler needs from a model: slot-based prefill and batched decode.
/// Implemented over the tch transformer, and by a tiny fake in tests.
pub trait StepModel {
    fn max_slots(&self) -> usize;
    fn alloc_slot(&mut self) -> Option<usize>;
    fn free_slot(&mut self, slot: usize);
    /// Feeds the next chunk of a sequence's prompt with the adapter installed under `adapter`
    /// (None: the base weights); returns the logits of its last position, [vocab].
    fn prefill(
        &mut self,
        slot: usize,
        tokens: &[u32],
        adapter: Option<u64>,
    ) -> Result<Tensor, String>;
    /// One token per sequence, each with its own adapter; returns [B, vocab] logits.
    fn decode(
        &mut self,
        slots: &[usize],
        tokens: &[u32],
        adapters: &[Option<u64>],
    ) -> Result<Tensor, String>;
    /// Installs an adapter (None: the base weights) under `id` as the one new sequences use;
    /// the previous one stays usable until `retain_adapters` drops it.
    fn install_adapter(
        &mut self,
        _id: u64,
        _adapter: Option<&AdapterSnapshot>,
    ) -> Result<(), String> {
        Err("this model does not take adapters".into())
    }
    /// Drops every earlier adapter whose id is not listed.
    fn retain_adapters(&mut self, _ids: &[u64]) {}
    /// Starts the empty sequence in `slot` from the cached keys and values of an earlier
    /// sequence that shares a prefix of `prompt` (computed with `adapter`); returns how many
    /// prompt tokens that covers (never the whole prompt).
    fn reuse_prefix(&mut self, _slot: usize, _prompt: &[u32], _adapter: Option<u64>) -> usize {
        0
    }
    /// Frees `slot`, offering its keys and values (of `tokens`, computed with `adapter`) to
    /// the prefix cache.
    fn free_slot_keeping(&mut self, slot: usize, _tokens: &[u32], _adapter: Option<u64>) {
        self.free_slot(slot)
    }
    /// Room for `positions` in `slot`, allocated now (a hint: a long prompt then does not
    /// regrow the cache chunk after chunk).
    fn reserve(&mut self, _slot: usize, _positions: usize) {}
}
