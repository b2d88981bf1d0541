//! Background work that must scale with the fleet, not with its worst server or with how often
//! it is poked: each server's health is checked on its own schedule, reloads do not trigger
//! probe rounds, and run-time changes to the server list do not lose one another.

mod common;

use std::time::Duration;

use common::*;
use mvllm_router::{Config, Options};
use mvllm_sim::SimConfig;
use serde_json::{Value, json};

fn checks(r: &mvllm_router::RouterHandle, i: usize) -> u64 {
    r.fleet.servers()[i].health.lock().total_checks
}

#[tokio::test]
async fn a_hung_server_does_not_slow_the_health_checks_of_the_others() {
    let s = sims(2, SimConfig::instant()).await;
    let mut settings = fast_settings();
    settings.health_check_timeout = Duration::from_secs(3);
    let r = router(s.iter().map(server_of).collect(), settings).await;
    s[1].update_faults(|f| f.hang = true);
    let hung_before = checks(&r, 1);
    let before = checks(&r, 0);
    // Every 100 ms for the healthy one, while the hung one's check waits for its 3 s time-out.
    eventually(
        Duration::from_secs(2),
        "ten more checks of the healthy server",
        || async { checks(&r, 0) >= before + 10 },
    )
    .await;
    assert!(
        checks(&r, 1) <= hung_before + 1,
        "one check of the hung server at a time"
    );
}

#[tokio::test]
async fn reloads_that_change_no_setting_cost_no_probe_round() {
    let s = sims(1, SimConfig::instant()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("servers.toml");
    std::fs::write(
        &path,
        format!(
            "[config]\nhealth_check_interval = 600\nmetrics_interval = 600\nmodels_refresh_interval = 600\n\n[[servers]]\nurl = \"{}\"\n",
            s[0].url()
        ),
    )
    .unwrap();
    let r = mvllm_router::start_with(Options {
        config: Config::load(&path).unwrap(),
        config_path: Some(path),
        listener: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin_listener: None,
        otel: None,
    })
    .await
    .unwrap();
    let before = checks(&r, 0);
    let c = client();
    for _ in 0..30 {
        let resp = c
            .post(format!("{}/admin/reload", r.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Give a round, had one been started, time to show.
    let resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("hi", 2, false),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        checks(&r, 0) <= before + 1,
        "30 reloads, {} checks",
        checks(&r, 0) - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admin_changes_are_all_kept() {
    let s = sims(1, SimConfig::instant()).await;
    let mut settings = fast_settings();
    settings.health_check_interval = Duration::from_secs(600);
    let r = router(s.iter().map(server_of).collect(), settings).await;
    let c = client();
    let adds = (0..60).map(|i| {
        let (c, url) = (c.clone(), r.url());
        async move {
            c.post(format!("{url}/admin/servers"))
                .json(&json!({"url": format!("http://127.0.0.1:{}", 20000 + i), "models": [MODEL]}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures_util::future::join_all(adds.map(tokio::spawn)).await;
    assert!(statuses.iter().all(|s| s.as_ref().unwrap().as_u16() == 201));
    let removes = (0..30).map(|i| {
        let (c, url) = (c.clone(), r.url());
        async move {
            c.post(format!("{url}/admin/servers/remove"))
                .json(&json!({"url": format!("http://127.0.0.1:{}", 20000 + 2 * i)}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures_util::future::join_all(removes.map(tokio::spawn)).await;
    assert!(statuses.iter().all(|s| s.as_ref().unwrap().as_u16() == 200));
    let list: Value = get_json(&format!("{}/admin/servers", r.url())).await;
    assert_eq!(
        list["servers"].as_array().unwrap().len(),
        1 + 60 - 30,
        "no change lost"
    );
}
