//! `mvllm bench sim`: does the simulator behave like the GPU server it models?
//!
//! Four checks, each comparing what a client measures over HTTP with what the cost model
//! (`mvllm_sim::engine::Profile`) predicts, against a simulator in a child process:
//! 1. a lone request: time to first token and time per output token;
//! 2. inter-token latency as the batch grows (1 .. 256 concurrent streams);
//! 3. a repeated 8k-token prompt: time to first token cold and from the prefix cache;
//! 4. scale: 4 servers x 256 concurrent streams of 256 tokens in one process, step timing
//!    measured by the simulator itself against the model.

use futures_util::future::join_all;
use mvllm_sim::engine::Profile;
use serde_json::{Value, json};

use crate::client::{HttpClient, StreamTiming, get_text, http_client, stream_post};
use crate::process::SimProcess;
use crate::stats::{mean, median};

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Seconds-long smoke instead of the full run.
    pub quick: bool,
}

/// A completion request with an exact prompt of `len` token ids, writing exactly `out` tokens.
fn body(first_id: u32, len: usize, out: usize) -> String {
    let ids: Vec<u32> = (0..len as u32)
        .map(|j| 4 + (first_id + j) % 128_000)
        .collect();
    json!({"prompt": ids, "max_tokens": out, "ignore_eos": true, "stream": true}).to_string()
}

async fn run_one(client: &HttpClient, url: &str, body: String) -> Result<StreamTiming, String> {
    let t = stream_post(client, url, body).await?;
    if t.status != 200 || !t.done {
        return Err(format!(
            "request failed: status {} done {}",
            t.status, t.done
        ));
    }
    Ok(t)
}

async fn run_many(
    client: &HttpClient,
    url: &str,
    bodies: Vec<String>,
) -> Result<Vec<StreamTiming>, String> {
    join_all(bodies.into_iter().map(|b| run_one(client, url, b)))
        .await
        .into_iter()
        .collect()
}

fn row(name: &str, measured: f64, model: f64) -> Value {
    json!({"name": name, "measured": measured, "model": model, "ratio": measured / model})
}

pub async fn run(opts: Options) -> Result<Value, String> {
    let p = Profile::h100_llama8b();
    let client = http_client();
    let mut rows = Vec::new();

    // 1 and 2 and 3 share one server.
    let sim = SimProcess::start(1, &[]).await?;
    let url = format!("{}/v1/completions", sim.urls[0]);

    let (prompt, out, reps) = if opts.quick {
        (512, 16, 2)
    } else {
        (512, 64, 10)
    };
    let mut ttft = Vec::new();
    let mut tpot = Vec::new();
    for i in 0..reps {
        let t = run_one(&client, &url, body(1_000_000 + i * 7919, prompt, out)).await?;
        ttft.push(t.ttft);
        tpot.push(t.tpot(out));
    }
    let model_tpot = mean(
        &(1..out)
            .map(|k| p.step_seconds([(prompt + k - 1, 1)], 1.0))
            .collect::<Vec<_>>(),
    );
    rows.push(row(
        "concurrency 1: time to first token (s), 512-token prompt",
        median(&ttft),
        p.lone_ttft(prompt, 0, 1.0),
    ));
    rows.push(row(
        "concurrency 1: time per output token (s)",
        median(&tpot),
        model_tpot,
    ));

    let batches: &[usize] = if opts.quick {
        &[1, 16]
    } else {
        &[1, 16, 64, 256]
    };
    let (prompt, out) = if opts.quick { (256, 32) } else { (256, 128) };
    for &c in batches {
        let bodies = (0..c)
            .map(|i| body(2_000_000 + (c * 1000 + i) as u32 * 613, prompt, out))
            .collect();
        let timings = run_many(&client, &url, bodies).await?;
        let gaps: Vec<f64> = timings
            .iter()
            .flat_map(|t| t.gaps.iter().copied())
            .collect();
        rows.push(row(
            &format!("batch {c}: median inter-token latency (s)"),
            median(&gaps),
            p.decode_step(c, prompt + out / 2, 1.0),
        ));
    }

    let (doc, reps) = if opts.quick { (8192, 1) } else { (8192, 3) };
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..reps {
        let b = body(3_000_000 + i * 100_003, doc, 1);
        cold.push(run_one(&client, &url, b.clone()).await?.ttft);
        warm.push(run_one(&client, &url, b).await?.ttft);
    }
    let cached = (doc - 1) / 16 * 16;
    let (model_cold, model_warm) = (
        p.lone_ttft(doc, 0, 1.0),
        p.lone_ttft(doc - cached, cached, 1.0),
    );
    rows.push(row(
        "8k prompt, cold: time to first token (s)",
        median(&cold),
        model_cold,
    ));
    rows.push(row(
        "8k prompt, repeated: time to first token (s)",
        median(&warm),
        model_warm,
    ));
    rows.push(row(
        "8k prompt: cold / repeated time to first token",
        median(&cold) / median(&warm),
        model_cold / model_warm,
    ));
    drop(sim);

    let scale = scale_test(&p, &client, opts).await?;
    Ok(json!({"profile": "h100-llama8b", "rows": rows, "scale": scale}))
}

async fn sim_stats(client: &HttpClient, base: &str) -> Result<Value, String> {
    let text = get_text(client, &format!("{base}/sim/stats")).await?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn busy(stats: &Value) -> (f64, f64, f64) {
    let e = &stats["engines"][0];
    (
        e["model_busy_seconds"].as_f64().unwrap_or(0.0),
        e["wall_busy_seconds"].as_f64().unwrap_or(0.0),
        e["steps"].as_f64().unwrap_or(0.0),
    )
}

async fn scale_test(p: &Profile, client: &HttpClient, opts: Options) -> Result<Value, String> {
    let (servers, streams, prompt, out) = if opts.quick {
        (2, 32, 128, 32)
    } else {
        (4, 256, 128, 256)
    };
    let sim = SimProcess::start(servers, &[]).await?;
    let mut before = Vec::new();
    for u in &sim.urls {
        before.push(busy(&sim_stats(client, u).await?));
    }
    let cpu0 = sim.cpu_seconds();
    let t0 = std::time::Instant::now();
    let runs = sim.urls.iter().enumerate().map(|(s, u)| {
        let url = format!("{u}/v1/completions");
        let bodies: Vec<String> = (0..streams)
            .map(|i| body(5_000_000 + (s * streams + i) as u32 * 997, prompt, out))
            .collect();
        async move { run_many(client, &url, bodies).await }
    });
    let results: Vec<Vec<StreamTiming>> =
        join_all(runs).await.into_iter().collect::<Result<_, _>>()?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu0.and_then(|c0| sim.cpu_seconds().map(|c1| c1 - c0));
    let mut per_server = Vec::new();
    for (u, b) in sim.urls.iter().zip(&before) {
        let a = busy(&sim_stats(client, u).await?);
        let (model, wall, steps) = (a.0 - b.0, a.1 - b.1, a.2 - b.2);
        per_server.push(json!({"url": u, "steps": steps, "model_busy_s": model, "wall_busy_s": wall, "wall_over_model": wall / model}));
    }
    let gaps: Vec<f64> = results
        .iter()
        .flatten()
        .flat_map(|t| t.gaps.iter().copied())
        .collect();
    let tokens = (servers * streams * out) as f64;
    let worst = per_server
        .iter()
        .filter_map(|s| s["wall_over_model"].as_f64())
        .fold(0.0, f64::max);
    Ok(json!({
        "servers": servers, "streams_per_server": streams, "prompt_tokens": prompt, "output_tokens": out,
        "wall_s": wall, "output_tokens_per_s": tokens / wall, "sim_cpu_s": cpu,
        "median_itl_s": median(&gaps), "model_itl_s": p.decode_step(streams, prompt + out / 2, 1.0),
        "worst_step_wall_over_model": worst, "per_server": per_server,
    }))
}

/// The report as a terminal table.
pub fn render(report: &Value) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<58} {:>10} {:>10} {:>7}\n",
        "simulator vs cost model (h100-llama8b)", "measured", "model", "ratio"
    ));
    for r in report["rows"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{:<58} {:>10.4} {:>10.4} {:>7.3}\n",
            r["name"].as_str().unwrap_or_default(),
            r["measured"].as_f64().unwrap_or(f64::NAN),
            r["model"].as_f64().unwrap_or(f64::NAN),
            r["ratio"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    let sc = &report["scale"];
    s.push_str(&format!(
        "\nscale: {} servers x {} streams x {} tokens in one process: {:.1} s, {:.0} output tokens/s, simulator CPU {:.1} s\n",
        sc["servers"], sc["streams_per_server"], sc["output_tokens"],
        sc["wall_s"].as_f64().unwrap_or(f64::NAN), sc["output_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
        sc["sim_cpu_s"].as_f64().unwrap_or(f64::NAN)
    ));
    s.push_str(&format!(
        "  median inter-token latency {:.4} s (model {:.4} s); step time measured/modelled, worst server: {:.3}\n",
        sc["median_itl_s"].as_f64().unwrap_or(f64::NAN),
        sc["model_itl_s"].as_f64().unwrap_or(f64::NAN),
        sc["worst_step_wall_over_model"].as_f64().unwrap_or(f64::NAN)
    ));
    s
}
