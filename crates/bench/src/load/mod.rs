//! `mvllm bench load`: a general load generator for any OpenAI-compatible endpoint (mvllm, another
//! router, or one vLLM server).
//!
//! Open loop (`--rate`: Poisson arrivals of sessions per second, however slow the answers) or
//! closed loop (`--concurrency`: that many users, each starting the next session when the last
//! ends). A session is one request, or for `chat-sessions` several turns with think time between
//! them, each turn sending back the conversation so far with the text the model wrote. It
//! reports time to first token, inter-token latency and end-to-end latency, throughput, errors
//! by kind, each server's share of requests and the fleet's prefix-cache hit rate over the run.

pub mod fleet;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{HttpClient, get_text, http_client, post_timed};
use crate::stats::{mean, quantile};
pub use workload::Workload;
use workload::{Generator, Session, chat_body};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// Sessions started per second, Poisson.
    Rate(f64),
    /// Users, each running sessions back to back.
    Concurrency(usize),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Base URL of the endpoint (`http://host:port`).
    pub url: String,
    pub workload: Workload,
    pub arrivals: Arrivals,
    /// Seconds during which sessions start; running ones finish their current turn.
    pub duration: f64,
    pub stream: bool,
    /// The model to ask for; the endpoint's first model when `None`.
    pub model: Option<String>,
    /// Mean think time between turns of a session, seconds (exponential).
    pub think_time: f64,
    pub seed: u64,
    /// Show a progress bar on a terminal.
    pub progress: bool,
    /// Other endpoints of the same fleet (router replicas): requests alternate between `url`
    /// and these, as a load balancer in front of several routers would send them.
    pub replicas: Vec<String>,
    /// The oracle of client-side affinity: each conversation (or, for `prefix-heavy`, each
    /// document) goes straight to one of these servers, chosen by a hash of it, instead of to
    /// `url`.
    pub pin_to: Vec<String>,
    /// The servers whose prefix-cache counters to report (when `url` is not mvllm, which lists
    /// them itself).
    pub servers: Vec<String>,
    /// Sent as `Authorization: Bearer` with every request.
    pub api_key: Option<String>,
    /// Send each turn as a completion whose prompt is the chat's token ids (the simulator's
    /// tokenizer and chat template): what a router matches against KV events without a
    /// tokenizer of its own.
    pub as_tokens: bool,
}

/// One request's outcome.
#[derive(Debug, Clone)]
struct Sample {
    /// Seconds since the start of the run when it was sent.
    sent: f64,
    ttft: f64,
    gaps: Vec<f64>,
    e2e: f64,
    tokens: usize,
    /// `None` when it succeeded.
    error: Option<String>,
}

struct Run {
    client: HttpClient,
    /// The endpoints requests go to: alternating, or by a session's key when `pinned`.
    endpoints: Vec<String>,
    pinned: bool,
    as_tokens: bool,
    next_endpoint: std::sync::atomic::AtomicUsize,
    model: String,
    stream: bool,
    think_time: f64,
    capture: bool,
    started: Instant,
    deadline: Instant,
    samples: Mutex<Vec<Sample>>,
    progress: indicatif::ProgressBar,
}

impl Run {
    /// Plays a session turn by turn; stops starting turns at the deadline or after an error.
    async fn session(&self, s: Session, rng: &mut StdRng) {
        let mut history: Vec<(String, String)> = Vec::new();
        for (i, (user, max_tokens)) in s.turns.iter().enumerate() {
            if i > 0 {
                if Instant::now() >= self.deadline {
                    return;
                }
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                tokio::time::sleep(Duration::from_secs_f64(-u.ln() * self.think_time)).await;
            }
            let body = if self.as_tokens {
                workload::token_body(
                    &self.model,
                    s.system.as_deref(),
                    &history,
                    user,
                    *max_tokens,
                    self.stream,
                )
            } else {
                chat_body(
                    &self.model,
                    s.system.as_deref(),
                    &history,
                    user,
                    *max_tokens,
                    self.stream,
                )
            };
            let sent = self.started.elapsed().as_secs_f64();
            let which = if self.pinned {
                (s.key % self.endpoints.len() as u64) as usize
            } else {
                self.next_endpoint
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    % self.endpoints.len()
            };
            let result = post_timed(&self.client, &self.endpoints[which], body, self.capture).await;
            let sample = match result {
                Ok(t) => {
                    let error = if t.status != 200 {
                        Some(format!("HTTP {}", t.status))
                    } else if t.error.is_some() {
                        Some("error event mid-stream".into())
                    } else if !t.done {
                        Some("stream ended without [DONE]".into())
                    } else {
                        None
                    };
                    if error.is_none() {
                        history.push((user.clone(), t.text.clone()));
                    }
                    Sample {
                        sent,
                        ttft: t.ttft,
                        gaps: t.gaps,
                        e2e: t.e2e,
                        tokens: t.chunks,
                        error,
                    }
                }
                Err(e) => Sample {
                    sent,
                    ttft: f64::NAN,
                    gaps: Vec::new(),
                    e2e: f64::NAN,
                    tokens: 0,
                    error: Some(if e.contains("Connect") {
                        "connection failed".into()
                    } else if e.contains("broke") {
                        "stream broke".into()
                    } else {
                        "request failed".into()
                    }),
                },
            };
            let failed = sample.error.is_some();
            {
                let mut samples = self.samples.lock();
                samples.push(sample);
                let errors = samples.iter().filter(|s| s.error.is_some()).count();
                self.progress
                    .set_message(format!("{} requests, {errors} errors", samples.len()));
            }
            if failed {
                return;
            }
        }
    }
}

/// The endpoint's first model, from `/v1/models`.
pub async fn first_model(client: &HttpClient, url: &str) -> Result<String, String> {
    let text = get_text(client, &format!("{url}/v1/models")).await?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{url}/v1/models: {e}"))?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{url}/v1/models lists no model"))
}

pub async fn run(opts: Options) -> Result<Value, String> {
    let client = match &opts.api_key {
        Some(key) => http_client().with_api_key(key)?,
        None => http_client(),
    };
    let url = opts.url.trim_end_matches('/').to_string();
    let model = match &opts.model {
        Some(m) => m.clone(),
        None => first_model(&client, &url).await?,
    };
    let read_counters = || async {
        if opts.servers.is_empty() {
            fleet::FleetCounters::read(&client, &url).await
        } else {
            fleet::FleetCounters::read_servers(&client, &opts.servers).await
        }
    };
    let before = read_counters().await;
    let progress = if opts.progress {
        let bar = indicatif::ProgressBar::new((opts.duration * 1000.0) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:40}] {elapsed}/{duration} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = Instant::now();
    let route = if opts.as_tokens {
        "/v1/completions"
    } else {
        "/v1/chat/completions"
    };
    let run = Arc::new(Run {
        client: client.clone(),
        endpoints: if opts.pin_to.is_empty() {
            std::iter::once(&url)
                .chain(&opts.replicas)
                .map(|u| format!("{}{route}", u.trim_end_matches('/')))
                .collect()
        } else {
            opts.pin_to
                .iter()
                .map(|u| format!("{}{route}", u.trim_end_matches('/')))
                .collect()
        },
        as_tokens: opts.as_tokens,
        pinned: !opts.pin_to.is_empty(),
        next_endpoint: std::sync::atomic::AtomicUsize::new(0),
        model: model.clone(),
        stream: opts.stream,
        think_time: opts.think_time,
        capture: opts.workload == Workload::ChatSessions,
        started,
        deadline: started + Duration::from_secs_f64(opts.duration),
        samples: Mutex::new(Vec::new()),
        progress: progress.clone(),
    });
    let ticker = {
        let progress = progress.clone();
        let deadline = run.deadline;
        tokio::spawn(async move {
            while Instant::now() < deadline {
                progress.set_position(started.elapsed().as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            progress.set_position(progress.length().unwrap_or(0));
        })
    };
    let mut generator = Generator::new(opts.workload, opts.seed);
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x5eed);
    let mut tasks = Vec::new();
    match opts.arrivals {
        Arrivals::Rate(rate) => {
            let mut next = started;
            loop {
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                next += Duration::from_secs_f64(-u.ln() / rate.max(1e-9));
                if next >= run.deadline {
                    break;
                }
                tokio::time::sleep_until(next).await;
                let (run, session) = (run.clone(), generator.next_session());
                let mut task_rng = StdRng::seed_from_u64(rng.random());
                tasks.push(tokio::spawn(async move {
                    run.session(session, &mut task_rng).await;
                }));
            }
        }
        Arrivals::Concurrency(users) => {
            let generator = Arc::new(Mutex::new(generator));
            for _ in 0..users {
                let (run, generator) = (run.clone(), generator.clone());
                let mut task_rng = StdRng::seed_from_u64(rng.random());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < run.deadline {
                        let session = generator.lock().next_session();
                        run.session(session, &mut task_rng).await;
                    }
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = ticker.await;
    progress.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    let after = read_counters().await;
    let samples = std::mem::take(&mut *run.samples.lock());
    Ok(report(&opts, &model, &samples, wall, &after.since(&before)))
}

fn percentiles(v: &[f64]) -> Value {
    json!({
        "p50": quantile(v, 0.5), "p90": quantile(v, 0.9), "p99": quantile(v, 0.99),
        "mean": mean(v), "n": v.len(),
    })
}

fn report(
    opts: &Options,
    model: &str,
    samples: &[Sample],
    wall: f64,
    (shares, (hits, queries)): &(BTreeMap<String, f64>, (f64, f64)),
) -> Value {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples {
        if let Some(e) = &s.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    let ttft: Vec<f64> = ok.iter().map(|s| s.ttft).collect();
    let itl: Vec<f64> = ok.iter().flat_map(|s| s.gaps.iter().copied()).collect();
    let e2e: Vec<f64> = ok.iter().map(|s| s.e2e).collect();
    let tokens: usize = ok.iter().map(|s| s.tokens).sum();
    let total: f64 = shares.values().sum();
    // Per second of the run: requests sent and the median time to first token, for plots.
    let seconds = wall.ceil() as usize;
    let mut per_second: Vec<Vec<f64>> = vec![Vec::new(); seconds.max(1)];
    for s in &ok {
        if let Some(bucket) = per_second.get_mut(s.sent as usize) {
            bucket.push(s.ttft);
        }
    }
    json!({
        "url": opts.url, "model": model, "workload": opts.workload.name(),
        "arrivals": match opts.arrivals {
            Arrivals::Rate(r) => json!({"rate": r}),
            Arrivals::Concurrency(c) => json!({"concurrency": c}),
        },
        "stream": opts.stream, "duration_s": wall,
        "requests": samples.len(), "ok": ok.len(), "errors": errors,
        "requests_per_second": ok.len() as f64 / wall,
        "output_tokens_per_second": tokens as f64 / wall,
        "ttft_s": percentiles(&ttft), "itl_s": percentiles(&itl), "e2e_s": percentiles(&e2e),
        "server_shares": shares.iter().map(|(s, n)| (s.clone(), json!({"requests": n, "share": n / total.max(1.0)}))).collect::<serde_json::Map<_, _>>(),
        "prefix_cache": {"hits": hits, "queries": queries, "hit_rate": if *queries > 0.0 { hits / queries } else { f64::NAN }},
        "timeline": per_second.iter().enumerate().map(|(i, v)| json!({"second": i, "requests": v.len(), "ttft_p50_s": quantile(v, 0.5)})).collect::<Vec<_>>(),
        "ttft_samples_s": ttft,
        "e2e_samples_s": e2e,
    })
}

/// The report as a terminal table.
pub fn render(r: &Value) -> String {
    let ms = |v: &Value, k: &str| {
        v[k].as_f64()
            .map_or("-".into(), |x| format!("{:.1}", x * 1e3))
    };
    let line = |name: &str, v: &Value| {
        format!(
            "{name:<22} {:>9} {:>9} {:>9} {:>9}\n",
            ms(v, "p50"),
            ms(v, "p90"),
            ms(v, "p99"),
            ms(v, "mean")
        )
    };
    let mut s = format!(
        "{} against {} ({}, {}), {:.1} s\n{} requests: {} ok; {:.2} req/s, {:.0} output tokens/s\n",
        r["workload"].as_str().unwrap_or(""),
        r["url"].as_str().unwrap_or(""),
        r["arrivals"],
        if r["stream"] == true {
            "streaming"
        } else {
            "not streaming"
        },
        r["duration_s"].as_f64().unwrap_or(0.0),
        r["requests"],
        r["ok"],
        r["requests_per_second"].as_f64().unwrap_or(0.0),
        r["output_tokens_per_second"].as_f64().unwrap_or(0.0),
    );
    s += &format!(
        "{:<22} {:>9} {:>9} {:>9} {:>9}\n",
        "ms", "p50", "p90", "p99", "mean"
    );
    s += &line("time to first token", &r["ttft_s"]);
    s += &line("inter-token latency", &r["itl_s"]);
    s += &line("end to end", &r["e2e_s"]);
    if let Some(e) = r["errors"].as_object().filter(|e| !e.is_empty()) {
        s += "errors:";
        for (k, n) in e {
            s += &format!(" {k}: {n};");
        }
        s += "\n";
    }
    if let Some(shares) = r["server_shares"].as_object().filter(|m| !m.is_empty()) {
        s += "server shares:";
        for (url, v) in shares {
            s += &format!(" {url} {:.0}%;", v["share"].as_f64().unwrap_or(0.0) * 100.0);
        }
        s += "\n";
    }
    let pc = &r["prefix_cache"];
    if pc["queries"].as_f64().unwrap_or(0.0) > 0.0 {
        s += &format!(
            "prefix cache hit rate: {:.1}% ({:.0} of {:.0} prompt tokens)\n",
            pc["hit_rate"].as_f64().unwrap_or(f64::NAN) * 100.0,
            pc["hits"].as_f64().unwrap_or(0.0),
            pc["queries"].as_f64().unwrap_or(0.0)
        );
    }
    s
}
