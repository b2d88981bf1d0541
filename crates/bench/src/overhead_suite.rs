//! `mvllm bench overhead`: what the router costs, measured against going direct.
//!
//! An instant backend (the simulator's zero-latency profile) in one child process, the router
//! (`mvllm run`, console logging at warn) in another, and closed-loop clients here. For each
//! concurrency the same requests go direct and through the router, one after the other: added
//! p50/p99 latency, throughput as a ratio of direct, the router's CPU time per 1,000 requests
//! (from /proc), and its resident memory idle and after load. Streams (1,000 tokens) measure time
//! to first token and token throughput the same way.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::client::{HttpClient, get_text, http_client, stream_post};
use crate::process::{SimProcess, cpu_seconds_of};
use crate::stats::quantile;

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub quick: bool,
}

/// The router under test, as a child process.
struct RouterProcess {
    child: Child,
    url: String,
    _dir: TempDir,
}

/// A directory removed on drop (the router's config file lives there).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl RouterProcess {
    async fn start(client: &HttpClient, backend: &str) -> Result<RouterProcess, String> {
        let dir = std::env::temp_dir().join(format!(
            "mvllm-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let config = dir.join("servers.toml");
        let text = format!(
            "[servers]\nservers = [{{ url = \"{backend}\", max_concurrent_requests = 1024 }}]\n"
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .args([
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--log-level",
                "warning",
                "--config",
            ])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the router: {e}"))?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while get_text(client, &format!("{url}/readyz"))
            .await
            .map_or(true, |t| !t.contains("\"ready\":true"))
        {
            if Instant::now() > deadline {
                return Err("the router did not become ready".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(RouterProcess {
            child,
            url,
            _dir: TempDir(dir),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// Resident memory of a process in MiB (`VmRSS`, or `VmHWM` for the peak).
fn memory_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
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
    let client = http_client();
    let sim = SimProcess::start(1, &["--profile", "instant", "--max-num-seqs", "1024"]).await?;
    let backend = sim.urls[0].clone();
    let router = RouterProcess::start(&client, &backend).await?;
    let pid = router.pid();
    tokio::time::sleep(Duration::from_millis(500)).await; // let start-up allocations settle before reading idle memory
    let idle_rss = memory_mib(pid, "VmRSS:");
    let seconds = if opts.quick { 1.0 } else { 5.0 };
    let concurrencies: &[usize] = if opts.quick {
        &[1, 16]
    } else {
        &[1, 16, 64, 256]
    };
    let direct_url = format!("{backend}/v1/completions");
    let routed_url = format!("{}/v1/completions", router.url);
    let unary = json!({"prompt": "hello", "max_tokens": 1}).to_string();
    let mut rows = Vec::new();
    for &c in concurrencies {
        let (direct, routed, cpu) = side_by_side(
            &client,
            &direct_url,
            &routed_url,
            pid,
            c,
            seconds,
            &unary,
            false,
        )
        .await;
        rows.push(row("non-streaming", c, &direct, &routed, cpu));
    }
    let stream_tokens = if opts.quick { 100 } else { 1000 };
    let streamed =
        json!({"prompt": "hello", "max_tokens": stream_tokens, "ignore_eos": true, "stream": true})
            .to_string();
    let stream_concurrencies: &[usize] = if opts.quick { &[1] } else { &[1, 16, 64] };
    for &c in stream_concurrencies {
        let (direct, routed, cpu) = side_by_side(
            &client,
            &direct_url,
            &routed_url,
            pid,
            c,
            seconds,
            &streamed,
            true,
        )
        .await;
        let mut r = row(
            &format!("streaming {stream_tokens} tokens"),
            c,
            &direct,
            &routed,
            cpu,
        );
        r["ttft_p50_added_us"] =
            json!((quantile(&routed.ttft, 0.5) - quantile(&direct.ttft, 0.5)) * 1e6);
        rows.push(r);
    }
    let peak_rss = memory_mib(pid, "VmHWM:");
    Ok(json!({"idle_rss_mib": idle_rss, "peak_rss_mib": peak_rss, "rows": rows}))
}

/// The same closed loop direct, then through the router, with the router's CPU seconds.
#[allow(clippy::too_many_arguments)]
async fn side_by_side(
    client: &HttpClient,
    direct_url: &str,
    routed_url: &str,
    router_pid: u32,
    concurrency: usize,
    seconds: f64,
    body: &str,
    stream: bool,
) -> (LoopResult, LoopResult, Option<f64>) {
    let direct = closed_loop(client, direct_url, concurrency, seconds, body, stream).await;
    let cpu0 = cpu_seconds_of(router_pid);
    let routed = closed_loop(client, routed_url, concurrency, seconds, body, stream).await;
    let cpu = cpu0.and_then(|c0| cpu_seconds_of(router_pid).map(|c1| c1 - c0));
    (direct, routed, cpu)
}

fn row(
    kind: &str,
    concurrency: usize,
    direct: &LoopResult,
    routed: &LoopResult,
    cpu: Option<f64>,
) -> Value {
    let q = |r: &LoopResult, p: f64| quantile(&r.latencies, p);
    let rps = |r: &LoopResult| r.latencies.len() as f64 / r.wall;
    json!({
        "kind": kind, "concurrency": concurrency,
        "direct_p50_us": q(direct, 0.5) * 1e6, "routed_p50_us": q(routed, 0.5) * 1e6,
        "added_p50_us": (q(routed, 0.5) - q(direct, 0.5)) * 1e6,
        "direct_p99_us": q(direct, 0.99) * 1e6, "routed_p99_us": q(routed, 0.99) * 1e6,
        "added_p99_us": (q(routed, 0.99) - q(direct, 0.99)) * 1e6,
        "direct_rps": rps(direct), "routed_rps": rps(routed), "throughput_ratio": rps(routed) / rps(direct),
        "router_cpu_ms_per_1000": cpu.map(|c| c * 1e6 / routed.latencies.len().max(1) as f64),
        "errors_direct": direct.errors, "errors_routed": routed.errors,
    })
}

/// The report as a terminal table.
pub fn render(report: &Value) -> String {
    let mut s = format!(
        "router memory: idle {:.1} MiB, peak {:.1} MiB\n{:<24} {:>4} {:>10} {:>10} {:>10} {:>10} {:>9} {:>12} {:>7}\n",
        report["idle_rss_mib"].as_f64().unwrap_or(f64::NAN),
        report["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
        "workload",
        "conc",
        "p50 direct",
        "p50 added",
        "p99 direct",
        "p99 added",
        "req/s x",
        "CPU ms/1000",
        "errors"
    );
    for r in report["rows"].as_array().into_iter().flatten() {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        s += &format!(
            "{:<24} {:>4} {:>8.0}us {:>8.0}us {:>8.0}us {:>8.0}us {:>9.3} {:>12.1} {:>7}\n",
            r["kind"].as_str().unwrap_or(""),
            r["concurrency"],
            f("direct_p50_us"),
            f("added_p50_us"),
            f("direct_p99_us"),
            f("added_p99_us"),
            f("throughput_ratio"),
            f("router_cpu_ms_per_1000"),
            r["errors_routed"]
        );
    }
    s
}
