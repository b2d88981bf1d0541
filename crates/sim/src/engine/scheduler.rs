//! vLLM V1's scheduler, without a clock: one call plans a step, another applies its result.
//!
//! Why pure: batching, chunked prefill, preemption and prefix reuse are the behaviour a router is
//! judged against, so they are tested step by step here, apart from time and I/O.
//!
//! A step: running requests first, in admission order, each taking what it still needs (one
//! token when decoding, a chunk of the prompt when prefilling) from the token budget; a request
//! that cannot get a KV block preempts the most recently admitted running request (which goes back
//! to the front of the waiting queue and later recomputes). Then, if nothing was preempted,
//! waiting requests are admitted first come first served while the batch has room, budget is
//! left and blocks can be allocated, reusing the longest cached run of their leading blocks.
//! When a step ends, each request whose computed tokens reach its length emits one token.

use std::collections::VecDeque;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::blocks::{BlockId, BlockPool};

pub type ReqId = u64;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub num_blocks: usize,
    /// Tokens per KV block (vLLM's `--block-size`: 16 on GPUs, 128 on the CPU build).
    pub block_size: usize,
    pub prefix_caching: bool,
    /// Record vLLM's KV events (stored, removed, cleared) for a publisher.
    pub kv_events: bool,
    /// The context length: the per-request token histograms' buckets go up to it.
    pub max_model_len: usize,
}

/// What a request will be: its prompt and the output the model will write (known in advance:
/// the simulator's output is a deterministic function of the prompt).
#[derive(Debug, Clone, Default)]
pub struct SeqSpec {
    /// Prompt tokens followed by every output token.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Seed of the block-hash chain (vLLM mixes LoRA id and cache salt in here).
    pub hash_salt: u64,
    /// Leading prompt tokens whose KV arrived from a prefill server (disaggregated prefill): at
    /// first admission they count as computed, as vLLM's external hits do (and as cached tokens
    /// in usage). At most the prompt minus one token: the last is computed here for its logits.
    pub preloaded: usize,
    /// Keep the blocks when the request finishes, until [`Scheduler::release`]: a prefill
    /// server holds a request's KV for the decode server to read.
    pub hold_blocks: bool,
    /// The LoRA adapter the request runs (its blocks' `lora_name` in KV events).
    pub lora_name: Option<String>,
    /// The request's `max_tokens` as vLLM uses it (cut to the context); 0: its output length.
    pub max_tokens: usize,
}

impl SeqSpec {
    pub fn output_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

#[derive(Debug)]
struct Seq {
    id: ReqId,
    spec: SeqSpec,
    num_output: usize,
    num_computed: usize,
    blocks: Vec<BlockId>,
    /// Chained hashes of full blocks of `spec.tokens`, computed as needed.
    hashes: Vec<u64>,
    /// How many of `blocks` are registered in the prefix cache.
    num_cached_blocks: usize,
    /// Prompt tokens served from the prefix cache at first admission (usage.cached_tokens).
    cached_prompt_tokens: Option<usize>,
}

impl Seq {
    fn num_tokens(&self) -> usize {
        self.spec.prompt_len + self.num_output
    }

    fn block_hash(&mut self, k: usize, block_size: usize) -> u64 {
        let mut bytes = Vec::new();
        while self.hashes.len() <= k {
            let i = self.hashes.len();
            let parent = if i == 0 {
                self.spec.hash_salt
            } else {
                self.hashes[i - 1]
            };
            let chunk = &self.spec.tokens[i * block_size..(i + 1) * block_size];
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|t| t.to_le_bytes()));
            self.hashes.push(xxh3_64_with_seed(&bytes, parent));
        }
        self.hashes[k]
    }
}

/// One request's share of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    pub id: ReqId,
    pub num_new_tokens: usize,
    /// Tokens already in its KV cache before this step (what a decode step reads).
    pub context_len: usize,
    /// True when this step finishes computing everything the request has (it then emits).
    pub completes: bool,
}

/// What one step computes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub scheduled: Vec<Scheduled>,
    /// Requests admitted from the waiting queue this step, with their prefix-cache hit in tokens.
    pub admitted: Vec<(ReqId, usize)>,
    pub preempted: Vec<ReqId>,
}

impl StepPlan {
    pub fn num_tokens(&self) -> usize {
        self.scheduled.iter().map(|s| s.num_new_tokens).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }
}

/// A token a request emitted at the end of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub id: ReqId,
    /// Index of this token in the request's output (0 is the first token).
    pub index: usize,
    /// The request has now written its whole output.
    pub finished: bool,
}

/// Running totals, as vLLM's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerCounters {
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub preemptions: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
}

#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    /// Blocks of finished requests kept for a decode server to read (`hold_blocks`).
    held: std::collections::HashMap<ReqId, Vec<BlockId>>,
    pub counters: SchedulerCounters,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        let mut pool = BlockPool::new(cfg.num_blocks, cfg.block_size, cfg.prefix_caching);
        if cfg.kv_events {
            pool.record_events();
        }
        Scheduler {
            cfg,
            pool,
            waiting: VecDeque::new(),
            running: Vec::new(),
            held: Default::default(),
            counters: Default::default(),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn add(&mut self, id: ReqId, spec: SeqSpec) {
        debug_assert!(
            spec.output_len() >= 1,
            "a request writes at least one token"
        );
        self.waiting.push_back(Seq {
            id,
            spec,
            num_output: 0,
            num_computed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            num_cached_blocks: 0,
            cached_prompt_tokens: None,
        });
    }

    /// Removes a request wherever it is, freeing its blocks. Returns whether it was there.
    pub fn abort(&mut self, id: ReqId) -> bool {
        if let Some(pos) = self.running.iter().position(|s| s.id == id) {
            let seq = self.running.remove(pos);
            self.pool.free(seq.blocks.iter().rev());
            return true;
        }
        if let Some(pos) = self.waiting.iter().position(|s| s.id == id) {
            let seq = self.waiting.remove(pos).expect("position is valid");
            self.pool.free(seq.blocks.iter().rev());
            return true;
        }
        false
    }

    /// The blocks a finished `hold_blocks` request keeps.
    pub fn held(&self, id: ReqId) -> Option<&[BlockId]> {
        self.held.get(&id).map(Vec::as_slice)
    }

    /// Frees the blocks a finished request was holding (read by the decode server, or its lease
    /// ran out). They stay in the prefix cache until evicted. Returns whether it held any.
    pub fn release(&mut self, id: ReqId) -> bool {
        match self.held.remove(&id) {
            Some(blocks) => {
                self.pool.free(blocks.iter().rev());
                true
            }
            None => false,
        }
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn kv_usage(&self) -> f64 {
        self.pool.usage()
    }
    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }
    pub fn reset_prefix_cache(&mut self) {
        self.pool.reset_prefix_cache();
    }
    /// KV events since the last call (see [`BlockPool::take_events`]).
    pub fn take_kv_events(&mut self) -> Vec<mvllm_kv_events::Event> {
        self.pool.take_events()
    }
    /// Blocks in the prefix cache.
    pub fn num_cached_blocks(&self) -> usize {
        self.pool.num_cached()
    }
    /// Prompt tokens of `id` that came from the prefix cache at its first admission.
    pub fn cached_prompt_tokens(&self, id: ReqId) -> Option<usize> {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .find(|s| s.id == id)?
            .cached_prompt_tokens
    }

    /// Plans the next step. Blocks are allocated and requests admitted or preempted now;
    /// tokens count as computed only in [`Scheduler::finish_step`].
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_num_batched_tokens;

        let mut idx = 0;
        while idx < self.running.len() && budget > 0 {
            let need = self.running[idx].num_tokens() - self.running[idx].num_computed;
            let n = need.min(budget);
            let mut scheduled = false;
            loop {
                if self.grow(idx, n) {
                    scheduled = true;
                    break;
                }
                let victim = self
                    .running
                    .pop()
                    .expect("running holds the request being grown");
                let victim_was_current = self.running.len() == idx;
                self.preempt(victim, &mut plan);
                if victim_was_current {
                    break;
                }
            }
            if !scheduled {
                break;
            }
            let seq = &self.running[idx];
            plan.scheduled.push(Scheduled {
                id: seq.id,
                num_new_tokens: n,
                context_len: seq.num_computed,
                completes: seq.num_computed + n == seq.num_tokens(),
            });
            budget -= n;
            idx += 1;
        }

        if plan.preempted.is_empty() {
            while budget > 0 && self.running.len() < self.cfg.max_num_seqs {
                let Some(mut seq) = self.waiting.pop_front() else {
                    break;
                };
                let hit_blocks = self.find_cached_prefix(&mut seq);
                let hit_tokens = hit_blocks.len() * self.cfg.block_size;
                // KV pulled from a prefill server counts once, at first admission (a preempted
                // request recomputes what its cache no longer holds).
                let remote = if seq.cached_prompt_tokens.is_none() {
                    seq.spec
                        .preloaded
                        .min(seq.spec.prompt_len.saturating_sub(1))
                } else {
                    0
                };
                let start = hit_tokens.max(remote);
                let need = seq.num_tokens() - start;
                let n = need.min(budget);
                let fresh = (start + n).div_ceil(self.cfg.block_size) - hit_blocks.len();
                self.pool.touch(&hit_blocks);
                let mut new_blocks = Vec::with_capacity(fresh);
                if !self.pool.allocate(fresh, &mut new_blocks) {
                    self.pool.free(hit_blocks.iter().rev());
                    self.waiting.push_front(seq);
                    break;
                }
                self.counters.prefix_queries += seq.num_tokens() as u64;
                self.counters.prefix_hits += hit_tokens as u64;
                if seq.cached_prompt_tokens.is_none() {
                    seq.cached_prompt_tokens = Some(start.min(seq.spec.prompt_len));
                }
                seq.num_cached_blocks = hit_blocks.len();
                seq.blocks = hit_blocks;
                seq.blocks.extend(new_blocks);
                seq.num_computed = start;
                plan.admitted.push((seq.id, start));
                plan.scheduled.push(Scheduled {
                    id: seq.id,
                    num_new_tokens: n,
                    context_len: start,
                    completes: n == need,
                });
                budget -= n;
                self.running.push(seq);
            }
        }
        plan
    }

    /// Applies a planned step: tokens become computed, full blocks enter the prefix cache, and
    /// requests that completed emit one token (finished ones leave and free their blocks).
    pub fn finish_step(&mut self, plan: &StepPlan, emitted: &mut Vec<Emitted>) {
        let block_size = self.cfg.block_size;
        let mut finished_any = false;
        for s in &plan.scheduled {
            let Some(seq) = self.running.iter_mut().find(|q| q.id == s.id) else {
                continue;
            };
            let was_prefill = seq.num_computed < seq.spec.prompt_len;
            let prefill_part = if was_prefill {
                (seq.spec.prompt_len - seq.num_computed).min(s.num_new_tokens)
            } else {
                0
            };
            seq.num_computed += s.num_new_tokens;
            self.counters.prompt_tokens += prefill_part as u64;
            // Register blocks that are now full of computed tokens.
            let full = seq.num_computed / block_size;
            while seq.num_cached_blocks < full {
                let k = seq.num_cached_blocks;
                let h = seq.block_hash(k, block_size);
                let parent = k.checked_sub(1).map(|p| seq.hashes[p]);
                let tokens = &seq.spec.tokens[k * block_size..(k + 1) * block_size];
                let stored = (parent, tokens, seq.spec.lora_name.as_deref());
                self.pool.cache_block(seq.blocks[k], h, Some(stored));
                seq.num_cached_blocks += 1;
            }
            if s.completes && seq.num_computed == seq.num_tokens() {
                let index = seq.num_output;
                seq.num_output += 1;
                self.counters.generation_tokens += 1;
                let finished = seq.num_output == seq.spec.output_len();
                finished_any |= finished;
                emitted.push(Emitted {
                    id: seq.id,
                    index,
                    finished,
                });
            }
        }
        if finished_any {
            let (pool, held) = (&mut self.pool, &mut self.held);
            self.running.retain_mut(|seq| {
                let done = seq.num_output == seq.spec.output_len();
                if done && seq.spec.hold_blocks {
                    held.insert(seq.id, std::mem::take(&mut seq.blocks));
                } else if done {
                    pool.free(seq.blocks.iter().rev());
                }
                !done
            });
        }
    }

    /// Makes sure running request `idx` has blocks for `n` more tokens.
    fn grow(&mut self, idx: usize, n: usize) -> bool {
        let seq = &mut self.running[idx];
        let want = (seq.num_computed + n).div_ceil(self.cfg.block_size);
        let extra = want.saturating_sub(seq.blocks.len());
        extra == 0 || self.pool.allocate(extra, &mut seq.blocks)
    }

    fn preempt(&mut self, mut seq: Seq, plan: &mut StepPlan) {
        self.pool.free(seq.blocks.iter().rev());
        seq.blocks.clear();
        seq.num_computed = 0;
        seq.num_cached_blocks = 0;
        self.counters.preemptions += 1;
        plan.preempted.push(seq.id);
        plan.scheduled.retain(|s| s.id != seq.id);
        self.waiting.push_front(seq);
    }

    /// The longest run of cached leading blocks, leaving at least one token to compute.
    fn find_cached_prefix(&mut self, seq: &mut Seq) -> Vec<BlockId> {
        let block_size = self.cfg.block_size;
        let max_blocks = (seq.num_tokens() - 1) / block_size;
        let mut hits = Vec::new();
        for k in 0..max_blocks {
            let h = seq.block_hash(k, block_size);
            match self.pool.lookup(h) {
                Some(b) => hits.push(b),
                None => break,
            }
        }
        hits
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
