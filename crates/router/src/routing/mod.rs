//! Routing policies: from the request and a snapshot of the eligible servers to a choice.
//!
//! Why free of I/O: a policy is the part of the router people tune and argue about, so it sees
//! only the request ([`RouteRequest`]: its prompt's fingerprint, its affinity key) and numbers
//! per server (a stable id, capacity, the router's exact in-flight count, the last fresh scrape
//! of the server's `/metrics`), keeps what it learns in state of its own ([`Policy`]'s hooks),
//! and is tested without any I/O. Eligibility (healthy, not draining, serves the model, not
//! tried yet) is decided before a policy runs.

pub mod cache_aware;
pub mod candidate;
pub mod classic;
pub mod exact_index;
pub mod fingerprint;
pub mod kind;
pub mod policy;
pub mod prefix_index;
pub mod scores;
pub mod speed;

pub use candidate::{Candidate, Scraped};
pub use kind::PolicyKind;
pub use policy::{Ended, Policy, PrefixReport, RouteRequest, ServerChange, ServerId};
pub use scores::{adaptive_score, seed_score};

/// The policy a config names, with fresh state.
pub fn build(kind: PolicyKind) -> Box<dyn Policy> {
    match kind {
        PolicyKind::CacheAware => Box::new(cache_aware::CacheAware::default()),
        other => Box::new(classic::Classic::new(other)),
    }
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
