//! What the router knows of one server's prefix cache from its KV events, and how much to
//! trust it: `exact` while events flow in sequence, `approximate` (the policy's learned index
//! decides instead) when the publisher is unreachable, silent, or a gap could not be replayed.
//!
//! Owned by the server's state (so a reload keeps it for a server that stays), fed by the
//! server's subscriber task ([`super::kv_subscriber`]), read by the request path for each
//! candidate. The index sits behind a mutex held for a lookup or for applying one batch, never
//! across an `.await`.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::routing::exact_index::ExactIndex;

/// How a server's cache is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheState {
    /// From its KV events, block for block.
    Exact,
    /// From what the router sent there (no events, or events not to be trusted now).
    Approximate,
}

impl CacheState {
    pub fn name(self) -> &'static str {
        match self {
            CacheState::Exact => "exact",
            CacheState::Approximate => "approximate",
        }
    }
}

/// Counters of one server's event stream, for `/metrics` and `/admin/status`.
#[derive(Debug, Default)]
pub struct KvCounters {
    pub batches: AtomicU64,
    /// Messages that were not a batch (bad shape or payload): counted and dropped.
    pub malformed: AtomicU64,
    /// Sequence gaps seen, and the replays asked for and failed.
    pub gaps: AtomicU64,
    pub replays: AtomicU64,
    pub replay_failures: AtomicU64,
    /// Times the publisher's sequence went back (the server restarted).
    pub restarts: AtomicU64,
    /// Stores dropped for the memory budget, blocks with unknown parents, removals of blocks
    /// never stored.
    pub over_budget: AtomicU64,
    pub orphans: AtomicU64,
    pub unknown_removed: AtomicU64,
}

#[derive(Debug)]
pub struct KvState {
    pub index: Mutex<ExactIndex>,
    exact: AtomicBool,
    /// Why the state is approximate, when it is.
    reason: Mutex<String>,
    pub counters: KvCounters,
    /// A subscriber task is running for this server (one at a time).
    subscribed: AtomicU8,
    /// Requests routed here that must make it store blocks (some of their prompt's full blocks
    /// were not held): the measure of a silent publisher. A request whose prompt is all cached,
    /// or shorter than a block (common on vLLM's CPU build, 128-token blocks), stores nothing
    /// and publishes nothing, so plain request counts would call a healthy publisher silent.
    pub expected_stores: AtomicU64,
}

impl Default for KvState {
    fn default() -> Self {
        KvState {
            index: Mutex::new(ExactIndex::new(0)),
            exact: AtomicBool::new(false),
            reason: Mutex::new("no KV events configured".into()),
            counters: KvCounters::default(),
            subscribed: AtomicU8::new(0),
            expected_stores: AtomicU64::new(0),
        }
    }
}

impl KvState {
    pub fn state(&self) -> CacheState {
        if self.exact.load(Ordering::Acquire) {
            CacheState::Exact
        } else {
            CacheState::Approximate
        }
    }

    pub fn is_exact(&self) -> bool {
        self.exact.load(Ordering::Acquire)
    }

    /// Why it is approximate (empty when exact).
    pub fn reason(&self) -> String {
        if self.is_exact() {
            String::new()
        } else {
            self.reason.lock().clone()
        }
    }

    pub fn set_exact(&self) {
        if !self.exact.swap(true, Ordering::AcqRel) {
            tracing::info!("KV events flow: cache state exact");
        }
    }

    pub fn set_approximate(&self, why: impl Into<String>) {
        let why = why.into();
        if self.exact.swap(false, Ordering::AcqRel) {
            tracing::warn!(reason = %why, "cache state approximate");
        }
        *self.reason.lock() = why;
    }

    /// Blocks the server holds, as its events say.
    pub fn cached_blocks(&self) -> usize {
        self.index.lock().len()
    }

    /// Claims the right to run the subscriber; `false` when one runs already.
    pub fn claim_subscriber(&self) -> bool {
        self.subscribed
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn release_subscriber(&self) {
        self.subscribed.store(0, Ordering::Release);
    }
}

/// The largest `--block-size` vLLM accepts.
const LARGEST_BLOCK_SIZE: usize = 256;

/// One request's prompt as exact-index chains: computed once per block size and adapter the
/// fleet's exact servers use (usually one), on first need.
pub struct PromptChains<'a> {
    tokens: Option<&'a [u32]>,
    model: Option<&'a str>,
    /// (block size, seed) -> chain.
    chains: Vec<(usize, u64, Vec<u64>)>,
}

impl<'a> PromptChains<'a> {
    pub fn new(tokens: Option<&'a [u32]>, model: Option<&'a str>) -> Self {
        PromptChains {
            tokens,
            model,
            chains: Vec::new(),
        }
    }

    /// Tokens of the prompt `kv`'s server holds, when its state is exact and the prompt's
    /// tokens are known; `None`: ask the policy's learned index.
    pub fn held_tokens(&mut self, kv: &KvState) -> Option<f64> {
        if !kv.is_exact() {
            return None;
        }
        let tokens = self.tokens?;
        let now = tokio::time::Instant::now();
        let index = kv.index.lock();
        let Some(size) = index.block_size() else {
            return Some(0.0); // nothing stored yet
        };
        let seed = index.seed_for(self.model);
        let chain = self.chain(tokens, size, seed);
        Some((index.matched(chain, now) * size) as f64)
    }

    /// The request went to `kv`'s server: its blocks count as held there until stored, and
    /// when it must store some, an event is expected ([`KvState::expected_stores`]).
    pub fn routed(&mut self, kv: &KvState) {
        let Some(tokens) = self.tokens.filter(|_| kv.is_exact()) else {
            return;
        };
        let mut index = kv.index.lock();
        let fresh = match index.block_size() {
            Some(size) => {
                let seed = index.seed_for(self.model);
                let chain = self.chain(tokens, size, seed).to_vec();
                index.routed(&chain, tokio::time::Instant::now())
            }
            // Nothing stored yet, block size unknown: a prompt longer than vLLM's largest
            // block fills one whatever it is.
            None => tokens.len() > LARGEST_BLOCK_SIZE,
        };
        if fresh {
            kv.expected_stores.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn chain(&mut self, tokens: &[u32], size: usize, seed: u64) -> &[u64] {
        let i = match self
            .chains
            .iter()
            .position(|(s, k, _)| *s == size && *k == seed)
        {
            Some(i) => i,
            None => {
                let chain = crate::routing::exact_index::chain(tokens, size, seed);
                self.chains.push((size, seed, chain));
                self.chains.len() - 1
            }
        };
        &self.chains[i].2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_their_reasons() {
        let k = KvState::default();
        assert_eq!(k.state(), CacheState::Approximate);
        k.set_exact();
        assert_eq!((k.state().name(), k.reason()), ("exact", String::new()));
        k.set_approximate("publisher silent");
        assert_eq!(k.reason(), "publisher silent");
        assert!(k.claim_subscriber());
        assert!(!k.claim_subscriber(), "one subscriber at a time");
        k.release_subscriber();
        assert!(k.claim_subscriber());
    }
}
