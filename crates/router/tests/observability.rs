//! What the router tells about itself: its own `/metrics` (Prometheus text that agrees with
//! the requests sent) and the status API (live figures, failures, drains, events).

mod common;

use std::time::Duration;

use common::*;
use mvllm_sim::SimConfig;
use serde_json::json;

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_agree_with_the_requests_sent() {
    let s = sims(2, SimConfig::instant()).await;
    let r = router_over(&s).await;
    let url = format!("{}/v1/chat/completions", r.url());
    for i in 0..7 {
        assert_eq!(
            post(&url, &chat(&format!("q{i}"), 2, false)).await.status(),
            200
        );
    }
    let mut unknown = chat("x", 2, false);
    unknown["model"] = json!("nope");
    for _ in 0..3 {
        assert_eq!(post(&url, &unknown).await.status(), 404);
    }
    let text = client()
        .get(format!("{}/metrics", r.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let sum = |name: &str, pred: &dyn Fn(&prometheus_parse::Sample) -> bool| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && pred(s))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    let ok = sum("mvllm_requests_total", &|s| {
        s.labels.get("status") == Some("200") && s.labels.get("route") == Some("chat_completions")
    });
    assert_eq!(ok, 7.0, "{text}");
    let refused = sum("mvllm_requests_total", &|s| {
        s.labels.get("status") == Some("404") && s.labels.get("server") == Some("none")
    });
    assert_eq!(refused, 3.0);
    assert_eq!(sum("mvllm_policy_decisions_total", &|_| true), 7.0);
    assert_eq!(sum("mvllm_server_healthy", &|_| true), 2.0);
    assert_eq!(sum("mvllm_server_in_flight", &|_| true), 0.0);
    for family in [
        "mvllm_request_ttfb_seconds",
        "mvllm_request_duration_seconds",
    ] {
        assert!(scrape.docs.contains_key(family), "HELP for {family}");
    }
    // No unbounded label values: every label value is a route, a known model, a server, or a code.
    assert!(
        !text.contains("q0") && !text.contains("nope"),
        "client input never becomes a label"
    );
    // Classic text by default: a classic parser sees counters as counters, nothing untyped.
    assert!(
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == "mvllm_requests_total")
            .all(|s| matches!(s.value, prometheus_parse::Value::Counter(_))),
        "{text}"
    );
    let untyped: Vec<&str> = scrape
        .samples
        .iter()
        .filter(|s| matches!(s.value, prometheus_parse::Value::Untyped(_)))
        .map(|s| s.metric.as_str())
        // This parser gives a histogram's _sum and _count as untyped samples of their own.
        .filter(|m| {
            let base = m.trim_end_matches("_sum").trim_end_matches("_count");
            !text.contains(&format!("# TYPE {base} histogram"))
        })
        .collect();
    assert!(untyped.is_empty(), "untyped samples: {untyped:?}");
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"));

    // OpenMetrics when the scraper asks for it.
    let resp = client()
        .get(format!("{}/metrics", r.url()))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let om = resp.text().await.unwrap();
    assert!(om.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    // Every sample belongs to a family declared before it, by OpenMetrics' naming rules.
    let mut families: Vec<(String, String)> = Vec::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.push((name.to_string(), kind.to_string()));
        } else if !line.starts_with('#') {
            let name = &line[..line.find(['{', ' ']).unwrap()];
            let (family, kind) = families.last().expect("a TYPE before samples");
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            assert!(
                suffixes.iter().any(|s| name == format!("{family}{s}")),
                "{name} under family {family} ({kind})"
            );
        }
    }
    assert!(
        families
            .iter()
            .any(|(n, k)| n == "mvllm_requests" && k == "counter"),
        "{om}"
    );
}

#[tokio::test]
async fn the_status_api_shows_live_figures_failures_drains_and_events() {
    let fleet_sims = [
        sim(SimConfig::instant()).await,
        sim(SimConfig::instant()).await,
    ];
    let r = router_over(&fleet_sims).await;
    let servers = r.fleet.servers();
    eventually(Duration::from_secs(3), "both healthy", || async {
        servers.iter().all(|s| s.is_healthy())
    })
    .await;
    let urls: Vec<String> = servers.iter().map(|s| s.url().to_string()).collect();
    // The second server answers every request 503 (busy): the router retries on the first.
    let resp = client()
        .post(format!("{}/sim/faults", urls[1]))
        .json(&json!({"error_rate": 1.0, "error_status": 503}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut ok = 0;
    for _ in 0..6 {
        let resp = post(
            &format!("{}/v1/chat/completions", r.url()),
            &chat("hi", 4, true),
        )
        .await;
        if resp.status() == 200 && read_stream_to_end(resp).await.contains("[DONE]") {
            ok += 1;
        }
    }
    assert_eq!(
        ok, 6,
        "every request succeeded, on the good server when need be"
    );
    let resp = client()
        .post(format!("{}/admin/servers/drain", r.url()))
        .json(&json!({"url": urls[0]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let status: mvllm_router::status::FleetStatus = client()
        .get(format!("{}/admin/status", r.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status.summary.total_servers, 2);
    assert_eq!(status.servers[0].url, urls[0]);
    assert!(status.servers[0].draining);
    assert_eq!(
        status.servers[0].state,
        mvllm_router::status::ServerState::Draining
    );
    assert!(
        status.summary.requests_per_second > 0.0,
        "{:?}",
        status.summary
    );
    assert!(
        status.summary.ttft_p50.is_some(),
        "streams give a time to first token"
    );
    assert!(status.servers[0].ttft_p95.is_some());
    assert!(
        status.servers[1].errors_last_minute >= 1,
        "{:?}",
        status.servers[1]
    );
    assert!(
        status.summary.retries_last_minute >= 1,
        "{:?}",
        status.summary
    );
    assert_eq!(status.summary.error_rate, 0.0, "no client saw an error");
    assert!(!status.history.is_empty());
    let kinds: Vec<_> = status.events.iter().map(|e| e.kind).collect();
    use mvllm_router::fleet::events::EventKind;
    assert!(kinds.contains(&EventKind::Retry), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&EventKind::Drain), "{kinds:?}");
    assert_eq!(
        status.events.last().unwrap().server.as_deref(),
        Some(urls[0].as_str())
    );
}
