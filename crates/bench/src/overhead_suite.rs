//! `mvllm bench overhead`: what a router costs, measured against going direct, side by side
//! with other proxies in the same run.
//!
//! An instant backend (the simulator's zero-latency profile) in one child process; the proxies
//! in others: mvllm logging to the console, mvllm in a pseudo-terminal with and without its
//! dashboard (see [`crate::proxies`] for why both), nginx as a plain reverse proxy when it is installed, and any router given with `--proxy
//! NAME=COMMAND`. For each workload and concurrency the same closed loop runs direct, then
//! through each proxy: added p50/p99 latency, throughput as a ratio of direct, each proxy's CPU
//! time per 1,000 requests (from /proc), and resident memory idle and at peak. Streams (1,000
//! tokens) measure time to first token and token throughput the same way. Last, how many
//! concurrent streams mvllm holds and in what memory ([`crate::stream_hold`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{HttpClient, http_client, stream_post};
use crate::process::{SimProcess, cpu_seconds_of};
use crate::proxies::{ProxyKind, ProxyProcess, find_nginx};
use crate::stats::quantile;

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub quick: bool,
    /// Leave out the dashboard comparison.
    pub no_dashboard: bool,
    /// Leave out nginx even if it is installed.
    pub no_nginx: bool,
    /// More proxies to measure, as `NAME=COMMAND` templates.
    pub extra: Vec<ProxyKind>,
    /// Concurrent streams for the holding test (0: skip it).
    pub hold_streams: usize,
    /// Pinned mode: each proxy alone on one CPU, the load and the backend on the others.
    pub pin: bool,
}

struct LoopResult {
    latencies: Vec<f64>,
    ttft: Vec<f64>,
    errors: usize,
    wall: f64,
}

/// `concurrency` clients, each sending `body` to `url` back to back for `seconds`.
async fn closed_loop(
    client: &HttpClient,
    url: &str,
    concurrency: usize,
    seconds: f64,
    body: &str,
    stream: bool,
) -> LoopResult {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let stop = stop.clone();
        async move {
            let (mut lat, mut ttft, mut errors) = (Vec::new(), Vec::new(), 0);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match stream_post(client, url, body.to_string()).await {
                    Ok(t) if t.status == 200 && (!stream || t.done) => {
                        lat.push(t0.elapsed().as_secs_f64());
                        if stream {
                            ttft.push(t.ttft);
                        }
                    }
                    _ => errors += 1,
                }
            }
            (lat, ttft, errors)
        }
    });
    let timer = async {
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        stop.store(true, Ordering::Relaxed);
    };
    let (results, ()) = tokio::join!(join_all(workers), timer);
    let wall = start.elapsed().as_secs_f64();
    let mut out = LoopResult {
        latencies: Vec::new(),
        ttft: Vec::new(),
        errors: 0,
        wall,
    };
    for (l, t, e) in results {
        out.latencies.extend(l);
        out.ttft.extend(t);
        out.errors += e;
    }
    out
}

pub async fn run(opts: Options) -> Result<Value, String> {
    let pin = if opts.pin {
        let p = crate::pinning::Pinning::plan()?;
        p.move_this_process()?;
        Some(p)
    } else {
        None
    };
    let client = http_client();
    let sim = SimProcess::start(1, &["--profile", "instant", "--max-num-seqs", "100000"]).await?;
    let backend = sim.urls[0].clone();
    let mut kinds = vec![ProxyKind::Mvllm];
    if !opts.no_dashboard {
        kinds.push(ProxyKind::MvllmTerminalConsole);
        kinds.push(ProxyKind::MvllmDashboard);
    }
    if !opts.no_nginx && find_nginx().is_some() {
        kinds.push(ProxyKind::Nginx);
    }
    kinds.extend(opts.extra.iter().cloned());
    let mut proxies = Vec::new();
    for kind in &kinds {
        proxies.push(ProxyProcess::start(kind, &client, &backend, pin.as_ref()).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // let start-up allocations settle before reading idle memory
    let idle_rss: Vec<Option<f64>> = proxies
        .iter()
        .map(|p| crate::process::memory_mib(p.pid(), "VmRSS:"))
        .collect();
    let seconds = if opts.quick { 1.0 } else { 5.0 };
    // Pinned, 64 connections saturate the router's core: the kit's capacity figure.
    let concurrencies: &[usize] = if opts.quick && pin.is_some() {
        &[1, 64]
    } else if opts.quick {
        &[1, 16]
    } else {
        &[1, 16, 64, 256]
    };
    let direct_url = format!("{backend}/v1/completions");
    let unary = json!({"prompt": "hello", "max_tokens": 1}).to_string();
    let stream_tokens = if opts.quick { 100 } else { 1000 };
    let streamed =
        json!({"prompt": "hello", "max_tokens": stream_tokens, "ignore_eos": true, "stream": true})
            .to_string();
    let stream_concurrencies: &[usize] = if opts.quick { &[1] } else { &[1, 16, 64] };
    let cells = concurrencies
        .iter()
        .map(|&c| ("non-streaming".to_string(), c, unary.as_str(), false))
        .chain(stream_concurrencies.iter().map(|&c| {
            (
                format!("streaming {stream_tokens} tokens"),
                c,
                streamed.as_str(),
                true,
            )
        }));
    let mut rows = Vec::new();
    for (kind, c, body, stream) in cells {
        let direct = closed_loop(&client, &direct_url, c, seconds, body, stream).await;
        for p in &proxies {
            let cpu0 = cpu_seconds_of(p.pid());
            let url = format!("{}/v1/completions", p.url);
            let routed = closed_loop(&client, &url, c, seconds, body, stream).await;
            let cpu = cpu0.and_then(|c0| cpu_seconds_of(p.pid()).map(|c1| c1 - c0));
            let mut r = row(&p.name, &kind, c, &direct, &routed, cpu);
            if stream {
                r["ttft_p50_added_us"] =
                    json!((quantile(&routed.ttft, 0.5) - quantile(&direct.ttft, 0.5)) * 1e6);
            }
            rows.push(r);
        }
    }
    let memory: Vec<Value> = proxies
        .iter()
        .zip(&idle_rss)
        .map(|(p, idle)| {
            json!({"proxy": p.name, "idle_rss_mib": idle, "peak_rss_mib": crate::process::memory_mib(p.pid(), "VmHWM:")})
        })
        .collect();
    // Whether pinning held: the CPUs each proxy's threads (and this process's) may use.
    let pinned = pin.as_ref().map(|p| {
        let proxies: serde_json::Map<String, Value> = proxies
            .iter()
            .map(|x| (x.name.clone(), json!(crate::pinning::affinity_of(x.pid()))))
            .collect();
        json!({
            "router_cpu": p.router_cpu,
            "load_cpus": p.load_cpus,
            "proxies": proxies,
            "load": crate::pinning::affinity_of(std::process::id()),
        })
    });
    drop(proxies);
    // The holding test, for mvllm and then each proxy given as a command.
    let mut hold = Vec::new();
    if opts.hold_streams > 0 {
        for kind in std::iter::once(&ProxyKind::Mvllm).chain(&opts.extra) {
            hold.push(
                crate::stream_hold::run(&client, kind, opts.hold_streams, pin.as_ref()).await?,
            );
        }
    }
    Ok(json!({"memory": memory, "rows": rows, "hold": hold, "pinned": pinned}))
}

fn row(
    proxy: &str,
    kind: &str,
    concurrency: usize,
    direct: &LoopResult,
    routed: &LoopResult,
    cpu: Option<f64>,
) -> Value {
    let q = |r: &LoopResult, p: f64| quantile(&r.latencies, p);
    let rps = |r: &LoopResult| r.latencies.len() as f64 / r.wall;
    json!({
        "proxy": proxy, "kind": kind, "concurrency": concurrency,
        "direct_p50_us": q(direct, 0.5) * 1e6, "routed_p50_us": q(routed, 0.5) * 1e6,
        "added_p50_us": (q(routed, 0.5) - q(direct, 0.5)) * 1e6,
        "direct_p99_us": q(direct, 0.99) * 1e6, "routed_p99_us": q(routed, 0.99) * 1e6,
        "added_p99_us": (q(routed, 0.99) - q(direct, 0.99)) * 1e6,
        "direct_rps": rps(direct), "routed_rps": rps(routed), "throughput_ratio": rps(routed) / rps(direct),
        "cpu_ms_per_1000": cpu.map(|c| c * 1e6 / routed.latencies.len().max(1) as f64),
        "errors_direct": direct.errors, "errors_routed": routed.errors,
    })
}

/// The report as terminal tables: latency and cost per proxy, then each proxy's throughput as
/// a ratio of nginx's in the same cell, then memory.
pub fn render(report: &Value) -> String {
    let mut s = String::new();
    if let Some(p) = report["pinned"].as_object() {
        s += &format!(
            "pinned: proxies on CPU {} (threads seen on {}), load generator and backend on {} (seen on {})\n",
            p["router_cpu"],
            p["proxies"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, cpus)| format!("{name}: {cpus}"))
                .collect::<Vec<_>>()
                .join(", "),
            p["load_cpus"],
            p["load"]
        );
    }
    s += &format!(
        "{:<20} {:<24} {:>4} {:>10} {:>10} {:>10} {:>10} {:>8} {:>11} {:>6}\n",
        "proxy",
        "workload",
        "conc",
        "p50 direct",
        "p50 added",
        "p99 direct",
        "p99 added",
        "req/s x",
        "CPU ms/1k",
        "errors"
    );
    let rows: Vec<&Value> = report["rows"].as_array().into_iter().flatten().collect();
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let nginx = rows.iter().find(|n| {
            n["proxy"] == "nginx" && n["kind"] == r["kind"] && n["concurrency"] == r["concurrency"]
        });
        let vs_nginx = nginx
            .and_then(|n| Some((n["routed_rps"].as_f64()?, n["cpu_ms_per_1000"].as_f64()?)))
            .map(|(rps, cpu)| {
                format!(
                    "  ({:.2}x nginx's req/s, {:.2}x its CPU)",
                    f("routed_rps") / rps,
                    f("cpu_ms_per_1000") / cpu
                )
            })
            .unwrap_or_default();
        s += &format!(
            "{:<20} {:<24} {:>4} {:>8.0}us {:>8.0}us {:>8.0}us {:>8.0}us {:>8.3} {:>11.1} {:>6}{}\n",
            r["proxy"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            r["concurrency"],
            f("direct_p50_us"),
            f("added_p50_us"),
            f("direct_p99_us"),
            f("added_p99_us"),
            f("throughput_ratio"),
            f("cpu_ms_per_1000"),
            r["errors_routed"],
            if r["proxy"] == "nginx" {
                String::new()
            } else {
                vs_nginx
            }
        );
    }
    for m in report["memory"].as_array().into_iter().flatten() {
        s += &format!(
            "memory {:<20} idle {:>6.1} MiB, peak {:>6.1} MiB\n",
            m["proxy"].as_str().unwrap_or(""),
            m["idle_rss_mib"].as_f64().unwrap_or(f64::NAN),
            m["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
        );
    }
    for h in report["hold"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
    {
        s += &crate::stream_hold::render(h);
    }
    s
}
