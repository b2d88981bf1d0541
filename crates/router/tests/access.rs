//! Client API keys and per-key limits, over real HTTP: who gets in, in OpenAI's error format,
//! what servers see of clients' keys, and 429 with Retry-After at a key's limits.

mod common;

use std::time::Duration;

use common::*;
use mvllm_router::config::{ApiKey, AuthSettings, ServerConfig, Settings};
use mvllm_sim::SimConfig;
use serde_json::Value;

const KEY_A: &str = "sk-team-a-0123456789abcdef";
const KEY_B: &str = "sk-team-b-0123456789abcdef";

fn keyed(keys: Vec<ApiKey>) -> Settings {
    Settings {
        admin_token: Some("admin-token-0123456789".into()),
        auth: AuthSettings {
            keys,
            ..AuthSettings::default()
        },
        ..fast_settings()
    }
}

async fn send(url: &str, key: Option<(&str, &str)>, body: &Value) -> reqwest::Response {
    let mut req = client()
        .post(format!("{url}/v1/chat/completions"))
        .json(body);
    if let Some((name, value)) = key {
        req = req.header(name, value);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn keys_let_clients_in_and_keep_others_out_and_servers_never_see_them() {
    // The simulated server itself requires KEY_A: if the router forwarded the client's key, it
    // would let the request in. The router must strip it, so the server answers 401.
    let s = sim(SimConfig {
        api_key: Some(KEY_A.into()),
        ..SimConfig::instant()
    })
    .await;
    let server = ServerConfig {
        models: Some(vec![MODEL.into()]),
        ..server_of(&s)
    };
    let r = router(
        vec![server],
        keyed(vec![ApiKey::new("a", KEY_A), ApiKey::new("b", KEY_B)]),
    )
    .await;
    let url = r.url();
    let body = chat("hi", 4, false);

    let resp = send(&url, None, &body).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], 401, "{v}");
    assert_eq!(v["error"]["type"], "UnauthorizedError");

    let resp = send(
        &url,
        Some(("authorization", "Bearer sk-wrong-0123456789abcdef")),
        &body,
    )
    .await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Incorrect"),
        "{v}"
    );
    assert!(
        !v.to_string().contains("sk-wrong"),
        "the answer never echoes a key"
    );

    // The right key gets through the router; the server never sees it.
    let resp = send(
        &url,
        Some(("authorization", &format!("Bearer {KEY_A}"))),
        &body,
    )
    .await;
    assert_eq!(resp.status(), 401, "the server got no key from the router");
    let v: Value = resp.json().await.unwrap();
    assert_ne!(
        v["error"]["type"], "UnauthorizedError",
        "answered by the server, not the router: {v}"
    );

    // Probes stay open; /v1/models and the router's own JSON need a key.
    for path in ["/health", "/livez", "/readyz", "/metrics"] {
        let code = client()
            .get(format!("{url}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_ne!(code, 401, "{path} must stay open");
    }
    for path in ["/v1/models", "/load-stats", "/server-models", "/"] {
        let code = client()
            .get(format!("{url}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(code, 401, "{path} needs a key");
        let code = client()
            .get(format!("{url}{path}"))
            .header("x-api-key", KEY_B)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(code, 200, "{path} with x-api-key");
    }
    let refused = r.state.telemetry.render(&r.fleet);
    assert!(
        refused.contains("mvllm_client_refusals_total{reason=\"missing_key\"}"),
        "{refused}"
    );
    assert!(!refused.contains(KEY_A) && !refused.contains(KEY_B));
}

#[tokio::test]
async fn a_keys_rate_and_concurrency_limits_answer_429_with_retry_after() {
    let s = sim(SimConfig::instant()).await;
    let mut slow = ApiKey::new("slow", KEY_A);
    slow.requests_per_second = Some(0.5);
    slow.burst = Some(2);
    let mut narrow = ApiKey::new("narrow", KEY_B);
    narrow.max_concurrent = Some(1);
    let r = router(vec![server_of(&s)], keyed(vec![slow, narrow])).await;
    let url = r.url();
    let body = chat("hi", 2, false);
    let bearer_a = format!("Bearer {KEY_A}");
    for _ in 0..2 {
        let resp = send(&url, Some(("authorization", &bearer_a)), &body).await;
        assert_eq!(resp.status(), 200);
    }
    let resp = send(&url, Some(("authorization", &bearer_a)), &body).await;
    assert_eq!(resp.status(), 429, "the bucket of 2 is empty");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=2).contains(&retry),
        "retry after {retry} s at 0.5 requests/s"
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], 429);
    assert_eq!(v["error"]["type"], "TooManyRequestsError");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("slow"),
        "names the key: {v}"
    );

    // One stream in flight holds the narrow key's only slot until it ends.
    let bearer_b = format!("Bearer {KEY_B}");
    let mut stream = send(
        &url,
        Some(("authorization", &bearer_b)),
        &chat("long", 400, true),
    )
    .await;
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.unwrap();
    assert!(first.is_some());
    let resp = send(&url, Some(("authorization", &bearer_b)), &body).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    drop(stream);
    mvllm_testkit::eventually(Duration::from_secs(5), "the slot to free up", || async {
        send(&url, Some(("authorization", &bearer_b)), &body)
            .await
            .status()
            == 200
    })
    .await;
}

#[tokio::test]
async fn protect_metrics_requires_a_key_for_metrics() {
    let s = sim(SimConfig::instant()).await;
    let mut settings = keyed(vec![ApiKey::new("a", KEY_A)]);
    settings.auth.protect_metrics = true;
    let r = router(vec![server_of(&s)], settings).await;
    let get = |key: Option<&'static str>| {
        let mut req = client().get(format!("{}/metrics", r.url()));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    assert_eq!(get(None).await.unwrap().status(), 401);
    assert_eq!(get(Some(KEY_A)).await.unwrap().status(), 200);
    assert_eq!(
        client()
            .get(format!("{}/health", r.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn with_keys_health_shows_strangers_only_counts() {
    let s = sim(SimConfig::instant()).await;
    let r = router(vec![server_of(&s)], keyed(vec![ApiKey::new("a", KEY_A)])).await;
    let open = get_json(&format!("{}/health", r.url())).await;
    assert_eq!(open["healthy_servers"], 1);
    assert!(
        open.get("servers").is_none() && open.get("config").is_none(),
        "no server URLs, models or errors for strangers: {open}"
    );
    let detailed: Value = client()
        .get(format!("{}/health", r.url()))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detailed["servers"][0]["url"], s.url());
    // Without keys the seed's full view stays open.
    let r = router(vec![server_of(&s)], fast_settings()).await;
    let open = get_json(&format!("{}/health", r.url())).await;
    assert_eq!(open["servers"][0]["url"], s.url());
}

#[tokio::test]
async fn browsers_get_cors_and_preflights_need_no_key_nor_reach_a_server() {
    let s = sims(1, SimConfig::instant()).await;
    let r = router(
        s.iter().map(server_of).collect(),
        keyed(vec![ApiKey::new("a", KEY_A)]),
    )
    .await;
    let url = format!("{}/v1/chat/completions", r.url());
    let origin = "https://chat.example.com";
    let preflight = client()
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200, "answered without a key");
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], origin);
    assert_eq!(h["access-control-allow-methods"], "POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization,content-type"
    );
    assert_eq!(
        s[0].server_load()
            + r.fleet.servers()[0]
                .stats
                .requests
                .load(std::sync::atomic::Ordering::Relaxed) as usize,
        0,
        "the preflight never reached a server"
    );
    // The request itself carries the header too, with its key as usual.
    let resp = client()
        .post(&url)
        .header("origin", origin)
        .header("authorization", format!("Bearer {KEY_A}"))
        .json(&chat("hi", 2, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], origin);
    // Without a key it is still refused, with the header so the browser can read the error.
    let refused = client()
        .post(&url)
        .header("origin", origin)
        .json(&chat("hi", 2, false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], origin);
}

#[tokio::test]
async fn cors_origins_can_be_listed_or_turned_off() {
    let s = sims(1, SimConfig::instant()).await;
    let r = router(
        s.iter().map(server_of).collect(),
        Settings {
            cors_allow_origins: vec!["https://ok.example.com".into()],
            ..fast_settings()
        },
    )
    .await;
    let get = |origin: &'static str| {
        let url = format!("{}/", r.url());
        async move {
            client()
                .get(url)
                .header("origin", origin)
                .send()
                .await
                .unwrap()
        }
    };
    let ok = get("https://ok.example.com").await;
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://ok.example.com"
    );
    let other = get("https://evil.example.com").await;
    assert_eq!(
        other.status(),
        200,
        "the request is served; only the browser is told no"
    );
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
