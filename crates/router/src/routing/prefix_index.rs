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

use lru::LruCache;

use crate::routing::fingerprint::BLOCK_TOKENS;

/// Memory one recorded block takes, by measurement of `lru`'s layout: a boxed entry (key, links)
/// and a hash-table slot, with the table's spare room.
pub const BYTES_PER_BLOCK: usize = 64;

#[derive(Debug)]
pub struct PrefixIndex {
    /// Each block, with the tokens of an answer that continued the chain from it (0: none, or
    /// not the last block of a prompt; see [`PrefixIndex::credit`]).
    blocks: LruCache<u64, u32>,
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
    ///
    /// Past the last block held, the answer the server wrote after that prompt counts too (it
    /// caches the blocks it generates, and a conversation's next turn quotes the answer): as
    /// many further blocks as the answer's tokens fill.
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
        let answer = lo
            .checked_sub(1)
            .and_then(|last| self.blocks.peek(&blocks[last]))
            .map_or(0, |&tokens| tokens as usize / BLOCK_TOKENS);
        lo + answer.min(blocks.len() - lo)
    }

    /// The server wrote an answer of `tokens` tokens after a prompt whose last full block is
    /// `last` (see [`PrefixIndex::matched`]). Nothing if that block is no longer held.
    pub fn credit(&mut self, last: u64, tokens: u32) {
        if let Some(t) = self.blocks.peek_mut(&last) {
            *t = tokens;
        }
    }

    /// Records a prompt sent to the server (it will hold these blocks after its prefill).
    pub fn record(&mut self, blocks: &[u64]) {
        let limit = self.limit();
        if limit == 0 {
            return;
        }
        // Beyond the limit, only the prompt's first `limit` blocks can be held.
        for &b in blocks[..blocks.len().min(limit)].iter().rev() {
            self.blocks.put(b, 0);
        }
        self.shrink();
    }

    /// Forgets everything (the server restarted, went down, or its cache was reset).
    /// Forgets every block and gives back the table's memory.
    pub fn clear(&mut self) {
        self.blocks = LruCache::unbounded();
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
        if self.blocks.len() <= limit {
            // Runs after every routed prompt: nothing to evict, nothing to give back (a fresh
            // table here cost an allocation per request).
            return;
        }
        while self.blocks.len() > limit {
            self.blocks.pop_lru();
        }
        if self.blocks.is_empty() {
            // Give back the table's memory after a shrink to nothing.
            self.blocks = LruCache::unbounded();
        }
    }
}

/// Prompt tokens a server must have been asked about before its prediction is judged.
pub const CALIBRATION_WINDOW_TOKENS: f64 = 16_384.0;
/// How far the predicted hit rate may exceed the server's own before the index is distrusted.
pub const CALIBRATION_MARGIN: f64 = 0.5;

/// What the index predicted for one routed request, in the router's token estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Prediction {
    pub prompt_tokens: f64,
    pub cached_tokens: f64,
    /// The routed prompt's last full block: where its answer continues the chain.
    pub last_block: Option<u64>,
}

/// One window's tally: prompt tokens and the tokens among them counted as cached.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Tally {
    prompt: f64,
    cached: f64,
}

impl Tally {
    fn add(&mut self, prompt: f64, cached: f64) {
        self.prompt += prompt;
        self.cached += cached;
    }

    fn rate(&self) -> f64 {
        (self.cached / self.prompt).clamp(0.0, 1.0)
    }
}

/// The index's predictions against what the server says it had cached.
///
/// Two sources, the better first: each response's `cached_tokens` (exact, per request, paired
/// with that request's prediction; vLLM reports it with `--enable-prompt-tokens-details`, and in
/// a stream only with `include_usage`), else the server's prefix-cache counters from `/metrics`
/// (every client's requests, not only this router's, against the predictions for all that were
/// routed there over the same time).
#[derive(Debug, Default, Clone)]
pub struct Calibration {
    /// Since the counters' window began: predictions for every request routed here.
    routed: Tally,
    /// The server's counters when that window began (`None`: not read yet).
    base: Option<(f64, f64)>,
    /// Requests whose response reported cached tokens: the predictions and the answers.
    answered_predicted: Tally,
    answered_actual: Tally,
    /// Responses have reported cached tokens: they, not the counters, judge the index.
    from_responses: bool,
    /// The last full window's rates.
    pub predicted_rate: Option<f64>,
    pub actual_rate: Option<f64>,
}

impl Calibration {
    /// A request routed here, with what the index predicted for it.
    pub fn routed(&mut self, p: Prediction) {
        self.routed.add(p.prompt_tokens, p.cached_tokens);
    }

    /// A response reported `cached` of its `prompt` tokens (the server's count) for a request
    /// routed with prediction `p`. Returns true when a full window shows the index promising
    /// far more than the server delivers (its cache was reset, or it evicts more than the index
    /// thinks): the caller then empties the index.
    pub fn answered(&mut self, p: Prediction, prompt: f64, cached: f64) -> bool {
        self.from_responses = true;
        self.answered_predicted
            .add(p.prompt_tokens, p.cached_tokens);
        self.answered_actual.add(prompt, cached);
        if self.answered_actual.prompt < CALIBRATION_WINDOW_TOKENS
            || self.answered_predicted.prompt <= 0.0
        {
            return false;
        }
        let far_off = self.judge(self.answered_predicted.rate(), self.answered_actual.rate());
        self.answered_predicted = Tally::default();
        self.answered_actual = Tally::default();
        far_off
    }

    /// The server's counters now (hits, queries, in tokens). Judges the index as
    /// [`Calibration::answered`] does, when no response has reported cached tokens.
    pub fn observe(&mut self, hits: f64, queries: f64) -> bool {
        let Some((h0, q0)) = self.base else {
            self.reset(hits, queries);
            return false;
        };
        let asked = queries - q0;
        if asked < 0.0 || self.from_responses {
            self.reset(hits, queries);
            return false;
        }
        if asked < CALIBRATION_WINDOW_TOKENS || self.routed.prompt <= 0.0 {
            return false;
        }
        let actual = ((hits - h0) / asked).clamp(0.0, 1.0);
        let far_off = self.judge(self.routed.rate(), actual);
        self.reset(hits, queries);
        far_off
    }

    fn judge(&mut self, predicted: f64, actual: f64) -> bool {
        self.predicted_rate = Some(predicted);
        self.actual_rate = Some(actual);
        predicted - actual > CALIBRATION_MARGIN
    }

    fn reset(&mut self, hits: f64, queries: f64) {
        self.base = Some((hits, queries));
        self.routed = Tally::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(start: u64, n: u64) -> Vec<u64> {
        (start..start + n).collect()
    }

    const NINETY_PERCENT: Prediction = Prediction {
        prompt_tokens: 20_000.0,
        cached_tokens: 18_000.0,
        last_block: None,
    };

    #[test]
    fn a_prediction_far_above_the_servers_own_hit_rate_is_noticed() {
        let mut c = Calibration::default();
        assert!(!c.observe(0.0, 0.0));
        c.routed(NINETY_PERCENT);
        assert!(
            !c.observe(17_000.0, 20_000.0),
            "90% predicted, 85% real: fine"
        );
        assert_eq!(c.predicted_rate, Some(0.9));
        c.routed(NINETY_PERCENT);
        assert!(
            c.observe(17_500.0, 40_000.0),
            "90% predicted, 2.5% real: reset"
        );
        assert!(c.actual_rate.unwrap() < 0.05);
    }

    #[test]
    fn responses_reporting_cached_tokens_judge_the_index_before_the_counters() {
        let mut c = Calibration::default();
        c.observe(0.0, 0.0);
        let small = Prediction {
            prompt_tokens: 1000.0,
            cached_tokens: 900.0,
            last_block: None,
        };
        for _ in 0..16 {
            assert!(!c.answered(small, 1010.0, 912.0));
        }
        assert!(
            !c.answered(small, 1010.0, 912.0),
            "a full window, 90% vs 90%"
        );
        assert_eq!(c.predicted_rate, Some(0.9));
        assert!((c.actual_rate.unwrap() - 912.0 / 1010.0).abs() < 1e-9);
        // The counters (other clients' traffic too) no longer judge it.
        c.routed(NINETY_PERCENT);
        assert!(!c.observe(0.0, 40_000.0));
        // Responses saying nothing was cached do.
        let far_off = (0..17).any(|_| c.answered(small, 1000.0, 0.0));
        assert!(far_off, "90% predicted, 0% reported: reset");
        assert_eq!(c.actual_rate, Some(0.0));
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
    fn the_answer_after_a_prompt_counts_as_held_by_its_server() {
        let mut idx = PrefixIndex::new(1000);
        let turn1 = chain(0, 10);
        idx.record(&turn1);
        // The next turn: the first prompt, the 50-token answer (3 blocks), a new question.
        let turn2 = chain(0, 20);
        assert_eq!(idx.matched(&turn2), 10, "before the answer is known");
        idx.credit(9, 50);
        assert_eq!(idx.matched(&turn2), 13, "the answer's full blocks");
        assert_eq!(idx.matched(&chain(0, 11)), 11, "never past the prompt");
        // A prompt branching off inside the first one gets no credit.
        assert_eq!(idx.matched(&chain(0, 5)), 5);
        // Recording the next turn replaces the credit by its own blocks.
        idx.record(&turn2);
        assert_eq!(idx.matched(&chain(0, 30)), 20);
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
