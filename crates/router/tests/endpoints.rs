//! The router's own endpoints: the fields the Python mvllm's clients read, and `/v1/models`.

mod common;

use common::*;
use mvllm_router::config::ServerConfig;
use mvllm_sim::SimConfig;
use serde_json::Value;
use std::time::Duration;

/// The JSON type of a value as a Python client sees it (`int` and `float` differ).
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// Asserts each named field of `v` has the type the Python mvllm 0.1.0 wrote (measured by
/// `scripts/seed-compare.py` against the seed itself).
fn assert_types(v: &Value, at: &str, fields: &[(&str, &str)]) {
    for (key, want) in fields {
        assert_eq!(kind(&v[key]), *want, "{at}.{key} = {}", v[key]);
    }
}

/// The seed's `datetime.now().isoformat()`: local time, no offset, e.g. 2026-11-26T20:08:44.723149.
fn assert_naive_iso(v: &Value, at: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{at} is not a string: {v}"));
    let date_time = s.split_once('.').map_or(s, |(whole, _)| whole);
    let shape: String = date_time
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999-99-99T99:99:99", "{at} = {s}");
}

#[tokio::test]
async fn root_health_load_stats_and_server_models_carry_the_seed_fields_with_its_types() {
    let s = sims(2, SimConfig::instant()).await;
    let r = router_over(&s).await;
    let root = get_json(&format!("{}/", r.url())).await;
    assert_eq!(root["service"], "vLLM Router");
    assert_eq!(root["status"], "running");
    assert!(root["version"].is_string());

    let resp = client()
        .get(format!("{}/health", r.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h: Value = resp.json().await.unwrap();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["health_score"], 1.0);
    assert_eq!(
        (
            h["total_servers"].as_u64(),
            h["healthy_servers"].as_u64(),
            h["unhealthy_servers"].as_u64()
        ),
        (Some(2), Some(2), Some(0))
    );
    let server = &h["servers"][0];
    assert_types(
        server,
        "/health servers[]",
        &[
            ("url", "string"),
            ("healthy", "bool"),
            ("consecutive_failures", "int"),
            ("success_rate", "float"),
            ("avg_response_time", "float"),
            ("total_checks", "int"),
            ("supported_models", "list"),
        ],
    );
    assert_naive_iso(&server["last_check"], "last_check");
    assert_naive_iso(&server["models_last_updated"], "models_last_updated");
    assert_eq!(server["supported_models"][0], MODEL);
    assert_types(
        &h["config"],
        "/health config",
        &[
            ("health_check_enabled", "bool"),
            // 0.1 s here; whole seconds are written as integers, as the seed's were.
            ("health_check_interval", "float"),
            ("min_success_rate", "float"),
            ("max_response_time", "float"),
        ],
    );

    let l = get_json(&format!("{}/load-stats", r.url())).await;
    let row = &l["servers"][0];
    assert_types(
        row,
        "/load-stats servers[]",
        &[
            ("url", "string"),
            ("current_load", "int"),
            ("max_capacity", "int"),
            ("available_capacity", "int"),
            ("utilization_percent", "float"),
            ("status", "bool"),
            ("state", "string"),
            ("detailed_metrics", "object"),
        ],
    );
    assert_eq!(row["status"], true);
    assert_naive_iso(&row["last_updated"], "last_updated");
    assert_types(
        &row["detailed_metrics"],
        "detailed_metrics",
        &[
            ("num_requests_running", "int"),
            ("num_requests_waiting", "int"),
            ("gpu_cache_usage_perc", "float"),
            ("process_max_fds", "int"),
        ],
    );
    assert_types(
        &l["summary"],
        "/load-stats summary",
        &[
            ("total_servers", "int"),
            ("healthy_servers", "int"),
            ("total_active_load", "int"),
            ("total_capacity", "int"),
            ("overall_utilization_percent", "float"),
        ],
    );
    assert_eq!(l["summary"]["total_capacity"], 16);

    let m = get_json(&format!("{}/server-models", r.url())).await;
    assert_eq!(m["total_servers"], 2);
    assert_eq!(m["healthy_servers"], 2);
    assert_eq!(m["servers"][s[0].url()]["supported_models"][0], MODEL);
    assert_eq!(m["servers"][s[0].url()]["healthy"], true);
    assert_naive_iso(
        &m["servers"][s[0].url()]["models_last_updated"],
        "/server-models models_last_updated",
    );
}

#[tokio::test]
async fn load_stats_counts_every_server_and_caps_utilization_as_the_seed_did() {
    let busy = sim(SimConfig::default()).await;
    // An address where nothing listens (bound, read, released).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let server = |url: String, max_concurrent_requests| ServerConfig {
        max_concurrent_requests,
        ..server_of_url(url)
    };
    let r = router(
        vec![server(busy.url(), 1), server(dead, 5)],
        fast_settings(),
    )
    .await;
    // Three long streams sent to the server directly (other clients of the same GPU server):
    // its own metrics say 3 running, above the 1 it was given here.
    let direct = format!("{}/v1/chat/completions", busy.url());
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(post(&direct, &chat(&format!("held {i}"), 5000, true)).await);
    }
    let url = format!("{}/load-stats", r.url());
    eventually(
        Duration::from_secs(5),
        "3 running, the dead server down",
        || async {
            let l = get_json(&url).await;
            l["servers"][0]["current_load"] == 3 && l["servers"][1]["status"] == false
        },
    )
    .await;
    let l = get_json(&url).await;
    assert_eq!(l["servers"][0]["utilization_percent"], 100.0);
    assert_eq!(l["servers"][0]["available_capacity"], 0);
    assert_eq!(
        l["servers"][0]["detailed_metrics"]["num_requests_running"],
        3
    );
    assert_eq!(l["servers"][1]["state"], "unhealthy");
    assert_eq!(
        l["servers"][1]["detailed_metrics"]["num_requests_running"],
        0
    );
    assert_naive_iso(
        &l["servers"][1]["last_updated"],
        "a never-scraped server's last_updated",
    );
    assert_eq!(l["summary"]["total_servers"], 2);
    assert_eq!(l["summary"]["total_capacity"], 6, "every server counts");
    assert_eq!(l["summary"]["total_active_load"], 3);
    assert_eq!(l["summary"]["overall_utilization_percent"], 50.0);
    drop(held);
}

#[tokio::test]
async fn v1_models_is_the_union_of_healthy_servers_cards_as_written() {
    let a = sim(SimConfig {
        loras: vec!["sql-lora".into()],
        ..SimConfig::instant()
    })
    .await;
    let b = sim(SimConfig {
        served_model_names: vec!["mistral".into()],
        ..SimConfig::instant()
    })
    .await;
    let fleet = [a, b];
    let r = router_over(&fleet).await;
    let v = get_json(&format!("{}/v1/models", r.url())).await;
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [MODEL, "sql-lora", "mistral"]);
    let direct = get_json(&format!("{}/v1/models", fleet[0].url())).await;
    assert_eq!(
        v["data"][1], direct["data"][1],
        "cards pass through with their metadata"
    );
    // A server that goes down leaves the union; nothing is invented.
    fleet[1].update_faults(|f| f.down = true);
    eventually(
        std::time::Duration::from_secs(3),
        "mistral gone",
        || async {
            let v = get_json(&format!("{}/v1/models", r.url())).await;
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["id"] != "mistral")
        },
    )
    .await;
}

#[tokio::test]
async fn an_empty_fleet_says_so() {
    let r = router(vec![], fast_settings()).await;
    let resp = client()
        .get(format!("{}/health", r.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "no_servers");
    let resp = post(
        &format!("{}/v1/completions", r.url()),
        &serde_json::json!({"prompt": "x"}),
    )
    .await;
    assert_eq!(resp.status(), 503);
}
