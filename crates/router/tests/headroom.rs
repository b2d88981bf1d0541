//! The headroom kept for tenants under their share, end to end: while one tenant floods a full
//! fleet and another is active, the flood may not take the last free slots, and the other
//! tenant's request is served at once instead of waiting for a flood's request to end.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use mvllm_router::config::{ApiKey, AuthSettings, ServerConfig};
use serde_json::json;
use tokio::sync::Notify;

const FLOOD_KEY: &str = "sk-tenant-flood-0123456789";
const LIGHT_KEY: &str = "sk-tenant-light-0123456789";

/// A server that holds every request whose prompt says `hold` until released; the others are
/// answered at once.
async fn holding_server() -> (String, Arc<AtomicBool>, Arc<Notify>) {
    let released = Arc::new(AtomicBool::new(false));
    let go = Arc::new(Notify::new());
    let (r, g) = (released.clone(), go.clone());
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: String| {
            let (released, go) = (r.clone(), g.clone());
            async move {
                if body.contains("hold") {
                    while !released.load(Ordering::SeqCst) {
                        let notified = go.notified();
                        if released.load(Ordering::SeqCst) {
                            break;
                        }
                        notified.await;
                    }
                }
                (
                    [("content-type", "application/json")],
                    r#"{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, released, go)
}

async fn ask(url: &str, key: &str, prompt: &str) -> u16 {
    client()
        .post(url)
        .bearer_auth(key)
        .json(&json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 4,
        }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_flood_leaves_the_headroom_to_an_active_tenant_under_its_share() {
    let (url, released, go) = holding_server().await;
    let mut flood = ApiKey::new("flood", FLOOD_KEY);
    flood.weight = Some(1.0);
    let mut light = ApiKey::new("light", LIGHT_KEY);
    // A weight other than 1 makes tenants matter to requests.
    light.weight = Some(2.0);
    let mut settings = fast_settings();
    settings.enable_active_health_check = false;
    settings.queue_size = 100;
    settings.queue_timeout = Duration::from_secs(30);
    settings.admin_token = Some("admin-token-0123456789".into());
    settings.auth = AuthSettings {
        keys: vec![flood, light],
        ..AuthSettings::default()
    };
    assert_eq!(settings.share_headroom, 0.125, "the default: 1 of 8 slots");
    let server = ServerConfig {
        max_concurrent_requests: 8,
        models: Some(vec![MODEL.into()]),
        ..server_of_url(url)
    };
    let r = router(vec![server], settings).await;
    let chat = format!("{}/v1/chat/completions", r.url());

    // The light tenant is active (one request, answered at once).
    assert_eq!(ask(&chat, LIGHT_KEY, "hello").await, 200);
    // The flood sends 12 requests the server holds: 7 take slots, 5 wait, 1 slot stays free.
    let floods: Vec<_> = (0..12)
        .map(|_| {
            let chat = chat.clone();
            tokio::spawn(async move { ask(&chat, FLOOD_KEY, "hold this").await })
        })
        .collect();
    let (fleet, queue) = (r.fleet.clone(), r.state.admission.wait_queue.clone());
    mvllm_testkit::eventually(Duration::from_secs(10), "7 held, 5 waiting", || {
        let (fleet, queue) = (fleet.clone(), queue.clone());
        async move { fleet.servers()[0].in_flight() == 7 && queue.len() == 5 }
    })
    .await;
    // The light tenant's request takes the free slot now, while every flood request is held.
    let light = tokio::time::timeout(Duration::from_secs(10), ask(&chat, LIGHT_KEY, "hi"))
        .await
        .expect("served without waiting for the flood");
    assert_eq!(light, 200);
    assert!(floods.iter().all(|f| !f.is_finished()));
    assert_eq!(r.state.admission.wait_queue.len(), 5);
    // Each tenant's requests holding slots, in /metrics.
    let metrics = get_text(&format!("{}/metrics", r.url())).await;
    assert!(
        metrics.contains("mvllm_tenant_in_flight{tenant=\"flood\"} 7\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mvllm_tenant_in_flight{tenant=\"light\"} 0\n"),
        "{metrics}"
    );
    // Released, the flood is served in full: nothing was lost while it waited.
    released.store(true, Ordering::SeqCst);
    go.notify_waiters();
    for f in floods {
        assert_eq!(f.await.unwrap(), 200);
    }
}
