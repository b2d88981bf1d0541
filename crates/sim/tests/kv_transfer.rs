//! Disaggregated prefill between two simulated servers (`--kv-role`), over real sockets: the
//! producer holds a prefill's KV under a lease and names it; the consumer reads it instead of
//! computing the prefill; wrong, foreign or expired parameters make it compute locally.

mod common;

use std::time::Duration;

use common::*;
use mvllm_sim::SimConfig;
use mvllm_sim::config::{KvRole, KvTransfer};
use serde_json::{Value, json};

const M: &str = mvllm_sim::config::DEFAULT_MODEL;

fn series(name: &str) -> String {
    format!("{name}{{engine=\"0\",model_name=\"{M}\"}}")
}

async fn server(role: KvRole, lease: Duration) -> mvllm_sim::SimHandle {
    start(SimConfig {
        kv_transfer: Some(KvTransfer {
            lease,
            ..KvTransfer::new(role)
        }),
        ..SimConfig::default()
    })
    .await
}

/// A prompt of a few hundred tokens.
fn long_prompt() -> String {
    "the quick brown fox jumps over the lazy dog ".repeat(60)
}

async fn send(url: &str, body: &Value, request_id: &str) -> Value {
    let resp = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("x-request-id", request_id)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn prefill_body(content: &str) -> Value {
    json!({
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 1, "stream": false,
        "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false,
            "remote_engine_id": null, "remote_block_ids": null, "remote_host": null, "remote_port": null},
    })
}

fn decode_body(content: &str, params: &Value) -> Value {
    json!({
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8, "ignore_eos": true,
        "kv_transfer_params": params,
    })
}

#[tokio::test]
async fn a_consumer_reads_the_producers_kv_instead_of_computing_the_prefill() {
    let producer = server(KvRole::Producer, Duration::from_secs(30)).await;
    let consumer = server(KvRole::Consumer, Duration::from_secs(30)).await;
    let prompt = long_prompt();

    let prefill = send(&producer.url(), &prefill_body(&prompt), "req-1").await;
    let params = prefill["kv_transfer_params"].clone();
    assert_eq!(params["do_remote_prefill"], true, "{prefill}");
    assert_eq!(params["do_remote_decode"], false);
    assert_eq!(params["remote_host"], "127.0.0.1");
    assert_eq!(params["remote_port"], producer.addr().port());
    assert!(
        params["remote_engine_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let blocks = params["remote_block_ids"].as_array().unwrap().len();
    let prompt_tokens = prefill["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(blocks, prompt_tokens.div_ceil(16), "the prompt's blocks");
    assert!(
        producer.engine_metrics()[0].kv_usage > 0.0,
        "the producer holds the blocks after answering"
    );

    let decode = send(&consumer.url(), &decode_body(&prompt, &params), "req-1").await;
    assert_eq!(decode["usage"]["completion_tokens"], 8);
    assert_eq!(decode["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(
        decode["usage"]["prompt_tokens_details"]["cached_tokens"],
        prompt_tokens - 1,
        "vLLM reports the transferred KV as cached (all but the last prompt token)"
    );
    let m = &consumer.engine_metrics()[0];
    assert_eq!(m.nixl_xfer_time.count(), 1);
    assert_eq!(m.nixl_failed_transfers, 0);
    assert_eq!(
        m.prompt_tokens, 1,
        "one prompt token computed on the consumer"
    );
    let text = metrics_text(&consumer.url()).await;
    assert_eq!(
        metric(&text, &series("vllm:nixl_xfer_time_seconds_count")),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, &series("vllm:nixl_bytes_transferred_sum")),
        Some(prompt_tokens as f64 * 131_072.0)
    );
    eventually(
        Duration::from_secs(5),
        "the producer frees the blocks once read",
        || async { producer.engine_metrics()[0].kv_usage == 0.0 },
    )
    .await;
    // Read once: the same parameters again find nothing, and the prefill is computed locally.
    send(&consumer.url(), &decode_body(&prompt, &params), "req-1").await;
    assert_eq!(consumer.engine_metrics()[0].nixl_failed_transfers, 1);
}

#[tokio::test]
async fn foreign_or_malformed_parameters_make_the_consumer_compute_the_prefill() {
    let producer = server(KvRole::Producer, Duration::from_secs(30)).await;
    let consumer = server(KvRole::Both, Duration::from_secs(30)).await;
    let prompt = long_prompt();
    let params =
        send(&producer.url(), &prefill_body(&prompt), "mine").await["kv_transfer_params"].clone();

    // Another request id: the lease is not this request's.
    let d = send(&consumer.url(), &decode_body(&prompt, &params), "yours").await;
    assert_eq!(d["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    // Blocks that are not the ones held; no host; a dead producer.
    let mut wrong_blocks = params.clone();
    wrong_blocks["remote_block_ids"] = json!([1, 2, 3]);
    let mut no_host = params.clone();
    no_host["remote_host"] = Value::Null;
    let mut dead = params.clone();
    dead["remote_port"] = json!(1);
    for p in [&wrong_blocks, &no_host, &dead] {
        let d = send(&consumer.url(), &decode_body(&prompt, p), "mine").await;
        assert_eq!(d["usage"]["completion_tokens"], 8, "answered all the same");
    }
    let m = &consumer.engine_metrics()[0];
    assert_eq!(m.nixl_failed_transfers, 4);
    assert_eq!(m.nixl_xfer_time.count(), 0);
    // The lease is intact for the right reader.
    let d = send(&consumer.url(), &decode_body(&prompt, &params), "mine").await;
    assert!(d["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() > Some(100));
}

#[tokio::test]
async fn an_unread_lease_expires_and_frees_the_blocks() {
    let producer = server(KvRole::Producer, Duration::from_millis(200)).await;
    let consumer = server(KvRole::Consumer, Duration::from_secs(30)).await;
    let prompt = long_prompt();
    let params =
        send(&producer.url(), &prefill_body(&prompt), "late").await["kv_transfer_params"].clone();
    assert!(producer.engine_metrics()[0].kv_usage > 0.0);
    eventually(Duration::from_secs(5), "the lease runs out", || async {
        producer.engine_metrics()[0].nixl_expired_requests == 1
            && producer.engine_metrics()[0].kv_usage == 0.0
    })
    .await;
    let text = metrics_text(&producer.url()).await;
    assert_eq!(
        metric(&text, &series("vllm:nixl_num_kv_expired_reqs_total")),
        Some(1.0)
    );
    send(&consumer.url(), &decode_body(&prompt, &params), "late").await;
    assert_eq!(consumer.engine_metrics()[0].nixl_failed_transfers, 1);
}

#[tokio::test]
async fn without_a_connector_or_for_a_stream_no_kv_is_held() {
    let plain = start(SimConfig::default()).await;
    let r = send(&plain.url(), &prefill_body("hello there"), "a").await;
    assert_eq!(
        r["kv_transfer_params"],
        Value::Null,
        "ignored, as vLLM without a connector"
    );
    assert_eq!(plain.engine_metrics()[0].kv_usage, 0.0);
    assert!(
        !metrics_text(&plain.url()).await.contains("nixl"),
        "no nixl families without a connector"
    );
    let consumer = server(KvRole::Consumer, Duration::from_secs(30)).await;
    let r = send(&consumer.url(), &prefill_body("hello there"), "b").await;
    assert_eq!(
        r["kv_transfer_params"],
        Value::Null,
        "a consumer does not produce"
    );
}
