//! Routing policies: from the request and a snapshot of the eligible servers to a choice.
//!
//! Why free of I/O: a policy is the part of the router people tune and argue about, so it sees
//! only the request ([`RouteRequest`]: its prompt's fingerprint, its affinity key) and numbers
//! per server (a stable id, capacity, the router's exact in-flight count, the last fresh scrape
//! of the server's `/metrics`), keeps what it learns in state of its own ([`Policy`]'s hooks),
//! and is tested without any I/O. Eligibility (healthy, not draining, serves the model, not
//! tried yet) is decided before a policy runs.

pub mod cache_aware;
pub mod classic;
pub mod exact_index;
pub mod fingerprint;
pub mod policy;
pub mod prefix_index;

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

pub use policy::{Ended, Policy, PrefixReport, RouteRequest, ServerChange, ServerId};

/// The policies a config can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// The Python mvllm's rule, exactly: score = (running + 0.5 * waiting) / capacity from the
    /// server's metrics; a random server among those scoring below 0.5, else a random one among
    /// the lowest.
    Mvllm,
    /// Each eligible server in turn.
    RoundRobin,
    /// The lowest router in-flight count relative to capacity (ties take turns).
    LeastLoad,
    /// The default: the least outstanding work relative to capacity. Outstanding work is the
    /// router's exact in-flight count plus the load the server carries from elsewhere (other
    /// routers, direct clients): its running + waiting at the last scrape minus what this router
    /// had in flight then. So a stale scrape never hides what the router just sent, traffic from
    /// other clients still counts, consecutive requests spread between scrapes, and a nearly full
    /// KV cache (preemptions ahead) and a server that just answered 429/503 are avoided. A request still waiting for its first byte
    /// counts twice: a new request's time to first token depends on the prefills queued ahead of
    /// it, so arrivals spread over servers instead of herding onto the one that was idlest.
    Adaptive,
    /// Where the request gets its first token soonest: `adaptive`'s load plus the prefill the
    /// server would still have to do (the prompt minus what it is believed to have cached, and
    /// the uncached prefill already queued there), in request-equivalents relative to capacity.
    /// Among servers within one request of the best, the same choice on every router replica
    /// (rendezvous hashing of the prompt's prefix, or of the session key). See
    /// [`cache_aware`]. The default: it beat `adaptive` and the peers' cache-aware routers on
    /// every prefix-sharing workload, and matched `adaptive` where prompts share nothing
    /// (README, "Cache-aware routing").
    #[default]
    CacheAware,
    /// A uniformly random server.
    Random,
    /// Power of two choices: two random servers, the one with the lower `adaptive` score.
    PowerOfTwo,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 7] = [
        Self::Adaptive,
        Self::CacheAware,
        Self::Mvllm,
        Self::RoundRobin,
        Self::LeastLoad,
        Self::Random,
        Self::PowerOfTwo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Mvllm => "mvllm",
            Self::RoundRobin => "round_robin",
            Self::LeastLoad => "least_load",
            Self::Adaptive => "adaptive",
            Self::CacheAware => "cache_aware",
            Self::Random => "random",
            Self::PowerOfTwo => "power_of_two",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        if s == "p2c" {
            return Some(Self::PowerOfTwo);
        }
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether the policy looks at where prefixes are cached (the router then keeps an index).
    pub fn uses_prefixes(self) -> bool {
        self == Self::CacheAware
    }
}

/// A server's own figures from its last successful scrape (summed over data-parallel engines).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scraped {
    pub running: f64,
    pub waiting: f64,
    /// 0..1, the mean over engines.
    pub kv_usage: f64,
    /// This router's in-flight count to the server when the scrape was read.
    pub in_flight_then: f64,
}

/// What a policy sees of one eligible server.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Candidate {
    /// The server's stable id (a hash of its URL): the same on every router replica.
    pub id: u64,
    pub capacity: f64,
    /// Requests this router has in flight to the server now.
    pub in_flight: f64,
    /// Of those, the ones still waiting for their first response byte (queued or prefilling).
    pub awaiting_first_byte: f64,
    /// The server answered 429 or 503 within the last moment (busy, not broken).
    pub overloaded: bool,
    /// `None` when the last scrape failed or is too old to trust.
    pub scraped: Option<Scraped>,
    /// Tokens of this request's prompt the server is believed to hold in its prefix cache,
    /// for its cost: a preamble shared by conversations counts as held everywhere.
    pub cached_tokens: f64,
    /// Of those, the tokens it is known or believed to hold itself (no preamble credit): the
    /// tie-break between servers of like cost.
    pub held_tokens: f64,
    /// What the server's KV events say it holds of the prompt (`None`: not known exactly; the
    /// policy's learned index decides).
    pub exact_tokens: Option<f64>,
    /// Prompt tokens not cached, of this router's requests to the server still in prefill.
    pub pending_prefill_tokens: f64,
}

/// The policy a config names, with fresh state.
pub fn build(kind: PolicyKind) -> Box<dyn Policy> {
    match kind {
        PolicyKind::CacheAware => Box::new(cache_aware::CacheAware::default()),
        other => Box::new(classic::Classic::new(other)),
    }
}

/// Expected load after adding one request, relative to capacity (see [`PolicyKind::Adaptive`]).
pub fn adaptive_score(c: &Candidate) -> f64 {
    let (external, kv) = match c.scraped {
        Some(s) => (
            (s.running + s.waiting - s.in_flight_then).max(0.0),
            s.kv_usage,
        ),
        None => (0.0, 0.0),
    };
    let kv_penalty = if kv > 0.95 { 1.0 } else { 0.0 };
    let overload_penalty = if c.overloaded { 1.0 } else { 0.0 };
    (c.in_flight + c.awaiting_first_byte + external + 1.0) / c.capacity
        + kv_penalty
        + overload_penalty
}

/// The seed's score; a server without fresh metrics is scored on the router's in-flight count.
pub fn seed_score(c: &Candidate) -> f64 {
    let (running, waiting) = c
        .scraped
        .map_or((c.in_flight, 0.0), |s| (s.running, s.waiting));
    (running + 0.5 * waiting) / c.capacity
}

/// The seed's rule, with its random choices: among those below 0.5, else among the lowest.
fn seed_rule<R: Rng + ?Sized>(candidates: &[Candidate], rng: &mut R) -> usize {
    let scores: Vec<f64> = candidates.iter().map(seed_score).collect();
    let light: Vec<usize> = (0..candidates.len()).filter(|&i| scores[i] < 0.5).collect();
    let pool = if light.is_empty() {
        let best = scores.iter().copied().fold(f64::INFINITY, f64::min);
        (0..candidates.len())
            .filter(|&i| scores[i] <= best + 1e-12)
            .collect()
    } else {
        light
    };
    pool[rng.random_range(0..pool.len())]
}

/// One of the candidates with the lowest score: among ties, the first at or after the rotating
/// `cursor`, so that equally loaded servers take turns (as round robin would) instead of being
/// drawn at random, which lets short-term imbalances build up.
pub(crate) fn lowest(
    candidates: &[Candidate],
    cursor: &AtomicUsize,
    score: impl Fn(&Candidate) -> f64,
) -> usize {
    let scores: Vec<f64> = candidates.iter().map(score).collect();
    let best = scores.iter().copied().fold(f64::INFINITY, f64::min);
    let n = candidates.len();
    let start = cursor.fetch_add(1, Ordering::Relaxed) % n;
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| scores[i] <= best + 1e-12)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn cand(capacity: f64, in_flight: f64, scraped: Option<(f64, f64, f64)>) -> Candidate {
        Candidate {
            capacity,
            in_flight,
            scraped: scraped.map(|(running, waiting, kv_usage)| Scraped {
                running,
                waiting,
                kv_usage,
                in_flight_then: in_flight,
            }),
            ..Candidate::default()
        }
    }

    /// A choice for a request the policy learns nothing from.
    fn pick<R: rand::RngCore>(p: &dyn Policy, c: &[Candidate], rng: &mut R) -> Option<usize> {
        p.pick(&RouteRequest::default(), c, rng)
    }

    fn counts(p: &dyn Policy, c: &[Candidate], n: usize) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(1);
        let mut out = vec![0; c.len()];
        for _ in 0..n {
            out[pick(p, c, &mut rng).unwrap()] += 1;
        }
        out
    }

    #[test]
    fn names_roundtrip() {
        for k in PolicyKind::ALL {
            assert_eq!(PolicyKind::parse(k.name()), Some(k));
        }
        assert_eq!(PolicyKind::parse("p2c"), Some(PolicyKind::PowerOfTwo));
        assert_eq!(PolicyKind::parse("fastest"), None);
    }

    #[test]
    fn random_spreads_and_power_of_two_never_picks_the_busiest() {
        let c = vec![cand(8.0, 0.0, None); 4];
        let n = counts(build(PolicyKind::Random).as_ref(), &c, 4000);
        assert!(n.iter().all(|&k| (800..1200).contains(&k)), "{n:?}");
        let c = [
            cand(8.0, 7.0, None),
            cand(8.0, 1.0, None),
            cand(8.0, 2.0, None),
        ];
        let n = counts(build(PolicyKind::PowerOfTwo).as_ref(), &c, 3000);
        assert_eq!(n[0], 0, "the busiest loses every pair it is in: {n:?}");
        assert!(n[1] > n[2], "{n:?}");
    }

    #[test]
    fn round_robin_cycles() {
        let c = vec![cand(1.0, 0.0, None); 3];
        assert_eq!(
            counts(build(PolicyKind::RoundRobin).as_ref(), &c, 9),
            vec![3, 3, 3]
        );
    }

    #[test]
    fn least_load_uses_capacity_and_ties_take_turns() {
        let c = [
            cand(2.0, 1.0, None),
            cand(10.0, 2.0, None),
            cand(4.0, 1.0, None),
        ];
        assert_eq!(
            counts(build(PolicyKind::LeastLoad).as_ref(), &c, 10),
            vec![0, 10, 0]
        );
        let tie = [cand(1.0, 0.0, None), cand(1.0, 0.0, None)];
        let p = build(PolicyKind::LeastLoad);
        let mut rng = StdRng::seed_from_u64(0);
        let picks: Vec<usize> = (0..6)
            .map(|_| pick(p.as_ref(), &tie, &mut rng).unwrap())
            .collect();
        assert_eq!(
            picks,
            vec![0, 1, 0, 1, 0, 1],
            "equally loaded servers take turns"
        );
    }

    #[test]
    fn seed_rule_prefers_servers_below_half_then_the_lowest() {
        let p = build(PolicyKind::Mvllm);
        // Scores: 4/4 = 1.0, (1 + 0.5)/4 = 0.375, 0/4 = 0.
        let c = [
            cand(4.0, 0.0, Some((4.0, 0.0, 0.0))),
            cand(4.0, 0.0, Some((1.0, 1.0, 0.0))),
            cand(4.0, 0.0, Some((0.0, 0.0, 0.0))),
        ];
        let n = counts(p.as_ref(), &c, 1000);
        assert_eq!(n[0], 0);
        assert!(
            n[1] > 400 && n[2] > 400,
            "random among those below 0.5: {n:?}"
        );
        let busy = [
            cand(4.0, 0.0, Some((8.0, 2.0, 0.0))),
            cand(4.0, 0.0, Some((4.0, 4.0, 0.0))),
        ];
        assert_eq!(
            counts(p.as_ref(), &busy, 10),
            vec![0, 10],
            "2.25 vs 1.5: the lowest"
        );
    }

    #[test]
    fn adaptive_counts_other_clients_load_and_full_caches() {
        let p = build(PolicyKind::Adaptive);
        // Same in-flight, but server 0 also runs 9 requests from elsewhere.
        let c = [
            cand(8.0, 1.0, Some((10.0, 0.0, 0.3))),
            cand(8.0, 1.0, Some((1.0, 0.0, 0.3))),
        ];
        assert_eq!(counts(p.as_ref(), &c, 10), vec![0, 10]);
        // A nearly full KV cache is avoided.
        let c = [
            cand(8.0, 0.0, Some((1.0, 0.0, 0.99))),
            cand(8.0, 0.0, Some((5.0, 0.0, 0.5))),
        ];
        assert_eq!(counts(p.as_ref(), &c, 10), vec![0, 10]);
        // Without fresh metrics the in-flight count and capacity decide.
        let c = [cand(3.0, 1.0, None), cand(5.0, 1.0, None)];
        assert_eq!(counts(p.as_ref(), &c, 10), vec![0, 10]);
    }

    #[test]
    fn adaptive_does_not_trust_a_stale_scrape_over_its_own_counts() {
        // At the scrape, server 0 was running 6 requests, all from this router; they have since
        // finished (in-flight 0). Server 1 has 2 in flight now. Server 0 is the idle one.
        let p = build(PolicyKind::Adaptive);
        let stale = Scraped {
            running: 6.0,
            waiting: 0.0,
            kv_usage: 0.2,
            in_flight_then: 6.0,
        };
        let c = [
            Candidate {
                capacity: 8.0,
                in_flight: 0.0,
                scraped: Some(stale),
                ..Candidate::default()
            },
            Candidate {
                capacity: 8.0,
                in_flight: 2.0,
                scraped: Some(Scraped {
                    running: 2.0,
                    in_flight_then: 2.0,
                    ..stale
                }),
                ..Candidate::default()
            },
        ];
        assert_eq!(counts(p.as_ref(), &c, 10), vec![10, 0]);
    }

    #[test]
    fn adaptive_avoids_a_server_with_a_prefill_pending() {
        // Equal in-flight counts, but server 0's request has not produced its first byte yet:
        // a new request would queue behind that prefill.
        let p = build(PolicyKind::Adaptive);
        let mut c = [cand(8.0, 1.0, None), cand(8.0, 1.0, None)];
        c[0].awaiting_first_byte = 1.0;
        assert_eq!(counts(p.as_ref(), &c, 10), vec![0, 10]);
    }

    #[test]
    fn adaptive_lowers_the_share_of_a_server_that_just_said_busy() {
        let p = build(PolicyKind::Adaptive);
        let mut c = [cand(8.0, 0.0, None), cand(8.0, 3.0, None)];
        c[0].overloaded = true;
        assert_eq!(counts(p.as_ref(), &c, 10), vec![0, 10], "1/8 + 1 > 4/8");
        c[1].in_flight = 9.0;
        assert_eq!(
            counts(p.as_ref(), &c, 10),
            vec![10, 0],
            "still used when the others are fuller"
        );
    }

    #[test]
    fn adaptive_spreads_between_scrapes_as_in_flight_grows() {
        // Two idle servers with capacities 2 and 4, and a stale scrape saying both are idle:
        // as requests are added the choice follows capacity, never piling onto one server.
        let p = build(PolicyKind::Adaptive);
        let mut rng = StdRng::seed_from_u64(3);
        let mut c = [
            cand(2.0, 0.0, Some((0.0, 0.0, 0.0))),
            cand(4.0, 0.0, Some((0.0, 0.0, 0.0))),
        ];
        for _ in 0..6 {
            let i = pick(p.as_ref(), &c, &mut rng).unwrap();
            c[i].in_flight += 1.0;
        }
        assert_eq!((c[0].in_flight, c[1].in_flight), (2.0, 4.0));
    }
}
