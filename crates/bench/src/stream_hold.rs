//! How many concurrent streams mvllm holds, and in what memory.
//!
//! A simulated H100 server that admits every stream at once (so that with thousands in its
//! batch each step is slow and every stream stays open for seconds), a proxy in front of it
//! (mvllm, then each `--proxy` of the overhead suite), and
//! `streams` streamed completions opened together here. A sampler reads the router's resident
//! memory every 50 ms; the figure that matters is its peak while the most streams were open,
//! less its idle memory, per stream. Every stream must end with `[DONE]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::client::{HttpClient, SseEvent, SseScanner};
use crate::process::SimProcess;
use crate::proxies::{ProxyKind, ProxyProcess};

/// Raises this process's open-file limit as far as allowed (children inherit it); returns it.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

#[derive(Default)]
struct Counters {
    opened: AtomicUsize,
    finished: AtomicUsize,
    errors: AtomicUsize,
}

async fn one_stream(
    client: &HttpClient,
    url: &str,
    body: &str,
    c: &Counters,
) -> Result<(), String> {
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    if resp.status() != 200 {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut scanner = SseScanner::default();
    let (mut first, mut done) = (true, false);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            scanner.feed(data, |ev| match ev {
                SseEvent::Content if first => {
                    first = false;
                    c.opened.fetch_add(1, Ordering::Relaxed);
                }
                SseEvent::Done => done = true,
                _ => {}
            });
        }
    }
    if done {
        Ok(())
    } else {
        Err("no [DONE]".into())
    }
}

pub async fn run(
    client: &HttpClient,
    kind: &ProxyKind,
    streams: usize,
    pin: Option<&crate::pinning::Pinning>,
) -> Result<Value, String> {
    let fd_limit = raise_fd_limit();
    // Each stream holds two sockets in the router and one in this process and the simulator.
    let possible = (fd_limit as usize).saturating_sub(200) / 2;
    let streams = streams.min(possible);
    let seqs = streams.to_string();
    let kv = (streams * 64).max(400_000).to_string();
    let sim = SimProcess::start(
        1,
        &[
            "--max-num-seqs",
            &seqs,
            "--kv-cache-tokens",
            &kv,
            "--max-num-batched-tokens",
            "65536",
        ],
    )
    .await?;
    let proxy = ProxyProcess::start(kind, client, &sim.urls[0], pin).await?;
    let pid = proxy.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = crate::process::memory_mib(pid, "VmRSS:").unwrap_or(f64::NAN);
    let url = format!("{}/v1/completions", proxy.url);
    let body = json!({"prompt": "hello", "max_tokens": 24, "ignore_eos": true, "stream": true})
        .to_string();
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let (client, url, body, c) =
                (client.clone(), url.clone(), body.clone(), counters.clone());
            tokio::spawn(async move {
                if one_stream(&client, &url, &body, &c).await.is_err() {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                c.finished.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    let (mut max_open, mut peak_at_max, mut peak) = (0usize, 0.0f64, 0.0f64);
    while counters.finished.load(Ordering::Relaxed) < streams {
        let open = counters
            .opened
            .load(Ordering::Relaxed)
            .saturating_sub(counters.finished.load(Ordering::Relaxed));
        let rss = crate::process::memory_mib(pid, "VmRSS:").unwrap_or(0.0);
        peak = peak.max(rss);
        if open >= max_open {
            max_open = open;
            peak_at_max = peak_at_max.max(rss);
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err("the streams did not finish within 5 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let errors = counters.errors.load(Ordering::Relaxed);
    let mut out = Map::new();
    out.insert("proxy".into(), json!(kind.name()));
    out.insert("streams".into(), json!(streams));
    out.insert("fd_limit".into(), json!(fd_limit));
    out.insert("max_open_at_once".into(), json!(max_open));
    out.insert("errors".into(), json!(errors));
    out.insert("idle_rss_mib".into(), json!(idle));
    out.insert("rss_at_max_open_mib".into(), json!(peak_at_max));
    out.insert("peak_rss_mib".into(), json!(peak));
    out.insert(
        "kib_per_stream".into(),
        json!((peak_at_max - idle) * 1024.0 / max_open.max(1) as f64),
    );
    out.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
    Ok(Value::Object(out))
}

pub fn render(h: &Map<String, Value>) -> String {
    let f = |k: &str| h.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    format!(
        "{}: streams held: {} of {} open at once ({} errors), RSS {:.1} MiB idle -> {:.1} MiB with them open (peak {:.1}), {:.1} KiB per stream, {:.1} s\n",
        h.get("proxy").and_then(Value::as_str).unwrap_or("mvllm"),
        h.get("max_open_at_once").unwrap_or(&Value::Null),
        h.get("streams").unwrap_or(&Value::Null),
        h.get("errors").unwrap_or(&Value::Null),
        f("idle_rss_mib"),
        f("rss_at_max_open_mib"),
        f("peak_rss_mib"),
        f("kib_per_stream"),
        f("seconds"),
    )
}
