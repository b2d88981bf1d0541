//! Cache-aware routing over real HTTP: a conversation stays on the server holding its prefix,
//! a shared document goes back where it is cached, sessions are pinned by `prompt_cache_key`,
//! the session header or `user`, `previous_response_id` goes to the server holding the
//! response, and a server that leaves and comes back is forgotten, then used again.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use mvllm_router::routing::PolicyKind;
use mvllm_sim::SimConfig;
use serde_json::{Value, json};

fn cache_aware() -> mvllm_router::Settings {
    mvllm_router::Settings {
        routing_policy: PolicyKind::CacheAware,
        ..fast_settings()
    }
}

/// Requests each server got, in fleet order.
fn shares(r: &mvllm_router::RouterHandle) -> Vec<u64> {
    r.fleet
        .servers()
        .iter()
        .map(|s| s.stats.requests.load(Ordering::Relaxed))
        .collect()
}

/// Blocks the policy believes the server holds.
fn index_blocks(r: &mvllm_router::RouterHandle, s: &mvllm_router::fleet::Server) -> usize {
    r.fleet.policy().report(s.id()).map_or(0, |p| p.blocks)
}

fn words(seed: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("w{}", (seed * 7919 + i * 104_729) % 100_000))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn ask(url: &str, messages: &[Value], extra: Value) -> Value {
    let mut body =
        json!({"model": MODEL, "messages": messages, "max_tokens": 8, "ignore_eos": true});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let resp = post(&format!("{url}/v1/chat/completions"), &body).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_conversation_stays_where_its_prefix_is_cached() {
    let s = sims(4, SimConfig::instant()).await;
    let r = router(s.iter().map(server_of).collect(), cache_aware()).await;
    let system = words(1, 600);
    for session in 0..6 {
        let before = shares(&r);
        let mut messages = vec![json!({"role": "system", "content": system})];
        for turn in 0..4 {
            messages.push(json!({"role": "user", "content": words(100 * session + turn, 60)}));
            let answer = ask(&r.url(), &messages, json!({})).await;
            messages.push(answer["choices"][0]["message"].clone());
        }
        let after = shares(&r);
        let used: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert!(
            used.contains(&4),
            "session {session}: all four turns on one server: {used:?}"
        );
    }
}

#[tokio::test]
async fn questions_about_one_document_go_where_it_is_cached() {
    let s = sims(3, SimConfig::instant()).await;
    let r = router(s.iter().map(server_of).collect(), cache_aware()).await;
    let doc = words(7, 2000);
    for q in 0..8 {
        let messages =
            [json!({"role": "user", "content": format!("{doc}\n\nQuestion: {}", words(q, 12))})];
        ask(&r.url(), &messages, json!({})).await;
    }
    let n = shares(&r);
    assert!(n.contains(&8), "one server holds the document: {n:?}");
    // The servers' own counters agree: only the first prompt missed the cache.
    let index_blocks: usize = r.fleet.servers().iter().map(|s| index_blocks(&r, s)).sum();
    assert!(
        index_blocks > 100,
        "the index learned the document: {index_blocks}"
    );
}

#[tokio::test]
async fn session_keys_pin_conversations_and_move_few_when_servers_leave_and_return() {
    let s = sims(4, SimConfig::instant()).await;
    let r = router(s.iter().map(server_of).collect(), cache_aware()).await;
    let url = r.url();
    let c = client();
    // 12 sessions, each by one of the three ways of naming a session.
    let send = |i: usize| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let mut body = chat(&format!("hello {i}"), 2, false);
            let req = c.post(format!("{url}/v1/chat/completions"));
            let req = match i % 3 {
                0 => {
                    body["prompt_cache_key"] = json!(format!("conv-{i}"));
                    req
                }
                1 => req.header("x-session-id", format!("conv-{i}")),
                _ => {
                    body["user"] = json!(format!("conv-{i}"));
                    req
                }
            };
            let resp = req.json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
        }
    };
    let placement = |r: &mvllm_router::RouterHandle, before: &[u64]| -> usize {
        let after = shares(r);
        after
            .iter()
            .zip(before)
            .position(|(a, b)| a > b)
            .expect("sent somewhere")
    };
    let mut home = Vec::new();
    for i in 0..12 {
        let before = shares(&r);
        send(i).await;
        home.push(placement(&r, &before));
    }
    // The same sessions again, one at a time: each goes home.
    for (i, &h) in home.iter().enumerate() {
        let before = shares(&r);
        send(i).await;
        assert_eq!(placement(&r, &before), h, "session {i} stays");
    }
    // A server goes down: only its sessions move.
    let gone = home[0];
    s[gone].update_faults(|f| f.down = true);
    eventually(Duration::from_secs(5), "the server is out", || async {
        !r.fleet.servers()[gone].is_healthy()
    })
    .await;
    assert_eq!(
        index_blocks(&r, &r.fleet.servers()[gone]),
        0,
        "its index is forgotten"
    );
    for (i, &h) in home.iter().enumerate() {
        let before = shares(&r);
        send(i).await;
        let now = placement(&r, &before);
        if h == gone {
            assert_ne!(now, gone);
        } else {
            assert_eq!(now, h, "session {i} did not move");
        }
    }
    // It comes back: its sessions return to it.
    s[gone].update_faults(|f| f.down = false);
    eventually(Duration::from_secs(5), "the server is back", || async {
        r.fleet.servers()[gone].is_healthy()
    })
    .await;
    for (i, &h) in home.iter().enumerate() {
        let before = shares(&r);
        send(i).await;
        assert_eq!(placement(&r, &before), h, "session {i} is home again");
    }
}

#[tokio::test]
async fn previous_response_id_goes_to_the_server_holding_the_response() {
    let s = sims(3, SimConfig::instant()).await;
    let r = router(s.iter().map(server_of).collect(), cache_aware()).await;
    let first = post(
        &format!("{}/v1/responses", r.url()),
        &json!({"model": MODEL, "input": "Say something.", "max_output_tokens": 4}),
    )
    .await;
    assert_eq!(first.status(), 200);
    let v: Value = first.json().await.unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    let holder = shares(&r).iter().position(|&n| n == 1).unwrap();
    for i in 0..6 {
        let before = shares(&r);
        let resp = post(
            &format!("{}/v1/responses", r.url()),
            &json!({"model": MODEL, "input": format!("and then {i}?"), "previous_response_id": id, "max_output_tokens": 4}),
        )
        .await;
        assert!(
            resp.status().is_success() || resp.status() == 404,
            "{}",
            resp.status()
        );
        let after = shares(&r);
        assert_eq!(after[holder], before[holder] + 1, "continued on the holder");
    }
}

#[tokio::test]
async fn the_index_holds_to_its_memory_budget_under_unique_prompts() {
    let s = sims(2, SimConfig::instant()).await;
    let mut settings = cache_aware();
    settings.prefix_index_bytes = 64 * 1024; // 1,024 blocks: 512 per server
    let r = router(s.iter().map(server_of).collect(), settings).await;
    for i in 0..60 {
        // ~2,600 bytes each: 40 blocks, never shared.
        let messages = [json!({"role": "user", "content": words(1000 + i, 400)})];
        ask(&r.url(), &messages, json!({})).await;
    }
    let policy = r.fleet.policy();
    let held: Vec<usize> = r
        .fleet
        .servers()
        .iter()
        .map(|s| policy.report(s.id()).unwrap().bytes)
        .collect();
    assert!(
        held.iter().all(|&b| b <= 32 * 1024),
        "each within its share: {held:?}"
    );
    assert!(held.iter().sum::<usize>() > 32 * 1024, "and used: {held:?}");
    let metrics = get_text(&format!("{}/metrics", r.url())).await;
    assert!(metrics.contains("mvllm_prefix_index_bytes{"), "reported");
}

/// The hit rate the index predicted and the one the server reported, from `/load-stats`.
async fn hit_rates(url: &str) -> Vec<(Option<f64>, Option<f64>, u64)> {
    let stats: Value = serde_json::from_str(&get_text(&format!("{url}/load-stats")).await).unwrap();
    stats["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let p = &s["prefix_index"];
            (
                p["predicted_hit_rate"].as_f64(),
                p["actual_hit_rate"].as_f64(),
                p["resets"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn responses_cached_tokens_are_set_beside_the_prediction() {
    let s = sims(1, SimConfig::instant()).await;
    let r = router(vec![server_of(&s[0])], cache_aware()).await;
    // One document, asked about 12 times (~2,000 tokens each): cached after the first.
    let doc = words(5, 1500);
    for i in 0..12 {
        let messages = [json!({"role": "user", "content": format!("{doc}\nQuestion {i}?")})];
        let v = ask(&r.url(), &messages, json!({})).await;
        if i > 0 {
            assert!(
                v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() > Some(1000),
                "{v}"
            );
        }
    }
    let (predicted, actual, resets) = hit_rates(&r.url()).await[0];
    let (predicted, actual) = (predicted.unwrap(), actual.unwrap());
    assert!(predicted > 0.8 && actual > 0.8, "{predicted} vs {actual}");
    assert!((predicted - actual).abs() < 0.1, "{predicted} vs {actual}");
    assert_eq!(resets, 0);
    // A stream reports usage only when the client asks for it; then it is read too.
    let body = json!({"model": MODEL, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": format!("{doc}\nOne more?")}], "max_tokens": 4});
    let text = post(&format!("{}/v1/chat/completions", r.url()), &body)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"cached_tokens\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "passed through whole");
}

#[tokio::test]
async fn a_server_that_caches_nothing_has_its_index_forgotten() {
    // The server's prefix cache is off (or was reset behind the router's back): every answer
    // says nothing was cached, while the index believes the document is there.
    let config = SimConfig {
        prefix_caching: false,
        ..SimConfig::instant()
    };
    let s = sims(1, config).await;
    let r = router(vec![server_of(&s[0])], cache_aware()).await;
    let doc = words(6, 1500);
    for i in 0..12 {
        let messages = [json!({"role": "user", "content": format!("{doc}\nQuestion {i}?")})];
        let v = ask(&r.url(), &messages, json!({})).await;
        assert_eq!(
            v["usage"]["prompt_tokens_details"]["cached_tokens"],
            json!(0)
        );
    }
    let (predicted, actual, resets) = hit_rates(&r.url()).await[0];
    assert!(predicted.unwrap() > 0.5, "{predicted:?}");
    assert_eq!(actual, Some(0.0));
    assert!(resets >= 1, "noticed and forgotten");
}
