//! What the router believes one server holds in its prefix cache: the block hashes of the
//! prompts it sent there (see [`crate::routing::fingerprint`]), least recently used first out.
//!
//! Why learned from routing: vLLM does not say what it caches (short of KV events, which need a
//! side channel per server), but the router sent every prompt and vLLM keeps a prompt's blocks
//! until the memory is needed. So the index records each routed prompt and forgets the least
//! recently used blocks beyond two bounds: its share of the router's memory budget
//! (`prefix_index_bytes`), and what the server's KV cache can hold (`vllm:cache_config_info`),
//! so it never believes a server holds more than it can. It is emptied when the server restarts
//! (its prefix-cache counters go back), goes down, or leaves the fleet (the index lives in the
//! server's state, so a reload keeps it for servers that stay and drops it for those removed).

use std::num::NonZeroUsize;

use lru::LruCache;

use crate::routing::fingerprint::BLOCK_TOKENS;

/// Memory one recorded block takes, by measurement of `lru`'s layout: a boxed entry (key, links)
/// and a hash-table slot, with the table's spare room.
pub const BYTES_PER_BLOCK: usize = 64;

#[derive(Debug)]
pub struct PrefixIndex {
    blocks: LruCache<u64, ()>,
    /// Blocks allowed by this server's share of the memory budget.
    budget_blocks: usize,
    /// Blocks the server's KV cache holds (`None` until its metrics say).
    kv_blocks: Option<usize>,
}

impl PrefixIndex {
    pub fn new(budget_blocks: usize) -> Self {
        PrefixIndex {
            blocks: LruCache::unbounded(),
            budget_blocks,
            kv_blocks: None,
        }
    }

    /// The most blocks kept.
    pub fn limit(&self) -> usize {
        self.kv_blocks
            .map_or(self.budget_blocks, |kv| kv.min(self.budget_blocks))
    }

    pub fn set_budget(&mut self, blocks: usize) {
        self.budget_blocks = blocks;
        self.shrink();
    }

    /// The server's KV cache holds this many tokens.
    pub fn set_kv_tokens(&mut self, tokens: usize) {
        self.kv_blocks = (tokens > 0).then_some(tokens / BLOCK_TOKENS);
        self.shrink();
    }

    /// How many leading blocks of `blocks` the server is believed to hold. A routed prompt's
    /// blocks are recorded last to first, so an earlier block is always more recent than a later
    /// one and eviction takes chains from their end: presence is monotonic along a chain, and a
    /// binary search finds its end.
    pub fn matched(&self, blocks: &[u64]) -> usize {
        let (mut lo, mut hi) = (0, blocks.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.blocks.contains(&blocks[mid]) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Records a prompt sent to the server (it will hold these blocks after its prefill).
    pub fn record(&mut self, blocks: &[u64]) {
        let limit = self.limit();
        if limit == 0 {
            return;
        }
        // Beyond the limit, only the prompt's first `limit` blocks can be held.
        for &b in blocks[..blocks.len().min(limit)].iter().rev() {
            self.blocks.put(b, ());
        }
        self.shrink();
    }

    /// Forgets everything (the server restarted, went down, or its cache was reset).
    pub fn clear(&mut self) {
        self.blocks.clear();
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.blocks.len() * BYTES_PER_BLOCK
    }

    fn shrink(&mut self) {
        let limit = self.limit();
        while self.blocks.len() > limit {
            self.blocks.pop_lru();
        }
        if self.blocks.is_empty() && self.blocks.cap() > NonZeroUsize::MIN {
            // Give back the table's memory after a clear or a shrink to nothing.
            self.blocks = LruCache::unbounded();
        }
    }
}

/// Prompt tokens a server must have been asked about before its prediction is judged.
pub const CALIBRATION_WINDOW_TOKENS: f64 = 16_384.0;
/// How far the predicted hit rate may exceed the server's own before the index is distrusted.
pub const CALIBRATION_MARGIN: f64 = 0.5;

/// The index's predictions against the server's own prefix-cache counters.
#[derive(Debug, Default, Clone)]
pub struct Calibration {
    /// Since the window began: tokens routed here and how many the index said were cached.
    pub prompted: f64,
    pub predicted: f64,
    /// The server's counters when the window began (`None`: not read yet).
    base: Option<(f64, f64)>,
    /// The last full window's rates.
    pub predicted_rate: Option<f64>,
    pub actual_rate: Option<f64>,
}

impl Calibration {
    /// A request routed here: `prompt` tokens, `predicted` believed cached.
    pub fn routed(&mut self, prompt: f64, predicted: f64) {
        self.prompted += prompt;
        self.predicted += predicted;
    }

    /// The server's counters now (hits, queries, in tokens). Returns true when a full window
    /// shows the index promising far more than the server delivers (its cache was reset, or it
    /// evicts more than the index thinks): the caller then empties the index.
    pub fn observe(&mut self, hits: f64, queries: f64) -> bool {
        let Some((h0, q0)) = self.base else {
            self.base = Some((hits, queries));
            return false;
        };
        let asked = queries - q0;
        if asked < 0.0 {
            self.reset(hits, queries);
            return false;
        }
        if asked < CALIBRATION_WINDOW_TOKENS || self.prompted <= 0.0 {
            return false;
        }
        let actual = ((hits - h0) / asked).clamp(0.0, 1.0);
        let predicted = (self.predicted / self.prompted).clamp(0.0, 1.0);
        self.actual_rate = Some(actual);
        self.predicted_rate = Some(predicted);
        self.reset(hits, queries);
        predicted - actual > CALIBRATION_MARGIN
    }

    fn reset(&mut self, hits: f64, queries: f64) {
        self.base = Some((hits, queries));
        self.prompted = 0.0;
        self.predicted = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(start: u64, n: u64) -> Vec<u64> {
        (start..start + n).collect()
    }

    #[test]
    fn a_prediction_far_above_the_servers_own_hit_rate_is_noticed() {
        let mut c = Calibration::default();
        assert!(!c.observe(0.0, 0.0));
        c.routed(20_000.0, 18_000.0);
        assert!(
            !c.observe(17_000.0, 20_000.0),
            "90% predicted, 85% real: fine"
        );
        assert_eq!(c.predicted_rate, Some(0.9));
        c.routed(20_000.0, 18_000.0);
        assert!(
            c.observe(17_500.0, 40_000.0),
            "90% predicted, 2.5% real: reset"
        );
        assert!(c.actual_rate.unwrap() < 0.05);
    }

    #[test]
    fn matches_the_longest_recorded_prefix() {
        let mut idx = PrefixIndex::new(1000);
        let a = chain(0, 10);
        idx.record(&a);
        assert_eq!(idx.matched(&a), 10);
        let mut b = chain(0, 6);
        b.extend(chain(100, 4));
        assert_eq!(idx.matched(&b), 6);
        assert_eq!(idx.matched(&chain(50, 3)), 0);
        assert_eq!(idx.matched(&[]), 0);
    }

    #[test]
    fn holds_to_its_budget_and_evicts_chains_from_their_end() {
        let mut idx = PrefixIndex::new(25);
        for i in 0..100u64 {
            idx.record(&chain(i * 1000, 10)); // unique prompts
            assert!(idx.len() <= 25);
        }
        assert_eq!(idx.bytes(), 25 * BYTES_PER_BLOCK);
        // The newest prompts are whole; the oldest one kept lost its tail, not its head.
        assert_eq!(idx.matched(&chain(99_000, 10)), 10);
        assert_eq!(idx.matched(&chain(98_000, 10)), 10);
        assert_eq!(idx.matched(&chain(97_000, 10)), 5);
        assert_eq!(idx.matched(&chain(96_000, 10)), 0);
    }

    #[test]
    fn never_believes_more_than_the_kv_cache_holds() {
        let mut idx = PrefixIndex::new(1_000_000);
        idx.set_kv_tokens(16 * 40); // 40 blocks
        for i in 0..10u64 {
            idx.record(&chain(i * 1000, 30));
        }
        assert!(idx.len() <= 40);
        idx.clear();
        assert!(idx.is_empty());
        assert_eq!(idx.matched(&chain(9000, 30)), 0);
    }
}
