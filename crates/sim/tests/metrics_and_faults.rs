//! `/metrics` (names, labels, data parallelism, legacy names) and every injectable fault, over
//! real sockets.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use mvllm_sim::{Faults, SimConfig};
use serde_json::{Value, json};

const M: &str = mvllm_sim::config::DEFAULT_MODEL;

fn series(name: &str, engine: usize) -> String {
    format!("{name}{{engine=\"{engine}\",model_name=\"{M}\"}}")
}

#[tokio::test]
async fn metrics_have_vllm_names_types_and_count_requests() {
    let sim = start_instant().await;
    for _ in 0..3 {
        let r = post_json(
            &format!("{}/v1/chat/completions", sim.url()),
            chat_body("count me", 4, false),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let text = metrics_text(&sim.url()).await;
    for family in [
        "# TYPE vllm:num_requests_running gauge",
        "# TYPE vllm:num_requests_waiting gauge",
        "# TYPE vllm:num_requests_waiting_by_reason gauge",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        "# TYPE vllm:engine_sleep_state gauge",
        "# TYPE vllm:cache_config_info gauge",
        "# TYPE vllm:prefix_cache_queries_total counter",
        "# TYPE vllm:prefix_cache_hits_total counter",
        "# TYPE vllm:num_preemptions_total counter",
        "# TYPE vllm:prompt_tokens_total counter",
        "# TYPE vllm:generation_tokens_total counter",
        "# TYPE vllm:request_success_total counter",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        "# TYPE vllm:inter_token_latency_seconds histogram",
        "# TYPE vllm:request_time_per_output_token_seconds histogram",
        "# TYPE vllm:e2e_request_latency_seconds histogram",
        "# TYPE vllm:request_queue_time_seconds histogram",
        "# TYPE vllm:request_prefill_time_seconds histogram",
        "# TYPE vllm:request_decode_time_seconds histogram",
        "# TYPE vllm:request_inference_time_seconds histogram",
    ] {
        assert!(text.contains(family), "missing {family}");
    }
    assert_eq!(
        metric(&text, &series("vllm:generation_tokens_total", 0)),
        Some(12.0)
    );
    assert_eq!(
        metric(
            &text,
            &format!(
                "vllm:request_success_total{{engine=\"0\",finished_reason=\"length\",model_name=\"{M}\"}}"
            )
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&text, &series("vllm:time_to_first_token_seconds_count", 0)),
        Some(3.0)
    );
    assert!(metric(&text, &series("vllm:prefix_cache_hits_created", 0)).unwrap() > 1.7e9);
    assert!(
        metric(&text, &series("vllm:prefix_cache_hits_total", 0)).unwrap() > 0.0,
        "repeats hit the cache"
    );
    assert_eq!(
        metric(&text, &series("vllm:num_requests_running", 0)),
        Some(0.0)
    );
    // Every sample line is `name{labels} value` with a parseable value.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').unwrap();
        assert!(
            v.parse::<f64>().is_ok() || v == "+Inf" || v == "NaN",
            "bad value in {line}"
        );
    }
}

#[tokio::test]
async fn data_parallel_emits_one_series_per_engine_and_spreads_requests() {
    let sim = start(SimConfig {
        data_parallel: 2,
        ..Default::default()
    })
    .await;
    // Two long streams at once land on the two engines.
    let url = format!("{}/v1/chat/completions", sim.url());
    let a = client()
        .post(&url)
        .json(&chat_body("first", 2000, true))
        .send()
        .await
        .unwrap();
    let b = client()
        .post(&url)
        .json(&chat_body("second", 2000, true))
        .send()
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "both engines running", || async {
        let text = metrics_text(&sim.url()).await;
        metric(&text, &series("vllm:num_requests_running", 0)) == Some(1.0)
            && metric(&text, &series("vllm:num_requests_running", 1)) == Some(1.0)
    })
    .await;
    drop((a, b));
    let text = metrics_text(&sim.url()).await;
    let info: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("vllm:cache_config_info{"))
        .collect();
    assert_eq!(info.len(), 2, "one per engine");
    assert!(info[1].contains(",block_size=\"16\",") && info[1].contains(",engine=\"1\","));
}

#[tokio::test]
async fn legacy_metrics_use_the_older_names() {
    let sim = start(SimConfig {
        legacy_metrics: true,
        ..SimConfig::instant()
    })
    .await;
    let text = metrics_text(&sim.url()).await;
    assert!(text.contains(&series("vllm:gpu_cache_usage_perc", 0)));
    assert!(text.contains(&series("vllm:gpu_prefix_cache_hits_total", 0)));
    assert!(text.contains(&series("vllm:gpu_prefix_cache_queries_total", 0)));
    assert!(text.contains("# TYPE vllm:time_per_output_token_seconds histogram"));
    assert!(!text.contains("vllm:kv_cache_usage_perc"));
    assert!(!text.contains("vllm:prefix_cache_hits_total"));
}

#[tokio::test]
async fn client_disconnect_aborts_the_request_and_frees_its_blocks() {
    let sim = start(SimConfig::default()).await;
    let r = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .json(&chat_body("a long story please", 100_000, true))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    assert_eq!(sim.requests_in_engine(), 1);
    drop(body);
    eventually(
        Duration::from_secs(5),
        "the engine dropped the request",
        || async {
            let m = &sim.engine_metrics()[0];
            sim.requests_in_engine() == 0
                && m.finished(mvllm_sim::metrics::FinishReason::Abort) == 1
                && m.running == 0
        },
    )
    .await;
    let text = metrics_text(&sim.url()).await;
    assert_eq!(
        metric(&text, &series("vllm:kv_cache_usage_perc", 0)),
        Some(0.0)
    );
    assert_eq!(sim.server_load(), 0);
}

#[tokio::test]
async fn down_refuses_connections_cuts_streams_and_comes_back_with_a_cold_cache() {
    let sim = start(SimConfig::default()).await;
    let url = format!("{}/v1/chat/completions", sim.url());
    let warm: Value = post_json(
        &url,
        chat_body("warm the cache with this prompt please", 1, false),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(warm["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let r = client()
        .post(&url)
        .json(&chat_body("stream", 100_000, true))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();

    sim.update_faults(|f| f.down = true);
    // The open stream ends with an error, not with [DONE].
    let mut tail = Vec::new();
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => tail.extend_from_slice(&b),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the cut stream ends in an error");
    assert!(!String::from_utf8_lossy(&tail).contains("[DONE]"));
    let e = client()
        .get(format!("{}/health", sim.url()))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "connection refused while down: {e}");

    sim.update_faults(|f| f.down = false);
    eventually(Duration::from_secs(5), "server back up", || async {
        client()
            .get(format!("{}/health", sim.url()))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let cold: Value = post_json(
        &url,
        chat_body("warm the cache with this prompt please", 1, false),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        cold["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "a restarted server has a cold cache"
    );
}

#[tokio::test]
async fn control_endpoint_goes_down_for_a_while_and_answers_first() {
    let sim = start_instant().await;
    let r = post_json(
        &format!("{}/sim/faults", sim.url()),
        json!({"down_for_ms": 300}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["down"], true);
    assert!(
        client()
            .get(format!("{}/health", sim.url()))
            .send()
            .await
            .unwrap_err()
            .is_connect()
    );
    eventually(Duration::from_secs(5), "back after down_for_ms", || async {
        client()
            .get(format!("{}/health", sim.url()))
            .send()
            .await
            .is_ok()
    })
    .await;
    assert!(!sim.faults().down);
}

#[tokio::test]
async fn startup_delay_refuses_connections_until_loaded() {
    let sim = start(SimConfig {
        startup_delay: Duration::from_millis(300),
        ..SimConfig::instant()
    })
    .await;
    let e = client()
        .get(format!("{}/health", sim.url()))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "refused while loading: {e}");
    eventually(
        Duration::from_secs(5),
        "listening after the delay",
        || async {
            client()
                .get(format!("{}/health", sim.url()))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
}

#[tokio::test]
async fn hang_accepts_and_never_answers_but_control_still_works() {
    let sim = start(SimConfig {
        faults: Faults {
            hang: true,
            ..Default::default()
        },
        ..SimConfig::instant()
    })
    .await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let e = c
        .get(format!("{}/health", sim.url()))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "a hung server times the client out: {e}");
    let r = c
        .post(format!("{}/sim/faults", sim.url()))
        .json(&json!({"hang": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get(format!("{}/health", sim.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn die_after_chunks_truncates_the_stream() {
    let sim = start(SimConfig {
        faults: Faults {
            die_after_chunks: Some(3),
            ..Default::default()
        },
        ..SimConfig::instant()
    })
    .await;
    let r = post_json(
        &format!("{}/v1/chat/completions", sim.url()),
        chat_body("story", 50, true),
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut got = Vec::new();
    let mut failed = false;
    while let Some(c) = stream.next().await {
        match c {
            Ok(b) => got.extend_from_slice(&b),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the connection is cut, not closed cleanly");
    let text = String::from_utf8(got).unwrap();
    assert!(!text.contains("[DONE]"));
    assert!(
        text.matches("\"content\"").count() <= 4,
        "role chunk plus at most 3 content chunks: {text}"
    );
    // Non-streamed requests are unaffected.
    let r = post_json(
        &format!("{}/v1/chat/completions", sim.url()),
        chat_body("story", 50, false),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn error_rate_and_forced_errors_answer_in_vllm_format() {
    let sim = start(SimConfig {
        faults: Faults {
            error_rate: 1.0,
            error_status: 503,
            ..Default::default()
        },
        ..SimConfig::instant()
    })
    .await;
    let url = format!("{}/v1/chat/completions", sim.url());
    for _ in 0..3 {
        let r = post_json(&url, chat_body("x", 2, false)).await;
        assert_eq!(r.status(), 503);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], 503);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("currently busy")
        );
    }
    sim.update_faults(|f| f.error_rate = 0.0);
    assert_eq!(
        post_json(&url, chat_body("x", 2, false)).await.status(),
        200
    );
    for status in [429u16, 500, 503] {
        let r = client()
            .post(&url)
            .header("x-sim-error", status.to_string())
            .json(&chat_body("x", 2, false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], status);
    }
    let half = start(SimConfig {
        faults: Faults {
            error_rate: 0.5,
            ..Default::default()
        },
        seed: 7,
        ..SimConfig::instant()
    })
    .await;
    let mut errors = 0;
    for _ in 0..40 {
        if post_json(
            &format!("{}/v1/chat/completions", half.url()),
            chat_body("x", 1, false),
        )
        .await
        .status()
            == 500
        {
            errors += 1;
        }
    }
    assert!((8..=32).contains(&errors), "about half fail: {errors}/40");
}

#[tokio::test]
async fn slow_and_malformed_metrics() {
    let sim = start(SimConfig {
        faults: Faults {
            metrics_delay_ms: 400,
            ..Default::default()
        },
        ..SimConfig::instant()
    })
    .await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    assert!(
        c.get(format!("{}/metrics", sim.url()))
            .send()
            .await
            .unwrap_err()
            .is_timeout()
    );
    assert_eq!(
        c.get(format!("{}/health", sim.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "only /metrics is slow"
    );
    sim.update_faults(|f| {
        f.metrics_delay_ms = 0;
        f.metrics_malformed = true;
    });
    let text = metrics_text(&sim.url()).await;
    assert!(!text.contains("# TYPE"));
    assert!(metric(&text, &series("vllm:num_requests_running", 0)).is_none());
}

#[tokio::test]
async fn bad_fault_patches_are_refused() {
    let sim = start_instant().await;
    let r = post_json(
        &format!("{}/sim/faults", sim.url()),
        json!({"error_status": 404}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = post_json(&format!("{}/sim/faults", sim.url()), json!({"hnag": true})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(sim.faults(), Faults::default());
}

#[tokio::test]
async fn lora_requests_info_is_shown_only_with_adapters_loaded() {
    // vLLM 0.32 without LoRA has no such family (the real server's /metrics did not).
    let plain = start_instant().await;
    assert!(
        !metrics_text(&plain.url())
            .await
            .contains("lora_requests_info")
    );
    let with = start(SimConfig {
        loras: vec!["sql".into()],
        ..SimConfig::instant()
    })
    .await;
    let text = metrics_text(&with.url()).await;
    assert!(
        text.contains("# TYPE vllm:lora_requests_info gauge"),
        "{text}"
    );
    assert!(text.contains("vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"\","));
}
