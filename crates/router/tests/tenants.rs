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
