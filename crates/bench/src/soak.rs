//! `mvllm bench soak`: minutes of steady streaming load through mvllm while a fault injector
//! breaks random servers in every way the simulator can, then the books are balanced.
//!
//! Four simulated servers and the router run as child processes (the router is the real binary,
//! `mvllm run`). Sessions arrive as a Poisson process; every few seconds one server gets a random
//! fault for a few seconds: down, hung, streams cut mid-way, bursts of 500/503/429, slow or
//! malformed `/metrics`. At the end every request must have either completed (`[DONE]` after
//! all its tokens) or received a clear error (an HTTP error with a JSON body, or an SSE error
//! event); anything else is *lost* and must be 0. The client's count must equal the router's
//! `mvllm_requests_total`, and the router's memory at the end is compared with its memory after
//! warm-up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{HttpClient, get_text, http_client, post_timed};
use crate::process::SimProcess;
use crate::proxies::{ProxyKind, ProxyProcess};

#[derive(Debug, Clone)]
pub struct Options {
    pub minutes: f64,
    /// Sessions per second.
    pub rate: f64,
    pub seed: u64,
}

#[derive(Default)]
struct Books {
    completed: u64,
    /// By kind: "HTTP 503", "error event", ...
    clear_errors: BTreeMap<String, u64>,
    /// Neither completed nor a clear error, by what happened.
    lost: BTreeMap<String, u64>,
}

/// Faults as `/sim/faults` patches; `{ms}` is the fault's duration. A server that is down cannot
/// be told to come back, so "down" carries its own duration.
const FAULTS: &[(&str, &str)] = &[
    ("down", r#"{"down_for_ms": {ms}}"#),
    ("hang", r#"{"hang": true}"#),
    ("die mid-stream", r#"{"die_after_chunks": 5}"#),
    ("500 burst", r#"{"error_rate": 0.5, "error_status": 500}"#),
    ("503 burst", r#"{"error_rate": 0.5, "error_status": 503}"#),
    ("429 burst", r#"{"error_rate": 0.5, "error_status": 429}"#),
    ("slow metrics", r#"{"metrics_delay_ms": 3000}"#),
    ("malformed metrics", r#"{"metrics_malformed": true}"#),
];

async fn post_json(client: &HttpClient, url: &str, body: &str) -> Result<(), String> {
    post_timed(client, url, body.to_string(), false)
        .await
        .map(|_| ())
}

/// Sums a counter family in Prometheus text (all label sets).
fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Four simulated servers and the router in front of them, as child processes.
async fn fleet_behind_router(
    client: &crate::client::HttpClient,
) -> Result<(SimProcess, ProxyProcess), String> {
    crate::stream_hold::raise_fd_limit();
    let sims = SimProcess::start(4, &["--max-num-seqs", "64", "--speed", "4"]).await?;
    let backend = sims.urls[0].clone();
    let router = ProxyProcess::start(&ProxyKind::Mvllm, client, &backend, None).await?;
    // The proxy starts with one server; put all four in through the admin API.
    for url in &sims.urls[1..] {
        let body = json!({"url": url, "max_concurrent_requests": 64}).to_string();
        post_json(client, &format!("{}/admin/servers", router.url), &body).await?;
    }
    Ok((sims, router))
}

pub async fn run(opts: Options) -> Result<Value, String> {
    let client = http_client();
    let (sims, router) = fleet_behind_router(&client).await?;
    let model = crate::load::first_model(&client, &router.url).await?;
    let pid = router.pid();
    let rss = || crate::process::memory_mib(pid, "VmRSS:").unwrap_or(f64::NAN);
    let books = Arc::new(Mutex::new(Books::default()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(opts.minutes * 60.0);
    let warm = started + Duration::from_secs_f64((opts.minutes * 60.0 * 0.1).min(30.0));
    let faults_log = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));

    // The fault injector: a random server, a random fault, for 2-6 s, then cleared.
    let injector = {
        let (client, urls, log) = (client.clone(), sims.urls.clone(), faults_log.clone());
        let mut rng = StdRng::seed_from_u64(opts.seed ^ 0xfa);
        tokio::spawn(async move {
            while Instant::now() + Duration::from_secs(8) < deadline {
                tokio::time::sleep(Duration::from_secs_f64(rng.random_range(1.0..3.0))).await;
                let url = &urls[rng.random_range(0..urls.len())];
                let (name, patch) = FAULTS[rng.random_range(0..FAULTS.len())];
                let lasts = Duration::from_secs_f64(rng.random_range(2.0..6.0));
                let patch = patch.replace("{ms}", &lasts.as_millis().to_string());
                if post_json(&client, &format!("{url}/sim/faults"), &patch)
                    .await
                    .is_ok()
                {
                    *log.lock().entry(name.to_string()).or_default() += 1;
                }
                tokio::time::sleep(lasts).await;
                let _ =
                    post_json(&client, &format!("{url}/sim/faults"), r#"{"reset": true}"#).await;
            }
        })
    };

    // The router's memory every 30 s, to see whether it levels off.
    let sampler = {
        let timeline = Arc::new(Mutex::new(Vec::<(f64, f64)>::new()));
        let t = timeline.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let rss = crate::process::memory_mib(pid, "VmRSS:").unwrap_or(f64::NAN);
                t.lock()
                    .push((started.elapsed().as_secs_f64().round(), rss));
            }
        });
        (timeline, task)
    };
    let endpoint = format!("{}/v1/chat/completions", router.url);
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut tasks = Vec::new();
    let mut next = started;
    let mut rss_after_warmup = None;
    loop {
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        next += Duration::from_secs_f64(-u.ln() / opts.rate);
        if next >= deadline {
            break;
        }
        tokio::time::sleep_until(next).await;
        if rss_after_warmup.is_none() && Instant::now() >= warm {
            rss_after_warmup = Some(rss());
        }
        let tokens: u32 = rng.random_range(16..256);
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": format!("soak {}", rng.random::<u32>())}],
            "max_tokens": tokens, "ignore_eos": true, "stream": true,
            "stream_options": {"include_usage": true},
        })
        .to_string();
        let (client, endpoint, books) = (client.clone(), endpoint.clone(), books.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = post_timed(&client, &endpoint, body, false).await;
            let mut b = books.lock();
            match outcome {
                Ok(t)
                    if t.status == 200
                        && t.done
                        && t.error.is_none()
                        && t.usage_tokens == Some(u64::from(tokens)) =>
                {
                    b.completed += 1;
                }
                Ok(t) if t.status == 200 && t.error.is_some() => {
                    *b.clear_errors
                        .entry("error event mid-stream".into())
                        .or_default() += 1;
                }
                Ok(t) if t.status != 200 && t.error.is_some() => {
                    let why: String = t.error.as_deref().unwrap_or("").chars().take(56).collect();
                    *b.clear_errors
                        .entry(format!("HTTP {}: {why}", t.status))
                        .or_default() += 1;
                }
                Ok(t) if t.status == 200 => {
                    let why = if t.done {
                        format!("[DONE] with usage {:?} for {tokens} tokens", t.usage_tokens)
                    } else {
                        "stream ended without [DONE] or error".into()
                    };
                    *b.lost.entry(why).or_default() += 1;
                }
                Ok(t) => {
                    *b.lost
                        .entry(format!("HTTP {} without an error body", t.status))
                        .or_default() += 1;
                }
                Err(e) => {
                    *b.lost
                        .entry(format!(
                            "transport: {}",
                            e.chars().take(60).collect::<String>()
                        ))
                        .or_default() += 1;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    injector.abort();
    sampler.1.abort();
    let rss_end = rss();
    let router_metrics = get_text(&client, &format!("{}/metrics", router.url)).await?;
    let router_total = counter_sum(&router_metrics, "mvllm_requests_total");
    let mut servers_succeeded = 0.0;
    for url in &sims.urls {
        let _ = post_json(&client, &format!("{url}/sim/faults"), r#"{"reset": true}"#).await;
        if let Ok(text) = get_text(&client, &format!("{url}/metrics")).await {
            servers_succeeded += counter_sum(&text, "vllm:request_success_total");
        }
    }
    let b = books.lock();
    let errors: u64 = b.clear_errors.values().sum();
    let lost: u64 = b.lost.values().sum();
    let total = b.completed + errors + lost;
    let report = json!({
        "minutes": opts.minutes, "rate": opts.rate, "requests": total,
        "completed": b.completed, "clear_errors": b.clear_errors, "clear_errors_total": errors,
        "lost": lost, "lost_by_kind": b.lost,
        "faults_injected": *faults_log.lock(),
        "router_requests_total": router_total,
        "servers_request_success_total": servers_succeeded,
        "router_rss_mib_after_warmup": rss_after_warmup, "router_rss_mib_end": rss_end,
        "router_rss_mib_every_30s": *sampler.0.lock(),
    });
    drop(b);
    drop(router);
    Ok(report)
}

pub fn render(r: &Value) -> String {
    let faults: u64 = r["faults_injected"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    format!(
        "soak: {} min at {} sessions/s: {} requests, {} completed, {} clear errors {}, lost {} {}\n\
         faults injected: {} {}\n\
         counts: client {} / router mvllm_requests_total {} / servers' completed {}\n\
         router memory: {:.1} MiB after warm-up, {:.1} MiB at the end; every 30 s: {}\n",
        r["minutes"],
        r["rate"],
        r["requests"],
        r["completed"],
        r["clear_errors_total"],
        r["clear_errors"],
        r["lost"],
        r["lost_by_kind"],
        faults,
        r["faults_injected"],
        r["requests"],
        r["router_requests_total"],
        r["servers_request_success_total"],
        r["router_rss_mib_after_warmup"]
            .as_f64()
            .unwrap_or(f64::NAN),
        r["router_rss_mib_end"].as_f64().unwrap_or(f64::NAN),
        r["router_rss_mib_every_30s"],
    )
}
