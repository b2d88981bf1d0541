//! Servers failing, hanging and coming back, with clients that must not notice.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use mvllm_sim::{Faults, SimConfig};
use serde_json::Value;

#[tokio::test]
async fn a_server_killed_under_load_fails_no_client_request() {
    let s = sims(3, SimConfig::default()).await;
    let r = router_over(&s).await;
    let url = format!("{}/v1/chat/completions", r.url());
    // 8 clients, 6 short non-streamed requests each (~50 ms per request); server 0 dies once
    // requests are in flight on it.
    let clients = (0..8).map(|c| {
        let url = url.clone();
        async move {
            let mut statuses = Vec::new();
            for i in 0..6 {
                let resp = post(&url, &chat(&format!("client {c} request {i}"), 6, false)).await;
                statuses.push(resp.status().as_u16());
            }
            statuses
        }
    });
    let killer = async {
        eventually(Duration::from_secs(5), "server 0 busy", || async {
            r.fleet.servers()[0].in_flight() > 0
        })
        .await;
        s[0].update_faults(|f| f.down = true);
    };
    let (results, ()) = tokio::join!(join_all(clients), killer);
    let statuses: Vec<u16> = results.into_iter().flatten().collect();
    assert_eq!(statuses.len(), 48);
    assert!(
        statuses.iter().all(|&st| st == 200),
        "every request succeeded: {statuses:?}"
    );
    eventually(
        Duration::from_secs(5),
        "server 0 marked unhealthy",
        || async { !r.fleet.servers()[0].is_healthy() },
    )
    .await;
}

#[tokio::test]
async fn a_hung_server_is_left_after_request_timeout_and_requests_succeed_elsewhere() {
    let s = sims(2, SimConfig::instant()).await;
    let mut settings = fast_settings();
    settings.request_timeout = Duration::from_millis(300);
    settings.health_check_interval = Duration::from_secs(60); // only requests find out
    let r = router(s.iter().map(server_of).collect(), settings).await;
    assert!(r.fleet.servers().iter().all(|s| s.is_healthy()));
    s[0].update_faults(|f| f.hang = true);
    let url = format!("{}/v1/chat/completions", r.url());
    let results = join_all((0..6).map(|i| {
        let url = url.clone();
        async move {
            post(&url, &chat(&format!("q{i}"), 3, false))
                .await
                .status()
                .as_u16()
        }
    }))
    .await;
    assert!(results.iter().all(|&st| st == 200), "{results:?}");
    let hung = &r.fleet.servers()[0];
    assert!(
        hung.stats.failures.load(Ordering::Relaxed) >= 1,
        "time-outs counted against the hung server"
    );
    assert!(
        !hung.is_healthy(),
        "two time-outs in a row take it out of rotation"
    );
}

#[tokio::test]
async fn a_server_dying_mid_stream_ends_the_stream_with_an_error_event() {
    let s = sims(
        1,
        SimConfig {
            faults: Faults {
                die_after_chunks: Some(3),
                ..Default::default()
            },
            ..SimConfig::instant()
        },
    )
    .await;
    let r = router_over(&s).await;
    let resp = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("story", 50, true),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let text = resp
        .text()
        .await
        .expect("the client gets a well-formed end of stream");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let err: Value =
        serde_json::from_str(events[events.len() - 2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(err["error"]["code"], 502);
    assert!(
        events.len() >= 4,
        "the chunks sent before the failure arrived: {text}"
    );
    assert_eq!(
        r.fleet.servers()[0].stats.failures.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn busy_servers_503_and_429_are_retried_elsewhere_and_lose_share_without_ejection() {
    let s = sims(2, SimConfig::instant()).await;
    s[0].update_faults(|f| {
        f.error_rate = 1.0;
        f.error_status = 503;
    });
    let r = router_over(&s).await; // default failure_threshold: 2
    let url = format!("{}/v1/chat/completions", r.url());
    for i in 0..10 {
        assert_eq!(
            post(&url, &chat(&format!("q{i}"), 2, false)).await.status(),
            200
        );
    }
    let servers = r.fleet.servers();
    let tried0 = servers[0].stats.requests.load(Ordering::Relaxed);
    assert!(tried0 >= 1, "the policy did pick server 0");
    assert!(
        tried0 <= 3,
        "after a 503 its share drops: tried {tried0} times for 10 requests"
    );
    assert_eq!(
        servers[1].stats.requests.load(Ordering::Relaxed),
        10,
        "each request once on server 1"
    );
    assert!(
        servers[0].is_healthy(),
        "busy is not broken: 503s do not eject"
    );
    assert_eq!(servers[0].stats.failures.load(Ordering::Relaxed), 0);

    s[0].update_faults(|f| f.error_status = 429);
    eventually(
        Duration::from_secs(3),
        "the penalty expires and server 0 is tried again",
        || async {
            post(&url, &chat("again", 2, false)).await.status() == 200
                && servers[0].stats.overloaded.load(Ordering::Relaxed) > tried0
        },
    )
    .await;
    assert!(servers[0].is_healthy(), "nor do 429s");
}

#[tokio::test]
async fn with_every_server_down_clients_get_503_with_retry_after() {
    let s = sims(2, SimConfig::instant()).await;
    let r = router_over(&s).await;
    for sim in &s {
        sim.update_faults(|f| f.down = true);
    }
    eventually(Duration::from_secs(5), "both unhealthy", || async {
        r.fleet.servers().iter().all(|s| !s.is_healthy())
    })
    .await;
    for _ in 0..3 {
        let resp = post(
            &format!("{}/v1/chat/completions", r.url()),
            &chat("x", 2, false),
        )
        .await;
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], 503);
    }
    let health = client()
        .get(format!("{}/health", r.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "unhealthy");
}

#[tokio::test]
async fn a_server_leaves_and_returns_within_seconds() {
    let s = sims(2, SimConfig::instant()).await;
    let r = router_over(&s).await;
    assert!(r.fleet.servers().iter().all(|s| s.is_healthy()));
    s[1].update_faults(|f| f.down = true);
    eventually(Duration::from_secs(3), "server 1 out", || async {
        !r.fleet.servers()[1].is_healthy()
    })
    .await;
    let h = get_json(&format!("{}/health", r.url())).await;
    assert_eq!(h["status"], "degraded");
    assert!(
        h["servers"][1]["last_error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{h}"
    );
    s[1].update_faults(|f| f.down = false);
    eventually(Duration::from_secs(3), "server 1 back", || async {
        r.fleet.servers()[1].is_healthy()
    })
    .await;
    // And it takes traffic at once.
    let url = format!("{}/v1/chat/completions", r.url());
    let before = r.fleet.servers()[1].stats.requests.load(Ordering::Relaxed);
    for i in 0..10 {
        assert_eq!(
            post(&url, &chat(&format!("q{i}"), 2, false)).await.status(),
            200
        );
    }
    assert!(r.fleet.servers()[1].stats.requests.load(Ordering::Relaxed) > before);
}

#[tokio::test]
async fn failed_or_malformed_scrapes_make_load_data_stale_not_kept() {
    let s = sims(1, SimConfig::instant()).await;
    let r = router_over(&s).await;
    let url = format!("{}/load-stats", r.url());
    eventually(Duration::from_secs(3), "fresh metrics", || async {
        get_json(&url).await["servers"][0]["metrics_fresh"] == true
    })
    .await;
    s[0].update_faults(|f| f.metrics_malformed = true);
    eventually(Duration::from_secs(3), "stale metrics", || async {
        let v = get_json(&url).await;
        v["servers"][0]["metrics_fresh"] == false
            && v["servers"][0]["detailed_metrics"]["kv_cache_usage_perc"].is_null()
            && v["servers"][0]["detailed_metrics"]["num_requests_running"] == 0
    })
    .await;
    assert!(
        r.fleet.servers()[0].is_healthy(),
        "bad metrics alone do not eject a server"
    );
}
