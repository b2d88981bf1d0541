//! `cache_aware`: send a request where it will get its first token soonest.
//!
//! A request's time to first token on a server is the work queued ahead of it plus its own
//! prefill, on that server's speed. The router knows most of it: its exact in-flight count (and
//! which of those still await their first byte), the load other clients put on the server (from
//! its `/metrics`), the uncached prefill it has already sent there, and, from its prefix index,
//! how much of this prompt the server holds. So the cost of a server is `adaptive`'s load
//! (requests relative to capacity; capacity stands for speed, and a slow server's requests stay
//! in flight longer, so its load shows it) plus the prefill still to do there, converted at
//! [`PREFILL_TOKENS_PER_REQUEST`] tokens to one request's worth of work.
//!
//! What this buys, unlike a cache threshold: a hot prefix stays on its server until that server
//! is busier than another by more than the prefill it saves, then spreads to a second server
//! (which then caches it too); a slow server holding the prefix loses it once its queue costs
//! more than the prefill; nothing can pull all traffic onto one server, because load always
//! counts (the "death spiral" of threshold-based cache routing).
//!
//! Replicas: among servers within [`TOLERANCE`] requests of the best cost, the choice is one
//! holding the conversation (the prompt up to its affinity block), then by rendezvous hashing of
//! the request's affinity key (its session key, or a block of its first user message) with each
//! server's id. A prefix nothing is known about yet therefore goes to the same
//! server from every router replica, without any shared state, as long as the loads they see are
//! within the tolerance; and a conversation stays where it was unless that server is busier than
//! the others by more than the tolerance.

use std::sync::atomic::AtomicUsize;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{Candidate, RouteInfo, adaptive_score, lowest};

/// Prefill tokens that cost as much as one more request queued on a server. Measured, not
/// derived: `mvllm bench routing --workload chat-sessions` over 64..1024 (with TOLERANCE 1..6)
/// gave the best hit rate and p99 time to first token at 128 (README, "Routing quality").
pub const PREFILL_TOKENS_PER_REQUEST: f64 = 128.0;

/// How close to the best cost (in requests, relative to capacity) a server must be to be chosen
/// for its cache and affinity rather than by cost alone (measured with the constant above).
pub const TOLERANCE: f64 = 3.0;

/// The estimated cost of sending `request` to `c` (see the module doc).
pub fn cost(request: &RouteInfo, c: &Candidate) -> f64 {
    let uncached = (request.prompt_tokens - c.cached_tokens).max(0.0);
    adaptive_score(c)
        + (uncached + c.pending_prefill_tokens) / (PREFILL_TOKENS_PER_REQUEST * c.capacity)
}

/// Rendezvous (highest random weight) hashing: the server a key belongs to, the same on every
/// replica, and moving as few keys as possible when servers come and go.
pub fn weight(key: u64, server: u64) -> u64 {
    xxh3_64_with_seed(&key.to_le_bytes(), server)
}

pub fn pick(request: &RouteInfo, candidates: &[Candidate], cursor: &AtomicUsize) -> usize {
    let costs: Vec<f64> = candidates.iter().map(|c| cost(request, c)).collect();
    let Some(key) = request.affinity else {
        return lowest(candidates, cursor, |c| cost(request, c));
    };
    let (best, best_i) = costs
        .iter()
        .enumerate()
        .map(|(i, &c)| (c, i))
        .fold((f64::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a });
    let slack = TOLERANCE / candidates[best_i].capacity;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Picker, PolicyKind, Scraped};
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

    fn pick_one(request: &RouteInfo, c: &[Candidate]) -> usize {
        Picker::new(PolicyKind::CacheAware)
            .pick_for(request, c, &mut StdRng::seed_from_u64(0))
            .unwrap()
    }

    const DOC: RouteInfo = RouteInfo {
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
        // 2,900 cached tokens are worth ~23 queued requests (PREFILL_TOKENS_PER_REQUEST): the
        // prefix stays while its server is busier by less, and spreads beyond.
        let mut c = [server(1, 12.0), server(2, 1.0)];
        c[0].cached_tokens = 2900.0;
        c[0].awaiting_first_byte = 6.0;
        assert_eq!(pick_one(&DOC, &c), 0, "worth its queue");
        c[0].in_flight = 20.0;
        c[0].awaiting_first_byte = 10.0;
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

    #[test]
    fn all_cold_every_replica_makes_the_same_choice_and_keys_spread() {
        let c = [
            server(11, 0.0),
            server(22, 0.0),
            server(33, 0.0),
            server(44, 0.0),
        ];
        let mut chosen = [0usize; 4];
        for key in 0..400u64 {
            let r = RouteInfo {
                prompt_tokens: 500.0,
                affinity: Some(key),
                anchor_tokens: 0.0,
            };
            // Another replica sees the servers in another order and with its own cursor.
            let mut reversed = c;
            reversed.reverse();
            let here = pick_one(&r, &c);
            let there = pick_one(&r, &reversed);
            assert_eq!(c[here].id, reversed[there].id, "key {key}");
            chosen[here] += 1;
        }
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
        // Within the tolerance the affinity holds; beyond it the load decides.
        let mut busier = c;
        busier[cold].in_flight += 0.5;
        assert_eq!(pick_one(&DOC, &busier), cold);
        busier[cold].in_flight += 4.0;
        assert_ne!(pick_one(&DOC, &busier), cold);
    }

    #[test]
    fn other_clients_load_counts_as_in_adaptive() {
        let mut c = [server(1, 0.0), server(2, 0.0)];
        c[0].scraped = Some(Scraped {
            running: 24.0,
            waiting: 16.0,
            kv_usage: 0.5,
            in_flight_then: 0.0,
        });
        c[0].cached_tokens = 3000.0;
        assert_eq!(pick_one(&DOC, &c), 1);
    }
}
