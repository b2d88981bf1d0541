//! Helpers shared by the workspace's integration tests.
//!
//! Why one place: tests never synchronise with fixed sleeps; they poll for the condition they
//! need, with a deadline, and fail naming what they waited for. This is that loop, once.

pub mod dns;
pub mod tls;
pub mod tokenizer;

use std::future::Future;
use std::time::Duration;

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` until it holds, panicking with `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `GET url` answers with `status`, on a new connection each time.
pub async fn wait_for_status(url: &str, status: u16, within: Duration) {
    eventually(within, &format!("GET {url} -> {status}"), || async {
        reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().as_u16() == status)
    })
    .await;
}
