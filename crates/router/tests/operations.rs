//! Running in production: hot reload that keeps state, the admin API, readiness, and the
//! router's own `/metrics`.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use mvllm_router::{Config, Options, RouterHandle};
use mvllm_sim::{SimConfig, SimHandle};
use serde_json::{Value, json};

const FAST: &str = "[config]\nhealth_check_interval = 0.1\nmetrics_interval = 0.1\nhealth_check_timeout = 0.5\nrequest_timeout = 5\n";

fn config_text(sims: &[&SimHandle], extra: &str) -> String {
    let list: Vec<String> = sims
        .iter()
        .map(|s| {
            format!(
                "  {{ url = \"{}\", max_concurrent_requests = 8 }},",
                s.url()
            )
        })
        .collect();
    format!(
        "[servers]\nservers = [\n{}\n]\n{FAST}{extra}",
        list.join("\n")
    )
}

/// Replaces the file the way editors do: write a temporary file, then rename it over.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn router_from_file(
    dir: &tempfile::TempDir,
    text: &str,
) -> (RouterHandle, std::path::PathBuf) {
    let path = dir.path().join("servers.toml");
    std::fs::write(&path, text).unwrap();
    (router_watching(&path).await, path)
}

/// A router started from the file at `path`, watching it.
async fn router_watching(path: &std::path::Path) -> RouterHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    mvllm_router::start_with(Options {
        config: Config::load(path).unwrap(),
        config_path: Some(path.to_path_buf()),
        listener,
        admin_listener: None,
        otel: None,
    })
    .await
    .unwrap()
}

async fn read_stream_to_end(resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.expect("the stream is not cut"));
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn editing_the_file_during_a_stream_adds_a_server_within_two_seconds_and_the_stream_completes()
 {
    let a = sim(SimConfig::default()).await;
    let b = sim(SimConfig::instant()).await;
    let dir = tempfile::tempdir().unwrap();
    let (r, path) = router_from_file(&dir, &config_text(&[&a], "")).await;
    let stream = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("long", 150, true),
    )
    .await;
    assert_eq!(stream.status(), 200);
    let server_a = r.fleet.servers()[0].clone();

    replace_file(&path, &config_text(&[&a, &b], ""));
    let url = format!("{}/v1/chat/completions", r.url());
    eventually(
        Duration::from_secs(2),
        "the new server takes traffic",
        || async {
            post(&url, &chat("hi", 1, false)).await;
            r.fleet
                .servers()
                .iter()
                .any(|s| s.url() == b.url() && s.stats.requests.load(Ordering::Relaxed) > 0)
        },
    )
    .await;
    assert!(
        Arc::ptr_eq(&r.fleet.servers()[0], &server_a),
        "the unchanged server kept its state"
    );
    let text = read_stream_to_end(stream).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "the stream completed");
    assert_eq!(r.reloader.succeeded.load(Ordering::Relaxed), 1);
}

/// Updates a Kubernetes ConfigMap volume the way the kubelet does (its AtomicWriter): the files
/// go into a new `..<version>` directory, a `..data_tmp` symlink to it is renamed over `..data`,
/// and `servers.toml` is a symlink to `..data/servers.toml` that never changes itself.
fn configmap_update(dir: &std::path::Path, version: u32, text: &str) {
    use std::os::unix::fs::symlink;
    let versioned = format!("..2026_11_26_{version:02}");
    std::fs::create_dir(dir.join(&versioned)).unwrap();
    std::fs::write(dir.join(&versioned).join("servers.toml"), text).unwrap();
    symlink(&versioned, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if !dir.join("servers.toml").exists() {
        symlink("..data/servers.toml", dir.join("servers.toml")).unwrap();
    }
}

#[tokio::test]
async fn a_kubernetes_configmap_update_through_the_data_symlink_is_reloaded() {
    let a = sim(SimConfig::instant()).await;
    let b = sim(SimConfig::instant()).await;
    let dir = tempfile::tempdir().unwrap();
    // A poll an hour apart: only the file watcher can see the update in time.
    let hourly = "config_reload_interval = 3600\n";
    configmap_update(dir.path(), 1, &config_text(&[&a], hourly));
    let r = router_watching(&dir.path().join("servers.toml")).await;
    assert_eq!(r.fleet.servers().len(), 1);
    configmap_update(dir.path(), 2, &config_text(&[&a, &b], hourly));
    eventually(
        Duration::from_secs(5),
        "the second server added",
        || async { r.fleet.servers().len() == 2 },
    )
    .await;
    assert_eq!(r.reloader.succeeded.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_running_config_and_says_why() {
    let a = sim(SimConfig::instant()).await;
    let dir = tempfile::tempdir().unwrap();
    let (r, path) = router_from_file(&dir, &config_text(&[&a], "")).await;
    replace_file(
        &path,
        &format!("{}\nmax_retires = 2\n", config_text(&[&a], "")),
    );
    eventually(Duration::from_secs(3), "the bad file was seen", || async {
        r.reloader.failed.load(Ordering::Relaxed) >= 1
    })
    .await;
    let why = r.reloader.last_error.lock().clone().unwrap();
    assert!(
        why.contains("servers.toml:")
            && why.contains("max_retires")
            && why.contains("did you mean `max_retries`?"),
        "{why}"
    );
    // Still serving with the old config.
    assert_eq!(
        post(
            &format!("{}/v1/chat/completions", r.url()),
            &chat("x", 2, false)
        )
        .await
        .status(),
        200
    );
    // The admin API gives the same reason with a 400.
    let resp = client()
        .post(format!("{}/admin/reload", r.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_retires"),
        "{v}"
    );
    assert_eq!(r.fleet.servers().len(), 1);
}

#[tokio::test]
async fn a_removed_servers_in_flight_stream_completes_and_new_requests_go_elsewhere() {
    let a = sim(SimConfig::default()).await;
    let b = sim(SimConfig::instant()).await;
    let dir = tempfile::tempdir().unwrap();
    let (r, path) = router_from_file(&dir, &config_text(&[&a], "")).await;
    let stream = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("long", 120, true),
    )
    .await;
    let removed = r.fleet.servers()[0].clone();
    replace_file(&path, &config_text(&[&b], ""));
    let resp = client()
        .post(format!("{}/admin/reload", r.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["summary"]["removed"]
            .as_array()
            .unwrap()
            .contains(&json!(a.url())),
        "{v}"
    );
    eventually(Duration::from_secs(2), "b healthy", || async {
        r.fleet.servers()[0].is_healthy()
    })
    .await;
    assert_eq!(
        post(
            &format!("{}/v1/chat/completions", r.url()),
            &chat("x", 2, false)
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        removed.stats.requests.load(Ordering::Relaxed),
        1,
        "no new request went to the removed server"
    );
    let text = read_stream_to_end(stream).await;
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(removed.in_flight(), 0);
    let load = get_json(&format!("{}/load-stats", r.url())).await;
    assert_eq!(
        load["servers"].as_array().unwrap().len(),
        1,
        "a removed server's load no longer counts"
    );
}

#[tokio::test]
async fn a_reload_keeps_health_and_models_so_requests_naming_a_model_keep_working() {
    let a = sim(SimConfig {
        loras: vec!["sql-lora".into()],
        ..SimConfig::instant()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (r, path) = router_from_file(&dir, &config_text(&[&a], "")).await;
    let before = r.fleet.servers()[0].clone();
    // Change settings and the server's capacity, then reload through the API.
    replace_file(
        &path,
        &config_text(&[&a], "routing_policy = \"least_load\"\n").replace(
            "max_concurrent_requests = 8",
            "max_concurrent_requests = 16",
        ),
    );
    let resp = client()
        .post(format!("{}/admin/reload", r.url()))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["summary"]["changed"], json!([a.url()]));
    assert_eq!(v["summary"]["settings_changed"], true);
    let after = r.fleet.servers()[0].clone();
    assert!(Arc::ptr_eq(&before, &after));
    assert!(after.is_healthy());
    assert_eq!(after.capacity(), 16);
    assert_eq!(r.fleet.policy().kind().name(), "least_load");
    let mut body = chat("select", 2, false);
    body["model"] = json!("sql-lora");
    assert_eq!(
        post(&format!("{}/v1/chat/completions", r.url()), &body)
            .await
            .status(),
        200,
        "models were not forgotten"
    );
}

#[tokio::test]
async fn admin_api_lists_adds_drains_and_removes_servers() {
    let a = sim(SimConfig::instant()).await;
    let b = sim(SimConfig::instant()).await;
    let r = router_over(std::slice::from_ref(&a)).await;
    let c = client();
    let admin = |p: &str| format!("{}/admin/{p}", r.url());
    let resp = c
        .post(admin("servers"))
        .json(&json!({"url": b.url(), "max_concurrent_requests": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = c
        .post(admin("servers"))
        .json(&json!({"url": b.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409, "already there");
    let resp = c
        .post(admin("servers"))
        .json(&json!({"url": "ftp://x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    eventually(Duration::from_secs(2), "b healthy", || async {
        r.fleet.servers().iter().all(|s| s.is_healthy())
    })
    .await;
    let list = get_json(&admin("servers")).await;
    assert_eq!(list["servers"].as_array().unwrap().len(), 2);
    assert_eq!(list["servers"][1]["max_concurrent_requests"], 4);

    let resp = c
        .post(admin("servers/drain"))
        .json(&json!({"url": a.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let url = format!("{}/v1/chat/completions", r.url());
    let a_before = r.fleet.servers()[0].stats.requests.load(Ordering::Relaxed);
    for i in 0..6 {
        assert_eq!(
            post(&url, &chat(&format!("q{i}"), 1, false)).await.status(),
            200
        );
    }
    assert_eq!(
        r.fleet.servers()[0].stats.requests.load(Ordering::Relaxed),
        a_before,
        "a drained server gets nothing new"
    );
    assert_eq!(
        get_json(&format!("{}/load-stats", r.url())).await["servers"][0]["state"],
        "draining"
    );
    c.post(admin("servers/undrain"))
        .json(&json!({"url": a.url()}))
        .send()
        .await
        .unwrap();
    assert!(!r.fleet.servers()[0].draining.load(Ordering::Relaxed));

    let resp = c
        .post(admin("servers/remove"))
        .json(&json!({"url": b.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(r.fleet.servers().len(), 1);
    let resp = c
        .post(admin("servers/remove"))
        .json(&json!({"url": b.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn the_admin_token_guards_admin_routes_and_admin_listen_moves_them() {
    let a = sim(SimConfig::instant()).await;
    let mut settings = fast_settings();
    settings.admin_token = Some("0123456789abcdef-token".into());
    let config = Config {
        servers: vec![server_of(&a)],
        settings,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = mvllm_router::start_with(Options {
        config,
        config_path: None,
        listener,
        admin_listener: Some(admin_listener),
        otel: None,
    })
    .await
    .unwrap();
    let admin = format!("http://{}", r.admin_addr.unwrap());
    let c = client();
    assert_eq!(
        c.get(format!("{admin}/admin/servers"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(format!("{admin}/admin/servers"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let ok = c
        .get(format!("{admin}/admin/servers"))
        .bearer_auth("0123456789abcdef-token")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Not on the main port, and never forwarded to a server.
    let main = c
        .get(format!("{}/admin/servers", r.url()))
        .bearer_auth("0123456789abcdef-token")
        .send()
        .await
        .unwrap();
    assert_eq!(main.status(), 404);
    assert_eq!(
        r.fleet.servers()[0].stats.requests.load(Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn livez_and_readyz_follow_the_fleet_and_shutdown() {
    let a = sim(SimConfig::default()).await;
    let r = router_over(std::slice::from_ref(&a)).await;
    let c = client();
    assert_eq!(
        c.get(format!("{}/livez", r.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/readyz", r.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    a.update_faults(|f| f.down = true);
    eventually(
        Duration::from_secs(3),
        "not ready without a healthy server",
        || async {
            c.get(format!("{}/readyz", r.url()))
                .send()
                .await
                .unwrap()
                .status()
                == 503
        },
    )
    .await;
    assert_eq!(
        c.get(format!("{}/livez", r.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    a.update_faults(|f| f.down = false);
    eventually(Duration::from_secs(3), "ready again", || async {
        c.get(format!("{}/readyz", r.url()))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    // A stream in flight when shutdown begins completes.
    let stream = post(
        &format!("{}/v1/chat/completions", r.url()),
        &chat("long", 60, true),
    )
    .await;
    let finished = tokio::spawn(r.shutdown(Duration::from_secs(10)));
    let text = read_stream_to_end(stream).await;
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(
        finished.await.unwrap(),
        "shutdown finished within the grace period"
    );
}

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

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = sim(SimConfig::instant()).await;
    let r = router_over(std::slice::from_ref(&a)).await;
    // A client that got its answer and keeps the connection open (idle keep-alive); the
    // router's header_read_timeout (60 s) would close it only much later.
    let mut idle = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let finished =
        tokio::time::timeout(Duration::from_secs(10), r.shutdown(Duration::from_secs(30)))
            .await
            .expect("shutdown waited on an idle connection");
    assert!(finished);
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("the idle connection was left open");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}
