//! The fault suite, part two (part one is `failover.rs`: down, hang, death mid-stream, 503/429,
//! malformed metrics, every server down): what a client sees when a server fails requests
//! while its `/health` answers, when the whole fleet fails, when a server flaps, is slow to
//! give its metrics, or starts late.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use mvllm_router::config::Settings;
use mvllm_sim::SimConfig;
use mvllm_testkit::eventually;

async fn chat_status(url: &str) -> u16 {
    post(&format!("{url}/v1/chat/completions"), &chat("hi", 2, false))
        .await
        .status()
        .as_u16()
}

fn attempts(r: &mvllm_router::RouterHandle) -> u64 {
    r.fleet
        .servers()
        .iter()
        .map(|s| s.stats.requests.load(Ordering::Relaxed))
        .sum()
}

#[tokio::test]
async fn a_server_failing_requests_with_a_healthy_health_check_is_ejected_then_probed_half_open() {
    let fleet = [
        sim(SimConfig::instant()).await,
        sim(SimConfig::instant()).await,
    ];
    let settings = Settings {
        outlier_ejection_time: Duration::from_millis(300),
        ..fast_settings()
    };
    let r = router(fleet.iter().map(server_of).collect(), settings).await;
    let bad = r.fleet.servers()[1].clone();
    eventually(Duration::from_secs(3), "both healthy", || async {
        r.fleet.servers().iter().all(|s| s.is_healthy())
    })
    .await;
    // Its engine is broken: every inference answers 500, /health still says 200.
    fleet[1].update_faults(|f| {
        f.error_rate = 1.0;
        f.error_status = 500;
    });
    let mut server_errors = 0;
    for _ in 0..20 {
        match chat_status(&r.url()).await {
            200 => {}
            500 => server_errors += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        !bad.is_healthy(),
        "ejected after failure_threshold failures"
    );
    assert!(
        server_errors <= 2,
        "only the failures that ejected it reached clients: {server_errors}"
    );
    // Health checks keep passing, but it stays out for its ejection time...
    let out_since = std::time::Instant::now();
    // ...and comes back half-open once the engine is fixed.
    fleet[1].update_faults(|f| f.error_rate = 0.0);
    eventually(Duration::from_secs(5), "back, half-open", || async {
        bad.is_healthy()
    })
    .await;
    assert!(
        out_since.elapsed() >= Duration::from_millis(200),
        "it waited out the ejection"
    );
    assert!(bad.is_probing(), "one request at a time until one succeeds");
    eventually(
        Duration::from_secs(5),
        "a probe succeeds and closes it",
        || async { chat_status(&r.url()).await == 200 && !bad.is_probing() },
    )
    .await;
    assert_eq!(bad.health.lock().ejections, 0, "the backoff is forgotten");
}

#[tokio::test]
async fn a_whole_fleet_failing_is_not_hit_by_a_retry_storm() {
    let fleet = sims(3, SimConfig::instant()).await;
    for s in &fleet {
        s.update_faults(|f| {
            f.error_rate = 1.0;
            f.error_status = 503;
        });
    }
    let settings = Settings {
        max_retries: 3,
        retry_budget_ratio: 0.2,
        retry_budget_min_per_second: 0.0,
        ..fast_settings()
    };
    let r = router(fleet.iter().map(server_of).collect(), settings).await;
    eventually(Duration::from_secs(3), "all healthy", || async {
        r.fleet.servers().iter().all(|s| s.is_healthy())
    })
    .await;
    let before = attempts(&r);
    let n = 50;
    for _ in 0..n {
        assert_eq!(
            chat_status(&r.url()).await,
            503,
            "the client gets the fleet's answer"
        );
    }
    let made = attempts(&r) - before;
    // Without a budget: 4 attempts each (200). With it: 50 + 20% of 50.
    assert!(made <= n + n / 5 + 1, "{made} attempts for {n} requests");
    assert!(made >= n, "every request was tried once");
    let text = r.state.telemetry.render(&r.fleet);
    assert!(text.contains("reason=\"budget_exhausted\""), "{text}");
}

#[tokio::test]
async fn a_flapping_server_costs_no_request() {
    let fleet = sims(2, SimConfig::instant()).await;
    let r = router(fleet.iter().map(server_of).collect(), fast_settings()).await;
    eventually(Duration::from_secs(3), "both healthy", || async {
        r.fleet.servers().iter().all(|s| s.is_healthy())
    })
    .await;
    // Down, up, down...: its state changes every few requests, faster than health checks see.
    let mut ok = 0;
    for i in 0..60 {
        if i % 3 == 0 {
            fleet[1].update_faults(|f| f.down = (i / 3) % 2 == 0);
        }
        if chat_status(&r.url()).await == 200 {
            ok += 1;
        }
    }
    fleet[1].update_faults(|f| f.down = false);
    assert_eq!(
        ok, 60,
        "every request succeeded, on whichever server was up"
    );
}

#[tokio::test]
async fn slow_metrics_go_stale_and_requests_still_flow() {
    let fleet = sims(2, SimConfig::instant()).await;
    let settings = Settings {
        metrics_timeout: Duration::from_millis(100),
        ..fast_settings()
    };
    let r = router(fleet.iter().map(server_of).collect(), settings).await;
    fleet[0].update_faults(|f| f.metrics_delay_ms = 1000);
    let slow = r.fleet.servers()[0].clone();
    let max_age = r.fleet.metrics_max_age();
    eventually(
        Duration::from_secs(5),
        "its load figures to go stale",
        || async {
            slow.fresh_metrics(max_age).is_none() && slow.scrape.lock().last_error.is_some()
        },
    )
    .await;
    assert!(
        slow.is_healthy(),
        "slow metrics are not a failure of the server"
    );
    for _ in 0..10 {
        assert_eq!(chat_status(&r.url()).await, 200);
    }
}

#[tokio::test]
async fn a_server_starting_late_joins_once_it_answers() {
    let early = sim(SimConfig::instant()).await;
    let late = sim(SimConfig {
        startup_delay: Duration::from_millis(600),
        ..SimConfig::instant()
    })
    .await;
    let r = router(vec![server_of(&early), server_of(&late)], fast_settings()).await;
    let late_server = r.fleet.servers()[1].clone();
    assert!(!late_server.is_healthy(), "not listening yet");
    assert_eq!(
        chat_status(&r.url()).await,
        200,
        "the other server serves meanwhile"
    );
    eventually(
        Duration::from_secs(5),
        "the late server to join",
        || async { late_server.is_healthy() },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the late server to take requests",
        || async {
            chat_status(&r.url()).await == 200
                && late_server.stats.requests.load(Ordering::Relaxed) > 0
        },
    )
    .await;
}

#[tokio::test]
async fn with_every_server_ejected_requests_still_go_to_those_that_pass_health_checks() {
    let fleet = sims(2, SimConfig::instant()).await;
    let settings = Settings {
        outlier_ejection_time: Duration::from_secs(60),
        ..fast_settings()
    };
    let r = router(fleet.iter().map(server_of).collect(), settings).await;
    eventually(Duration::from_secs(3), "both healthy", || async {
        r.fleet.servers().iter().all(|s| s.is_healthy())
    })
    .await;
    // Both engines fail half their requests: both get ejected, their /health still answers.
    for s in &fleet {
        s.update_faults(|f| {
            f.error_rate = 0.5;
            f.error_status = 500;
        });
    }
    eventually(Duration::from_secs(10), "both ejected", || async {
        let _ = chat_status(&r.url()).await;
        r.fleet.servers().iter().all(|s| !s.is_healthy())
    })
    .await;
    let mut ok = 0;
    for _ in 0..20 {
        match chat_status(&r.url()).await {
            200 => ok += 1,
            500 => {}
            other => panic!("{other}: with every server out, clients must still be served"),
        }
    }
    assert!(ok > 0, "half the requests can succeed");
    let text = r.state.telemetry.render(&r.fleet);
    assert!(!text.contains("mvllm_panic_routed_total 0\n"), "{text}");
}
