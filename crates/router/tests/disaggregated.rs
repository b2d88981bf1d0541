//! Prefill/decode disaggregation against simulated vLLM servers playing NixlConnector's roles:
//! the two legs and their exact fields, every fall-back, a client disconnect in either leg, and
//! usage as a single server would report it.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use mvllm_router::config::{ServerConfig, ServerRole, Settings};
use mvllm_sim::config::{KvRole, KvTransfer};
use mvllm_sim::metrics::FinishReason;
use mvllm_sim::{SimConfig, SimHandle};
use serde_json::{Value, json};

/// A prompt of about 1,100 tokens: above `prefill_leg_min_tokens` (256).
fn long_prompt(topic: &str) -> String {
    format!(
        "{topic}: {}",
        "a long shared document about routing ".repeat(180)
    )
}

fn kv(role: KvRole) -> SimConfig {
    SimConfig {
        kv_transfer: Some(KvTransfer::new(role)),
        ..SimConfig::default()
    }
}

fn with_role(s: &SimHandle, role: ServerRole) -> ServerConfig {
    ServerConfig {
        role,
        kv_events: None,
        models: Some(vec![MODEL.into()]),
        ..server_of(s)
    }
}

struct Fleet {
    prefill: SimHandle,
    decode: SimHandle,
    router: mvllm_router::RouterHandle,
}

async fn fleet_of(prefill: SimConfig, decode: SimConfig, settings: Settings) -> Fleet {
    let prefill = sim(prefill).await;
    let decode = sim(decode).await;
    let router = router(
        vec![
            with_role(&prefill, ServerRole::Prefill),
            with_role(&decode, ServerRole::Decode),
        ],
        settings,
    )
    .await;
    Fleet {
        prefill,
        decode,
        router,
    }
}

async fn fleet() -> Fleet {
    fleet_of(kv(KvRole::Producer), kv(KvRole::Consumer), fast_settings()).await
}

fn path_count(metrics: &str, path: &str) -> f64 {
    let series = format!("mvllm_disaggregated_requests_total{{path=\"{path}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.parse().unwrap())
}

fn generation_requests(s: &SimHandle) -> u64 {
    finished(s)
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn two_legs_carry_the_exact_fields_and_usage_reads_as_a_single_server() {
    // Every prompt takes both legs, even one the decode server already holds.
    let f = fleet_of(
        kv(KvRole::Producer),
        kv(KvRole::Consumer),
        Settings {
            prefill_leg_min_tokens: 0,
            ..fast_settings()
        },
    )
    .await;
    let prompt = long_prompt("first");
    let body = json!({
        "model": MODEL, "messages": [{"role": "user", "content": prompt}],
        "stream": true, "stream_options": {"include_usage": true},
        "max_tokens": 12, "max_completion_tokens": 12, "min_tokens": 12, "temperature": 0.2,
    });
    let resp = post(&format!("{}/v1/chat/completions", f.router.url()), &body).await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let text = resp.text().await.unwrap();
    let chunks = events(&text);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(
        !content.is_empty(),
        "tokens streamed from the decode server"
    );
    let usage = &chunks.last().unwrap()["usage"];

    // The prefill leg, exactly as NixlConnector expects it.
    let (prefill_id, prefill_body) = f.prefill.last_request().expect("a prefill leg");
    assert_eq!(prefill_id.as_deref(), Some(request_id.as_str()));
    assert_eq!(
        prefill_body,
        json!({
            "model": MODEL, "messages": [{"role": "user", "content": prompt}],
            "stream": false, "max_tokens": 1, "max_completion_tokens": 1, "temperature": 0.2,
            "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false,
                "remote_engine_id": null, "remote_block_ids": null, "remote_host": null,
                "remote_port": null},
        })
    );
    // The decode leg: the client's own body, plus what the prefill server answered.
    let (decode_id, decode_body) = f.decode.last_request().expect("a decode leg");
    assert_eq!(
        decode_id.as_deref(),
        Some(request_id.as_str()),
        "the same X-Request-Id"
    );
    let params = &decode_body["kv_transfer_params"];
    assert_eq!(params["do_remote_prefill"], true);
    assert_eq!(params["remote_port"], f.prefill.addr().port());
    let mut client_part = decode_body.clone();
    client_part
        .as_object_mut()
        .unwrap()
        .remove("kv_transfer_params");
    assert_eq!(client_part, body);
    let d = &f.decode.engine_metrics()[0];
    assert_eq!(d.nixl_xfer_time.count(), 1, "the decode server read the KV");
    assert_eq!(d.nixl_failed_transfers, 0);
    assert_eq!(d.prompt_tokens, 1, "and computed one prompt token itself");
    assert_eq!(f.prefill.engine_metrics()[0].generation_tokens, 1);

    // Usage: the prompt as the client sent it; cached tokens as the prefill server had them
    // (none: a new prompt), not the decode server's count of transferred KV.
    let prompt_tokens = usage["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 1000, "{usage}");
    assert_eq!(usage["completion_tokens"], 12);
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], 0,
        "{usage}"
    );

    // The same prompt again, not streamed: the prefill server now has it cached, and that is
    // what the client reads.
    let again = post(
        &format!("{}/v1/chat/completions", f.router.url()),
        &json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 5}),
    )
    .await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        cached,
        prompt_tokens / 16 * 16,
        "the prefill server's hit: {again}"
    );
    assert_eq!(again["kv_transfer_params"], Value::Null);
    let metrics = get_text(&format!("{}/metrics", f.router.url())).await;
    assert_eq!(path_count(&metrics, "two_legs"), 2.0);
    // Both legs are counted as requests to their servers.
    for s in [&f.prefill, &f.decode] {
        let series = format!(
            "mvllm_requests_total{{route=\"chat_completions\",model=\"{MODEL}\",server=\"{}\",status=\"200\"}} 2",
            s.url()
        );
        assert!(metrics.contains(&series), "{series}\n{metrics}");
    }
    eventually(Duration::from_secs(5), "in-flight back to 0", || async {
        f.router.fleet.servers().iter().all(|s| s.in_flight() == 0)
    })
    .await;
    // The status API (and so the dashboard) shows each server's role.
    let status = get_json(&format!("{}/admin/status", f.router.url())).await;
    let roles: Vec<&str> = status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["prefill", "decode"]);
}

#[tokio::test]
async fn a_prefill_4xx_goes_back_to_the_client_and_no_decode_runs() {
    let f = fleet_of(
        SimConfig {
            api_key: Some("prefill-only".into()),
            ..kv(KvRole::Producer)
        },
        kv(KvRole::Consumer),
        fast_settings(),
    )
    .await;
    let resp = post(
        &format!("{}/v1/chat/completions", f.router.url()),
        &chat(&long_prompt("refused"), 5, false),
    )
    .await;
    assert_eq!(resp.status(), 401, "the prefill server's answer");
    assert!(f.decode.last_request().is_none(), "no decode leg");
    let metrics = get_text(&format!("{}/metrics", f.router.url())).await;
    assert_eq!(path_count(&metrics, "prefill_refused"), 1.0);
    assert!(
        f.router.fleet.servers()[0].is_healthy(),
        "a 4xx is the client's"
    );
}

/// The fall-backs that send the whole request to the decode server, which computes the
/// prefill itself: the client gets its answer all the same.
async fn decoded_alone(f: &Fleet, body: &Value, path: &str) -> Value {
    let resp = post(&format!("{}/v1/chat/completions", f.router.url()), body).await;
    assert_eq!(resp.status(), 200, "{path}");
    let answer: Value = resp.json().await.unwrap();
    let (_, decode_body) = f.decode.last_request().expect("the decode server answered");
    assert_eq!(&decode_body, body, "{path}: the client's body, untouched");
    let d = &f.decode.engine_metrics()[0];
    assert_eq!(d.nixl_xfer_time.count(), 0, "{path}: no KV transfer");
    assert!(
        d.prompt_tokens > 1,
        "{path}: the decode server computed the prefill"
    );
    let metrics = get_text(&format!("{}/metrics", f.router.url())).await;
    assert_eq!(path_count(&metrics, path), 1.0, "{path}");
    answer
}

#[tokio::test]
async fn a_prefill_5xx_sends_the_request_to_the_decode_server_alone() {
    let f = fleet_of(
        SimConfig {
            faults: mvllm_sim::Faults {
                error_rate: 1.0,
                error_status: 500,
                ..Default::default()
            },
            ..kv(KvRole::Producer)
        },
        kv(KvRole::Consumer),
        fast_settings(),
    )
    .await;
    decoded_alone(
        &f,
        &chat(&long_prompt("five hundred"), 5, false),
        "prefill_failed",
    )
    .await;
    assert!(
        f.prefill.last_request().is_some(),
        "the prefill leg was tried"
    );
}

#[tokio::test]
async fn a_prefill_server_that_does_not_answer_in_time_is_skipped() {
    let f = fleet_of(
        kv(KvRole::Producer),
        kv(KvRole::Consumer),
        Settings {
            request_timeout: Duration::from_millis(300),
            health_check_timeout: Duration::from_millis(200),
            // Health checks would take the hung server out before the request is sent.
            health_check_interval: Duration::from_secs(3600),
            ..fast_settings()
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the prefill server is up",
        || async { f.router.fleet.servers()[0].takes_requests() },
    )
    .await;
    f.prefill.update_faults(|f| f.hang = true);
    decoded_alone(&f, &chat(&long_prompt("hung"), 5, false), "prefill_failed").await;
}

#[tokio::test]
async fn a_prefill_answer_without_transfer_parameters_is_decoded_alone() {
    // A prefill server without a KV connector ignores kv_transfer_params.
    let f = fleet_of(SimConfig::default(), kv(KvRole::Consumer), fast_settings()).await;
    decoded_alone(
        &f,
        &chat(&long_prompt("plain"), 5, false),
        "no_kv_transfer_params",
    )
    .await;
}

#[tokio::test]
async fn several_choices_and_short_prompts_skip_the_prefill_leg() {
    let f = fleet().await;
    let answer = decoded_alone(&f, &chat("a short question", 5, false), "short_prompt").await;
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    assert!(f.prefill.last_request().is_none(), "no prefill leg");
    let mut many = chat(&long_prompt("choices"), 5, false);
    many["n"] = json!(2);
    let resp = post(&format!("{}/v1/chat/completions", f.router.url()), &many).await;
    // The simulator, as a decode server, answers n > 1 itself (with its own refusal).
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("n > 1"));
    assert_eq!(f.decode.last_request().unwrap().1, many);
    assert!(
        f.prefill.last_request().is_none(),
        "no prefill leg for n > 1"
    );
    let metrics = get_text(&format!("{}/metrics", f.router.url())).await;
    assert_eq!(path_count(&metrics, "n_above_1"), 1.0);
    // What is not a generation goes to the decode server, never to prefill-only servers.
    let models = get_json(&format!("{}/v1/models", f.router.url())).await;
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(generation_requests(&f.prefill), 0);
}

/// Waits until `server` aborted the one request it had, and the router holds none in flight.
async fn aborted(f: &Fleet, server: &SimHandle) {
    eventually(
        Duration::from_secs(5),
        "the server aborted the request",
        || async {
            server.engine_metrics()[0].finished(FinishReason::Abort) == 1
                && server.requests_in_engine() == 0
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "router in-flight back to 0",
        || async { f.router.fleet.servers().iter().all(|s| s.in_flight() == 0) },
    )
    .await;
}

#[tokio::test]
async fn a_client_that_leaves_during_the_prefill_aborts_it() {
    // A slow prefill server: the prompt takes seconds to compute, in steps of 128 tokens (the
    // engine hears of an abort between steps).
    let f = fleet_of(
        SimConfig {
            speed: 0.01,
            max_num_batched_tokens: 128,
            ..kv(KvRole::Producer)
        },
        kv(KvRole::Consumer),
        fast_settings(),
    )
    .await;
    let url = format!("{}/v1/chat/completions", f.router.url());
    let body = chat(&long_prompt("leaving"), 5, true);
    let request = tokio::spawn(async move { post(&url, &body).await });
    eventually(Duration::from_secs(5), "the prefill is running", || async {
        f.prefill.requests_in_engine() == 1
    })
    .await;
    request.abort();
    aborted(&f, &f.prefill).await;
    assert!(
        f.decode.last_request().is_none(),
        "no decode leg after the client left"
    );
    assert_eq!(f.prefill.engine_metrics()[0].kv_usage, 0.0, "nothing held");
}

#[tokio::test]
async fn a_client_that_leaves_during_the_decode_aborts_it() {
    let f = fleet().await;
    let resp = post(
        &format!("{}/v1/chat/completions", f.router.url()),
        &chat(&long_prompt("streaming"), 100_000, true),
    )
    .await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(f.decode.requests_in_engine(), 1);
    drop(stream);
    aborted(&f, &f.decode).await;
}

#[tokio::test]
async fn a_fleet_without_prefill_or_decode_servers_is_served_as_before() {
    let plain = sims(2, kv(KvRole::Both)).await;
    let r = router_over(&plain).await;
    let resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat(&long_prompt("ordinary"), 5, false),
    )
    .await;
    assert_eq!(resp.status(), 200);
    for s in &plain {
        if let Some((_, body)) = s.last_request() {
            assert!(body.get("kv_transfer_params").is_none(), "one leg: {body}");
        }
    }
    let metrics = get_text(&format!("{}/metrics", r.url())).await;
    assert!(!metrics.contains("mvllm_disaggregated_requests_total{"));
}

#[tokio::test]
async fn roles_given_by_a_reload_apply_to_the_next_request() {
    let prefill = sim(kv(KvRole::Producer)).await;
    let decode = sim(kv(KvRole::Consumer)).await;
    let plain = |s: &SimHandle| with_role(s, ServerRole::Both);
    let r = router(vec![plain(&prefill), plain(&decode)], fast_settings()).await;
    let url = format!("{}/v1/chat/completions", r.url());
    assert_eq!(
        post(&url, &chat(&long_prompt("before"), 5, false))
            .await
            .status(),
        200
    );
    let summary = r.fleet.apply(&mvllm_router::Config {
        servers: vec![
            with_role(&prefill, ServerRole::Prefill),
            with_role(&decode, ServerRole::Decode),
        ],
        settings: fast_settings(),
        ..Default::default()
    });
    assert_eq!(summary.changed.len(), 2, "{summary:?}");
    assert_eq!(
        post(&url, &chat(&long_prompt("after"), 5, false))
            .await
            .status(),
        200
    );
    let metrics = get_text(&format!("{}/metrics", r.url())).await;
    assert_eq!(
        path_count(&metrics, "two_legs"),
        1.0,
        "only the request after the reload"
    );
    assert_eq!(decode.engine_metrics()[0].nixl_xfer_time.count(), 1);
}

#[tokio::test]
async fn with_every_decode_server_down_the_prefill_server_serves_whole_requests() {
    let f = fleet().await;
    f.decode.update_faults(|x| x.down = true);
    eventually(
        Duration::from_secs(10),
        "the decode server is out",
        || async { !f.router.fleet.servers()[1].takes_requests() },
    )
    .await;
    let body = chat(&long_prompt("no decoders"), 5, false);
    let resp = post(&format!("{}/v1/chat/completions", f.router.url()), &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        f.prefill.last_request().unwrap().1,
        body,
        "one leg, the client's body"
    );
    let metrics = get_text(&format!("{}/metrics", f.router.url())).await;
    assert_eq!(path_count(&metrics, "no_decode_server"), 1.0);
}
