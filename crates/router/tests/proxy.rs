//! The request path: pass-through fidelity, streaming, disconnects, model-aware routing, and
//! bad input refused without touching a server.

mod common;

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use common::*;
use futures_util::StreamExt;
use mvllm_router::config::ServerConfig;
use mvllm_sim::SimConfig;
use serde_json::{Value, json};

/// A peer that answers like a vLLM server on the probe routes and echoes anything else, so a
/// test can see exactly what the router sent upstream.
async fn echo_server() -> String {
    async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> axum::Json<Value> {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
            .collect();
        axum::Json(json!({
            "method": method.as_str(), "path": uri.path(), "query": uri.query(),
            "headers": headers, "body": String::from_utf8_lossy(&body),
        }))
    }
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "" }))
        .route(
            "/v1/models",
            axum::routing::get(|| async {
                axum::Json(json!({"object": "list", "data": [{"id": "echo", "object": "model"}]}))
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(|| async {
                "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"
            }),
        )
        .fallback(echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn body_query_and_headers_pass_through_and_a_request_id_is_added() {
    let upstream = echo_server().await;
    let r = router(
        vec![ServerConfig {
            url: upstream.clone(),
            max_concurrent_requests: 4,
            api_key: None,
            models: None,
            role: Default::default(),
            kv_events: None,
        }],
        fast_settings(),
    )
    .await;
    let body = "{ \"model\" : \"echo\",\n  \"zeta\": 1, \"alpha\": [1.50, 2e3] }";
    let resp = client()
        .post(format!("{}/v1/some/new/route?a=1&b=two%20words", r.url()))
        .header("content-type", "application/json")
        .header("x-custom", "kept")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 32);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["body"], body, "forwarded byte for byte");
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/v1/some/new/route");
    assert_eq!(seen["query"], "a=1&b=two%20words");
    assert_eq!(seen["headers"]["x-custom"], "kept");
    assert_eq!(seen["headers"]["x-request-id"], rid.as_str());
    assert!(
        seen["headers"].get("x-hop").is_none(),
        "a header named in Connection is hop-by-hop"
    );
    assert_eq!(
        seen["headers"]["host"],
        upstream.trim_start_matches("http://")
    );
    // A client's own request id is kept.
    let resp = client()
        .get(format!("{}/tokenize", r.url()))
        .header("x-request-id", "mine-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "mine-1");
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], "mine-1");
}

#[tokio::test]
async fn server_api_key_replaces_the_bearer() {
    let upstream = echo_server().await;
    let s = ServerConfig {
        url: upstream,
        max_concurrent_requests: 4,
        api_key: Some("server-key".into()),
        models: None,
        role: Default::default(),
        kv_events: None,
    };
    let r = router(vec![s], fast_settings()).await;
    let seen: Value = client()
        .get(format!("{}/v1/anything", r.url()))
        .bearer_auth("client-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["headers"]["authorization"], "Bearer server-key");
}

/// Seconds to the first content chunk and to the end of one streamed request.
async fn stream_times(url: &str, max_tokens: u64) -> (f64, f64) {
    let t0 = Instant::now();
    let resp = post(url, &chat("hello", max_tokens, true)).await;
    let mut stream = resp.bytes_stream();
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if first.is_none() && String::from_utf8_lossy(&chunk).contains("\"content\":\"") {
            first = Some(t0.elapsed().as_secs_f64());
        }
    }
    (first.expect("a content chunk"), t0.elapsed().as_secs_f64())
}

#[tokio::test]
async fn streams_token_by_token_not_buffered() {
    let s = sims(1, SimConfig::default()).await;
    let r = router_over(&s).await;
    let (ttft, total) = stream_times(&format!("{}/v1/chat/completions", r.url()), 24).await;
    assert!(total > 0.12, "24 tokens take ~0.16 s: {total}");
    // Buffered, the first token would come with the last; streamed, it comes at the start.
    // (How much time the router adds is measured by `mvllm bench overhead`, not asserted here.)
    assert!(
        ttft < total / 2.0,
        "the first token arrives long before the end: {ttft} vs {total}"
    );
}

#[tokio::test]
async fn a_client_disconnect_aborts_the_request_on_the_server() {
    let s = sims(1, SimConfig::default()).await;
    let r = router_over(&s).await;
    let resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("long one", 100_000, true),
    )
    .await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(r.fleet.servers()[0].in_flight(), 1);
    drop(stream);
    eventually(
        Duration::from_secs(5),
        "the simulator aborted the request",
        || async {
            let m = &s[0].engine_metrics()[0];
            m.finished(mvllm_sim::metrics::FinishReason::Abort) == 1
                && s[0].requests_in_engine() == 0
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "router in-flight back to 0",
        || async { r.fleet.servers()[0].in_flight() == 0 },
    )
    .await;
}

/// Two servers: the base model alone, and the base model with the adapter `sql-lora`.
async fn plain_and_lora() -> [mvllm_sim::SimHandle; 2] {
    let plain = sim(SimConfig::instant()).await;
    let with_lora = sim(SimConfig {
        loras: vec!["sql-lora".into()],
        ..SimConfig::instant()
    })
    .await;
    [plain, with_lora]
}

#[tokio::test]
async fn requests_go_only_to_servers_serving_their_model_and_unknown_models_get_404() {
    let fleet = plain_and_lora().await;
    let r = router_over(&fleet).await;
    let url = format!("{}/v1/chat/completions", r.url());
    for _ in 0..10 {
        let mut body = chat("select", 2, false);
        body["model"] = json!("sql-lora");
        assert_eq!(post(&url, &body).await.status(), 200);
    }
    let servers = r.fleet.servers();
    assert_eq!(
        servers[0]
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        servers[1]
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        10
    );

    let mut body = chat("x", 2, false);
    body["model"] = json!("gpt-9");
    let resp = post(&url, &body).await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], 404);
    assert_eq!(v["error"]["param"], "model");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("gpt-9") && msg.contains("sql-lora") && msg.contains(MODEL),
        "{msg}"
    );
    assert_eq!(
        servers
            .iter()
            .map(|s| s.stats.requests.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>(),
        10
    );
}

#[tokio::test]
async fn a_model_in_the_query_string_routes_like_one_in_the_body() {
    let fleet = plain_and_lora().await;
    let r = router_over(&fleet).await;
    let requests = |i: usize| {
        r.fleet.servers()[i]
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut body = chat("select", 2, false);
    body.as_object_mut().unwrap().remove("model");
    for _ in 0..6 {
        let url = format!("{}/v1/chat/completions?model=sql-lora", r.url());
        post(&url, &body).await;
    }
    assert_eq!(
        (requests(0), requests(1)),
        (0, 6),
        "all to the server with the adapter"
    );
    let unknown = post(
        &format!("{}/v1/chat/completions?model=gpt-9", r.url()),
        &body,
    )
    .await;
    assert_eq!(
        unknown.status(),
        404,
        "an unknown model in the query is refused as in a body"
    );
    // The body's model wins over the query's, as in the Python mvllm.
    let mut named = chat("select", 2, false);
    named["model"] = json!(MODEL);
    let both = post(
        &format!("{}/v1/chat/completions?model=gpt-9", r.url()),
        &named,
    )
    .await;
    assert_eq!(both.status(), 200);
}

#[tokio::test]
async fn malformed_requests_get_4xx_from_the_router_and_never_touch_or_penalise_a_server() {
    let s = sims(3, SimConfig::instant()).await;
    let mut settings = fast_settings();
    settings.max_body_bytes = 4096;
    let r = router(s.iter().map(server_of).collect(), settings).await;
    let url = format!("{}/v1/chat/completions", r.url());
    let c = client();
    for _ in 0..3 {
        let resp = c
            .post(&url)
            .header("content-type", "application/json")
            .body("{\"model\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], 400);
    }
    let resp = c
        .post(&url)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = c
        .post(&url)
        .header("content-type", "application/json")
        .body(vec![b' '; 10_000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // A request the server itself refuses (context overflow) is passed through, not retried,
    // and does not count against the server.
    for _ in 0..3 {
        let resp = post(&url, &chat("x", 10_000_000, false)).await;
        assert_eq!(resp.status(), 400);
    }
    let servers = r.fleet.servers();
    assert!(
        servers.iter().all(|s| s.is_healthy()),
        "every server still healthy"
    );
    let touched: u64 = servers
        .iter()
        .map(|s| s.stats.requests.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(
        touched, 3,
        "only the three well-formed requests reached a server, once each"
    );
}

#[tokio::test]
async fn a_data_parallel_servers_load_is_summed_over_engines() {
    let s = sim(SimConfig {
        data_parallel: 2,
        ..SimConfig::default()
    })
    .await;
    let r = router_over(std::slice::from_ref(&s)).await;
    // Load from another client, straight to the server: the router sees it only in /metrics.
    let direct = format!("{}/v1/chat/completions", s.url());
    let a = client()
        .post(&direct)
        .json(&chat("one", 100_000, true))
        .send()
        .await
        .unwrap();
    let b = client()
        .post(&direct)
        .json(&chat("two", 100_000, true))
        .send()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "both engines' requests counted",
        || async {
            let v = get_json(&format!("{}/load-stats", r.url())).await;
            let d = &v["servers"][0]["detailed_metrics"];
            d["num_requests_running"] == json!(2)
                && d["engines"] == json!(2)
                && v["servers"][0]["current_load"] == json!(2)
        },
    )
    .await;
    drop((a, b));
}

#[tokio::test]
async fn stored_responses_are_fetched_from_the_server_that_created_them() {
    let s = sims(3, SimConfig::instant()).await;
    let r = router_over(&s).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let resp = post(
            &format!("{}/v1/responses", r.url()),
            &json!({"model": MODEL, "input": format!("question {i}")}),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        // Any server other than the creator answers 404: a 200 proves the pinning.
        let resp = client()
            .get(format!("{}/v1/responses/{id}", r.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "GET {id}");
        assert_eq!(resp.json::<Value>().await.unwrap()["id"], id.as_str());
        let resp = client()
            .post(format!("{}/v1/responses/{id}/cancel", r.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            400,
            "the creator says a synchronous response cannot be cancelled"
        );
    }
}

#[tokio::test]
async fn multipart_audio_is_routed_by_its_model_form_field() {
    let upstream = echo_server().await;
    let other = sim(SimConfig::instant()).await;
    let servers = vec![
        ServerConfig {
            url: upstream,
            max_concurrent_requests: 4,
            api_key: None,
            models: Some(vec!["whisper-1".into()]),
            role: Default::default(),
            kv_events: None,
        },
        server_of(&other),
    ];
    let r = router(servers, fast_settings()).await;
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"RIFF0000WAVE".to_vec()).file_name("a.wav"),
        )
        .text("model", "whisper-1");
    let resp = client()
        .post(format!("{}/v1/audio/transcriptions", r.url()))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["path"], "/v1/audio/transcriptions");
    assert!(seen["body"].as_str().unwrap().contains("RIFF0000WAVE"));
    assert!(
        seen["headers"]["content-type"]
            .as_str()
            .unwrap()
            .starts_with("multipart/form-data; boundary=")
    );
}
