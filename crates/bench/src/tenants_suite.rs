//! `mvllm bench tenants`: what tenants, classes and budgets buy on a full fleet.
//!
//! A heterogeneous fleet of simulated servers (speeds 1, 1, 0.5, 0.5; `max_concurrent_requests`
//! [`CAPACITY_SETTING`] each) behind an in-process router with its wait queue on. First the
//! fleet's capacity in requests per second is measured (closed loop, saturated). Then, each cell
//! open loop (Poisson arrivals) of streamed chats with `include_usage`:
//!
//! - **noisy neighbour**: tenant B at 20% of capacity alone, then beside tenant A at 3x capacity,
//!   with tenants on (A and B are separate tenants of equal weight) and off (one tenant: the
//!   queue is first come first served). B's p99 time to first token against B alone; what A
//!   gets.
//! - **priority**: a critical tenant at 30% alone, then beside a batch tenant at 2x capacity.
//! - **budget**: a tenant with a token budget sending twice it: tokens served per minute against
//!   the budget.
//!
//! Every request must be served (200) or refused with 429 or 503 and `Retry-After`; the report
//! counts each outcome and any other (which fails the suite).

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Full};
use mvllm_router::config::{ApiKey, AuthSettings, Priority, ServerConfig, Settings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{HttpClient, http_client};
use crate::process::SimProcess;
use crate::stats::quantile;

/// Each server's `max_concurrent_requests`.
pub const CAPACITY_SETTING: u32 = 8;
const ADMIN: &str = "bench-admin-token-0123456789";
const ANSWER_TOKENS: u64 = 32;

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub quick: bool,
    /// Seconds of arrivals per noisy-neighbour and priority cell (default 20; 3 with `quick`).
    pub seconds: Option<f64>,
    /// Seconds of the budget cell (default 300; 10 with `quick`).
    pub budget_seconds: Option<f64>,
    /// The budget cell's tokens per minute (default 60,000).
    pub tokens_per_minute: Option<u64>,
    /// The noisy tenant's and the batch tenant's load, in multiples of capacity (default 3, 2).
    pub flood: Option<(f64, f64)>,
}

/// The tenants of the suite, one key each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    A,
    B,
    Batch,
    Critical,
    Budget,
}

impl Who {
    fn key(self) -> &'static str {
        match self {
            Who::A => "sk-bench-tenant-a-0000",
            Who::B => "sk-bench-tenant-b-0000",
            Who::Batch => "sk-bench-batch-000000",
            Who::Critical => "sk-bench-critical-000",
            Who::Budget => "sk-bench-budget-00000",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Who::A => "a",
            Who::B => "b",
            Who::Batch => "batch",
            Who::Critical => "critical",
            Who::Budget => "budget",
        }
    }
}

/// The router's keys: with `tenants`, each its own tenant (classes and the budget set);
/// without, all one tenant of one class (first come first served).
fn auth(tenants: bool, tokens_per_minute: u64) -> AuthSettings {
    let keys = ALL
        .into_iter()
        .map(|w| {
            let mut k = ApiKey::new(w.name(), w.key());
            if tenants {
                k.priority = match w {
                    Who::Batch => Some(Priority::Batch),
                    Who::Critical => Some(Priority::Critical),
                    _ => None,
                };
                k.tokens_per_minute = (w == Who::Budget).then_some(tokens_per_minute);
            } else {
                k.tenant = Some("everyone".into());
            }
            k
        })
        .collect();
    AuthSettings {
        keys,
        ..AuthSettings::default()
    }
}

async fn start_router(
    urls: &[String],
    auth: AuthSettings,
    queue_timeout: Duration,
) -> Result<mvllm_router::RouterHandle, String> {
    let settings = Settings {
        queue_size: 100_000,
        queue_timeout,
        admin_token: Some(ADMIN.into()),
        auth,
        ..Settings::default()
    };
    let servers = urls
        .iter()
        .map(|u| ServerConfig {
            url: u.clone(),
            max_concurrent_requests: CAPACITY_SETTING,
            api_key: None,
            models: None,
            role: Default::default(),
            kv_events: None,
        })
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    mvllm_router::start(
        &mvllm_router::Config {
            servers,
            settings,
            ..Default::default()
        },
        listener,
    )
    .await
    .map_err(|e| e.to_string())
}

/// One request's outcome.
#[derive(Debug, Clone, Default)]
struct Sample {
    status: u16,
    ttft: f64,
    retry_after: bool,
    /// `usage.total_tokens` of a served answer.
    tokens: u64,
    /// Seconds from the cell's start to the answer's end.
    ended: f64,
}

fn body(seed: u64) -> String {
    let words: String = (0..80)
        .map(|i| format!("w{} ", seed.wrapping_mul(31).wrapping_add(i) % 5000))
        .collect();
    json!({
        "model": mvllm_sim::config::DEFAULT_MODEL,
        "messages": [{"role": "user", "content": words}],
        "max_tokens": ANSWER_TOKENS, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string()
}

/// Sends one streamed chat and reads it to its end.
async fn one(client: &HttpClient, url: &str, body: String) -> Sample {
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let t0 = Instant::now();
    let Ok(resp) = client.request(req).await else {
        return Sample::default();
    };
    let mut s = Sample {
        status: resp.status().as_u16(),
        retry_after: resp.headers().contains_key("retry-after"),
        ..Sample::default()
    };
    let mut body = resp.into_body();
    let mut tail: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            s.status = 0;
            break;
        };
        if let Some(data) = frame.data_ref() {
            if s.ttft == 0.0 {
                s.ttft = t0.elapsed().as_secs_f64();
            }
            tail.extend_from_slice(data);
            if tail.len() > 4096 {
                tail.drain(..tail.len() - 2048);
            }
        }
    }
    let text = String::from_utf8_lossy(&tail);
    if let Some(at) = text.rfind("\"total_tokens\":") {
        s.tokens = text[at + 15..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0);
    }
    s
}

/// `who` sends at `rate` per second for `seconds`, Poisson arrivals, open loop; to smg with its
/// class in `x-smg-priority`.
async fn open_loop(
    url: &str,
    who: Who,
    rate: f64,
    seconds: f64,
    seed: u64,
    smg: bool,
) -> Vec<Sample> {
    let mut client = http_client().with_api_key(who.key()).expect("an ASCII key");
    if smg
        && let Some(class) =
            crate::tenants_peer::priority_header(who == Who::Critical, who == Who::Batch)
    {
        client = client
            .with_header("x-smg-priority", class)
            .expect("an ASCII class");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let mut at = 0.0;
    let mut tasks = Vec::new();
    let mut n = 0u64;
    loop {
        at += -(1.0 - rng.random::<f64>()).ln() / rate;
        if at > seconds {
            break;
        }
        n += 1;
        let (client, url, b) = (client.clone(), url.to_string(), body(seed * 1_000_003 + n));
        let when = start + Duration::from_secs_f64(at);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(when).await;
            let mut s = one(&client, &url, b).await;
            s.ended = start.elapsed().as_secs_f64();
            s
        }));
    }
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_default())
        .collect()
}

/// What a tenant's requests came to in one cell.
fn summary(samples: &[Sample], seconds: f64) -> Value {
    let served: Vec<&Sample> = samples.iter().filter(|s| s.status == 200).collect();
    let ttft: Vec<f64> = served.iter().map(|s| s.ttft).collect();
    let refused = |code| samples.iter().filter(|s| s.status == code).count();
    let without_retry_after = samples
        .iter()
        .filter(|s| matches!(s.status, 429 | 503) && !s.retry_after)
        .count();
    json!({
        "sent": samples.len(),
        "served": served.len(),
        "refused_429": refused(429),
        "refused_503": refused(503),
        "other": samples.len() - served.len() - refused(429) - refused(503),
        "without_retry_after": without_retry_after,
        "served_per_second": served.len() as f64 / seconds,
        // What the fleet delivered while the cell's arrivals lasted (the queue drains after).
        "completed_per_second": served.iter().filter(|s| s.ended <= seconds).count() as f64 / seconds,
        "tokens": served.iter().map(|s| s.tokens).sum::<u64>(),
        "ttft_p50": quantile(&ttft, 0.5),
        "ttft_p99": quantile(&ttft, 0.99),
    })
}

/// Requests per second the fleet completes when saturated through the router.
async fn capacity(url: &str, seconds: f64) -> f64 {
    let client = http_client()
        .with_api_key(Who::A.key())
        .expect("an ASCII key");
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let users = 2 * 4 * CAPACITY_SETTING as usize;
    let done: Vec<usize> = join_all((0..users).map(|u| {
        let (client, url) = (client.clone(), url.to_string());
        async move {
            let mut n = 0;
            while Instant::now() < end {
                if one(&client, &url, body(u as u64 * 7919 + n as u64))
                    .await
                    .status
                    == 200
                {
                    n += 1;
                }
            }
            n
        }
    }))
    .await;
    done.iter().sum::<usize>() as f64 / seconds
}

/// The router a cell runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    /// mvllm, with each key its own tenant (or all one tenant of one class).
    Mvllm { tenants: bool },
    /// SGLang's gateway with its priority scheduler.
    Smg,
}

const ALL: [Who; 5] = [Who::A, Who::B, Who::Batch, Who::Critical, Who::Budget];

/// Runs `loads` (tenant, share of capacity) together through a fresh router; `Null` when that
/// router is not installed.
async fn cell(
    sim: &SimProcess,
    front: Front,
    loads: &[(Who, f64)],
    cap: f64,
    seconds: f64,
    tokens_per_minute: u64,
) -> Result<Value, String> {
    let timeout = Duration::from_secs_f64(seconds.max(3.0));
    let (mut mvllm, mut smg) = (None, None);
    let base = match front {
        Front::Mvllm { tenants } => {
            let r = start_router(&sim.urls, auth(tenants, tokens_per_minute), timeout).await?;
            let url = r.url();
            mvllm = Some(r);
            url
        }
        Front::Smg => {
            let keys: Vec<(&str, &str)> = ALL.iter().map(|w| (w.name(), w.key())).collect();
            let slots = 4 * CAPACITY_SETTING;
            let Some(p) =
                crate::tenants_peer::start(&sim.urls, &keys, slots, timeout.as_secs()).await?
            else {
                return Ok(Value::Null);
            };
            let url = p.process.url.clone();
            smg = Some(p);
            url
        }
    };
    let url = format!("{base}/v1/chat/completions");
    let runs = join_all(loads.iter().enumerate().map(|(i, &(who, share))| {
        let url = url.clone();
        async move {
            let seed = 11 + i as u64;
            let samples = open_loop(&url, who, share * cap, seconds, seed, front == Front::Smg);
            (who, samples.await)
        }
    }))
    .await;
    let mut out = serde_json::Map::new();
    for (who, samples) in runs {
        out.insert(who.name().into(), summary(&samples, seconds));
    }
    if let Some(r) = mvllm {
        r.shutdown(Duration::from_secs(1)).await;
    }
    drop(smg);
    Ok(Value::Object(out))
}

pub async fn run(opts: Options) -> Result<Value, String> {
    let seconds = opts.seconds.unwrap_or(if opts.quick { 3.0 } else { 20.0 });
    let budget_seconds = opts
        .budget_seconds
        .unwrap_or(if opts.quick { 10.0 } else { 300.0 });
    let tpm = opts.tokens_per_minute.unwrap_or(60_000);
    let sim = SimProcess::start(4, &["--speed", "1,1,0.5,0.5"]).await?;
    let probe = start_router(&sim.urls, auth(false, tpm), Duration::from_secs(30)).await?;
    let cap = capacity(
        &format!("{}/v1/chat/completions", probe.url()),
        if opts.quick { 2.0 } else { 8.0 },
    )
    .await;
    probe.shutdown(Duration::from_secs(1)).await;
    if cap <= 0.0 {
        return Err("the fleet served nothing while its capacity was measured".into());
    }
    let (on, off) = (
        Front::Mvllm { tenants: true },
        Front::Mvllm { tenants: false },
    );
    let b_alone = cell(&sim, on, &[(Who::B, 0.2)], cap, seconds, tpm).await?;
    let (noisy_load, batch_load) = opts.flood.unwrap_or((3.0, 2.0));
    let noisy = [(Who::A, noisy_load), (Who::B, 0.2)];
    let noisy_on = cell(&sim, on, &noisy, cap, seconds, tpm).await?;
    let noisy_off = cell(&sim, off, &noisy, cap, seconds, tpm).await?;
    let critical_alone = cell(&sim, on, &[(Who::Critical, 0.3)], cap, seconds, tpm).await?;
    let mixed = [(Who::Batch, batch_load), (Who::Critical, 0.3)];
    let priority_on = cell(&sim, on, &mixed, cap, seconds, tpm).await?;
    let priority_off = cell(&sim, off, &mixed, cap, seconds, tpm).await?;
    let smg = smg_cells(&sim, cap, seconds, tpm, &noisy, &mixed).await?;
    // The budget tenant sends twice its budget: requests of ~80 prompt words and 32 tokens.
    let per_request = 80.0 * 1.3 + ANSWER_TOKENS as f64;
    let rate = 2.0 * tpm as f64 / 60.0 / per_request;
    let budget = cell(
        &sim,
        on,
        &[(Who::Budget, rate / cap)],
        cap,
        budget_seconds,
        tpm,
    )
    .await?;
    let served_per_minute =
        budget["budget"]["tokens"].as_u64().unwrap_or(0) as f64 / (budget_seconds / 60.0);
    let ratio =
        |a: &Value, b: &Value| a.as_f64().unwrap_or(f64::NAN) / b.as_f64().unwrap_or(f64::NAN);
    let cells = [
        &b_alone,
        &noisy_on,
        &noisy_off,
        &critical_alone,
        &priority_on,
        &priority_off,
        &budget,
    ];
    let other: u64 = cells
        .iter()
        .flat_map(|c| c.as_object().into_iter().flat_map(|m| m.values()))
        .map(|t| t["other"].as_u64().unwrap_or(0) + t["without_retry_after"].as_u64().unwrap_or(0))
        .sum();
    Ok(json!({
        "capacity_rps": cap,
        "noisy_load": noisy_load,
        "batch_load": batch_load,
        "seconds": seconds,
        "noisy_neighbour": {
            "b_alone": b_alone["b"],
            "tenants_on": noisy_on,
            "tenants_off": noisy_off,
            "b_p99_vs_alone_on": ratio(&noisy_on["b"]["ttft_p99"], &b_alone["b"]["ttft_p99"]),
            "b_p99_vs_alone_off": ratio(&noisy_off["b"]["ttft_p99"], &b_alone["b"]["ttft_p99"]),
        },
        "priority": {
            "critical_alone": critical_alone["critical"],
            "classes_on": priority_on,
            "classes_off": priority_off,
            "critical_p99_vs_alone_on": ratio(&priority_on["critical"]["ttft_p99"], &critical_alone["critical"]["ttft_p99"]),
            "critical_p99_vs_alone_off": ratio(&priority_off["critical"]["ttft_p99"], &critical_alone["critical"]["ttft_p99"]),
        },
        "budget": {
            "tokens_per_minute": tpm,
            "seconds": budget_seconds,
            "sent": budget["budget"],
            "served_tokens_per_minute": served_per_minute,
            "vs_budget": served_per_minute / tpm as f64,
        },
        "unaccounted": other,
        "smg": smg,
    }))
}

/// The noisy-neighbour and priority cells through SGLang's gateway, each beside its alone cell
/// through it; `Null` when smg is not installed.
async fn smg_cells(
    sim: &SimProcess,
    cap: f64,
    seconds: f64,
    tpm: u64,
    noisy: &[(Who, f64)],
    mixed: &[(Who, f64)],
) -> Result<Value, String> {
    let b_alone = cell(sim, Front::Smg, &[(Who::B, 0.2)], cap, seconds, tpm).await?;
    if b_alone.is_null() {
        return Ok(Value::Null);
    }
    let noisy = cell(sim, Front::Smg, noisy, cap, seconds, tpm).await?;
    let critical_alone = cell(sim, Front::Smg, &[(Who::Critical, 0.3)], cap, seconds, tpm).await?;
    let priority = cell(sim, Front::Smg, mixed, cap, seconds, tpm).await?;
    let ratio =
        |a: &Value, b: &Value| a.as_f64().unwrap_or(f64::NAN) / b.as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "b_alone": b_alone["b"],
        "noisy": noisy,
        "b_p99_vs_alone": ratio(&noisy["b"]["ttft_p99"], &b_alone["b"]["ttft_p99"]),
        "critical_alone": critical_alone["critical"],
        "priority": priority,
        "critical_p99_vs_alone": ratio(&priority["critical"]["ttft_p99"], &critical_alone["critical"]["ttft_p99"]),
    }))
}

pub fn render(r: &Value) -> String {
    let ms = |v: &Value| format!("{:.0} ms", v.as_f64().unwrap_or(f64::NAN) * 1e3);
    let rate = |t: &Value| t["completed_per_second"].as_f64().unwrap_or(0.0);
    let n = &r["noisy_neighbour"];
    let p = &r["priority"];
    let b = &r["budget"];
    let mut s = format!(
        "mvllm bench tenants: fleet of 4 (speeds 1, 1, 0.5, 0.5), capacity {:.1} req/s, {} s per cell\n\n",
        r["capacity_rps"].as_f64().unwrap_or(0.0),
        r["seconds"]
    );
    s += &format!(
        "noisy neighbour: A at {}x capacity, B at 20%\n",
        r["noisy_load"]
    );
    s += &format!(
        "  B alone:        p99 TTFT {}\n",
        ms(&n["b_alone"]["ttft_p99"])
    );
    for (label, cell, ratio) in [
        ("tenants on", &n["tenants_on"], &n["b_p99_vs_alone_on"]),
        ("one tenant", &n["tenants_off"], &n["b_p99_vs_alone_off"]),
    ] {
        s += &format!(
            "  {label:<14}  B p99 TTFT {} ({:.2}x alone); A completed {:.1} req/s (both {:.1}), refused {} (429) {} (503)\n",
            ms(&cell["b"]["ttft_p99"]),
            ratio.as_f64().unwrap_or(f64::NAN),
            rate(&cell["a"]),
            rate(&cell["a"]) + rate(&cell["b"]),
            cell["a"]["refused_429"],
            cell["a"]["refused_503"],
        );
    }
    s += &format!(
        "priority: batch at {}x capacity, critical at 30%\n",
        r["batch_load"]
    );
    s += &format!(
        "  critical alone: p99 TTFT {}\n",
        ms(&p["critical_alone"]["ttft_p99"])
    );
    for (label, cell, ratio) in [
        (
            "classes on",
            &p["classes_on"],
            &p["critical_p99_vs_alone_on"],
        ),
        (
            "one class",
            &p["classes_off"],
            &p["critical_p99_vs_alone_off"],
        ),
    ] {
        s += &format!(
            "  {label:<14}  critical p99 TTFT {} ({:.2}x alone); batch completed {:.1} req/s (both {:.1}), shed {} (429) timed out {} (503)\n",
            ms(&cell["critical"]["ttft_p99"]),
            ratio.as_f64().unwrap_or(f64::NAN),
            rate(&cell["batch"]),
            rate(&cell["batch"]) + rate(&cell["critical"]),
            cell["batch"]["refused_429"],
            cell["batch"]["refused_503"],
        );
    }
    s += &format!(
        "budget: {} tokens/min, sending twice it for {} s: served {:.0} tokens/min ({:.3}x the budget), refused {} (429)\n",
        b["tokens_per_minute"],
        b["seconds"],
        b["served_tokens_per_minute"].as_f64().unwrap_or(0.0),
        b["vs_budget"].as_f64().unwrap_or(f64::NAN),
        b["sent"]["refused_429"],
    );
    s += &format!(
        "requests neither served nor refused with Retry-After: {}\n",
        r["unaccounted"]
    );
    s += &render_smg(&r["smg"]);
    s
}

fn render_smg(g: &Value) -> String {
    if g.is_null() {
        return "smg (SGLang's gateway): not installed, skipped\n".into();
    }
    let ms = |v: &Value| format!("{:.0} ms", v.as_f64().unwrap_or(f64::NAN) * 1e3);
    let other = |c: &Value, who: &str| {
        let t = &c[who];
        format!(
            "completed {:.1} req/s, refused {} (429) {} (503), other {}",
            t["completed_per_second"].as_f64().unwrap_or(0.0),
            t["refused_429"],
            t["refused_503"],
            t["other"]
        )
    };
    format!(
        "smg 1.13.0 (priority scheduler, same keys as tenants):\n  B alone p99 TTFT {}; beside A: {} ({:.2}x alone); A {}\n  critical alone p99 TTFT {}; beside batch: {} ({:.2}x alone); batch {}\n",
        ms(&g["b_alone"]["ttft_p99"]),
        ms(&g["noisy"]["b"]["ttft_p99"]),
        g["b_p99_vs_alone"].as_f64().unwrap_or(f64::NAN),
        other(&g["noisy"], "a"),
        ms(&g["critical_alone"]["ttft_p99"]),
        ms(&g["priority"]["critical"]["ttft_p99"]),
        g["critical_p99_vs_alone"].as_f64().unwrap_or(f64::NAN),
        other(&g["priority"], "batch"),
    )
}
