//! Servers of different speeds: the router learns each one's seconds per output token from its
//! own `/metrics` (the inter-token latency histogram), shows it, and `cache_aware` starts new
//! conversations on the faster server of a lightly loaded fleet.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mvllm_router::routing::PolicyKind;
use mvllm_sim::SimConfig;
use serde_json::json;

#[tokio::test]
async fn a_half_speed_server_is_seen_as_twice_as_slow_and_new_conversations_start_on_the_fast_one()
{
    let fast = sim(SimConfig::default()).await;
    let slow = sim(SimConfig {
        speed: 0.5,
        seed: 1,
        ..SimConfig::default()
    })
    .await;
    // Each server has served before the router starts: its histogram holds 2 x 40 tokens.
    for s in [&fast, &slow] {
        for _ in 0..2 {
            let resp = post(
                &format!("{}/v1/chat/completions", s.url()),
                &chat("warm", 40, false),
            )
            .await;
            assert_eq!(resp.status(), 200);
        }
    }
    let r = router(
        vec![server_of(&fast), server_of(&slow)],
        mvllm_router::Settings {
            routing_policy: PolicyKind::CacheAware,
            ..fast_settings()
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let paces = loop {
        let status = get_json(&format!("{}/admin/status", r.url())).await;
        let paces: Vec<Option<f64>> = ["fast", "slow"]
            .iter()
            .enumerate()
            .map(|(i, _)| status["servers"][i]["seconds_per_token"].as_f64())
            .collect();
        if paces.iter().all(Option::is_some) {
            break paces;
        }
        assert!(Instant::now() < deadline, "no speeds in 10 s: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (f, s) = (paces[0].unwrap(), paces[1].unwrap());
    assert!(
        (1.6..2.5).contains(&(s / f)),
        "fast {f} s, slow {s} s per token"
    );
    let metrics = get_text(&format!("{}/metrics", r.url())).await;
    assert!(
        metrics.contains("mvllm_server_seconds_per_token{server="),
        "{metrics}"
    );
    // One conversation at a time: each starts on the fast server.
    let before = (finished(&fast), finished(&slow));
    for i in 0..8 {
        let body = json!({
            "model": MODEL, "max_tokens": 4,
            "messages": [{"role": "user", "content": format!("conversation {i} opens here")}],
        });
        let resp = post(&format!("{}/v1/chat/completions", r.url()), &body).await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(finished(&fast) - before.0, 8);
    assert_eq!(finished(&slow), before.1);
}
