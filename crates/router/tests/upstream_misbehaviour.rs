//! Servers that answer badly: a busy fleet, a stream cut in the middle of an event, a config
//! that lists the router itself, a server listing a hundred thousand models.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post as route_post};
use bytes::Bytes;
use common::*;
use mvllm_router::config::ServerConfig;
use mvllm_sim::SimConfig;
use serde_json::{Value, json};

/// Serves `app` on a port of its own, like a (hostile) server would.
async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A server the router takes on trust: static models, no active health checks.
fn trusted(url: String) -> ServerConfig {
    ServerConfig {
        url,
        max_concurrent_requests: 8,
        api_key: None,
        models: Some(vec![MODEL.into()]),
        role: Default::default(),
        kv_events: None,
    }
}

#[tokio::test]
async fn a_busy_fleet_answers_the_servers_busy_status_with_retry_after() {
    let s = sims(1, SimConfig::instant()).await;
    s[0].update_faults(|f| {
        f.error_rate = 1.0;
        f.error_status = 503;
    });
    let r = router_over(&s).await;
    let resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("hi", 2, false),
    )
    .await;
    assert_eq!(resp.status(), 503, "the server's own answer, not a 502");
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("busy"),
        "{v}"
    );

    // Two servers, both saying 429: each tried once, then the last one's 429 reaches the client.
    let s = sims(2, SimConfig::instant()).await;
    for sim in &s {
        sim.update_faults(|f| {
            f.error_rate = 1.0;
            f.error_status = 429;
        });
    }
    let r = router_over(&s).await;
    let resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("hi", 2, false),
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(attempts(&r), 2);
}

#[tokio::test]
async fn a_stream_cut_mid_event_ends_that_event_before_the_error_event() {
    let chunk = r#"data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a"}}]}"#;
    // The server sends one event, then half of the next, then dies: each part only once the
    // client has received the one before, so none is merged with the server's end.
    let go = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let permits = go.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        route_post(move || {
            let go = permits.clone();
            async move {
                let parts: Vec<Result<Bytes, std::io::Error>> = vec![
                    Ok(Bytes::from(format!("{chunk}\n\n"))),
                    Ok(Bytes::from_static(b"data: {\"id\":\"c\",\"obj")),
                    Err(std::io::Error::other("the server died")),
                ];
                let paced = futures_util::stream::unfold(
                    (parts.into_iter(), go, true),
                    |(mut rest, go, first)| async move {
                        if !first {
                            go.acquire().await.expect("open").forget();
                        }
                        rest.next().map(|part| (part, (rest, go, false)))
                    },
                );
                (
                    [("content-type", "text/event-stream")],
                    Body::from_stream(paced),
                )
            }
        }),
    );
    let addr = serve(app).await;
    let mut settings = fast_settings();
    settings.enable_active_health_check = false;
    let r = router(vec![trusted(format!("http://{addr}"))], settings).await;
    let mut resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("hi", 2, true),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    // The first event, then the half one (the second `"obj`), then the end.
    for (received, count, then) in [("\n\n", 1, 1), ("\"obj", 2, 1), ("[DONE]", 1, 0)] {
        while text.matches(received).count() < count {
            let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
                .await
                .expect("the next part within 10 s")
                .unwrap()
                .expect("more of the stream");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        go.add_permits(then);
    }
    assert!(resp.chunk().await.unwrap().is_none(), "the stream ends");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4, "{text:?}");
    assert_eq!(
        events[1], "data: {\"id\":\"c\",\"obj",
        "the half event, ended"
    );
    let error: Value = serde_json::from_str(events[2].strip_prefix("data: ").unwrap())
        .unwrap_or_else(|e| panic!("the error event stands alone: {e}: {text:?}"));
    assert_eq!(error["error"]["code"], 502);
    assert_eq!(events[3], "data: [DONE]");
}

#[tokio::test]
async fn a_config_listing_the_router_itself_answers_508_instead_of_looping() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = format!("http://{}", listener.local_addr().unwrap());
    let s = sims(1, SimConfig::instant()).await;
    let mut settings = fast_settings();
    settings.enable_active_health_check = false;
    settings.max_retries = 0;
    let r = mvllm_router::start(
        &mvllm_router::Config {
            servers: vec![trusted(me)],
            settings: settings.clone(),
            ..Default::default()
        },
        listener,
    )
    .await
    .unwrap();
    let resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("hi", 2, false),
    )
    .await;
    assert_eq!(resp.status(), 508);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "LoopDetectedError");
    assert_eq!(attempts(&r), 1, "one hop out, refused when it came back");

    // Listed beside a real server: requests reach the real one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = format!("http://{}", listener.local_addr().unwrap());
    settings.max_retries = 3;
    let r = mvllm_router::start(
        &mvllm_router::Config {
            servers: vec![trusted(me), trusted(s[0].url())],
            settings,
            ..Default::default()
        },
        listener,
    )
    .await
    .unwrap();
    let url = format!("{}/v1/chat/completions", r.url());
    for i in 0..6 {
        assert_eq!(
            post(&url, &chat(&format!("q{i}"), 2, false)).await.status(),
            200
        );
    }
    assert_eq!(finished(&s[0]), 6, "each served once by the real server");
}

#[tokio::test]
async fn a_server_with_a_hundred_thousand_models_is_capped() {
    let cards: Vec<Value> = (0..100_000)
        .map(|i| json!({"id": format!("model-{i}"), "object": "model", "owned_by": "vllm"}))
        .collect();
    let models =
        Bytes::from(serde_json::to_vec(&json!({"object": "list", "data": cards})).unwrap());
    let app = axum::Router::new()
        .route("/health", get(|| async { "" }))
        .route(
            "/metrics",
            get(|| async { "vllm:num_requests_running 0\n" }),
        )
        .route(
            "/v1/models",
            get(move || {
                let models = models.clone();
                async move { ([("content-type", "application/json")], models) }
            }),
        );
    let addr = serve(app).await;
    let mut settings = fast_settings();
    settings.max_models_per_server = 1000;
    let r = router(
        vec![ServerConfig {
            url: format!("http://{addr}"),
            max_concurrent_requests: 8,
            api_key: None,
            models: None,
            role: Default::default(),
            kv_events: None,
        }],
        settings,
    )
    .await;
    let listed = get_json(&format!("{}/v1/models", r.url())).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1000);
    let mut body = chat("hi", 2, false);
    body["model"] = json!("nope");
    let resp = post(&format!("{}/v1/chat/completions", r.url()), &body).await;
    assert_eq!(resp.status(), 404);
    let text = resp.text().await.unwrap();
    assert!(text.len() < 4096, "a short answer: {} bytes", text.len());
    assert!(text.contains("and 980 more"), "{text}");
}

#[tokio::test]
async fn an_answer_shorter_than_its_content_length_reaches_the_client_as_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":")
                    .await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    let mut settings = fast_settings();
    settings.enable_active_health_check = false;
    let r = router(vec![trusted(format!("http://{addr}"))], settings).await;
    let resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("hi", 2, false),
    )
    .await;
    // The head has gone out; what can still be said is that the body is incomplete: the
    // connection is cut before its declared length, never ended as if complete.
    assert!(resp.bytes().await.is_err(), "the client sees the cut");
    assert_eq!(
        r.fleet.servers()[0]
            .stats
            .failures
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "counted against the server"
    );
}

/// A server that sends `events` SSE events `every` apart, then, if `then_silent`, holds the
/// stream open without a byte; otherwise ends it with `[DONE]`.
fn paced_stream_server(events: usize, every: Duration, then_silent: bool) -> axum::Router {
    axum::Router::new().route(
        "/v1/chat/completions",
        route_post(move || async move {
            let chunk = r#"data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a"}}]}"#;
            let paced = futures_util::stream::unfold(0usize, move |sent| async move {
                if sent < events {
                    // The pacing is the behaviour under test: a server producing tokens slowly.
                    tokio::time::sleep(every).await;
                    Some((Ok::<_, std::io::Error>(Bytes::from(format!("{chunk}\n\n"))), sent + 1))
                } else if then_silent {
                    std::future::pending().await
                } else if sent == events {
                    Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), sent + 1))
                } else {
                    None
                }
            });
            (
                [("content-type", "text/event-stream")],
                Body::from_stream(paced),
            )
        }),
    )
}

/// A streamed chat completion through a router with `stream_idle_timeout = 400 ms` in front of
/// `server`: the text the client received, or a failure if it never ended.
async fn stream_with_idle_timeout_400ms(server: axum::Router) -> String {
    let addr = serve(server).await;
    let mut settings = fast_settings();
    settings.enable_active_health_check = false;
    settings.stream_idle_timeout = Duration::from_millis(400);
    let r = router(vec![trusted(format!("http://{addr}"))], settings).await;
    let resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("hi", 2, true),
    )
    .await;
    assert_eq!(resp.status(), 200);
    tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .expect("the stream never ended")
        .unwrap()
}

#[tokio::test]
async fn a_stream_silent_for_stream_idle_timeout_is_cut_with_an_error_event() {
    let text =
        stream_with_idle_timeout_400ms(paced_stream_server(2, Duration::from_millis(20), true))
            .await;
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4, "two events, the error, [DONE]: {text:?}");
    assert!(events[2].contains("\"error\""), "{text:?}");
    assert_eq!(events[3], "data: [DONE]");
}

#[tokio::test]
async fn a_stream_that_keeps_sending_outlives_stream_idle_timeout() {
    // 12 events 100 ms apart: 1.2 s in all, three times the idle timeout, never 400 ms silent.
    let text =
        stream_with_idle_timeout_400ms(paced_stream_server(12, Duration::from_millis(100), false))
            .await;
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 13, "{text:?}");
    assert!(!text.contains("\"error\""), "{text:?}");
    assert_eq!(events[12], "data: [DONE]");
}
