//! The prefix cache: keys and values of finished sequences, kept under the tokens they hold,
//! so that a request whose prompt starts with those tokens prefills only the rest.
//!
//! Agents resend their whole system prompt and history on every turn: turn N+1's prompt is
//! turn N's prompt, its reply and the new message. The finished sequence of turn N is kept
//! here; turn N+1 finds it by longest common token prefix and, when it continues the cached
//! sequence, takes its tensors over without a copy. A request that shares only part of an
//! entry (another conversation with the same system prompt, a regenerated reply) gets a copy
//! of the shared positions and leaves the entry for others. Entries are keyed by the adapter
//! that computed them, since keys and values depend on it, and evicted least recently used
//! under a byte budget.

use super::kv_cache::SlotKv;

/// Shorter shared prefixes are prefilled: the copy would save next to nothing.
const MIN_REUSE: usize = 16;

/// A request continues a cached sequence (and takes it over) when it shares all but at most
/// this many of its tokens: the last tokens of a reply may tokenize differently when the
/// client sends the reply back as text.
const TAKE_SLACK: usize = 64;

struct Entry {
    tokens: Vec<u32>,
    adapter: Option<u64>,
    kv: SlotKv,
    last_used: u64,
}

/// What a lookup found: an entry taken out of the cache (valid for its first `usize`
/// positions), or an entry to copy the first `usize` positions from.
pub(crate) enum Reuse<'a> {
    Take(SlotKv, usize),
    Copy(&'a SlotKv, usize),
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub entries: usize,
    pub bytes: usize,
    pub lookups: u64,
    pub hits: u64,
    pub reused_tokens: u64,
}

pub(crate) struct PrefixCache {
    entries: Vec<Entry>,
    budget: usize,
    clock: u64,
    stats: PrefixStats,
}

impl PrefixCache {
    pub fn new(budget: usize) -> Self {
        Self {
            entries: Vec::new(),
            budget,
            clock: 0,
            stats: PrefixStats::default(),
        }
    }

    pub fn set_budget(&mut self, bytes: usize) {
        self.budget = bytes;
        self.evict_to(bytes);
    }

    pub fn stats(&self) -> PrefixStats {
        PrefixStats {
            entries: self.entries.len(),
            bytes: self.bytes(),
            ..self.stats
        }
    }

    fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.kv.bytes()).sum()
    }

    /// The entry computed with `adapter` sharing the longest token prefix with `tokens`.
    pub fn find(&mut self, tokens: &[u32], adapter: Option<u64>) -> Option<Reuse<'_>> {
        if self.budget == 0 {
            return None;
        }
        self.stats.lookups += 1;
        let (index, shared) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.adapter == adapter)
            .map(|(i, e)| (i, common_prefix(&e.tokens, tokens)))
            .max_by_key(|&(_, shared)| shared)?;
        if shared < MIN_REUSE {
            return None;
        }
        self.stats.hits += 1;
        self.stats.reused_tokens += shared as u64;
        self.clock += 1;
        if shared + TAKE_SLACK >= self.entries[index].tokens.len() {
            let entry = self.entries.swap_remove(index);
            return Some(Reuse::Take(entry.kv, shared));
        }
        let entry = &mut self.entries[index];
        entry.last_used = self.clock;
        Some(Reuse::Copy(&entry.kv, shared))
    }

    /// Keeps `kv` (valid for `tokens.len()` positions) unless it exceeds the budget; entries it
    /// extends are dropped, then the least recently used go until the cache fits.
    pub fn insert(&mut self, tokens: Vec<u32>, adapter: Option<u64>, kv: SlotKv) {
        let size = kv.bytes();
        if self.budget == 0 || size > self.budget || tokens.len() < MIN_REUSE {
            return;
        }
        self.entries
            .retain(|e| !(e.adapter == adapter && tokens.starts_with(&e.tokens)));
        self.evict_to(self.budget - size);
        self.clock += 1;
        self.entries.push(Entry {
            tokens,
            adapter,
            kv,
            last_used: self.clock,
        });
    }

    /// Drops entries computed with adapters not in `ids` (the base's stay).
    pub fn retain_adapters(&mut self, ids: &[u64]) {
        self.entries
            .retain(|e| e.adapter.is_none_or(|id| ids.contains(&id)));
    }

    fn evict_to(&mut self, bytes: usize) {
        let mut total = self.bytes();
        while total > bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            total -= self.entries.swap_remove(oldest).kv.bytes();
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
