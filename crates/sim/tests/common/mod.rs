//! Helpers shared by the simulator's integration tests: start servers on port 0, talk HTTP,
//! split SSE streams, and wait for a condition with a deadline (never a fixed sleep).
#![allow(dead_code)]

use std::time::Duration;

use mvllm_sim::{SimConfig, SimHandle};
use serde_json::Value;

pub async fn start(cfg: SimConfig) -> SimHandle {
    mvllm_sim::spawn(cfg).await.expect("simulator starts")
}

/// A fast simulator: steps take no time.
pub async fn start_instant() -> SimHandle {
    start(SimConfig::instant()).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub async fn post_json(url: &str, body: Value) -> reqwest::Response {
    client()
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

pub fn chat_body(content: &str, max_tokens: u64, stream: bool) -> Value {
    serde_json::json!({
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_events(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body ends with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without 'data: ': {e:?}"))
                .to_string()
        })
        .collect()
}

#[allow(unused_imports)]
pub use mvllm_testkit::eventually;

pub async fn metrics_text(url: &str) -> String {
    client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series (exact name and label set as written) in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}
