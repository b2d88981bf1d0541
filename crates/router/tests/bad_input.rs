//! What clients send that must never reach a server, and the router's own answers to it: one
//! error shape (vLLM's), request targets that are not a path, bodies that are not a JSON object,
//! bodies too large, too slow or too many at once, heads too large, admin paths in disguise.

mod common;

use std::time::Duration;

use common::*;
use mvllm_router::Settings;
use mvllm_sim::SimConfig;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn bodies_that_are_not_a_json_object_get_a_clear_400_and_reach_no_server() {
    let s = sims(1, SimConfig::instant()).await;
    let r = router_over(&s).await;
    let c = client();
    for body in [
        r#"["meta-llama/Llama-3.1-8B-Instruct", true]"#,
        "[1,2]",
        r#""hi""#,
        "42",
    ] {
        let resp = c
            .post(format!("{}/v1/chat/completions", r.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body:?}");
        let v: Value = resp.json().await.unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert_eq!(v["error"]["type"], "BadRequestError", "{v}");
        assert!(
            !message.contains("struct") && !message.contains("JsonFields"),
            "no Rust types in {message:?}"
        );
    }
    assert_eq!(attempts(&r), 0, "nothing was forwarded");
}

/// The JSON body a real vLLM 0.32 answered, as captured in the simulator's test data.
fn real_vllm_answer(name: &str) -> Value {
    let path = format!(
        "{}/../sim/tests/real-vllm/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let body = text.split_once("\n\n").expect("headers, then the body").1;
    serde_json::from_str(body.lines().next().unwrap()).unwrap()
}

#[tokio::test]
async fn what_the_router_answers_itself_is_what_vllm_answers_word_for_word() {
    let s = sims(
        1,
        SimConfig {
            served_model_names: vec!["tiny".into()],
            ..SimConfig::instant()
        },
    )
    .await;
    let r = router_over(&s).await;
    let url = format!("{}/v1/chat/completions", r.url());
    let c = client();
    for (name, body) in [("err_malformed_json", "{bad json"), ("err_empty_body", "")] {
        let resp = c
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.json::<Value>().await.unwrap(), real_vllm_answer(name));
    }
    let body = json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(&url, &body).await;
    assert_eq!(resp.status(), 404);
    let got: Value = resp.json().await.unwrap();
    assert_eq!(got, real_vllm_answer("err_unknown_model"));
    assert_eq!(attempts(&r), 0, "the router answered all three itself");
}

#[tokio::test]
async fn the_routers_own_errors_share_vllms_shape_and_count_the_model() {
    let s = sims(1, SimConfig::instant()).await;
    let r = router_over(&s).await;
    let url = format!("{}/v1/chat/completions", r.url());
    let mut body = chat("hi", 2, false);
    body["model"] = json!("no-such-model");
    let resp = post(&url, &body).await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"],
        json!({"message": v["error"]["message"], "type": "NotFoundError", "param": "model", "code": 404})
    );
    // No server can take it now: 503, Retry-After, and counted under its model.
    r.fleet.set_draining(&s[0].url(), true).unwrap();
    let resp = post(&url, &chat("hi", 2, false)).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "ServiceUnavailableError");
    assert_eq!(v["error"]["code"], 503);
    let metrics = get_text(&format!("{}/metrics", r.url())).await;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("mvllm_requests_total") && l.contains("status=\"503\""))
        .expect("the 503 is counted");
    assert!(refused.contains(&format!("model=\"{MODEL}\"")), "{refused}");
    let unknown = metrics
        .lines()
        .find(|l| l.starts_with("mvllm_requests_total") && l.contains("status=\"404\""))
        .unwrap();
    assert!(unknown.contains("model=\"unknown\""), "{unknown}");
    // The admin API answers in the same shape.
    let resp = client()
        .post(format!("{}/admin/servers/remove", r.url()))
        .json(&json!({"url": "http://127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "NotFoundError", "{v}");
}

#[tokio::test]
async fn request_targets_that_are_not_a_path_are_refused_and_never_leave_the_fleet() {
    let s = sims(1, SimConfig::instant()).await;
    let r = router_over(&s).await;
    for request in [
        "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "POST * HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{}",
        "CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_exchange(r.addr, request.as_bytes()).await;
        let status = raw_status(&answer);
        assert!(status == 400 || status == 405, "{request:?} got {answer}");
    }
    assert_eq!(attempts(&r), 0, "nothing was forwarded");
    assert!(r.fleet.servers()[0].is_healthy());
    // Absolute-form goes to the configured server whatever authority it names.
    let body = serde_json::to_string(&chat("hi", 2, false)).unwrap();
    let request = format!(
        "POST http://169.254.169.254:80/v1/chat/completions HTTP/1.1\r\nHost: 169.254.169.254\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(r.addr, request.as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(finished(&s[0]), 1, "served by the configured server");
}

#[tokio::test]
async fn an_oversized_content_length_is_refused_before_the_body_and_without_100_continue() {
    let s = sims(1, SimConfig::instant()).await;
    let mut settings = fast_settings();
    settings.max_body_bytes = 64 * 1024;
    let r = router(vec![server_of(&s[0])], settings).await;
    let answer = raw_exchange(
        r.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
}

fn body_limits() -> Settings {
    Settings {
        body_read_timeout: Duration::from_millis(600),
        body_min_bytes_per_second: 1000,
        max_body_bytes: 48 * 1024,
        max_buffered_body_bytes: 64 * 1024,
        ..fast_settings()
    }
}

#[tokio::test]
async fn a_body_that_never_comes_or_trickles_is_cut_with_408() {
    let s = sims(1, SimConfig::instant()).await;
    let r = router(vec![server_of(&s[0])], body_limits()).await;
    // Headers, then no body at all.
    let answer = raw_exchange(
        r.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 408, "{answer}");
    // A body that arrives a few bytes a second.
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..40 {
            if tcp.write_all(b"  ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), trickle)
        .await
        .unwrap();
    let answer = read_until_closed(&mut tcp, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(raw_status(&answer), 408, "{answer}");
    assert_eq!(attempts(&r), 0);
}

#[tokio::test]
async fn bodies_held_at_once_share_a_memory_bound() {
    let s = sims(1, SimConfig::instant()).await;
    let mut settings = body_limits();
    settings.body_read_timeout = Duration::from_secs(30);
    settings.body_min_bytes_per_second = 0;
    let r = router(vec![server_of(&s[0])], settings).await;
    // One client announces 40 KB and sends a little: the router holds room for 40 KB.
    let mut slow = TcpStream::connect(r.addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40000\r\n\r\n{")
        .await
        .unwrap();
    let mut padded = chat("hi", 2, false);
    padded["padding"] = json!("x".repeat(39_000));
    eventually(
        Duration::from_secs(5),
        "a second large body is refused",
        || {
            let url = format!("{}/v1/chat/completions", r.url());
            let padded = padded.clone();
            async move {
                let resp = post(&url, &padded).await;
                resp.status() == 503 && resp.headers().contains_key("retry-after")
            }
        },
    )
    .await;
    // Small ones still pass, and once the first is gone large ones do too.
    assert_eq!(
        post(
            &format!("{}/v1/chat/completions", r.url()),
            &chat("hi", 2, false)
        )
        .await
        .status(),
        200
    );
    drop(slow);
    eventually(Duration::from_secs(5), "the memory is given back", || {
        let url = format!("{}/v1/chat/completions", r.url());
        let padded = padded.clone();
        async move { post(&url, &padded).await.status() == 200 }
    })
    .await;
}

#[tokio::test]
async fn heads_over_the_limit_and_absurd_methods_are_refused() {
    let s = sims(1, SimConfig::instant()).await;
    let r = router_over(&s).await;
    let big = "a".repeat(80 * 1024);
    let answer = raw_exchange(
        r.addr,
        format!(
            "GET /v1/models/x HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(
        raw_status(&answer),
        431,
        "{}",
        &answer[..answer.len().min(200)]
    );
    let method = "A".repeat(70_000);
    let answer = raw_exchange(
        r.addr,
        format!("{method} /v1/models/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let status = raw_status(&answer);
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(attempts(&r), 0, "neither was forwarded");
}

#[tokio::test]
async fn admin_paths_in_disguise_are_never_forwarded() {
    let s = sims(1, SimConfig::instant()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = mvllm_router::start_with(mvllm_router::Options {
        config: mvllm_router::Config {
            servers: vec![server_of(&s[0])],
            settings: fast_settings(),
            ..Default::default()
        },
        config_path: None,
        listener,
        admin_listener: Some(admin),
        otel: None,
    })
    .await
    .unwrap();
    for path in [
        "/admin/reload",
        "//admin/reload",
        "/Admin/reload",
        "/%61dmin/reload",
        "/v1/../admin/reload",
    ] {
        let answer = raw_exchange(
            r.addr,
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let status = raw_status(&answer);
        assert!(status == 403 || status == 404, "{path}: {status}");
    }
    assert_eq!(attempts(&r), 0);
}

#[tokio::test]
async fn os_error_text_never_reaches_clients() {
    // A "server" that accepts, reads the request and resets the connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.readable().await;
                let _ = tcp.try_read(&mut buf);
                #[allow(deprecated)]
                let _ = tcp.set_linger(Some(Duration::ZERO));
                drop(tcp);
            });
        }
    });
    let mut settings = fast_settings();
    settings.enable_active_health_check = false;
    settings.max_retries = 0;
    let r = router(
        vec![mvllm_router::config::ServerConfig {
            url: format!("http://{addr}"),
            max_concurrent_requests: 4,
            api_key: None,
            models: Some(vec![MODEL.into()]),
            role: Default::default(),
            kv_events: None,
        }],
        settings,
    )
    .await;
    let resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("hi", 2, false),
    )
    .await;
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("os error"), "{text}");
    assert!(!text.contains(&addr.to_string()), "{text}");
}

#[tokio::test]
async fn openai_sdk_default_embeddings_pass_through() {
    let s = sims(1, SimConfig::instant()).await;
    let r = router_over(&s).await;
    // What `client.embeddings.create(model=..., input=[...])` sends.
    let resp = post(
        &format!("{}/v1/embeddings", r.url()),
        &json!({"model": MODEL, "input": ["a b c", "d e"], "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["data"][1]["embedding"].is_string(), "{v}");
}
