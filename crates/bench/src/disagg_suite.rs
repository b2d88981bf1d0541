//! `mvllm bench disagg`: the same four simulated GPUs co-located (each server prefills and
//! decodes) and disaggregated (prefill servers and decode servers, KV moved between them), on a
//! prefill-heavy workload, through mvllm.
//!
//! Why: disaggregation is bought to keep long prefills from stalling other users' token
//! streams (inter-token latency), at the price of a second hop, a KV transfer and fewer servers
//! for each phase. Whether it pays depends on the mix, so the suite measures both sides on the
//! same arrivals: time to first token and inter-token latency, median and p99, for all requests
//! and for the two kinds apart.
//!
//! The workload, open loop (Poisson arrivals), no prefix shared between requests: half are
//! documents (3,000-8,000 prompt tokens, 32-96 output tokens), half are chats with long answers
//! (100-400 prompt tokens, 300-600 output tokens). Simulated servers in a child process run the
//! H100/Llama-3.1-8B profile; KV moves at 25 GB/s (128 KiB per token).

use std::time::Duration;

use mvllm_router::config::{ServerConfig, ServerRole, Settings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::client::{StreamTiming, http_client};
use crate::process::SimProcess;
use crate::stats::quantile;

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// Requests per second (the whole fleet).
    pub rate: f64,
    /// Seconds of arrivals per configuration.
    pub seconds: Option<f64>,
}

/// One way to use the four GPUs.
struct Layout {
    name: &'static str,
    /// Each server's role, in order.
    roles: [ServerRole; 4],
}

const LAYOUTS: [Layout; 3] = [
    Layout {
        name: "co-located 4",
        roles: [ServerRole::Both; 4],
    },
    Layout {
        name: "2 prefill + 2 decode",
        roles: [
            ServerRole::Prefill,
            ServerRole::Prefill,
            ServerRole::Decode,
            ServerRole::Decode,
        ],
    },
    Layout {
        name: "1 prefill + 3 decode",
        roles: [
            ServerRole::Prefill,
            ServerRole::Decode,
            ServerRole::Decode,
            ServerRole::Decode,
        ],
    },
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Document,
    Chat,
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    kind: Kind,
    prompt: usize,
    output: usize,
    first_id: u32,
}

fn workload(seed: u64, n: usize) -> Vec<Shape> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let (kind, prompt, output) = if rng.random_bool(0.5) {
                (
                    Kind::Document,
                    rng.random_range(3000..8000),
                    rng.random_range(32..96),
                )
            } else {
                (
                    Kind::Chat,
                    rng.random_range(100..400),
                    rng.random_range(300..600),
                )
            };
            Shape {
                kind,
                prompt,
                output,
                first_id: (i as u32).wrapping_mul(2_654_435_761),
            }
        })
        .collect()
}

/// The figures of one kind of request (or all).
fn figures(samples: &[(&StreamTiming, &Shape)]) -> Value {
    let ttft: Vec<f64> = samples.iter().map(|(t, _)| t.ttft).collect();
    let itl: Vec<f64> = samples
        .iter()
        .flat_map(|(t, _)| t.gaps.iter().copied())
        .collect();
    // A prefill step stalls every stream in its batch once: rare among all gaps, but many
    // streams meet one. The longest gap of each stream shows how many did.
    let stall: Vec<f64> = samples
        .iter()
        .filter_map(|(t, _)| t.gaps.iter().copied().reduce(f64::max))
        .collect();
    json!({
        "requests": samples.len(),
        "ttft_p50": quantile(&ttft, 0.5), "ttft_p99": quantile(&ttft, 0.99),
        "itl_p50": quantile(&itl, 0.5), "itl_p99": quantile(&itl, 0.99),
        "itl_p999": quantile(&itl, 0.999),
        "stall_p50": quantile(&stall, 0.5), "stall_p99": quantile(&stall, 0.99),
    })
}

async fn run_layout(layout: &Layout, opts: &Options, seconds: f64) -> Result<Value, String> {
    let roles: Vec<&str> = layout
        .roles
        .iter()
        .map(|r| match r {
            ServerRole::Prefill => "producer",
            ServerRole::Decode => "consumer",
            ServerRole::Both => "both",
        })
        .collect();
    let roles = roles.join(",");
    let sim = SimProcess::start(4, &["--kv-role", &roles]).await?;
    let servers = sim
        .urls
        .iter()
        .zip(layout.roles)
        .map(|(url, role)| ServerConfig {
            url: url.clone(),
            max_concurrent_requests: 64,
            api_key: None,
            models: None,
            role,
            kv_events: None,
        })
        .collect();
    let router = crate::routing_suite::router_in_process(servers, Settings::default()).await?;
    let client = http_client();
    let target = format!("{}/v1/completions", router.url());
    let n = (opts.rate * seconds).round() as usize;
    let shapes = workload(7, n);
    let bodies = shapes
        .iter()
        .map(|s| crate::routing_suite::completion_body(s.prompt, s.output, s.first_id))
        .collect();
    let (timings, _) =
        crate::routing_suite::open_loop(&client, &target, bodies, opts.rate, 11).await;
    let metrics = crate::client::get_text(&client, &format!("{}/metrics", router.url()))
        .await
        .unwrap_or_default();
    let two_legs: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mvllm_disaggregated_requests_total{path=\"two_legs\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    router.shutdown(Duration::from_secs(5)).await;
    drop(sim);
    let ok: Vec<(&StreamTiming, &Shape)> = timings
        .iter()
        .zip(&shapes)
        .filter_map(|(t, s)| {
            t.as_ref()
                .ok()
                .filter(|t| t.status == 200 && t.done)
                .map(|t| (t, s))
        })
        .collect();
    let of = |k: Kind| -> Vec<(&StreamTiming, &Shape)> {
        ok.iter().copied().filter(|(_, s)| s.kind == k).collect()
    };
    Ok(json!({
        "layout": layout.name,
        "requests": n, "errors": n - ok.len(), "two_legs": two_legs,
        "all": figures(&ok),
        "documents": figures(&of(Kind::Document)),
        "chats": figures(&of(Kind::Chat)),
    }))
}

pub async fn run(opts: Options) -> Result<Value, String> {
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        return Err("--rate must be a positive number of requests per second".into());
    }
    let seconds = opts.seconds.unwrap_or(if opts.quick { 10.0 } else { 60.0 });
    let mut runs = Vec::new();
    for layout in &LAYOUTS {
        runs.push(run_layout(layout, &opts, seconds).await?);
    }
    Ok(json!({
        "suite": "disagg", "rate": opts.rate, "seconds": seconds, "gpus": 4,
        "workload": "half documents (3000-8000 prompt, 32-96 output tokens), half chats (100-400 prompt, 300-600 output), no shared prefixes",
        "runs": runs,
    }))
}

/// The report as a Markdown table, in milliseconds.
pub fn render(report: &Value) -> String {
    let ms = |v: &Value| {
        v.as_f64()
            .filter(|x| x.is_finite())
            .map_or("-".into(), |x| format!("{:.0}", x * 1e3))
    };
    let mut out = format!(
        "Disaggregation, 4 simulated H100s, {} req/s for {} s ({})\n\n",
        report["rate"],
        report["seconds"],
        report["workload"].as_str().unwrap_or_default()
    );
    out.push_str("| layout | requests (two legs) | errors | TTFT p50 / p99 ms: all | documents | chats | ITL p50 / p99 / p99.9 ms | longest gap per chat stream p50 / p99 ms |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in report["runs"].as_array().into_iter().flatten() {
        let pair = |k: &str, a: &str, b: &str| format!("{} / {}", ms(&r[k][a]), ms(&r[k][b]));
        out.push_str(&format!(
            "| {} | {} ({}) | {} | {} | {} | {} | {} / {} | {} |\n",
            r["layout"].as_str().unwrap_or_default(),
            r["requests"],
            r["two_legs"],
            r["errors"],
            pair("all", "ttft_p50", "ttft_p99"),
            pair("documents", "ttft_p50", "ttft_p99"),
            pair("chats", "ttft_p50", "ttft_p99"),
            pair("all", "itl_p50", "itl_p99"),
            ms(&r["all"]["itl_p999"]),
            pair("chats", "stall_p50", "stall_p99"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_mixes_long_prompts_and_long_generations() {
        let w = workload(7, 1000);
        let docs = w.iter().filter(|s| s.kind == Kind::Document).count();
        assert!((400..600).contains(&docs), "{docs}");
        assert!(w.iter().all(|s| match s.kind {
            Kind::Document => (3000..8000).contains(&s.prompt) && s.output < 96,
            Kind::Chat => s.prompt < 400 && (300..600).contains(&s.output),
        }));
    }
}
