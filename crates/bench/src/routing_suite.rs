//! `mvllm bench routing`: how much sooner users get tokens when the router picks well.
//!
//! For each fleet (heterogeneous: speeds 1, 1, 0.5, 0.25; homogeneous: 4 x 1) of simulated
//! servers in a child process: first each server's capacity is measured (closed loop, saturated,
//! directly), then for each policy the same seeded open-loop Poisson workload runs through an
//! in-process router at a fraction of the fleet's capacity, and time to first token, time per
//! output token, throughput and each server's share are recorded. Every server is configured
//! with the same `max_concurrent_requests`: the policy has to find the speed differences itself.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use mvllm_router::config::{ServerConfig, Settings};
use mvllm_router::routing::PolicyKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{HttpClient, StreamTiming, http_client, stream_post};
use crate::process::SimProcess;
use crate::stats::{mean, quantile};

pub mod caches;
mod contender;
mod traffic;
pub use contender::{Contender, contenders};
pub use traffic::OTHER_CLIENT_TOKENS;
use traffic::{Traffic, other_clients};

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub quick: bool,
    /// Only this fleet ("heterogeneous" or "homogeneous").
    pub fleet: Option<String>,
    /// Only these loads (fractions of capacity).
    pub loads: Option<Vec<f64>>,
    /// Compare the default policy without and with the router's wait queue of this size
    /// (instead of comparing policies).
    pub queue: Option<usize>,
    /// Run one of the load generator's workloads (sharegpt-like, chat-sessions, prefix-heavy)
    /// instead of the suite's own streamed completions.
    pub workload: Option<crate::load::Workload>,
    /// What to compare, by name: a policy (`adaptive`, `cache_aware`, ...), a policy on two
    /// router replicas behind a client alternating between them (`cache_aware-x2`), the oracle
    /// of client-side affinity (`oracle`), that oracle with every shared prefix cached on every
    /// server beforehand (`oracle-warm`: the floor on servers of one speed), or a peer router (`vllm-router`, `sglang-router`).
    pub contenders: Option<Vec<String>>,
    /// The fleet's speeds instead of the named fleet's (e.g. "1,1,0.5,0.5").
    pub speeds: Option<String>,
    /// Each server's KV cache in tokens (a small one makes eviction matter).
    pub kv_cache_tokens: Option<usize>,
    /// Mean think time between a conversation's turns, seconds (default [`CHAT_THINK_TIME`]).
    pub think_time: Option<f64>,
    /// Seconds of arrivals per cell (default 20, or [`CHAT_SECONDS`] for chat; 2 with `quick`).
    pub seconds: Option<f64>,
    /// Other clients: this many requests per second to each server, straight (not through the
    /// router), each an unrelated prompt of [`OTHER_CLIENT_TOKENS`] tokens: they take cache the
    /// router does not know about.
    pub other_clients: Option<f64>,
}

/// Mean think time between the turns of a chat conversation: a person reads the answer and
/// types the next question, seconds, not the load generator's half second. With it, tens of
/// conversations are open at once (at 20 req/s: 5 conversations a second, each ~4 turns over
/// ~12 s, so ~60 open), and a conversation's server has time to become busier than another
/// between its turns: the case a cache-aware router must get right.
pub const CHAT_THINK_TIME: f64 = 3.0;

/// Seconds of arrivals per chat cell: long enough that most conversations reach their later
/// turns (the ones with long histories, where a miss costs most).
pub const CHAT_SECONDS: f64 = 60.0;

/// Mean turns of a chat session (2..=6), to turn a request rate into a session rate.
const MEAN_TURNS: f64 = 4.0;

fn load_options(
    url: String,
    w: crate::load::Workload,
    arrivals: crate::load::Arrivals,
    seconds: f64,
    seed: u64,
) -> crate::load::Options {
    crate::load::Options {
        url,
        workload: w,
        arrivals,
        duration: seconds,
        stream: true,
        model: None,
        think_time: 0.0,
        seed,
        progress: false,
        replicas: Vec::new(),
        pin_to: Vec::new(),
        servers: Vec::new(),
        api_key: None,
        as_tokens: false,
    }
}

/// Requests per second one server completes when saturated with a load-generator workload.
async fn workload_capacity(
    url: &str,
    w: crate::load::Workload,
    seconds: f64,
    seed: u64,
) -> Result<f64, String> {
    let users = crate::load::Arrivals::Concurrency(2 * CAPACITY_SETTING as usize);
    let r = crate::load::run(load_options(url.to_string(), w, users, seconds, seed)).await?;
    Ok(r["requests_per_second"].as_f64().unwrap_or(0.0))
}

/// One cell with a load-generator workload: through one or two in-process routers, a peer
/// router, or straight to the servers (the oracle). `Ok(None)`: a peer that is not installed.
async fn run_workload_contender(
    sim: &SimProcess,
    contender: &Contender,
    w: crate::load::Workload,
    request_rate: f64,
    seconds: f64,
    traffic: Traffic,
    seed: u64,
) -> Result<Option<Value>, String> {
    let urls = &sim.urls[..];
    let sessions = if w == crate::load::Workload::ChatSessions {
        request_rate / MEAN_TURNS
    } else {
        request_rate
    };
    let arrivals = crate::load::Arrivals::Rate(sessions);
    let mut routers = Vec::new();
    let mut peer = None;
    let mut opts = match contender {
        Contender::Policy(p) | Contender::Replicas(p) => {
            let n = if matches!(contender, Contender::Replicas(_)) {
                2
            } else {
                1
            };
            for _ in 0..n {
                routers.push(start_router(urls, *p, 0, &[]).await?);
            }
            let mut o = load_options(routers[0].url(), w, arrivals, seconds, seed);
            o.replicas = routers[1..].iter().map(|r| r.url()).collect();
            o
        }
        Contender::Exact(p) => {
            routers.push(start_router(urls, *p, 0, &sim.kv_events).await?);
            // Every server's cache state exact before the first request.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !routers[0].fleet.servers().iter().all(|s| s.kv.is_exact()) {
                if Instant::now() > deadline {
                    return Err("the servers' KV events did not become exact in 30 s".into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            load_options(routers[0].url(), w, arrivals, seconds, seed)
        }
        Contender::Oracle | Contender::WarmOracle => {
            let mut o = load_options(urls[0].clone(), w, arrivals, seconds, seed);
            o.pin_to = urls.to_vec();
            o
        }
        Contender::Peer(kind) => {
            let Some(p) = crate::peer_routers::start(*kind, urls).await? else {
                return Ok(None);
            };
            let o = load_options(p.url.clone(), w, arrivals, seconds, seed);
            peer = Some(p);
            o
        }
    };
    opts.servers = urls.to_vec();
    opts.think_time = traffic.think_time;
    // With KV events in the run, every contender sends token ids (a router without a
    // tokenizer matches events only on those), so that all see the same requests.
    opts.as_tokens = !sim.kv_events.is_empty();
    // Ask the servers for the model: a router may list its own placeholder (SGLang's: "unknown").
    opts.model = Some(crate::load::first_model(&http_client(), &urls[0]).await?);
    caches::reset(urls).await?;
    if *contender == Contender::WarmOracle {
        let model = opts.model.as_deref().unwrap_or_default();
        caches::warm(urls, w, seed, model, opts.as_tokens).await?;
    }
    let before = server_request_counts(urls).await;
    let others = other_clients(urls, traffic.other_clients, seed ^ 0x07e4);
    let r = crate::load::run(opts).await;
    if let Some(o) = others {
        o.abort();
    }
    let r = r?;
    let after = server_request_counts(urls).await;
    let shares: Vec<u64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let index_bytes: usize = routers
        .iter()
        .flat_map(|r| {
            let policy = r.fleet.policy();
            r.fleet
                .servers()
                .iter()
                .map(|s| policy.report(s.id()).map_or(0, |p| p.bytes))
                .collect::<Vec<_>>()
        })
        .sum();
    for r in routers {
        r.shutdown(Duration::from_secs(5)).await;
    }
    drop(peer);
    let errors: u64 = r["errors"]
        .as_object()
        .map_or(0, |e| e.values().filter_map(Value::as_u64).sum());
    Ok(Some(json!({
        "policy": contender.name(), "workload": w.name(),
        "requests": r["requests"], "completed": r["ok"], "errors": errors,
        "ttft_p50": r["ttft_s"]["p50"], "ttft_p90": r["ttft_s"]["p90"], "ttft_p99": r["ttft_s"]["p99"],
        "tpot_mean": r["itl_s"]["mean"], "requests_per_s": r["requests_per_second"],
        "output_tokens_per_s": r["output_tokens_per_second"],
        "prefix_cache_hit_rate": r["prefix_cache"]["hit_rate"],
        "server_shares": shares,
        "prefix_index_bytes": index_bytes,
    })))
}

/// Requests each simulated server has finished, from its own `/metrics` (so that routers other
/// than mvllm, and no router at all, are counted alike).
async fn server_request_counts(urls: &[String]) -> Vec<u64> {
    let client = http_client();
    let mut out = Vec::new();
    for u in urls {
        let text = crate::client::get_text(&client, &format!("{u}/metrics"))
            .await
            .unwrap_or_default();
        let n: f64 = text
            .lines()
            .filter(|l| l.starts_with("vllm:request_success_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        out.push(n as u64);
    }
    out
}

/// Requests each server got through the router, in fleet order.
fn server_shares(router: &mvllm_router::RouterHandle) -> Vec<u64> {
    router
        .fleet
        .servers()
        .iter()
        .map(|s| s.stats.requests.load(Ordering::Relaxed))
        .collect()
}

async fn start_router(
    urls: &[String],
    policy: PolicyKind,
    queue_size: usize,
    kv_events: &[(String, Option<String>)],
) -> Result<mvllm_router::RouterHandle, String> {
    let servers = urls
        .iter()
        .enumerate()
        .map(|(i, u)| ServerConfig {
            url: u.clone(),
            max_concurrent_requests: CAPACITY_SETTING,
            api_key: None,
            models: None,
            role: Default::default(),
            kv_events: kv_events.get(i).map(|(endpoint, replay)| {
                mvllm_router::config::KvEventsSource {
                    endpoint: endpoint.clone(),
                    replay: replay.clone(),
                    topic: "kv-events".into(),
                }
            }),
        })
        .collect();
    let settings = Settings {
        routing_policy: policy,
        queue_size,
        queue_timeout: Duration::from_secs(30),
        ..Settings::default()
    };
    router_in_process(servers, settings).await
}

/// A router on a free loopback port in this process, with a request timeout long enough for
/// a saturated simulated fleet.
pub(crate) async fn router_in_process(
    servers: Vec<ServerConfig>,
    settings: Settings,
) -> Result<mvllm_router::RouterHandle, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    mvllm_router::start(
        &mvllm_router::Config {
            servers,
            settings: Settings {
                request_timeout: Duration::from_secs(300),
                ..settings
            },
            ..Default::default()
        },
        listener,
    )
    .await
    .map_err(|e| e.to_string())
}

/// Simulator flags shared by every fleet: a small batch so that servers saturate at rates the
/// load generator, the router and the simulators can all sustain on two cores.
const SIM_ARGS: &[&str] = &["--max-num-seqs", "24"];
const CAPACITY_SETTING: u32 = 24;

/// One request of the workload: prompt and output lengths (sharegpt-like long tails, clipped).
#[derive(Debug, Clone, Copy)]
struct Shape {
    prompt: usize,
    output: usize,
    first_id: u32,
}

fn workload(seed: u64, n: usize) -> Vec<Shape> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            // Log-uniform lengths: many short, some long.
            let prompt = (2f64.powf(rng.random_range(6.0..10.5))) as usize; // 64 .. ~1450
            let output = (2f64.powf(rng.random_range(4.0..7.0))) as usize; // 16 .. 128
            Shape {
                prompt,
                output,
                first_id: (i as u32).wrapping_mul(2_654_435_761),
            }
        })
        .collect()
}

fn body(s: Shape) -> String {
    completion_body(s.prompt, s.output, s.first_id)
}

/// A streamed completion of `output` tokens whose prompt is `prompt` token ids counting up from
/// `first_id`: distinct first ids share no prefix.
pub(crate) fn completion_body(prompt: usize, output: usize, first_id: u32) -> String {
    let ids: Vec<u32> = (0..prompt as u32)
        .map(|j| 4 + (first_id.wrapping_add(j)) % 128_000)
        .collect();
    json!({"prompt": ids, "max_tokens": output, "ignore_eos": true, "stream": true}).to_string()
}

/// Sends `bodies` to `target` open loop: Poisson arrivals at `rate` per second (drawn from
/// `seed`), however slow the answers. Returns each one's timing, in order, and the seconds from
/// the first send to the last answer.
pub(crate) async fn open_loop(
    client: &HttpClient,
    target: &str,
    bodies: Vec<String>,
    rate: f64,
    seed: u64,
) -> (Vec<Result<StreamTiming, String>>, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let mut at = 0.0;
    let mut tasks = Vec::with_capacity(bodies.len());
    for b in bodies {
        at += -(1.0 - rng.random::<f64>()).ln() / rate;
        let when = start + Duration::from_secs_f64(at);
        let (client, target) = (client.clone(), target.to_string());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(when).await;
            stream_post(&client, &target, b).await
        }));
    }
    let timings = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| Err(e.to_string())))
        .collect();
    (timings, start.elapsed().as_secs_f64())
}

/// Requests per second one server completes when saturated with this workload.
async fn server_capacity(client: &HttpClient, url: &str, seconds: f64, seed: u64) -> f64 {
    let shapes = workload(seed, 100_000);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let target = format!("{url}/v1/completions");
    let worker = || async {
        while Instant::now() < end {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if stream_post(client, &target, body(shapes[i % shapes.len()]))
                .await
                .is_ok_and(|t| t.done)
                && Instant::now() <= end
            {
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    // Twice the batch size keeps the server saturated with a queue.
    join_all((0..2 * CAPACITY_SETTING).map(|_| worker())).await;
    done.load(Ordering::Relaxed) as f64 / seconds
}

struct RunResult {
    timings: Vec<Result<StreamTiming, String>>,
    shapes: Vec<Shape>,
    wall: f64,
    shares: Vec<u64>,
}

async fn run_policy(
    client: &HttpClient,
    urls: &[String],
    policy: PolicyKind,
    queue_size: usize,
    rate: f64,
    seconds: f64,
    seed: u64,
) -> Result<RunResult, String> {
    let router = start_router(urls, policy, queue_size, &[]).await?;
    let target = format!("{}/v1/completions", router.url());
    let n = (rate * seconds).round() as usize;
    let shapes = workload(seed, n);
    let bodies = shapes.iter().map(|s| body(*s)).collect();
    let (timings, wall) = open_loop(client, &target, bodies, rate, seed ^ 0xa5a5).await;
    let shares = server_shares(&router);
    router.shutdown(Duration::from_secs(5)).await;
    Ok(RunResult {
        timings,
        shapes,
        wall,
        shares,
    })
}

fn summarize(policy: &str, r: &RunResult) -> Value {
    let ok: Vec<(&StreamTiming, &Shape)> = r
        .timings
        .iter()
        .zip(&r.shapes)
        .filter_map(|(t, s)| {
            t.as_ref()
                .ok()
                .filter(|t| t.status == 200 && t.done)
                .map(|t| (t, s))
        })
        .collect();
    let ttft: Vec<f64> = ok.iter().map(|(t, _)| t.ttft).collect();
    let tpot: Vec<f64> = ok
        .iter()
        .map(|(t, s)| t.tpot(s.output))
        .filter(|v| v.is_finite())
        .collect();
    let tokens: usize = ok.iter().map(|(_, s)| s.output).sum();
    json!({
        "policy": policy,
        "requests": r.timings.len(), "completed": ok.len(), "errors": r.timings.len() - ok.len(),
        "ttft_p50": quantile(&ttft, 0.5), "ttft_p90": quantile(&ttft, 0.9), "ttft_p99": quantile(&ttft, 0.99),
        "tpot_mean": mean(&tpot), "requests_per_s": ok.len() as f64 / r.wall, "output_tokens_per_s": tokens as f64 / r.wall,
        "server_shares": r.shares,
    })
}

pub async fn run(opts: Options) -> Result<Value, String> {
    let client = http_client();
    let chat = opts.workload == Some(crate::load::Workload::ChatSessions);
    let cap_secs = if opts.quick { 2.0 } else { 10.0 };
    let run_secs = match (opts.seconds, opts.quick, chat) {
        (Some(s), _, _) => s,
        (None, true, _) => 2.0,
        (None, false, true) => CHAT_SECONDS,
        (None, false, false) => 20.0,
    };
    let think_time = opts.think_time.unwrap_or(CHAT_THINK_TIME);
    let all_fleets = [
        ("heterogeneous", "1.0,1.0,0.5,0.25"),
        ("homogeneous", "1.0"),
        ("mixed", "1.0,1.0,0.5,0.5"),
    ];
    // Chat runs on the fleets chat is served by: four alike, or two of them at half speed.
    let default_fleets = if chat {
        vec![all_fleets[2], all_fleets[1]]
    } else {
        all_fleets[..2].to_vec()
    };
    let fleets: Vec<(&str, &str)> = match (&opts.fleet, opts.quick) {
        (Some(f), _) => all_fleets.iter().copied().filter(|(n, _)| n == f).collect(),
        (None, true) => default_fleets[..1].to_vec(),
        (None, false) => default_fleets,
    };
    if fleets.is_empty() {
        return Err("--fleet must be heterogeneous, homogeneous or mixed".into());
    }
    let loads: Vec<f64> = match (&opts.loads, opts.quick) {
        (Some(l), _) => l.clone(),
        (None, true) => vec![0.8],
        (None, false) => vec![0.5, 0.8, 1.0],
    };
    let contenders = contenders(&opts)?;
    let mut out = Vec::new();
    let kv = opts.kv_cache_tokens.map(|k| k.to_string());
    // A sequence must fit the cache: a small cache comes with a shorter context.
    let max_len = opts
        .kv_cache_tokens
        .map(|k| (k / 2).min(32_768).to_string());
    for (name, speeds) in &fleets {
        let speeds = opts.speeds.as_deref().unwrap_or(speeds);
        let mut args = vec!["--speed", speeds];
        args.extend_from_slice(SIM_ARGS);
        if let (Some(kv), Some(len)) = (&kv, &max_len) {
            args.extend_from_slice(&["--kv-cache-tokens", kv, "--max-model-len", len]);
        }
        let exact = contenders
            .iter()
            .any(|(c, _)| matches!(c, Contender::Exact(_)));
        if exact {
            args.extend_from_slice(&[
                "--kv-events",
                "tcp://127.0.0.1:0",
                "--kv-events-replay",
                "tcp://127.0.0.1:0",
            ]);
        }
        let sim = SimProcess::start(4, &args).await?;
        let caps: Vec<f64> = match opts.workload {
            None => {
                join_all(
                    sim.urls
                        .iter()
                        .enumerate()
                        .map(|(i, u)| server_capacity(&client, u, cap_secs, 77 + i as u64)),
                )
                .await
            }
            Some(w) => {
                let mut caps = Vec::new();
                for (i, u) in sim.urls.iter().enumerate() {
                    caps.push(workload_capacity(u, w, cap_secs, 77 + i as u64).await?);
                }
                caps
            }
        };
        let capacity: f64 = caps.iter().sum();
        let mut runs = Vec::new();
        for &load in &loads {
            for (contender, queue_size) in &contenders {
                let label = if *queue_size > 0 {
                    format!("{}+queue{queue_size}", contender.name())
                } else {
                    contender.name()
                };
                let seed = 1000 + (load * 100.0) as u64;
                let mut row = match (opts.workload, contender) {
                    (None, Contender::Policy(policy)) => {
                        let r = run_policy(
                            &client,
                            &sim.urls,
                            *policy,
                            *queue_size,
                            capacity * load,
                            run_secs,
                            seed,
                        )
                        .await?;
                        summarize(&label, &r)
                    }
                    (Some(w), c) => {
                        match run_workload_contender(
                            &sim,
                            c,
                            w,
                            capacity * load,
                            run_secs,
                            Traffic {
                                think_time,
                                other_clients: opts.other_clients.unwrap_or(0.0),
                            },
                            seed,
                        )
                        .await?
                        {
                            Some(row) => row,
                            None => continue,
                        }
                    }
                    (None, _) => unreachable!("checked above"),
                };
                row["load"] = json!(load);
                eprintln!(
                    "  {name} {:.0}% {:<12} TTFT p99 {:.3}s",
                    load * 100.0,
                    label,
                    row["ttft_p99"].as_f64().unwrap_or(f64::NAN)
                );
                runs.push(row);
            }
        }
        out.push(json!({"fleet": name, "speeds": speeds, "server_capacity_rps": caps, "fleet_capacity_rps": capacity, "runs": runs}));
    }
    let workload = opts.workload.map_or("streamed completions", |w| w.name());
    Ok(json!({
        "sim_args": SIM_ARGS, "kv_cache_tokens": opts.kv_cache_tokens,
        "max_concurrent_requests": CAPACITY_SETTING, "workload": workload,
        "seconds": run_secs, "think_time_s": if chat { Some(think_time) } else { None },
        "other_clients_per_server_rps": opts.other_clients,
        "fleets": out,
    }))
}

/// The report as a terminal table.
pub fn render(report: &Value) -> String {
    let mut s = String::new();
    for f in report["fleets"].as_array().into_iter().flatten() {
        s += &format!(
            "\n{} fleet (speeds {}), capacity {:.1} req/s\n{:<6} {:<12} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}  shares\n",
            f["fleet"].as_str().unwrap_or(""),
            f["speeds"].as_str().unwrap_or(""),
            f["fleet_capacity_rps"].as_f64().unwrap_or(0.0),
            "load",
            "policy",
            "TTFT p50",
            "TTFT p90",
            "TTFT p99",
            "TPOT",
            "req/s",
            "errors"
        );
        for r in f["runs"].as_array().into_iter().flatten() {
            s += &format!(
                "{:<6} {:<12} {:>8.3}s {:>8.3}s {:>8.3}s {:>7.1}ms {:>8.1} {:>7}  {}\n",
                format!("{:.0}%", r["load"].as_f64().unwrap_or(0.0) * 100.0),
                r["policy"].as_str().unwrap_or(""),
                r["ttft_p50"].as_f64().unwrap_or(f64::NAN),
                r["ttft_p90"].as_f64().unwrap_or(f64::NAN),
                r["ttft_p99"].as_f64().unwrap_or(f64::NAN),
                r["tpot_mean"].as_f64().unwrap_or(f64::NAN) * 1e3,
                r["requests_per_s"].as_f64().unwrap_or(f64::NAN),
                r["errors"],
                r["server_shares"]
            );
            if let Some(hit) = r["prefix_cache_hit_rate"].as_f64() {
                s += &format!(
                    "{:<6} {:<12} prefix-cache hit rate {:.1}%\n",
                    "",
                    "",
                    hit * 100.0
                );
            }
        }
    }
    s
}
