//! Tests of `cache_aware`'s cost and choice, and of its learned index's life.

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
fn beyond_a_real_capacity_each_request_costs_a_slots_wait() {
    // The server's capacity (8) is its real limit (`fleet::limit`): each request beyond it
    // waits for a slot (QUEUED_REQUEST_TOKENS), so two are worth 2,900 tokens of prefill,
    // three are not. Where the capacity was set below what the server runs at once, the
    // cached prefix stays.
    let mut c = [server(1, 7.0), server(2, 1.0)];
    c[0].cached_tokens = 2900.0;
    c[0].awaiting_first_byte = 2.0;
    c[0].capacity_is_limit = true;
    assert_eq!(pick_one(&DOC, &c), 0, "two beyond its capacity");
    c[0].in_flight = 8.0;
    assert_eq!(pick_one(&DOC, &c), 1, "three waiting for a slot");
    c[0].capacity_is_limit = false;
    assert_eq!(
        pick_one(&DOC, &c),
        0,
        "a capacity below the server's own limit"
    );
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
    // Within 1.5x of the fastest every server counts as fast (a busier server's tokens come
    // slower): keys spread over all four.
    let chosen = shares_agreeing(
        &at([0.010, 0.011, 0.014, 0.0138], 0.0),
        &at([0.0101, 0.011, 0.0142, 0.0137], 0.0),
    );
    assert!(chosen.iter().all(|&n| n > 60), "{chosen:?}");
}

#[test]
fn a_fast_server_with_room_is_sooner_than_an_idle_slow_one_and_a_full_one_is_not() {
    // A new conversation whose system prompt every server holds: 100 tokens to prefill.
    // Servers 3 and 4 are half as fast; capacity 24. The first token waits for two of the
    // server's passes (MIN_PREFILL_TOKENS), twice as long on a slow one: a fast server
    // keeps new conversations until it is near its capacity; beyond it they wait for a slot.
    let fleet = |fast_in_flight: f64| {
        let mut c = four_servers();
        for (i, s) in c.iter_mut().enumerate() {
            s.capacity = 24.0;
            s.seconds_per_token = Some(if i < 2 { 0.010 } else { 0.020 });
            s.in_flight = if i < 2 { fast_in_flight } else { 0.0 };
            s.cached_tokens = 800.0;
            // As in `mvllm bench routing`: the servers' --max-num-seqs is their capacity.
            s.capacity_is_limit = true;
        }
        c
    };
    let picks = |c: &[Candidate]| {
        let mut chosen = [0usize; 4];
        for key in 0..100u64 {
            let r = RouteRequest {
                prompt: None,
                prompt_tokens: 900.0,
                affinity: Some(key),
                anchor_tokens: 0.0,
            };
            chosen[pick_one(&r, c)] += 1;
        }
        chosen
    };
    for room in [12.0, 20.0] {
        let chosen = picks(&fleet(room));
        assert_eq!(chosen[2] + chosen[3], 0, "{room} in flight: {chosen:?}");
    }
    let chosen = picks(&fleet(26.0));
    assert_eq!(chosen[0] + chosen[1], 0, "{chosen:?}");
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
    // Its server full and busier than the tolerance: the next in the preamble's order, for all.
    let mut loads = [0.0; 4];
    loads[home] = COLD_TOLERANCE + 2.0;
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

#[test]
fn a_system_prompts_server_keeps_new_conversations_longer_while_it_has_room() {
    // 40 blocks (640 tokens) of system prompt: its server, with room, stays in the running
    // 640 / PREAMBLE_TOKENS_PER_REQUEST = 5 requests beyond the cold tolerance (6), but not
    // beyond its capacity.
    let p = CacheAware::default();
    p.fleet_changed(&[1, 2, 3, 4], 1 << 20);
    let mut f = prompt(0..60);
    f.preamble_blocks = 40;
    f.anchor = Some(45);
    let r = request(&f);
    let fleet = |capacity: f64, home_load: f64| {
        let mut c: Vec<Candidate> = (1..=4)
            .map(|id| Candidate {
                capacity,
                ..server(id, 0.0)
            })
            .collect();
        p.assess(&r, &mut c);
        let home = p.pick(&r, &c, &mut StdRng::seed_from_u64(0)).unwrap();
        c[home].in_flight = home_load;
        (home, p.pick(&r, &c, &mut StdRng::seed_from_u64(0)).unwrap())
    };
    let (home, at_10) = fleet(24.0, 10.0);
    assert_eq!(at_10, home, "10 requests busier: within 6 + 5");
    let (_, at_12) = fleet(24.0, 12.0);
    assert_ne!(at_12, home, "12 requests busier: beyond");
    // Capacity 12: 6 + 5 would keep 10 requests, but only 2 more fit.
    let (_, near_full) = fleet(12.0, 10.0);
    assert_ne!(near_full, home, "6 + 2");
}

#[test]
fn a_system_prompt_counts_as_held_everywhere_only_until_a_server_holds_the_conversation() {
    let p = CacheAware::default();
    p.fleet_changed(&[1, 2], 1 << 20);
    let mut f = prompt(0..60);
    f.preamble_blocks = 40;
    f.anchor = Some(45);
    let r = request(&f);
    let mut c = [server(1, 0.0), server(2, 0.0)];
    p.assess(&r, &mut c);
    assert_eq!([c[0].cached_tokens, c[1].cached_tokens], [640.0, 640.0]);
    let home = route(&p, &r, &mut c);
    // The next turn: its server holds all 60 blocks; the other, nothing it is known to hold.
    let mut next = prompt(0..70);
    next.preamble_blocks = 40;
    next.anchor = Some(45);
    p.assess(&request(&next), &mut c);
    assert_eq!(c[home].cached_tokens, 960.0);
    assert_eq!(
        c[1 - home].cached_tokens,
        0.0,
        "no credit: moving re-prefills it"
    );
}
