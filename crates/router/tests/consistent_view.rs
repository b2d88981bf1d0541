//! One view of the fleet per request: a reload landing while a request is in flight changes
//! what the next requests see, never the rest of the one already under way.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post as route_post;
use common::*;
use mvllm_router::config::ServerConfig;
use mvllm_router::routing::PolicyKind;
use mvllm_sim::SimConfig;
use tokio::sync::{Notify, mpsc};

/// A server that says each request arrived, holds the first one until told to go, and answers
/// every request 503 (busy).
async fn held_busy_server() -> (String, mpsc::UnboundedReceiver<()>, Arc<Notify>) {
    let (arrived, arrivals) = mpsc::unbounded_channel();
    let go = Arc::new(Notify::new());
    let first = Arc::new(AtomicBool::new(true));
    let (go2, first2) = (go.clone(), first.clone());
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        route_post(move || {
            let (arrived, go, first) = (arrived.clone(), go2.clone(), first2.clone());
            async move {
                let _ = arrived.send(());
                if first.swap(false, Ordering::SeqCst) {
                    go.notified().await;
                }
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("content-type", "application/json")],
                    r#"{"error":{"message":"busy","type":"ServiceUnavailableError","code":503}}"#,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, arrivals, go)
}

fn trusted(url: String) -> ServerConfig {
    ServerConfig {
        models: Some(vec![MODEL.into()]),
        ..server_of_url(url)
    }
}

#[tokio::test]
async fn a_reload_mid_request_leaves_that_request_on_the_view_it_started_with() {
    let (busy, mut arrivals, go) = held_busy_server().await;
    let good = sims(1, SimConfig::instant()).await;
    let mut settings = fast_settings();
    settings.enable_active_health_check = false;
    settings.routing_policy = PolicyKind::RoundRobin;
    settings.max_retries = 1;
    let servers = vec![trusted(busy), trusted(good[0].url())];
    let r = router(servers.clone(), settings.clone()).await;
    let url = format!("{}/v1/chat/completions", r.url());

    // The first request goes to the busy server (round robin starts at the first) and is held.
    let first = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &chat("hi", 2, false)).await.status() }
    });
    tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
        .await
        .expect("the first request reaches the busy server")
        .unwrap();

    // Meanwhile a reload takes away every retry (a retry budget of nothing).
    let mut no_retries = settings.clone();
    no_retries.retry_budget_ratio = 0.0;
    no_retries.retry_budget_min_per_second = 0.0;
    let summary = r.fleet.apply(&mvllm_router::Config {
        servers,
        settings: no_retries,
        ..Default::default()
    });
    assert!(summary.settings_changed);

    // The held request's 503 is retried on the other server under the rules it started with.
    go.notify_one();
    assert_eq!(
        first.await.unwrap(),
        200,
        "retried under the view it began with"
    );
    assert_eq!(finished(&good[0]), 1);

    // New requests see the new rules: the next one to reach the busy server is not retried.
    assert_eq!(post(&url, &chat("hi", 2, false)).await.status(), 200);
    assert_eq!(post(&url, &chat("hi", 2, false)).await.status(), 503);
    assert_eq!(finished(&good[0]), 2, "no retry under the new view");
}
