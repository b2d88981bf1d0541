//! `cache_aware`: send a request where it will get its first token soonest.
//!
//! A request's time to first token on a server is the work queued ahead of it plus its own
//! prefill, on that server's speed. The router knows most of it: its exact in-flight count (and
//! which of those still await their first byte), the load other clients put on the server (from
//! its `/metrics`), the uncached prefill it has already sent there, from its prefix index how
//! much of this prompt the server holds, and from the server's inter-token latency how much
//! slower than the fastest it is (`speed`). So the cost of a server is `adaptive`'s load
//! (requests relative to capacity; a slow server's requests stay in flight longer, so its load
//! shows its speed) plus the prefill still to do there (on a slower server, times its slowness
//! and at least [`MIN_PREFILL_TOKENS`]), converted at [`PREFILL_TOKENS_PER_REQUEST`] tokens
//! to one request's worth of work.
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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use rand::RngCore;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::candidate::Candidate;
use super::fingerprint::BLOCK_TOKENS;
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
/// slower than the fastest. Below its capacity a server's
/// requests in flight count at that rate; beyond it they queue, and each counts in full (as
/// [`PREFILL_TOKENS_PER_REQUEST`] tokens), however light the rest of the fleet. Slowness
/// multiplies the prefill to do, of at least [`MIN_PREFILL_TOKENS`] (a slow server's
/// in-flight count already shows its speed: its requests stay longer).
fn cost_at(request: &RouteRequest<'_>, c: &Candidate, ptpr: f64, slowness: f64) -> f64 {
    let uncached = (request.prompt_tokens - c.cached_tokens).max(0.0);
    let load = adaptive_score(c);
    let queued = (load - 1.0).max(0.0) * (PREFILL_TOKENS_PER_REQUEST / ptpr - 1.0);
    let mut prefill = uncached + c.pending_prefill_tokens;
    if slowness > 1.0 {
        prefill = slowness * prefill.max(MIN_PREFILL_TOKENS);
    }
    load + queued + prefill / (ptpr * c.capacity)
}

/// The least prefill a slower server is charged for, however much of the prompt it holds: a
/// prefill takes at least one forward pass of the model, which on a GPU takes about as long as
/// computing this many tokens (the pass is bound by reading the weights until then), and that
/// pass is slower there too. So even a request that prefills little starts sooner on a lightly
/// loaded fast server than on an idle slow one. (Between servers of one speed it would add the
/// same to both, and is left out.)
pub const MIN_PREFILL_TOKENS: f64 = 128.0;

/// Rendezvous (highest random weight) hashing: the server a key belongs to, the same on every
/// replica, and moving as few keys as possible when servers come and go.
pub fn weight(key: u64, server: u64) -> u64 {
    xxh3_64_with_seed(&key.to_le_bytes(), server)
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
    let key = match request.prompt {
        Some(p) if cold && p.preamble_blocks > 0 => {
            p.blocks.get(p.preamble_blocks - 1).copied().unwrap_or(key)
        }
        _ => key,
    };
    // Among those, the one holding the most of the prompt, then the key's rendezvous server.
    (0..candidates.len())
        .filter(|&i| costs[i] <= best + slack + 1e-12)
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
        for c in candidates {
            // A preamble shared by conversations (a system prompt) counts as held everywhere:
            // it costs each server one prefill, once, so it must not pull every conversation
            // that shares it onto the one server that happened to see it first.
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
            c.cached_tokens = c.held_tokens.max(tokens(prompt.preamble_blocks));
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
mod tests {
    use super::*;
    use crate::routing::Scraped;
    use crate::routing::fingerprint::Fingerprint;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn server(id: u64, in_flight: f64) -> Candidate {
        Candidate {
            id,
            capacity: 8.0,
            in_flight,
            ..Candidate::default()
        }
    }

    fn pick_one(request: &RouteRequest<'_>, c: &[Candidate]) -> usize {
        CacheAware::default()
            .pick(request, c, &mut StdRng::seed_from_u64(0))
            .unwrap()
    }

    const DOC: RouteRequest<'static> = RouteRequest {
        prompt: None,
        prompt_tokens: 3000.0,
        affinity: Some(42),
        anchor_tokens: 512.0,
    };

    #[test]
    fn a_cached_prefix_wins_while_its_server_is_not_much_busier() {
        let mut c = [server(1, 2.0), server(2, 1.0), server(3, 1.0)];
        c[0].cached_tokens = 2900.0;
        assert_eq!(pick_one(&DOC, &c), 0, "2,900 tokens of prefill saved");
    }

    #[test]
    fn a_hot_prefix_on_a_busy_server_spreads_to_another() {
        // 2,900 cached tokens are worth ~45 queued requests (PREFILL_TOKENS_PER_REQUEST): the
        // prefix stays while its server is busier by less, and spreads beyond.
        let mut c = [server(1, 12.0), server(2, 1.0)];
        c[0].cached_tokens = 2900.0;
        c[0].awaiting_first_byte = 6.0;
        assert_eq!(pick_one(&DOC, &c), 0, "worth its queue");
        c[0].in_flight = 40.0;
        c[0].awaiting_first_byte = 12.0;
        assert_eq!(pick_one(&DOC, &c), 1, "beyond it, the other server");
    }

    #[test]
    fn a_slow_server_holding_the_prefix_loses_it_to_its_queue() {
        // A slow server keeps requests longer: the same arrival rate leaves more in flight,
        // and its queued uncached prefill drains slower.
        let mut slow = server(1, 6.0);
        slow.cached_tokens = 3000.0;
        slow.pending_prefill_tokens = 4000.0;
        slow.capacity = 4.0;
        let fast = server(2, 1.0);
        assert_eq!(pick_one(&DOC, &[slow, fast]), 1);
    }

    fn four_servers() -> [Candidate; 4] {
        [
            server(11, 0.0),
            server(22, 0.0),
            server(33, 0.0),
            server(44, 0.0),
        ]
    }

    /// How many of 400 new 500-token conversations each of `here`'s servers gets; `there`, the
    /// same servers as another replica sees them, must choose the same server for each.
    fn shares_agreeing(here: &[Candidate], there: &[Candidate]) -> [usize; 4] {
        let mut chosen = [0usize; 4];
        for key in 0..400u64 {
            let r = RouteRequest {
                prompt: None,
                prompt_tokens: 500.0,
                affinity: Some(key),
                anchor_tokens: 0.0,
            };
            let i = pick_one(&r, here);
            assert_eq!(here[i].id, there[pick_one(&r, there)].id, "key {key}");
            chosen[i] += 1;
        }
        chosen
    }

    #[test]
    fn all_cold_every_replica_makes_the_same_choice_and_keys_spread() {
        let c = four_servers();
        // Another replica sees the servers in another order and with its own cursor.
        let mut reversed = c;
        reversed.reverse();
        let chosen = shares_agreeing(&c, &reversed);
        assert!(chosen.iter().all(|&n| n > 60), "{chosen:?}");
    }

    #[test]
    fn one_replicas_view_and_anothers_differ_only_within_the_tolerance() {
        // Replica A has sent this prefix to server 2 (it is cached there); replica B knows
        // nothing. B's choice is the prefix's rendezvous server, which is where A's first,
        // cold, request went too.
        let c = [server(1, 1.0), server(2, 1.0), server(3, 1.0)];
        let cold = pick_one(&DOC, &c);
        let mut warm = c;
        warm[cold].cached_tokens = 3000.0;
        assert_eq!(pick_one(&DOC, &warm), cold, "A stays where the cache is");
        // Within the (cold) tolerance the affinity holds; beyond it the load decides.
        let mut busier = c;
        busier[cold].in_flight += 5.0;
        assert_eq!(pick_one(&DOC, &busier), cold);
        busier[cold].in_flight += 2.0;
        assert_ne!(pick_one(&DOC, &busier), cold);
        // Once a server holds the conversation the narrower tolerance applies. On this light
        // fleet its 600 cached tokens are worth ~28 requests of queue below capacity; beyond
        // its capacity (8) every request counts in full. Busier by 20 it is 2.4 above the
        // others, past 3/8; by 9, below them.
        let mut held = c;
        held[0].cached_tokens = 600.0;
        held[0].in_flight += 20.0;
        assert_ne!(pick_one(&DOC, &held), 0);
        held[0].in_flight -= 11.0;
        assert_eq!(pick_one(&DOC, &held), 0, "within it, the holder");
    }

    #[test]
    fn new_conversations_start_on_fast_servers_until_load_makes_a_slow_one_sooner() {
        let at = |pace: [f64; 4], in_flight: f64| {
            let mut c = four_servers();
            for (i, s) in c.iter_mut().enumerate() {
                s.seconds_per_token = Some(pace[i]);
                s.in_flight = if i < 2 { in_flight } else { 0.0 };
            }
            c
        };
        // Servers 3 and 4 take twice as long per token; another replica's figures differ a little.
        let light = at([0.010, 0.011, 0.020, 0.021], 0.0);
        let light_there = at([0.0102, 0.0108, 0.0203, 0.0207], 0.0);
        let chosen = shares_agreeing(&light, &light_there);
        assert_eq!(chosen[2] + chosen[3], 0, "{chosen:?}");
        assert!(chosen[0] > 150 && chosen[1] > 150, "{chosen:?}");
        // Busy fast servers: the slow ones are sooner.
        let chosen = shares_agreeing(
            &at([0.010, 0.011, 0.020, 0.021], 40.0),
            &at([0.0102, 0.0108, 0.0203, 0.0207], 40.0),
        );
        assert_eq!(chosen[0] + chosen[1], 0, "{chosen:?}");
        // Within 1.2x of the fastest every server counts as fast: keys spread over all four.
        let chosen = shares_agreeing(
            &at([0.010, 0.011, 0.012, 0.0118], 0.0),
            &at([0.0101, 0.011, 0.012, 0.0124], 0.0),
        );
        assert!(chosen.iter().all(|&n| n > 60), "{chosen:?}");
    }

    #[test]
    fn other_clients_load_counts_as_in_adaptive() {
        let mut c = [server(1, 0.0), server(2, 0.0)];
        c[0].scraped = Some(Scraped {
            running: 48.0,
            waiting: 32.0,
            kv_usage: 0.5,
            in_flight_then: 0.0,
        });
        c[0].cached_tokens = 3000.0;
        assert_eq!(pick_one(&DOC, &c), 1);
    }

    fn prompt(blocks: std::ops::Range<u64>) -> Fingerprint {
        Fingerprint {
            blocks: blocks.collect(),
            bytes: 64 * 100,
            anchor: Some(10),
            preamble_blocks: 0,
        }
    }

    fn request(f: &Fingerprint) -> RouteRequest<'_> {
        RouteRequest {
            prompt: Some(f),
            prompt_tokens: f.tokens() as f64,
            affinity: f.affinity(),
            anchor_tokens: f.anchor_tokens() as f64,
        }
    }

    /// Assesses, picks and records, as the dispatch path does.
    fn route(p: &CacheAware, r: &RouteRequest<'_>, c: &mut [Candidate]) -> usize {
        p.assess(r, c);
        let i = p.pick(r, c, &mut StdRng::seed_from_u64(0)).unwrap();
        p.routed(r, &c[i]);
        i
    }

    #[test]
    fn the_policy_learns_where_it_sent_a_prompt_and_forgets_what_a_server_lost() {
        let p = CacheAware::default();
        p.fleet_changed(&[1, 2, 3], 1 << 20);
        let doc = prompt(0..100);
        let mut c = [server(1, 0.0), server(2, 0.0), server(3, 0.0)];
        let first = route(&p, &request(&doc), &mut c);
        p.assess(&request(&doc), &mut c);
        assert_eq!(
            c[first].cached_tokens, 1600.0,
            "all 100 blocks believed held"
        );
        assert!(
            c.iter()
                .enumerate()
                .all(|(i, s)| i == first || s.cached_tokens == 0.0)
        );
        // Busier by one request: it still goes where it is cached.
        c[first].in_flight = 1.0;
        assert_eq!(route(&p, &request(&doc), &mut c), first);
        // The server restarted (or went down): nothing is believed cached there any more.
        p.server_changed(c[first].id, ServerChange::Restarted);
        p.assess(&request(&doc), &mut c);
        assert_eq!(c[first].cached_tokens, 0.0);
        assert_eq!(p.report(c[first].id).unwrap().blocks, 0);
    }

    #[test]
    fn a_reload_keeps_what_is_known_of_servers_that_stay_and_drops_the_others() {
        let p = CacheAware::default();
        p.fleet_changed(&[1, 2], 1 << 20);
        let doc = prompt(0..50);
        let mut c = [server(1, 0.0), server(2, 0.0)];
        let holder = c[route(&p, &request(&doc), &mut c)].id;
        let other = if holder == 1 { 2 } else { 1 };
        p.fleet_changed(&[holder, 7], 1 << 20);
        assert_eq!(p.report(holder).unwrap().blocks, 50, "kept");
        assert!(p.report(other).is_none(), "dropped");
        assert_eq!(p.report(7).unwrap().blocks, 0, "a new server starts empty");
        // Each server's share of the budget: 1 MiB / 64 bytes a block / 2 servers.
        let big = prompt(1000..20_000);
        p.routed(&request(&big), &server(holder, 0.0));
        assert!(p.report(holder).unwrap().bytes <= (1 << 20) / 2);
    }

    #[test]
    fn responses_reporting_no_hits_make_the_index_start_over() {
        let p = CacheAware::default();
        p.fleet_changed(&[1], 1 << 20);
        let doc = prompt(0..100);
        let mut c = [server(1, 0.0)];
        for _ in 0..20 {
            route(&p, &request(&doc), &mut c);
            p.ended(
                1,
                &Ended {
                    prediction: Prediction {
                        prompt_tokens: 1600.0,
                        cached_tokens: c[0].cached_tokens,
                        last_block: None,
                    },
                    usage: Some((1600.0, 0.0)),
                    completion_tokens: 0.0,
                },
            );
        }
        let r = p.report(1).unwrap();
        assert!(r.resets >= 1, "{r:?}");
        assert_eq!(r.actual_hit_rate, Some(0.0));
    }

    #[test]
    fn new_conversations_sharing_a_system_prompt_start_on_its_server_then_spill_in_its_order() {
        // Replica A sent a conversation with this system prompt (40 blocks) to server 1;
        // replica B, nothing. Both place new conversations sharing it alike: on the preamble's
        // rendezvous server while it is within the cold tolerance, then on the next in its
        // order, not on the server A happened to use first.
        let a = CacheAware::default();
        let b = CacheAware::default();
        for p in [&a, &b] {
            p.fleet_changed(&[1, 2, 3, 4], 1 << 20);
        }
        let conversation = |system: u64, k: u64| {
            let mut c = prompt(0..60);
            c.blocks.iter_mut().for_each(|h| *h += 1_000_000 * system);
            c.preamble_blocks = 40;
            c.anchor = Some(45);
            c.blocks[40..].iter_mut().for_each(|h| *h += 1000 * (k + 1));
            c
        };
        route(&a, &request(&conversation(0, 99)), &mut [server(1, 0.0)]);
        let place = |f: &Fingerprint, loads: [f64; 4]| {
            let r = request(f);
            let mut here: Vec<Candidate> = (0..4).map(|i| server(i as u64 + 1, loads[i])).collect();
            let mut there = here.clone();
            a.assess(&r, &mut here);
            b.assess(&r, &mut there);
            let rng = &mut StdRng::seed_from_u64(0);
            let (i, j) = (
                a.pick(&r, &here, rng).unwrap(),
                b.pick(&r, &there, rng).unwrap(),
            );
            assert_eq!(here[i].id, there[j].id, "both replicas choose alike");
            i
        };
        let home = place(&conversation(0, 0), [0.0; 4]);
        for k in 1..20 {
            assert_eq!(place(&conversation(0, k), [0.0; 4]), home, "one server");
        }
        // Its server busier than the tolerance: the next in the preamble's order, for all.
        let mut loads = [0.0; 4];
        loads[home] = COLD_TOLERANCE + 1.0;
        let next = place(&conversation(0, 0), loads);
        assert_ne!(next, home);
        for k in 1..20 {
            assert_eq!(place(&conversation(0, k), loads), next);
        }
        // Other system prompts have servers of their own.
        let homes: std::collections::HashSet<usize> = (1..40)
            .map(|system| place(&conversation(system, 0), [0.0; 4]))
            .collect();
        assert_eq!(homes.len(), 4, "{homes:?}");
    }
}
