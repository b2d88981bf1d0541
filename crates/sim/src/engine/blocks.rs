//! The KV cache as vLLM's V1 block pool: fixed-size blocks, reference counts, prefix caching.
//!
//! Why: a router's value shows in how servers' caches fill and how prefixes are reused, so the
//! simulator keeps the real bookkeeping. A full block of tokens is identified by a hash chained
//! over the previous block's hash and its own tokens; a block whose last user freed it stays
//! reusable under its hash until allocation evicts it, least recently freed first. Freed blocks
//! join the back of the free queue; allocation takes from the front; a cache hit on a free block
//! takes it out of the queue (lazily: its queue entry goes stale).

use std::collections::{HashMap, VecDeque};

use mvllm_kv_events::{Event, Removed, Stored};

pub type BlockId = u32;

/// Tokens per KV block by default: vLLM's on GPUs (its CPU build uses 128).
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// The block sizes vLLM accepts (`--block-size`, `vllm/config/cache.py`).
pub const BLOCK_SIZES: [usize; 7] = [1, 8, 16, 32, 64, 128, 256];

#[derive(Debug, Clone, Default)]
struct Block {
    ref_cnt: u32,
    hash: Option<u64>,
    /// Matches the queue entry that is live for this block while it is free.
    free_stamp: u64,
}

#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    free_queue: VecDeque<(BlockId, u64)>,
    num_free: usize,
    cached: HashMap<u64, BlockId>,
    next_stamp: u64,
    block_size: usize,
    prefix_caching: bool,
    /// What entered and left the cache since the last [`BlockPool::take_events`], in order, as
    /// vLLM's KV events; `None` when nobody subscribes (`--kv-events` not given).
    events: Option<Vec<Event>>,
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        let mut pool = BlockPool {
            blocks: vec![Block::default(); num_blocks],
            free_queue: VecDeque::with_capacity(num_blocks),
            num_free: 0,
            cached: HashMap::new(),
            next_stamp: 1,
            block_size,
            prefix_caching,
            events: None,
        };
        for id in 0..num_blocks as BlockId {
            pool.push_free(id);
        }
        pool
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Fraction of blocks held by requests (vLLM's `kv_cache_usage_perc`, 0..1).
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.num_free as f64 / self.blocks.len() as f64
    }

    /// The block cached under `hash`, if any.
    pub fn lookup(&self, hash: u64) -> Option<BlockId> {
        if !self.prefix_caching {
            return None;
        }
        self.cached.get(&hash).copied()
    }

    /// Takes a reference on cache-hit blocks, pulling free ones out of the free queue.
    pub fn touch(&mut self, ids: &[BlockId]) {
        for &id in ids {
            let block = &mut self.blocks[id as usize];
            if block.ref_cnt == 0 {
                block.free_stamp = 0; // its queue entry is now stale
                self.num_free -= 1;
            }
            block.ref_cnt += 1;
        }
    }

    /// Allocates `n` fresh blocks, evicting the least recently freed cached ones, or `None`
    /// (allocating nothing) when fewer than `n` are free.
    pub fn allocate(&mut self, n: usize, out: &mut Vec<BlockId>) -> bool {
        if n > self.num_free {
            return false;
        }
        let mut taken = 0;
        while taken < n {
            let (id, stamp) = self
                .free_queue
                .pop_front()
                .expect("num_free counts queue entries");
            let block = &mut self.blocks[id as usize];
            if block.free_stamp != stamp || block.ref_cnt != 0 {
                continue; // stale entry: the block was taken by a cache hit
            }
            if let Some(h) = block.hash.take()
                && self.cached.get(&h) == Some(&id)
            {
                self.cached.remove(&h);
                if let Some(events) = &mut self.events {
                    events.push(Event::Removed(Removed {
                        block_hashes: vec![h],
                        medium: Some("GPU".into()),
                        group_idx: Some(0),
                    }));
                }
            }
            block.ref_cnt = 1;
            block.free_stamp = 0;
            self.num_free -= 1;
            out.push(id);
            taken += 1;
        }
        true
    }

    /// Drops one reference on each block, in the order given; vLLM frees a request's blocks
    /// tail first so that its last blocks are evicted first.
    pub fn free<'a>(&mut self, ids: impl IntoIterator<Item = &'a BlockId>) {
        for &id in ids {
            let block = &mut self.blocks[id as usize];
            debug_assert!(block.ref_cnt > 0, "double free of block {id}");
            block.ref_cnt -= 1;
            if block.ref_cnt == 0 {
                self.push_free(id);
            }
        }
        if self.free_queue.len() > 4 * self.blocks.len().max(16) {
            self.compact();
        }
    }

    /// Registers a full block under its chained hash so later requests can reuse it.
    pub fn cache(&mut self, id: BlockId, hash: u64) {
        self.cache_block(id, hash, None);
    }

    /// [`BlockPool::cache`], recording a `BlockStored` event for a hash new to the cache: the
    /// block's `tokens` and its `parent` (the hash of the block before it; `None` for a first
    /// block). Consecutive blocks of one sequence join one event, as in vLLM.
    pub fn cache_block(
        &mut self,
        id: BlockId,
        hash: u64,
        stored: Option<(Option<u64>, &[u32], Option<&str>)>,
    ) {
        if !self.prefix_caching {
            return;
        }
        let block = &mut self.blocks[id as usize];
        if block.hash.is_some() {
            return;
        }
        block.hash = Some(hash);
        let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) else {
            return;
        };
        e.insert(id);
        let (Some(events), Some((parent, tokens, lora))) = (&mut self.events, stored) else {
            return;
        };
        if let Some(Event::Stored(last)) = events.last_mut()
            && parent.is_some()
            && last.block_hashes.last().copied() == parent
            && last.lora_name.as_deref() == lora
        {
            last.block_hashes.push(hash);
            last.token_ids.extend_from_slice(tokens);
            if let Some(k) = &mut last.extra_keys {
                k.push(None);
            }
            return;
        }
        events.push(Event::Stored(Stored {
            block_hashes: vec![hash],
            parent_block_hash: parent,
            token_ids: tokens.to_vec(),
            block_size: self.block_size as u32,
            lora_id: None,
            medium: Some("GPU".into()),
            lora_name: lora.map(str::to_string),
            extra_keys: Some(vec![None]),
            group_idx: Some(0),
            kv_cache_spec_kind: Some("full_attention".into()),
            kv_cache_spec_sliding_window: None,
        }));
    }

    /// Forgets every cached hash (vLLM's `/reset_prefix_cache`; a restarted server).
    pub fn reset_prefix_cache(&mut self) {
        self.cached.clear();
        for b in &mut self.blocks {
            b.hash = None;
        }
        if let Some(events) = &mut self.events {
            events.push(Event::AllCleared);
        }
    }

    /// Starts recording KV events.
    pub fn record_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// The events recorded since the last call (empty when not recording).
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Blocks the prefix cache holds now (what a subscriber to its events should count).
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    fn push_free(&mut self, id: BlockId) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.blocks[id as usize].free_stamp = stamp;
        self.free_queue.push_back((id, stamp));
        self.num_free += 1;
    }

    fn compact(&mut self) {
        let blocks = &self.blocks;
        self.free_queue.retain(|&(id, stamp)| {
            blocks[id as usize].ref_cnt == 0 && blocks[id as usize].free_stamp == stamp
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_evicts_least_recently_freed_and_hits_survive_until_evicted() {
        let mut pool = BlockPool::new(4, 16, true);
        let mut a = Vec::new();
        assert!(pool.allocate(2, &mut a));
        pool.cache(a[0], 100);
        pool.cache(a[1], 200);
        pool.free(a.iter().rev());
        assert_eq!(pool.num_free(), 4);
        assert_eq!(pool.lookup(100), Some(a[0]));
        // Two never-used blocks are at the front; then a[1] (freed first), then a[0].
        let mut b = Vec::new();
        assert!(pool.allocate(3, &mut b));
        assert_eq!(pool.lookup(200), None, "a[1] was evicted");
        assert_eq!(pool.lookup(100), Some(a[0]), "a[0] still cached");
        pool.touch(&[a[0]]);
        assert_eq!(pool.num_free(), 0);
        assert!(!pool.allocate(1, &mut b));
        assert!((pool.usage() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn shared_blocks_are_freed_when_last_reference_drops() {
        let mut pool = BlockPool::new(2, 16, true);
        let mut a = Vec::new();
        assert!(pool.allocate(1, &mut a));
        pool.cache(a[0], 7);
        pool.touch(&a);
        pool.free(a.iter());
        assert_eq!(pool.num_free(), 1);
        pool.free(a.iter());
        assert_eq!(pool.num_free(), 2);
        assert_eq!(pool.lookup(7), Some(a[0]));
    }

    #[test]
    fn disabled_prefix_caching_never_hits() {
        let mut pool = BlockPool::new(2, 16, false);
        let mut a = Vec::new();
        assert!(pool.allocate(1, &mut a));
        pool.cache(a[0], 7);
        assert_eq!(pool.lookup(7), None);
    }
}
