//! The router's own endpoints: the fields the Python mvllm's clients read, and `/v1/models`.

mod common;

use common::*;
use mvllm_sim::SimConfig;
use serde_json::Value;

#[tokio::test]
async fn root_health_load_stats_and_server_models_carry_the_seed_fields() {
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
    for key in [
        "url",
        "healthy",
        "last_check",
        "consecutive_failures",
        "success_rate",
        "avg_response_time",
        "last_response_time",
        "total_checks",
        "supported_models",
        "models_last_updated",
    ] {
        assert!(
            h["servers"][0].get(key).is_some(),
            "/health servers[].{key}"
        );
    }
    assert_eq!(h["servers"][0]["supported_models"][0], MODEL);
    for key in [
        "health_check_enabled",
        "health_check_interval",
        "min_success_rate",
        "max_response_time",
    ] {
        assert!(h["config"].get(key).is_some(), "/health config.{key}");
    }

    let l = get_json(&format!("{}/load-stats", r.url())).await;
    for key in [
        "url",
        "current_load",
        "max_capacity",
        "available_capacity",
        "utilization_percent",
        "status",
        "last_updated",
        "detailed_metrics",
    ] {
        assert!(
            l["servers"][0].get(key).is_some(),
            "/load-stats servers[].{key}"
        );
    }
    for key in [
        "num_requests_running",
        "num_requests_waiting",
        "gpu_cache_usage_perc",
    ] {
        assert!(
            l["servers"][0]["detailed_metrics"].get(key).is_some(),
            "detailed_metrics.{key}"
        );
    }
    for key in [
        "total_servers",
        "healthy_servers",
        "total_active_load",
        "total_capacity",
        "overall_utilization_percent",
    ] {
        assert!(l["summary"].get(key).is_some(), "/load-stats summary.{key}");
    }
    assert_eq!(l["summary"]["total_capacity"], 16.0);

    let m = get_json(&format!("{}/server-models", r.url())).await;
    assert_eq!(m["total_servers"], 2);
    assert_eq!(m["healthy_servers"], 2);
    assert_eq!(m["servers"][s[0].url()]["supported_models"][0], MODEL);
    assert_eq!(m["servers"][s[0].url()]["healthy"], true);
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
