//! Helpers for the router's integration tests: simulated servers and the router in-process on
//! port 0, real HTTP, and waiting for conditions with a deadline.
#![allow(dead_code)]

use std::time::Duration;

use mvllm_router::config::{ServerConfig, Settings};
use mvllm_router::{Config, RouterHandle};
use mvllm_sim::{SimConfig, SimHandle};
use serde_json::{Value, json};

pub const MODEL: &str = mvllm_sim::config::DEFAULT_MODEL;

/// Short intervals so that health and load changes show within a test's time.
pub fn fast_settings() -> Settings {
    Settings {
        health_check_interval: Duration::from_millis(100),
        health_check_timeout: Duration::from_millis(500),
        metrics_interval: Duration::from_millis(100),
        metrics_timeout: Duration::from_millis(500),
        models_refresh_interval: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        ..Settings::default()
    }
}

pub async fn sim(cfg: SimConfig) -> SimHandle {
    mvllm_sim::spawn(cfg).await.expect("simulator starts")
}

pub async fn sims(n: usize, cfg: SimConfig) -> Vec<SimHandle> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            sim(SimConfig {
                seed: i as u64,
                ..cfg.clone()
            })
            .await,
        );
    }
    out
}

pub fn server_of(s: &SimHandle) -> ServerConfig {
    server_of_url(s.url())
}

pub fn server_of_url(url: String) -> ServerConfig {
    ServerConfig {
        url,
        max_concurrent_requests: 8,
        api_key: None,
        models: None,
        role: Default::default(),
        kv_events: None,
    }
}

pub async fn router(servers: Vec<ServerConfig>, settings: Settings) -> RouterHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    mvllm_router::start(
        &Config {
            servers,
            settings,
            ..Default::default()
        },
        listener,
    )
    .await
    .expect("router starts")
}

pub async fn router_over(sims: &[SimHandle]) -> RouterHandle {
    router(sims.iter().map(server_of).collect(), fast_settings()).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A chat request that writes exactly `max_tokens` tokens (`ignore_eos`: the simulated model
/// would otherwise stop at its own natural length).
pub fn chat(content: &str, max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": MODEL, "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens, "ignore_eos": true, "stream": stream,
    })
}

pub async fn post(url: &str, body: &Value) -> reqwest::Response {
    client()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[allow(unused_imports)]
pub use mvllm_testkit::eventually;

/// Requests each simulator has finished (any reason), from its engine counters.
pub fn finished(s: &SimHandle) -> u64 {
    use mvllm_sim::metrics::FinishReason;
    s.engine_metrics()
        .iter()
        .map(|m| {
            FinishReason::ALL
                .iter()
                .map(|r| m.finished(*r))
                .sum::<u64>()
        })
        .sum()
}

/// Reads until the server closes the connection (or `within` passes: then `None`).
pub async fn read_until_closed(
    tcp: &mut tokio::net::TcpStream,
    within: Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&out).into_owned())
}

/// Sends `request` as raw bytes on a new connection and returns what came back until the
/// router closed it (within 10 s).
pub async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    read_until_closed(&mut tcp, Duration::from_secs(10))
        .await
        .expect("the router answered and closed the connection")
}

/// The status code of a raw HTTP/1.1 answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// Requests the router sent to its servers (every attempt).
pub fn attempts(r: &RouterHandle) -> u64 {
    r.fleet
        .servers()
        .iter()
        .map(|s| s.stats.requests.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// The whole body of a streamed answer, which must not be cut.
pub async fn read_stream_to_end(resp: reqwest::Response) -> String {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.expect("the stream is not cut"));
    }
    String::from_utf8(out).unwrap()
}
