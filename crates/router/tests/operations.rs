//! Running in production: hot reload that keeps state, the admin API, readiness, and the
//! router's own `/metrics`.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
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
