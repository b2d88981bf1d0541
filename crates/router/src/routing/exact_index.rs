//! What one server's prefix cache holds, exactly, as its KV events say: every block it stored
//! and has not removed, keyed so that a request's tokens can be matched against it.
//!
//! Why our own chain over the events' tokens, not the engine's hashes: vLLM's block hashes
//! depend on its hash function and seed (`PYTHONHASHSEED`, sha256 or builtin), which a router
//! cannot know. But each `BlockStored` carries the block's token ids and its parent, so the index
//! re-keys every block by a hash chained over token ids ([`chain`]), which the router computes
//! the same way for a request's tokens. The engine's hash is kept only to apply `BlockRemoved`
//! and to find a block's parent. Matching is then "how many leading blocks of the request are
//! held", as vLLM's own prefix lookup.
//!
//! Between routing a prompt and the server storing its blocks lie its queueing and prefill; a
//! burst of requests sharing a new prefix would all see it held nowhere. So blocks routed to the
//! server count as held for [`PENDING_TTL`] (or until stored), as pending.
//!
//! Memory: [`BYTES_PER_EXACT_BLOCK`] per block, held within the server's share of
//! `prefix_index_bytes`; stores beyond it are dropped and counted (the index then holds less
//! than the server, never more).

use std::collections::HashMap;
use std::time::Duration;

use mvllm_kv_events::{Batch, Event};
use tokio::time::Instant;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Memory one block takes: an entry in each of two hash maps (16-byte and 12-byte entries with
/// their tables' spare room and control bytes).
pub const BYTES_PER_EXACT_BLOCK: usize = 64;

/// How long a routed prompt's blocks count as held before the server says it stored them.
pub const PENDING_TTL: Duration = Duration::from_secs(30);

/// The seed of a chain: the LoRA adapter (each has its own cache), or none for the base model.
pub fn chain_seed(lora: Option<&str>) -> u64 {
    lora.map_or(0, |l| xxh3_64(l.as_bytes()))
}

/// One hash per full block of `tokens`, each chained over the one before (`seed` first).
pub fn chain(tokens: &[u32], block_size: usize, seed: u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(tokens.len() / block_size.max(1));
    let mut parent = seed;
    let mut bytes = Vec::with_capacity(block_size * 4);
    for block in tokens.chunks_exact(block_size.max(1)) {
        parent = block_hash(block, parent, &mut bytes);
        out.push(parent);
    }
    out
}

fn block_hash(tokens: &[u32], parent: u64, scratch: &mut Vec<u8>) -> u64 {
    scratch.clear();
    for t in tokens {
        scratch.extend_from_slice(&t.to_le_bytes());
    }
    xxh3_64_with_seed(scratch, parent)
}

/// What applying a batch found wrong, for the counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Blocks whose parent the index did not know (stored, but matchable by no request).
    pub orphans: usize,
    /// Removals of blocks the index did not hold.
    pub unknown_removed: usize,
    /// Stores dropped for the memory budget.
    pub over_budget: usize,
}

#[derive(Debug, Default)]
pub struct ExactIndex {
    /// The engine's block hash -> our chain hash.
    by_engine: HashMap<u64, u64>,
    /// Our chain hash -> how many stored blocks have it (an engine may hold duplicates).
    held: HashMap<u64, u32>,
    /// Chain hashes routed here and not yet stored, with when.
    pending: HashMap<u64, Instant>,
    block_size: Option<usize>,
    /// LoRA adapters whose blocks were seen (a request for one is matched on its chain).
    loras: Vec<String>,
    budget_blocks: usize,
}

impl ExactIndex {
    pub fn new(budget_blocks: usize) -> Self {
        ExactIndex {
            budget_blocks,
            ..Default::default()
        }
    }

    pub fn set_budget(&mut self, blocks: usize) {
        self.budget_blocks = blocks;
    }

    /// Blocks the server holds (stored and not removed).
    pub fn len(&self) -> usize {
        self.by_engine.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_engine.is_empty()
    }

    pub fn bytes(&self) -> usize {
        (self.by_engine.len() + self.pending.len()) * BYTES_PER_EXACT_BLOCK
    }

    /// The block size the events carry (`None` before the first store).
    pub fn block_size(&self) -> Option<usize> {
        self.block_size
    }

    /// The seed a request for `model` is chained from here.
    pub fn seed_for(&self, model: Option<&str>) -> u64 {
        chain_seed(model.filter(|m| self.loras.iter().any(|l| l == m)))
    }

    /// Forgets everything (the engine cleared its cache, or restarted).
    pub fn clear(&mut self) {
        *self = ExactIndex::new(self.budget_blocks);
    }

    pub fn apply(&mut self, batch: &Batch) -> Applied {
        let mut out = Applied::default();
        for e in &batch.events {
            match e {
                Event::Stored(s) => self.store(s, &mut out),
                Event::Removed(r) => {
                    for h in &r.block_hashes {
                        match self.by_engine.remove(h) {
                            Some(c) => self.release(c),
                            None => out.unknown_removed += 1,
                        }
                    }
                }
                Event::AllCleared => self.clear(),
            }
        }
        out
    }

    fn store(&mut self, s: &mvllm_kv_events::Stored, out: &mut Applied) {
        let size = s.block_size as usize;
        if self.block_size.is_some_and(|b| b != size) {
            // Another block size: another engine configuration; what was held is gone.
            self.clear();
        }
        self.block_size = Some(size);
        if let Some(l) = &s.lora_name
            && !self.loras.contains(l)
            && self.loras.len() < 256
        {
            self.loras.push(l.clone());
        }
        let mut parent = match s.parent_block_hash {
            None => Some(chain_seed(s.lora_name.as_deref())),
            Some(p) => self.by_engine.get(&p).copied(),
        };
        let mut scratch = Vec::with_capacity(size * 4);
        for (i, &engine) in s.block_hashes.iter().enumerate() {
            let tokens = &s.token_ids[i * size..(i + 1) * size];
            let ours = match parent {
                Some(p) => block_hash(tokens, p, &mut scratch),
                None => {
                    // The parent is unknown: keyed off the engine's hash, never matched.
                    out.orphans += 1;
                    engine ^ 0x9e37_79b9_7f4a_7c15
                }
            };
            parent = Some(ours);
            if let Some(old) = self.by_engine.get(&engine).copied() {
                self.release(old);
            } else if self.by_engine.len() + self.pending.len() >= self.budget_blocks {
                self.expire_pending(Instant::now());
                if self.by_engine.len() + self.pending.len() >= self.budget_blocks {
                    out.over_budget += 1;
                    continue;
                }
            }
            self.by_engine.insert(engine, ours);
            *self.held.entry(ours).or_insert(0) += 1;
            self.pending.remove(&ours);
        }
    }

    fn release(&mut self, chain: u64) {
        if let Some(n) = self.held.get_mut(&chain) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&chain);
            }
        }
    }

    /// Leading blocks of `chain` held (or pending) here at `now`.
    pub fn matched(&self, chain: &[u64], now: Instant) -> usize {
        chain
            .iter()
            .take_while(|h| {
                self.held.contains_key(h)
                    || self
                        .pending
                        .get(h)
                        .is_some_and(|&at| now.duration_since(at) < PENDING_TTL)
            })
            .count()
    }

    /// A prompt with these blocks was routed here at `now`: they count as held until stored or
    /// for [`PENDING_TTL`]. Returns whether the server must store some of them (some are
    /// neither held nor already expected from an earlier request): then an event must follow.
    pub fn routed(&mut self, chain: &[u64], now: Instant) -> bool {
        let fresh = self.matched(chain, now) < chain.len();
        let room = self
            .budget_blocks
            .saturating_sub(self.by_engine.len())
            .min(self.budget_blocks / 4);
        if self.pending.len() + chain.len() > room {
            self.expire_pending(now);
        }
        for &h in chain {
            if self.pending.len() >= room {
                break;
            }
            if !self.held.contains_key(&h) {
                self.pending.insert(h, now);
            }
        }
        fresh
    }

    fn expire_pending(&mut self, now: Instant) {
        self.pending
            .retain(|_, &mut at| now.duration_since(at) < PENDING_TTL);
    }

    /// Pending blocks (routed, not yet stored).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvllm_kv_events::{Removed, Stored};

    fn stored(hashes: &[u64], parent: Option<u64>, tokens: &[u32], size: u32) -> Event {
        Event::Stored(Stored {
            block_hashes: hashes.to_vec(),
            parent_block_hash: parent,
            token_ids: tokens.to_vec(),
            block_size: size,
            ..Stored::default()
        })
    }

    fn batch(events: Vec<Event>) -> Batch {
        Batch {
            ts: 0.0,
            events,
            data_parallel_rank: Some(0),
        }
    }

    #[test]
    fn a_request_matches_the_blocks_the_events_stored_whatever_the_engines_hashes() {
        let mut idx = ExactIndex::new(1000);
        let request: Vec<u32> = (0..50).collect();
        // Two events: the first two blocks, then the third under its parent.
        idx.apply(&batch(vec![stored(&[111, 222], None, &request[..32], 16)]));
        idx.apply(&batch(vec![stored(
            &[333],
            Some(222),
            &request[32..48],
            16,
        )]));
        assert_eq!(idx.len(), 3);
        let now = Instant::now();
        assert_eq!(idx.matched(&chain(&request, 16, 0), now), 3);
        assert_eq!(idx.matched(&chain(&request[..20], 16, 0), now), 1);
        let other: Vec<u32> = (1..41).collect();
        assert_eq!(idx.matched(&chain(&other, 16, 0), now), 0);
        // Removing the middle block ends the match there.
        idx.apply(&batch(vec![Event::Removed(Removed {
            block_hashes: vec![222],
            ..Removed::default()
        })]));
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.matched(&chain(&request, 16, 0), now), 1);
        let a = idx.apply(&batch(vec![Event::Removed(Removed {
            block_hashes: vec![999],
            ..Removed::default()
        })]));
        assert_eq!(a.unknown_removed, 1);
        idx.apply(&batch(vec![Event::AllCleared]));
        assert!(idx.is_empty());
    }

    #[test]
    fn unknown_parents_lora_adapters_and_the_budget() {
        let mut idx = ExactIndex::new(4);
        let t: Vec<u32> = (0..16).collect();
        let a = idx.apply(&batch(vec![stored(&[5], Some(77), &t, 16)]));
        assert_eq!((a.orphans, idx.len()), (1, 1));
        assert_eq!(idx.matched(&chain(&t, 16, 0), Instant::now()), 0);
        // A LoRA adapter's blocks match requests for it only.
        let Event::Stored(mut s) = stored(&[6], None, &t, 16) else {
            unreachable!()
        };
        s.lora_name = Some("sql".into());
        idx.apply(&batch(vec![Event::Stored(s)]));
        let now = Instant::now();
        assert_eq!(
            idx.matched(&chain(&t, 16, idx.seed_for(Some("sql"))), now),
            1
        );
        assert_eq!(
            idx.matched(&chain(&t, 16, idx.seed_for(Some("base"))), now),
            0
        );
        // Beyond the budget, stores are dropped and counted.
        let many: Vec<u32> = (0..16 * 5).collect();
        let a = idx.apply(&batch(vec![stored(&[10, 11, 12, 13, 14], None, &many, 16)]));
        assert_eq!(idx.len(), 4);
        assert_eq!(a.over_budget, 3);
        assert!(idx.bytes() <= 4 * BYTES_PER_EXACT_BLOCK);
    }

    #[test]
    fn routed_blocks_count_until_stored_or_stale() {
        let mut idx = ExactIndex::new(1000);
        let t: Vec<u32> = (0..64).collect();
        let c = chain(&t, 16, 0);
        let now = Instant::now();
        assert!(
            idx.routed(&c, now),
            "new blocks: the server must store them"
        );
        assert_eq!(idx.matched(&c, now), 4);
        assert!(
            !idx.routed(&c, now),
            "already expected from the first: no new store"
        );
        assert_eq!(idx.matched(&c, now + PENDING_TTL), 0, "stale");
        idx.apply(&batch(vec![stored(&[1, 2], None, &t[..32], 16)]));
        assert_eq!(idx.pending(), 2, "the stored ones are no longer pending");
        assert_eq!(idx.matched(&c, now + PENDING_TTL), 2);
        // A change of block size is another engine: start over.
        idx.apply(&batch(vec![stored(
            &[9],
            None,
            &(0..128).collect::<Vec<_>>(),
            128,
        )]));
        assert_eq!((idx.len(), idx.block_size()), (1, Some(128)));
        // A prompt shorter than a block, or all held, makes the server store nothing.
        let later = now + 2 * PENDING_TTL;
        assert!(
            !idx.routed(&chain(&(0..100).collect::<Vec<_>>(), 128, 0), later),
            "shorter than a block"
        );
        assert!(
            !idx.routed(&chain(&(0..200).collect::<Vec<_>>(), 128, 0), later),
            "held"
        );
        assert!(idx.routed(&chain(&(0..256).collect::<Vec<_>>(), 128, 0), later));
    }
}
