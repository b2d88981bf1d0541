//! vLLM's management routes (`/sleep`, LoRA loading, `/reset_prefix_cache`, ...) are refused to
//! clients and reachable through the admin API, on one server or all; LoRA changes made there
//! show in routing at once.

mod common;

use std::time::Duration;

use common::*;
use mvllm_sim::SimConfig;
use serde_json::{Value, json};

/// Settings where nothing is rediscovered in a test's time: what changes, changes at once.
fn slow_discovery() -> mvllm_router::Settings {
    mvllm_router::Settings {
        models_refresh_interval: Duration::from_secs(600),
        ..fast_settings()
    }
}

async fn sim_models(s: &mvllm_sim::SimHandle) -> Vec<String> {
    let v = get_json(&format!("{}/v1/models", s.url())).await;
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn clients_cannot_call_management_routes_in_any_spelling() {
    let s = sims(1, SimConfig::instant()).await;
    let r = router(s.iter().map(server_of).collect(), slow_discovery()).await;
    let c = client();
    for path in [
        "/v1/load_lora_adapter",
        "/v1//load_lora_adapter",
        "/V1/Load_Lora_Adapter",
        "/%761/load_lora_adapter",
        "/sleep",
        "/wake_up",
        "/reset_prefix_cache",
        "/collective_rpc",
        "/start_profile",
        "/pause",
    ] {
        let resp = c
            .post(format!("{}{path}", r.url()))
            .json(&json!({"lora_name": "evil", "lora_path": "/x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "ForbiddenError", "{path}: {v}");
        assert_eq!(v["error"]["code"], 403);
    }
    assert!(
        !sim_models(&s[0]).await.contains(&"evil".to_string()),
        "nothing reached the server"
    );
}

#[tokio::test]
async fn the_admin_api_loads_an_adapter_on_one_server_and_routing_knows_at_once() {
    let s = sims(2, SimConfig::instant()).await;
    let r = router(s.iter().map(server_of).collect(), slow_discovery()).await;
    let c = client();
    let target = s[1].url();
    let resp = c
        .post(format!(
            "{}/admin/upstream/v1/load_lora_adapter?server={target}",
            r.url()
        ))
        .json(&json!({"lora_name": "sql-lora", "lora_path": "/adapters/sql"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["results"][0]["server"], target);
    assert_eq!(v["results"][0]["status"], 200);
    assert!(sim_models(&s[1]).await.contains(&"sql-lora".to_string()));
    assert!(!sim_models(&s[0]).await.contains(&"sql-lora".to_string()));
    // No wait for models_refresh_interval (600 s here): the adapter is served now, on s[1].
    let models = get_json(&format!("{}/v1/models", r.url())).await;
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "sql-lora")
    );
    for _ in 0..4 {
        let mut body = chat("select", 4, false);
        body["model"] = json!("sql-lora");
        let resp = post(&format!("{}/v1/chat/completions", r.url()), &body).await;
        assert_eq!(resp.status(), 200);
    }
    // Unloaded on every server (no `server`): gone from routing at once.
    let resp = c
        .post(format!("{}/admin/upstream/v1/unload_lora_adapter", r.url()))
        .json(&json!({"lora_name": "sql-lora"}))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2, "{v}");
    let mut body = chat("select", 4, false);
    body["model"] = json!("sql-lora");
    let resp = post(&format!("{}/v1/chat/completions", r.url()), &body).await;
    assert_eq!(resp.status(), 404);
    // Only management routes, and only named servers.
    let resp = c
        .post(format!("{}/admin/upstream/v1/chat/completions", r.url()))
        .json(&chat("hi", 2, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = c
        .post(format!(
            "{}/admin/upstream/reset_prefix_cache?server=http://127.0.0.1:1",
            r.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn an_allow_list_gives_clients_the_routes_it_names() {
    let s = sims(1, SimConfig::instant()).await;
    let mut settings = slow_discovery();
    settings.allow_management_routes = vec!["/reset_prefix_cache".into()];
    let r = router(s.iter().map(server_of).collect(), settings).await;
    let c = client();
    let resp = c
        .post(format!("{}/reset_prefix_cache", r.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "forwarded: the simulator answered");
    let resp = c.post(format!("{}/sleep", r.url())).send().await.unwrap();
    assert_eq!(resp.status(), 403, "the others stay refused");
}
