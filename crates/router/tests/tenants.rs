//! Tenants' token and request budgets, end to end: a tenant over its budget gets 429 with
//! `Retry-After`, other tenants are untouched, charges settle from the answers' usage, and the
//! figures show in `/admin/status` and `/metrics`.

mod common;

use common::*;
use mvllm_router::config::{ApiKey, AuthSettings};
use mvllm_sim::SimConfig;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-0123456789";

fn key(name: &str, secret: &str, tenant: &str) -> ApiKey {
    let mut k = ApiKey::new(name, secret);
    k.tenant = Some(tenant.into());
    k
}

async fn ask(url: &str, key: &str, max_tokens: u64) -> reqwest::Response {
    client()
        .post(url)
        .bearer_auth(key)
        .json(&json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": max_tokens,
            "ignore_eos": true,
        }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tenant_over_its_token_budget_waits_and_others_do_not() {
    let s = sims(1, SimConfig::instant()).await;
    // team-a: 600 tokens a minute, a bucket of 100; team-b: no budget.
    let mut a = key("a-1", "sk-team-a-0123456789", "team-a");
    a.tokens_per_minute = Some(600);
    let a2 = key("a-2", "sk-team-a-9876543210", "team-a");
    let b = key("b-1", "sk-team-b-0123456789", "team-b");
    let settings = mvllm_router::Settings {
        auth: AuthSettings {
            keys: vec![a, a2, b],
            ..AuthSettings::default()
        },
        admin_token: Some(ADMIN.into()),
        ..fast_settings()
    };
    let r = router(vec![server_of(&s[0])], settings).await;
    let url = format!("{}/v1/chat/completions", r.url());

    let first = ask(&url, "sk-team-a-0123456789", 60).await;
    assert_eq!(first.status(), 200);
    let usage: Value = first.json().await.unwrap();
    let spent = usage["usage"]["total_tokens"].as_u64().unwrap();
    assert!(spent > 60, "{usage}");

    // The tenant's other key shares the spent bucket.
    let refused = ask(&url, "sk-team-a-9876543210", 60).await;
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&wait), "retry after {wait} s");
    let body: Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("team-a") && message.contains("600 tokens per minute"),
        "{message}"
    );

    // Another tenant is not held back.
    for _ in 0..3 {
        assert_eq!(ask(&url, "sk-team-b-0123456789", 60).await.status(), 200);
    }

    // The charge was settled from usage; the refusal counted; the figures are published.
    let status = client()
        .get(format!("{}/admin/status", r.url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let tenants = status["tenants"].as_array().unwrap();
    let team_a = tenants.iter().find(|t| t["name"] == "team-a").unwrap();
    assert_eq!(team_a["tokens"].as_u64(), Some(spent), "{team_a}");
    assert_eq!(team_a["admitted"], 1);
    assert_eq!(team_a["over_budget"], 1);
    assert_eq!(team_a["tokens_per_minute"], 600);
    let team_b = tenants.iter().find(|t| t["name"] == "team-b").unwrap();
    assert_eq!(team_b["admitted"], 3);
    let metrics = client()
        .get(format!("{}/metrics", r.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"mvllm_tenant_requests{tenant="team-a",outcome="over_budget"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        r#"mvllm_tenant_tokens{{tenant="team-a",outcome="charged"}} {spent}"#
    )));
}

#[tokio::test]
async fn a_request_budget_counts_requests_and_a_refused_request_is_refunded() {
    let s = sims(1, SimConfig::instant()).await;
    // 12 requests a minute: a bucket of two.
    let mut a = key("a-1", "sk-team-a-0123456789", "team-a");
    a.requests_per_minute = Some(12);
    let settings = mvllm_router::Settings {
        auth: AuthSettings {
            keys: vec![a],
            ..AuthSettings::default()
        },
        admin_token: Some(ADMIN.into()),
        ..fast_settings()
    };
    let r = router(vec![server_of(&s[0])], settings).await;
    let url = format!("{}/v1/chat/completions", r.url());
    // A request for a model nobody serves is refused by the router: not charged.
    let unknown = client()
        .post(&url)
        .bearer_auth("sk-team-a-0123456789")
        .json(&json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(ask(&url, "sk-team-a-0123456789", 4).await.status(), 200);
    assert_eq!(ask(&url, "sk-team-a-0123456789", 4).await.status(), 200);
    let third = ask(&url, "sk-team-a-0123456789", 4).await;
    assert_eq!(third.status(), 429);
    let body: Value = third.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("12 requests per minute"),
        "{body}"
    );
}

/// A server of one slot whose first request is held until the test says; the others are
/// answered at once.
async fn one_slot_server() -> (String, std::sync::Arc<tokio::sync::Notify>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let first = std::sync::Arc::new(AtomicBool::new(true));
    let go2 = go.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let (go, first) = (go2.clone(), first.clone());
            async move {
                if first.swap(false, Ordering::SeqCst) {
                    go.notified().await;
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
    (url, go)
}

#[tokio::test]
async fn when_the_fleet_is_full_critical_leaves_the_queue_first_and_batch_is_shed_first() {
    use mvllm_router::config::{Priority, ServerConfig};
    use std::time::Duration;
    let (url, go) = one_slot_server().await;
    let mut batch = key("batch-1", "sk-batch-0123456789", "evals");
    batch.priority = Some(Priority::Batch);
    let mut critical = key("chat-1", "sk-chat-01234567890", "chat");
    critical.priority = Some(Priority::Critical);
    let mut settings = fast_settings();
    settings.enable_active_health_check = false;
    settings.queue_size = 3;
    settings.queue_timeout = Duration::from_secs(30);
    settings.admin_token = Some(ADMIN.into());
    settings.auth = AuthSettings {
        keys: vec![batch, critical],
        ..AuthSettings::default()
    };
    let server = ServerConfig {
        max_concurrent_requests: 1,
        models: Some(vec![MODEL.into()]),
        ..server_of_url(url)
    };
    let r = router(vec![server], settings).await;
    let chat_url = format!("{}/v1/chat/completions", r.url());
    let queued = |n: usize| {
        let q = r.state.admission.wait_queue.clone();
        async move {
            mvllm_testkit::eventually(Duration::from_secs(10), &format!("{n} waiting"), || {
                let q = q.clone();
                async move { q.len() == n }
            })
            .await;
        }
    };
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let send = |label: &'static str, key: &'static str| {
        let (url, done_tx) = (chat_url.clone(), done_tx.clone());
        tokio::spawn(async move {
            let status = ask(&url, key, 4).await.status().as_u16();
            let _ = done_tx.send((label, status));
        });
    };
    // The one slot is taken and held; three batch requests wait.
    send("holder", "sk-batch-0123456789");
    mvllm_testkit::eventually(Duration::from_secs(10), "the slot taken", || async {
        r.fleet.servers()[0].in_flight() == 1
    })
    .await;
    for (i, label) in ["batch-1", "batch-2", "batch-3"].into_iter().enumerate() {
        send(label, "sk-batch-0123456789");
        queued(i + 1).await;
    }
    // The line is full: a critical request sheds the newest batch request (429, Retry-After).
    send("critical", "sk-chat-01234567890");
    let (label, status) = done.recv().await.unwrap();
    assert_eq!((label, status), ("batch-3", 429));
    queued(3).await;
    // The slot frees: the critical request goes first, then the batch ones in order.
    go.notify_one();
    let mut order = Vec::new();
    for _ in 0..4 {
        let (label, status) = done.recv().await.unwrap();
        assert_eq!(status, 200, "{label}");
        order.push(label);
    }
    assert_eq!(order, ["holder", "critical", "batch-1", "batch-2"]);
}
