//! The real `mvllm` binary: `check-config` reports and exit codes, and `run` configured through
//! environment variables.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mvllm_sim::SimConfig;

const BIN: &str = env!("CARGO_BIN_EXE_mvllm");

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("servers.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn check_config_probes_every_server_and_fails_on_any_problem() {
    let sim = mvllm_sim::spawn(SimConfig::instant()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind one and drop it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let good = write_config(
        &dir,
        &format!("[servers]\nservers = [{{ url = \"{}\" }}]\n", sim.url()),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&good)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("health   ok")
            && text.contains(mvllm_sim::config::DEFAULT_MODEL)
            && text.contains("metrics  ok"),
        "{text}"
    );

    let bad = write_config(
        &dir,
        &format!(
            "[servers]\nservers = [{{ url = \"{}\" }}, {{ url = \"http://{dead}\" }}]\n",
            sim.url()
        ),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&bad)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("FAIL http://{dead}")) && text.contains("connection refused"),
        "{text}"
    );
    assert!(text.contains("1 of 2 servers failed"), "{text}");

    let typo = write_config(
        &dir,
        "[servers]\nservers = [\n  { url = \"http://a:1\", max_concurent_requests = 2 },\n]\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&typo)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text.contains("servers.toml:3:")
            && text.contains("did you mean `max_concurrent_requests`?"),
        "{text}"
    );
}

#[tokio::test]
async fn run_takes_its_options_from_the_environment_and_logs_each_request() {
    let sim = mvllm_sim::spawn(SimConfig::instant()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &format!("[servers]\nservers = [{{ url = \"{}\" }}]\n", sim.url()),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .arg("run")
        .env("MVLLM_CONFIG", &config)
        .env("MVLLM_HOST", "127.0.0.1")
        .env("MVLLM_PORT", port.to_string())
        .env("MVLLM_LOG_LEVEL", "INFO")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if reqwest::get(format!("{url}/health"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(Instant::now() < deadline, "router did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .header("x-request-id", "cli-test-1")
        .json(&serde_json::json!({"prompt": "hi", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stdout = child.stdout.take().unwrap();
    // Reads until the access line shows up; killing the child (on time-out) ends the read.
    let reader = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("cli-test-1") && l.contains("status=200"))
    });
    let found = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        matches!(found, Ok(Ok(true))),
        "an access log line with the request id"
    );
}

#[tokio::test]
async fn sigterm_during_a_stream_lets_it_finish_then_exits_zero() {
    let sim = mvllm_sim::spawn(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[servers]\nservers = [{{ url = \"{}\" }}]\n[config]\nshutdown_grace_period = 20\n",
            sim.url()
        ),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--config",
        ])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reqwest::get(format!("{url}/readyz"))
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "router did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = serde_json::json!({"messages": [{"role": "user", "content": "a story"}], "max_tokens": 150, "stream": true});
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut text = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(
            &chunk.expect("the stream is not cut by shutdown"),
        ));
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "the stream completed");
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0), "exit 0 after a graceful shutdown");
}

/// Starts `mvllm run` on a free port with `config`; returns the child and its URL once ready.
async fn start_router(config: &std::path::Path) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(BIN)
        .args([
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--config",
        ])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reqwest::get(format!("{url}/readyz"))
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "router did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, url)
}

fn signal(child: &std::process::Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn sighup_reloads_the_config() {
    let sim = mvllm_sim::spawn(SimConfig::instant()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &format!("[servers]\nservers = [{{ url = \"{}\" }}]\n", sim.url()),
    );
    let (mut child, url) = start_router(&config).await;
    signal(&child, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("mvllm_config_reloads_total{result=\"success\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "no reload after SIGHUP: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let sim = mvllm_sim::spawn(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[servers]\nservers = [{{ url = \"{}\" }}]\n[config]\nshutdown_grace_period = 60\n",
            sim.url()
        ),
    );
    let (mut child, url) = start_router(&config).await;
    let body = serde_json::json!({"messages": [{"role": "user", "content": "a very long story"}], "max_tokens": 100000, "stream": true});
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    signal(&child, "-TERM");
    // Shutdown has begun once new connections are refused (the stream keeps it draining);
    // only then is the second signal sent, so the two cannot merge into one.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("{url}/livez")).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the router kept accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, "-TERM");
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await;
    let exit = exit
        .expect("exited at once, not after the 60 s grace period")
        .unwrap();
    assert_eq!(exit.code(), Some(130));
}
