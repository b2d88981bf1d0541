//! The optional bounded wait queue: when every server is at capacity requests wait in line,
//! first come first served; past `queue_size` or after `queue_timeout` they get 503 with
//! Retry-After; each freed slot goes to the head of the line.

mod common;

use std::time::Duration;

use common::*;
use mvllm_router::config::{ServerConfig, Settings};
use mvllm_sim::SimConfig;
use mvllm_testkit::eventually;
use serde_json::Value;

#[tokio::test]
async fn full_servers_make_requests_wait_in_line_then_503_past_the_bound_or_the_time_out() {
    let s = sim(SimConfig::default()).await;
    let server = ServerConfig {
        max_concurrent_requests: 2,
        ..server_of(&s)
    };
    let settings = Settings {
        queue_size: 2,
        queue_timeout: Duration::from_millis(1500),
        ..fast_settings()
    };
    let r = router(vec![server], settings).await;
    let url = format!("{}/v1/chat/completions", r.url());
    // Two streams hold both slots (the client does not read on, so they stay in flight).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut resp = post(&url, &chat("hold", 2000, true)).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.chunk().await.unwrap().is_some());
        held.push(resp);
    }
    let queue = r.state.admission.wait_queue.clone();
    // A short request sent in the background: its status and when it ended.
    let send_later = |content: &'static str| {
        let url = url.clone();
        tokio::spawn(async move {
            let status = post(&url, &chat(content, 2, false)).await.status();
            (status, std::time::Instant::now())
        })
    };
    let third = send_later("third");
    eventually(
        Duration::from_secs(5),
        "the third request waiting",
        || async { queue.len() == 1 },
    )
    .await;
    let fourth = send_later("fourth");
    eventually(
        Duration::from_secs(5),
        "the fourth request waiting",
        || async { queue.len() == 2 },
    )
    .await;
    // The line is full: the fifth is refused at once.
    let fifth = post(&url, &chat("fifth", 2, false)).await;
    assert_eq!(fifth.status(), 503);
    assert_eq!(fifth.headers()["retry-after"], "1");
    let v: Value = fifth.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue is full"),
        "{v}"
    );
    // A slot frees up: the head of the line (the third) gets it, then the fourth gets the slot
    // the third frees.
    drop(held.remove(0));
    let (third_status, third_done) = third.await.unwrap();
    let (fourth_status, fourth_done) = fourth.await.unwrap();
    assert_eq!((third_status.as_u16(), fourth_status.as_u16()), (200, 200));
    assert!(third_done <= fourth_done, "first come, first served");
    assert!(queue.is_empty());
    // Both slots held again: a request waits queue_timeout, then gets 503.
    let mut again = post(&url, &chat("hold", 2000, true)).await;
    assert!(again.chunk().await.unwrap().is_some());
    let waited = std::time::Instant::now();
    let late = post(&url, &chat("late", 2, false)).await;
    assert_eq!(late.status(), 503);
    let body: Value = late.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue_timeout"),
        "{body}"
    );
    assert!(
        waited.elapsed() >= Duration::from_millis(1400),
        "it waited its time"
    );
    drop((held, again));
}
