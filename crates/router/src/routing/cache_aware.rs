//! `cache_aware`: send a request where it will get its first token soonest.
//!
//! A request's time to first token on a server is the work queued ahead of it plus its own
//! prefill, on that server's speed. The router knows most of it: its exact in-flight count (and
//! which of those still await their first byte), the load other clients put on the server (from
//! its `/metrics`), the uncached prefill it has already sent there, from its prefix index how
//! much of this prompt the server holds, and from the server's inter-token latency how much
//! slower than the fastest it is (`speed`). So the cost of a server is `adaptive`'s load
//! (requests relative to capacity; a slow server's requests stay in flight longer, so its load
//! shows its speed; one beyond its capacity waits for a slot, and weighs far more) plus the
//! prefill still to do there (on a slower server, times its slowness and at least
//! [`MIN_PREFILL_TOKENS`]), converted at [`PREFILL_TOKENS_PER_REQUEST`] tokens to one request's
//! worth of work.
//!
//! What this buys, unlike a cache threshold: a hot prefix stays on its server until that server
//! is busier than another by more than the prefill it saves, then spreads to a second server
//! (which then caches it too); a slow server holding the prefix loses it once its queue costs
//! more than the prefill; nothing can pull all traffic onto one server, because load always
//! counts (the "death spiral" of threshold-based cache routing).
//!
//! Replicas: among servers within [`TOLERANCE`] requests of the best cost ([`COLD_TOLERANCE`]
//! when no server is known to hold the conversation), the choice is the one holding the most of
//! the prompt, then by rendezvous hashing of the request's affinity key (its session key, or a
//! block of its first user message; for a new conversation that opens with a shared preamble,
//! the preamble, so that conversations sharing a system prompt start on one server and each
//! server prefills it only once load sends some there) with each server's id. A prefix nothing
//! is known about yet therefore goes to the same server from every router replica, without any
//! shared state, as long as the loads they see are within the tolerance; and a conversation
//! stays where it was unless that server is busier than the others by more than the tolerance.
//! A new conversation's system prompt widens its servers' tolerance by its prefill's worth
//! ([`PREAMBLE_TOKENS_PER_REQUEST`]), and counts as held everywhere only until a server holds
//! the conversation: moving it then re-prefills the system prompt as well where it is not held.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use rand::RngCore;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::candidate::Candidate;
use super::fingerprint::{BLOCK_TOKENS, Fingerprint};
use super::kind::PolicyKind;
use super::policy::{Ended, Policy, PrefixReport, RouteRequest, ServerChange, ServerId};
use super::prefix_index::{BYTES_PER_BLOCK, Calibration, Prediction, PrefixIndex};
use super::scores::{adaptive_score, lowest};
use super::speed::{fastest, slowness};

/// Prefill tokens that cost as much as one more request queued on a server. Measured, not
/// derived: `mvllm bench routing --workload chat-sessions` over 32..1024 (with TOLERANCE 1..6)
/// gave the best hit rate at 32-64 and the best p99 time to first token at 64-128; 64 keeps
/// conversations on their servers a little longer than 128 (88.6% vs 88.1% hit rate, one
/// replica, heterogeneous fleet at 80%) for a p99 still far below the peers'.
pub const PREFILL_TOKENS_PER_REQUEST: f64 = 64.0;

/// How close to the best cost (in requests, relative to capacity) a server must be to be chosen
/// for its cache and affinity rather than by cost alone (measured with the constant above).
pub const TOLERANCE: f64 = 3.0;

/// The tolerance for a conversation or document no server is known to hold: wider, so that
/// router replicas, whose load figures differ by their own in-flight requests, still agree on
/// its first server (measured: two replicas lost 3.2 points of hit rate to one at 3, 1.5 at 6,
/// `bench routing --workload chat-sessions --compare cache_aware,cache_aware-x2`).
pub const COLD_TOLERANCE: f64 = 6.0;

/// The least loaded server's load (relative to capacity) at which a request in flight costs
/// [`PREFILL_TOKENS_PER_REQUEST`] in full.
pub const FULL_WEIGHT_LOAD: f64 = 0.75;
/// The least share of [`PREFILL_TOKENS_PER_REQUEST`] a request in flight costs, on an idle fleet.
pub const MIN_WEIGHT: f64 = 0.25;

/// Prefill tokens worth one more request in flight, at the fleet's load. A request in flight
/// delays others' first tokens little while the batches have room (vLLM batches decodes with
/// prefills), so on a lightly loaded fleet a cache hit is worth more requests of queue: moving a
/// conversation off its server to balance load re-prefills its whole history for nothing.
/// Measured (`mvllm bench routing --workload chat-sessions --fleet homogeneous --load 0.4`): a
/// fixed 64 moved follow-ups at +-3 requests of noise, p99 time to first token 31 ms; scaled
/// so, 17 ms at 91.6% hit rate (the oracle: 91.4%). A floor of 0.1 instead of 0.25 changed
/// nothing (mixed fleet: 37 ms either way).
pub fn prefill_tokens_per_request(candidates: &[Candidate]) -> f64 {
    let least = candidates
        .iter()
        .map(adaptive_score)
        .fold(f64::INFINITY, f64::min);
    let least = if least.is_finite() { least } else { 1.0 };
    PREFILL_TOKENS_PER_REQUEST * (least / FULL_WEIGHT_LOAD).clamp(MIN_WEIGHT, 1.0)
}

/// The estimated cost of sending `request` to `c` (see the module doc), as if `c` were as fast
/// as the fleet's fastest server.
pub fn cost(request: &RouteRequest<'_>, c: &Candidate) -> f64 {
    cost_at(request, c, PREFILL_TOKENS_PER_REQUEST, 1.0)
}

/// [`cost`] with prefill converted at `ptpr` tokens a request, on a server `slowness` times
/// slower than the fastest. Below its capacity a server's requests in flight count at that
/// rate; beyond it, however light the rest of the fleet, each counts as
/// [`PREFILL_TOKENS_PER_REQUEST`], or as [`QUEUED_REQUEST_TOKENS`] where the capacity is the
/// server's real limit (`fleet::limit`). Slowness multiplies the prefill
/// to do, of at least
/// [`MIN_PREFILL_TOKENS`] (a slow server's in-flight count already shows its speed: its
/// requests stay longer).
fn cost_at(request: &RouteRequest<'_>, c: &Candidate, ptpr: f64, slowness: f64) -> f64 {
    let uncached = (request.prompt_tokens - c.cached_tokens).max(0.0);
    let load = adaptive_score(c);
    let beyond = if c.capacity_is_limit {
        QUEUED_REQUEST_TOKENS
    } else {
        PREFILL_TOKENS_PER_REQUEST
    };
    let queued = (load - 1.0).max(0.0) * (beyond / ptpr - 1.0);
    let mut prefill = uncached + c.pending_prefill_tokens;
    if slowness > 1.0 {
        prefill = slowness * prefill.max(MIN_PREFILL_TOKENS);
    }
    load + queued + prefill / (ptpr * c.capacity)
}

/// The least prefill a slower server is charged for, however much of the prompt it holds: a
/// request's first token waits for two forward passes of the model, the one running when it
/// arrives and its own, and on a GPU a pass takes about as long as computing 128 tokens (it is
/// bound by reading the weights until then); both are slower there. So a request starts sooner
/// on a fast server with room than on an idle slow one: on the half-speed fleet at 40% load,
/// every request a slow server took was in the slowest few percent. (Between servers of one
/// speed it would add the same to both, and is left out.) Measured (`mvllm bench routing
/// --workload chat-sessions --fleet mixed --load 0.4,0.8 --compare cache_aware`): one pass
/// (128) gave p99 time to first token 0.032 s at 40% load, two 0.019 s (with
/// [`QUEUED_REQUEST_TOKENS`]; without it, 0.095 s at 80%).
pub const MIN_PREFILL_TOKENS: f64 = 256.0;

/// What a request beyond a server's capacity costs, in prefill tokens, where that capacity is
/// the server's real limit (it was seen with requests waiting while it ran no more than its
/// capacity, `fleet::limit`): it waits for a running
/// request to end, about a request's length over the capacity (1 s over 24 slots: ~40 ms, some
/// 1,000 tokens of prefill at 35 us each), far more than one more request in a batch with room.
/// So a fast server is filled to its capacity before a slower one takes new work, and not past
/// it: with 64 here, the fast servers of the half-speed fleet at 80% load queued until the slow
/// servers' charge was paid, and p99 time to first token went from 0.037 to 0.095 s. Elsewhere
/// a request beyond capacity costs [`PREFILL_TOKENS_PER_REQUEST`]: a capacity set below what
/// the server runs at once (the default is 3) must not make conversations leave their caches
/// for one request more.
pub const QUEUED_REQUEST_TOKENS: f64 = 1024.0;

/// Tokens of a new conversation's shared preamble (its system prompt) worth one request more
/// of tolerance on the preamble's servers of the fastest speed, up to their capacity: a
/// conversation spills to the next server in the preamble's order, which may not have
/// prefilled it, only once its server is busier by the tolerance and this. Measured (`mvllm
/// bench routing --workload chat-sessions --compare cache_aware`): on a fleet of one speed at
/// 40% load, servers prefilled the four system prompts cold 12-16 times in a minute, and p99
/// time to first token was 21-34 ms; with this, 5-11 times and 18-19 ms (three runs). Not up
/// to the capacity, the half-speed fleet at 80% load queued on its fast servers (p99 0.083 s,
/// against 0.036 s with the cap); with 64 tokens, one server of the fleet of one speed took
/// half the requests and another almost none.
pub const PREAMBLE_TOKENS_PER_REQUEST: f64 = 128.0;

/// Rendezvous (highest random weight) hashing: the server a key belongs to, the same on every
/// replica, and moving as few keys as possible when servers come and go.
pub fn weight(key: u64, server: u64) -> u64 {
    xxh3_64_with_seed(&key.to_le_bytes(), server)
}

/// Tokens of the request's shared preamble (its system prompt), at most the whole prompt.
fn preamble_tokens(request: &RouteRequest<'_>, prompt: &Fingerprint) -> f64 {
    ((prompt.preamble_blocks * BLOCK_TOKENS) as f64).min(request.prompt_tokens)
}

/// The choice among `candidates` (not empty) for `request`, as assessed (see the module doc).
pub fn choose(request: &RouteRequest<'_>, candidates: &[Candidate], cursor: &AtomicUsize) -> usize {
    let ptpr = prefill_tokens_per_request(candidates);
    let fastest = fastest(candidates);
    let timed = |c: &Candidate| cost_at(request, c, ptpr, slowness(c, fastest));
    let costs: Vec<f64> = candidates.iter().map(timed).collect();
    let Some(key) = request.affinity else {
        return lowest(candidates, cursor, timed);
    };
    let (best, best_i) = costs
        .iter()
        .enumerate()
        .map(|(i, &c)| (c, i))
        .fold((f64::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a });
    let cold = candidates
        .iter()
        .all(|c| c.cached_tokens < request.anchor_tokens);
    let tolerance = if cold { COLD_TOLERANCE } else { TOLERANCE };
    let slack = tolerance / candidates[best_i].capacity;
    // A new conversation that opens with a shared preamble goes by the preamble's own
    // rendezvous order: conversations sharing a system prompt start on the same server while it
    // is within the tolerance, and spill to the next in that order beyond it, so each server
    // prefills a system prompt only once it is needed there, on every replica alike.
    let (key, preamble) = match request.prompt {
        Some(p) if cold && p.preamble_blocks > 0 => (
            p.blocks.get(p.preamble_blocks - 1).copied().unwrap_or(key),
            preamble_tokens(request, p),
        ),
        _ => (key, 0.0),
    };
    // A server of the fastest speed with room stays in the running for the preamble by more
    // requests (`PREAMBLE_TOKENS_PER_REQUEST`): spilling to one that has not prefilled it costs
    // that whole prefill, which delays this request and every other running there.
    let held_slack = |c: &Candidate| {
        if preamble > 0.0 && slowness(c, fastest) <= 1.0 {
            let room = (1.0 - adaptive_score(c)).max(0.0);
            (preamble / (PREAMBLE_TOKENS_PER_REQUEST * c.capacity)).min(room)
        } else {
            0.0
        }
    };
    let within = |i: usize| costs[i] <= best + slack + held_slack(&candidates[i]) + 1e-12;
    // Among those, the one holding the most of the prompt, then the key's rendezvous server.
    (0..candidates.len())
        .filter(|&i| within(i))
        .max_by_key(|&i| {
            (
                candidates[i].cached_tokens as u64,
                weight(key, candidates[i].id),
            )
        })
        .unwrap_or(best_i)
}

/// What the policy keeps about one server: the prompts believed cached there, and how its
/// predictions compared with what the server reported.
#[derive(Debug)]
struct ServerCache {
    index: PrefixIndex,
    calibration: Calibration,
    resets: u64,
}

impl ServerCache {
    fn new(budget_blocks: usize) -> Self {
        ServerCache {
            index: PrefixIndex::new(budget_blocks),
            calibration: Calibration::default(),
            resets: 0,
        }
    }

    /// The index promised far more cache hits than the server had (its cache was reset, or it
    /// evicts sooner than the index believes): start learning it again.
    fn forget_far_off(&mut self, server: ServerId) {
        tracing::warn!(
            server_id = format_args!("{server:016x}"),
            "the prefix index promised far more cache hits than the server had: forgotten"
        );
        self.index.clear();
        self.resets += 1;
    }
}

/// The `cache_aware` policy, with a prefix index per server.
#[derive(Debug, Default)]
pub struct CacheAware {
    cursor: AtomicUsize,
    servers: RwLock<HashMap<ServerId, Arc<Mutex<ServerCache>>>>,
    /// Blocks each server's index may hold: its share of `prefix_index_bytes`.
    share_blocks: AtomicUsize,
}

impl CacheAware {
    fn server(&self, id: ServerId) -> Option<Arc<Mutex<ServerCache>>> {
        self.servers.read().get(&id).cloned()
    }

    /// The server's state, created on first use (a server added since the last
    /// [`Policy::fleet_changed`]).
    fn server_or_new(&self, id: ServerId) -> Arc<Mutex<ServerCache>> {
        if let Some(s) = self.server(id) {
            return s;
        }
        let share = self.share_blocks.load(Ordering::Relaxed);
        self.servers
            .write()
            .entry(id)
            .or_insert_with(|| Arc::new(Mutex::new(ServerCache::new(share))))
            .clone()
    }
}

impl Policy for CacheAware {
    fn kind(&self) -> PolicyKind {
        PolicyKind::CacheAware
    }

    fn uses_prompt(&self) -> bool {
        true
    }

    fn assess(&self, request: &RouteRequest<'_>, candidates: &mut [Candidate]) {
        let Some(prompt) = request.prompt else {
            return;
        };
        let servers = self.servers.read();
        for c in candidates.iter_mut() {
            let tokens =
                |blocks: usize| ((blocks * BLOCK_TOKENS) as f64).min(request.prompt_tokens);
            c.held_tokens = match c.exact_tokens {
                // Known from the server's own KV events.
                Some(t) => t.min(request.prompt_tokens),
                None => tokens(
                    servers
                        .get(&c.id)
                        .map_or(0, |s| s.lock().index.matched(&prompt.blocks)),
                ),
            };
        }
        // For a new conversation, a preamble shared by conversations (a system prompt) counts
        // as held everywhere: it costs each server one prefill, once, so it must not pull every
        // conversation that shares it onto the one server that happened to see it first. Once
        // a server holds the conversation, the others get no such credit: moving it there
        // re-prefills the preamble too wherever it is not held, with the history.
        let preamble = preamble_tokens(request, prompt);
        let held_somewhere = request.anchor_tokens > preamble
            && candidates
                .iter()
                .any(|c| c.held_tokens >= request.anchor_tokens);
        for c in candidates.iter_mut() {
            c.cached_tokens = if held_somewhere {
                c.held_tokens
            } else {
                c.held_tokens.max(preamble)
            };
        }
    }

    fn pick(
        &self,
        request: &RouteRequest<'_>,
        candidates: &[Candidate],
        _rng: &mut dyn RngCore,
    ) -> Option<usize> {
        match candidates.len() {
            0 => None,
            1 => Some(0),
            _ => Some(choose(request, candidates, &self.cursor)),
        }
    }

    fn routed(&self, request: &RouteRequest<'_>, to: &Candidate) {
        let Some(prompt) = request.prompt else {
            return;
        };
        let server = self.server_or_new(to.id);
        let mut s = server.lock();
        s.index.record(&prompt.blocks);
        s.calibration.routed(Prediction {
            prompt_tokens: request.prompt_tokens,
            cached_tokens: to.cached_tokens,
            last_block: prompt.blocks.last().copied(),
        });
    }

    fn ended(&self, server: ServerId, e: &Ended) {
        let Some(state) = self.server(server) else {
            return;
        };
        let mut s = state.lock();
        if let Some(last) = e.prediction.last_block
            && e.completion_tokens >= 1.0
        {
            s.index.credit(last, e.completion_tokens as u32);
        }
        if let Some((prompt, cached)) = e.usage
            && s.calibration.answered(e.prediction, prompt, cached)
        {
            s.forget_far_off(server);
        }
    }

    fn server_changed(&self, server: ServerId, change: ServerChange) {
        let Some(state) = self.server(server) else {
            return;
        };
        let mut s = state.lock();
        match change {
            ServerChange::Restarted | ServerChange::Down => s.index.clear(),
            ServerChange::Scraped {
                kv_cache_tokens,
                prefix_hits,
                prefix_queries,
            } => {
                s.index.set_kv_tokens(kv_cache_tokens);
                if s.calibration.observe(prefix_hits, prefix_queries) {
                    s.forget_far_off(server);
                }
            }
        }
    }

    fn fleet_changed(&self, servers: &[ServerId], prefix_index_bytes: usize) {
        let share = prefix_index_bytes / BYTES_PER_BLOCK / servers.len().max(1);
        self.share_blocks.store(share, Ordering::Relaxed);
        let mut map = self.servers.write();
        map.retain(|id, _| servers.contains(id));
        for &id in servers {
            let s = map
                .entry(id)
                .or_insert_with(|| Arc::new(Mutex::new(ServerCache::new(share))));
            s.lock().index.set_budget(share);
        }
    }

    fn report(&self, server: ServerId) -> Option<PrefixReport> {
        let state = self.server(server)?;
        let s = state.lock();
        Some(PrefixReport {
            blocks: s.index.len(),
            bytes: s.index.bytes(),
            predicted_hit_rate: s.calibration.predicted_rate,
            actual_hit_rate: s.calibration.actual_rate,
            resets: s.resets,
        })
    }
}

#[cfg(test)]
#[path = "cache_aware_tests.rs"]
mod tests;
