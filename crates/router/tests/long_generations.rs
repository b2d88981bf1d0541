//! Long generations on healthy servers: `request_timeout` catches dead and hung servers, never
//! busy ones. A non-streamed answer's headers come only at its end, so a server that is still
//! generating after `request_timeout` must be told from a hung one (its health check answers),
//! and the request neither cut, nor re-run elsewhere, nor counted against the server.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use mvllm_sim::SimConfig;
use mvllm_sim::metrics::FinishReason;
use serde_json::Value;

fn aborted(s: &mvllm_sim::SimHandle) -> u64 {
    s.engine_metrics()
        .iter()
        .map(|m| m.finished(FinishReason::Abort))
        .sum()
}

#[tokio::test]
async fn a_non_streamed_generation_longer_than_request_timeout_completes_on_its_server() {
    let s = sims(2, SimConfig::default()).await;
    let mut settings = fast_settings();
    settings.request_timeout = Duration::from_millis(300);
    let r = router(s.iter().map(server_of).collect(), settings).await;
    // ~300 tokens take over a second on the simulated H100: several request_timeouts.
    let resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("write a long story", 300, false),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 300, "{v}");
    assert_eq!(aborted(&s[0]) + aborted(&s[1]), 0, "no server aborted it");
    assert_eq!(
        finished(&s[0]) + finished(&s[1]),
        1,
        "it ran once, on one server"
    );
    for server in r.fleet.servers().iter() {
        assert!(server.is_healthy());
        assert_eq!(server.stats.failures.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test]
async fn long_generations_at_once_do_not_eject_a_healthy_server() {
    let s = sims(1, SimConfig::default()).await;
    let mut settings = fast_settings();
    settings.request_timeout = Duration::from_millis(200);
    let r = router(s.iter().map(server_of).collect(), settings).await;
    let url = format!("{}/v1/chat/completions", r.url());
    let answers = futures_util::future::join_all((0..3).map(|i| {
        let url = url.clone();
        async move { post(&url, &chat(&format!("long story {i}"), 250, false)).await }
    }))
    .await;
    assert!(answers.iter().all(|a| a.status() == 200));
    let server = &r.fleet.servers()[0];
    assert!(server.is_healthy(), "still in rotation");
    assert_eq!(server.stats.failures.load(Ordering::Relaxed), 0);
    assert_eq!(aborted(&s[0]), 0);
}

#[tokio::test]
async fn generation_timeout_ends_a_request_without_blaming_the_server_or_retrying() {
    let s = sims(2, SimConfig::default()).await;
    let mut settings = fast_settings();
    settings.request_timeout = Duration::from_millis(200);
    settings.generation_timeout = Duration::from_millis(700);
    let r = router(s.iter().map(server_of).collect(), settings).await;
    let resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("an endless story", 5000, false),
    )
    .await;
    assert_eq!(resp.status(), 504);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "GatewayTimeoutError");
    let servers = r.fleet.servers();
    let sent: u64 = servers
        .iter()
        .map(|s| s.stats.requests.load(Ordering::Relaxed))
        .sum();
    assert_eq!(sent, 1, "not re-sent to the other server");
    assert!(
        servers
            .iter()
            .all(|s| s.is_healthy() && s.stats.failures.load(Ordering::Relaxed) == 0)
    );
    // The router let go of it, so the server stops generating.
    eventually(Duration::from_secs(5), "the server aborted it", || async {
        aborted(&s[0]) + aborted(&s[1]) == 1
    })
    .await;
}
