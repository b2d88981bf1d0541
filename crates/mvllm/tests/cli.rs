//! The real `mvllm` binary: `check-config` reports and exit codes, `run` configured through
//! environment variables, SIGHUP, and graceful shutdown on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use mvllm_sim::SimConfig;
use mvllm_testkit::{eventually, wait_for_status};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_mvllm");

fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("servers.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn one_server(url: &str, extra: &str) -> String {
    format!("[servers]\nservers = [{{ url = \"{url}\" }}]\n{extra}")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `mvllm check-config --config <path>`: exit code and stdout.
async fn check_config(path: PathBuf) -> (Option<i32>, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// Starts `mvllm run` on a free port with `config`; returns the child and its URL once ready.
async fn start_router(config: &Path) -> (Child, String) {
    let port = free_port();
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
    wait_for_status(&format!("{url}/readyz"), 200, Duration::from_secs(20)).await;
    (child, url)
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(i32::try_from(child.id()).unwrap()), sig).expect("signal sent");
}

async fn wait_exit(mut child: Child, within: Duration) -> Option<i32> {
    let exit = tokio::time::timeout(
        within,
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await;
    exit.expect("the process exited in time").unwrap().code()
}

/// A router over one simulated server (default profile) with `shutdown_grace_period`, and a chat
/// stream of exactly `max_tokens` tokens through it whose first chunk has arrived (returned as
/// text).
async fn router_with_a_stream(grace_secs: u32, max_tokens: u64) -> StreamSetup {
    let sim = mvllm_sim::spawn(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &one_server(
            &sim.url(),
            &format!("[config]\nshutdown_grace_period = {grace_secs}\n"),
        ),
    );
    let (child, url) = start_router(&config).await;
    let body = serde_json::json!({"messages": [{"role": "user", "content": "a story"}], "max_tokens": max_tokens, "ignore_eos": true, "stream": true});
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = Box::pin(resp.bytes_stream());
    let first = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
    StreamSetup {
        _sim: sim,
        _dir: dir,
        child,
        url,
        stream,
        first,
    }
}

struct StreamSetup {
    _sim: mvllm_sim::SimHandle,
    _dir: tempfile::TempDir,
    child: Child,
    url: String,
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    first: String,
}

#[tokio::test]
async fn check_config_probes_every_server_and_fails_on_any_problem() {
    let sim = mvllm_sim::spawn(SimConfig::instant()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", free_port()); // nothing listens there

    let (code, text) = check_config(write_config(&dir, &one_server(&sim.url(), ""))).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("health   ok")
            && text.contains(mvllm_sim::config::DEFAULT_MODEL)
            && text.contains("metrics  ok"),
        "{text}"
    );

    let both = format!(
        "[servers]\nservers = [{{ url = \"{}\" }}, {{ url = \"{dead}\" }}]\n",
        sim.url()
    );
    let (code, text) = check_config(write_config(&dir, &both)).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("FAIL {dead}")) && text.contains("connection refused"),
        "{text}"
    );
    assert!(text.contains("1 of 2 checks failed"), "{text}");

    let typo =
        "[servers]\nservers = [\n  { url = \"http://a:1\", max_concurent_requests = 2 },\n]\n";
    let (code, text) = check_config(write_config(&dir, typo)).await;
    assert_eq!(code, Some(2));
    assert!(
        text.contains("servers.toml:3:")
            && text.contains("did you mean `max_concurrent_requests`?"),
        "{text}"
    );
}

#[tokio::test]
async fn check_config_refuses_an_empty_fleet_and_names_what_does_not_resolve() {
    let dir = tempfile::tempdir().unwrap();
    // --offline validates the file alone: a name nobody can resolve is fine.
    let out = Command::new(BIN)
        .args(["check-config", "--offline", "--config"])
        .arg(write_config(
            &dir,
            "[servers]\nservers = [{ dns = \"vllm:8000\" }]\n",
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 servers and 1 dns names"));

    let (code, text) = check_config(write_config(&dir, "[config]\nmax_retries = 2\n")).await;
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no servers"), "{text}");

    // Names are asked of a DNS server of the test's own (nothing leaves the machine).
    let sim = mvllm_sim::spawn(SimConfig {
        addr: "127.0.0.2:0".parse().unwrap(),
        ..SimConfig::instant()
    })
    .await
    .unwrap();
    let port = sim.addr().port();
    let dns = mvllm_testkit::dns::TestDns::start().await;
    dns.set("pool.test", &["127.0.0.2".parse().unwrap()]);
    let config = format!(
        "[servers]\nservers = [\n  {{ url = \"http://gpu-server-1:8081\" }},\n  {{ dns = \"pool.test:{port}\" }},\n  {{ dns = \"missing.test:{port}\" }},\n]\n[config]\ndns_server = \"{}\"\n",
        dns.addr()
    );
    let (code, text) = check_config(write_config(&dir, &config)).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAIL http://gpu-server-1:8081")
            && text.contains("cannot resolve gpu-server-1"),
        "{text}"
    );
    assert!(
        text.contains("ok   dns http://pool.test:")
            && text.contains(&format!("ok   http://127.0.0.2:{port}")),
        "the name's address is checked as a server: {text}"
    );
    assert!(
        text.contains("FAIL dns http://missing.test:") && text.contains("the name has no address"),
        "{text}"
    );
    assert!(text.contains("2 of 4 checks failed"), "{text}");
}

/// Runs `mvllm run` (options from the environment plus `args`) with its log on a pipe, sends
/// one request with id `request_id`, and returns the log lines up to its access line (or all
/// lines until the time-out, if it never shows).
async fn log_of_one_request(args: &[&str], request_id: &str) -> Vec<String> {
    let sim = mvllm_sim::spawn(SimConfig::instant()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &one_server(&sim.url(), ""));
    let port = free_port();
    let mut child = Command::new(BIN)
        .arg("run")
        .args(args)
        .env("MVLLM_CONFIG", &config)
        .env("MVLLM_HOST", "127.0.0.1")
        .env("MVLLM_PORT", port.to_string())
        .env("MVLLM_LOG_LEVEL", "INFO")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_for_status(&format!("{url}/health"), 200, Duration::from_secs(20)).await;
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .header("x-request-id", request_id)
        .json(&serde_json::json!({"prompt": "hi", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stdout = child.stdout.take().unwrap();
    // Reads until the access line shows up; killing the child (on time-out) ends the read.
    let id = request_id.to_string();
    let reader = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.contains(&id) && line.contains("200");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let lines = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let _ = child.kill();
    let _ = child.wait();
    lines.ok().and_then(Result::ok).unwrap_or_default()
}

#[tokio::test]
async fn run_takes_its_options_from_the_environment_and_logs_each_request_in_plain_text() {
    let lines = log_of_one_request(&["--reload"], "cli-test-1").await;
    let last = lines.last().cloned().unwrap_or_default();
    assert!(
        last.contains("cli-test-1") && last.contains("status=200"),
        "an access log line with the request id: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("hot reload is always on")),
        "--reload is accepted and explained: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains('\x1b')),
        "no colour codes when the log is not a terminal: {lines:?}"
    );
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let lines = log_of_one_request(&["--log-format", "json"], "cli-test-2").await;
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
    }
    let access: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(access["id"], "cli-test-2");
    assert_eq!(access["status"], 200);
}

#[tokio::test]
async fn sigterm_during_a_stream_lets_it_finish_then_exits_zero() {
    // Bind every field: an unbound one would be dropped here (the simulator with it).
    let StreamSetup {
        _sim,
        _dir,
        child,
        url: _,
        mut stream,
        first: mut text,
    } = router_with_a_stream(20, 150).await;
    signal(&child, Signal::SIGTERM);
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(
            &chunk.expect("the stream is not cut by shutdown"),
        ));
    }
    assert_eq!(
        text.matches("\"content\":\"").count(),
        151,
        "the role chunk and all 150 tokens"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "the stream completed");
    assert!(
        !text.contains("\"error\""),
        "and not with an error event: {text}"
    );
    assert_eq!(
        wait_exit(child, Duration::from_secs(20)).await,
        Some(0),
        "exit 0 after a graceful shutdown"
    );
}

#[tokio::test]
async fn sighup_reloads_the_config() {
    let sim = mvllm_sim::spawn(SimConfig::instant()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = start_router(&write_config(&dir, &one_server(&sim.url(), ""))).await;
    signal(&child, Signal::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "a successful reload counted after SIGHUP",
        || async {
            let text = reqwest::get(format!("{url}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.contains("mvllm_config_reloads_total{result=\"success\"} 1")
        },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let StreamSetup {
        _sim,
        _dir,
        child,
        url,
        stream,
        first: _,
    } = router_with_a_stream(60, 100_000).await;
    signal(&child, Signal::SIGTERM);
    // Shutdown has begun once new connections are refused (the endless stream keeps it
    // draining); only then is the second signal sent, so that the two cannot merge into one.
    eventually(
        Duration::from_secs(10),
        "new connections refused after SIGTERM",
        || async { reqwest::get(format!("{url}/livez")).await.is_err() },
    )
    .await;
    signal(&child, Signal::SIGTERM);
    assert_eq!(
        wait_exit(child, Duration::from_secs(10)).await,
        Some(130),
        "at once, not after the 60 s grace period"
    );
    drop(stream);
}

#[tokio::test]
async fn healthcheck_exits_zero_on_2xx_and_says_why_otherwise() {
    let sim = mvllm_sim::spawn(SimConfig::instant()).await.unwrap();
    let run = |url: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["healthcheck", &url])
                .output()
                .unwrap()
        })
    };
    let ok = run(format!("{}/health", sim.url())).await.unwrap();
    assert_eq!(ok.status.code(), Some(0));
    let missing = run(format!("{}/no-such-path", sim.url())).await.unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let closed = run(format!("http://127.0.0.1:{}/livez", free_port()))
        .await
        .unwrap();
    assert_eq!(closed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&closed.stderr).contains("connection refused"),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
}

/// `bench overhead --pin` (the peers kit's method): the router's threads all on one CPU, the
/// load generator's on the others, and the pinned figures in the report.
#[test]
fn bench_overhead_pin_puts_the_router_alone_on_one_cpu() {
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let cpus = mvllm_bench::pinning::allowed_cpus(&own).unwrap();
    let taskset = Command::new("taskset").arg("-V").output();
    if cpus.len() < 2 || !taskset.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: pinned mode needs two CPUs and taskset");
        return;
    }
    let (report, stdout) = bench_report(&[
        "bench",
        "overhead",
        "--quick",
        "--pin",
        "--no-dashboard",
        "--no-nginx",
        "--hold-streams",
        "0",
    ]);
    let pinned = &report["pinned"];
    let router_cpu = pinned["router_cpu"].as_u64().unwrap().to_string();
    assert_eq!(pinned["proxies"]["mvllm"], serde_json::json!([router_cpu]));
    let load: Vec<&str> = pinned["load"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(!load.is_empty());
    assert!(
        load.iter()
            .all(
                |l| mvllm_bench::pinning::allowed_cpus(&format!("Cpus_allowed_list:\t{l}\n"))
                    .unwrap()
                    .iter()
                    .all(|c| c.to_string() != router_cpu)
            ),
        "the load shares the router's CPU: {load:?}"
    );
    // The kit's figures, at 1 and 64 connections: CPU per request, req/s, p50, no errors.
    let rows = report["rows"].as_array().unwrap();
    for conc in [1, 64] {
        let row = rows
            .iter()
            .find(|r| r["kind"] == "non-streaming" && r["concurrency"] == conc)
            .unwrap();
        assert!(row["cpu_ms_per_1000"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["routed_rps"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["errors_routed"], 0, "{row}");
    }
    assert!(stdout.contains("pinned: proxies on CPU"));
}

#[test]
fn sim_kv_role_is_read_per_instance_and_a_wrong_one_is_refused() {
    let out = Command::new(BIN)
        .args([
            "sim",
            "--port",
            "0",
            "--instances",
            "2",
            "--kv-role",
            "producer,decoder",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown --kv-role 'decoder'") && err.contains("producer, consumer or both"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args([
            "sim",
            "--port",
            "0",
            "--instances",
            "3",
            "--kv-role",
            "producer,consumer",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("one per instance"));
    // Good roles: both servers come up, each saying its role.
    let mut child = Command::new(BIN)
        .args([
            "sim",
            "--port",
            "0",
            "--instances",
            "2",
            "--kv-role",
            "kv_producer,consumer",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.contains("kv_role producer"), "{first}");
    assert!(second.contains("kv_role consumer"), "{second}");
}

#[test]
fn sim_tokenizer_must_name_a_models_tokenizer_and_then_tokenizes_with_it() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["sim", "--port", "0", "--tokenizer"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no tokenizer.json"), "{err}");
    // With the test suite's word-level tokenizer, /tokenize answers in its ids.
    let dir = tempfile::tempdir().unwrap();
    mvllm_testkit::tokenizer::write_word_tokenizer(dir.path()).unwrap();
    let mut child = Command::new(BIN)
        .args(["sim", "--port", "0", "--tokenizer"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer: serde_json::Value = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{url}/tokenize"))
            .json(&serde_json::json!({"prompt": "w3 w4", "add_special_tokens": false}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        answer["tokens"],
        serde_json::json!(mvllm_testkit::tokenizer::word_ids("w3 w4")),
        "{answer}"
    );
}

/// `bench disagg`, seconds long: every layout serves every request, and only the split ones
/// take two legs.
#[test]
fn bench_disagg_runs_each_layout_and_splits_only_the_disaggregated_ones() {
    let (report, stdout) = bench_report(&["bench", "disagg", "--rate", "4", "--seconds", "2"]);
    assert!(stdout.contains("| 2 prefill + 2 decode |"));
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for r in runs {
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["requests"].as_u64().unwrap() > 0);
        let split = r["layout"] != "co-located 4";
        assert_eq!(r["two_legs"].as_f64().unwrap() > 0.0, split, "{r}");
    }
}

/// `bench hyper-floor` is a working proxy: measured by `bench overhead --proxy` beside mvllm, it
/// serves every request and holds every stream, and each proxy gets its own holding figure.
#[test]
fn bench_overhead_measures_the_hyper_floor_beside_mvllm() {
    let floor =
        format!("hyper-floor={BIN} bench hyper-floor --port {{port}} --upstream {{backend}}");
    let (report, _) = bench_report(&[
        "bench",
        "overhead",
        "--quick",
        "--no-dashboard",
        "--no-nginx",
        "--hold-streams",
        "20",
        "--proxy",
        &floor,
    ]);
    let rows: Vec<_> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["proxy"] == "hyper-floor")
        .collect();
    assert!(
        rows.iter().any(|r| r["kind"] == "non-streaming"),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|r| r["kind"] != "non-streaming"),
        "{rows:?}"
    );
    for row in rows {
        assert!(row["routed_rps"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["errors_routed"], 0, "{row}");
    }
    let hold = report["hold"].as_array().unwrap();
    let proxies: Vec<&str> = hold.iter().map(|h| h["proxy"].as_str().unwrap()).collect();
    assert_eq!(proxies, ["mvllm", "hyper-floor"]);
    for h in hold {
        assert_eq!(h["errors"], 0, "{h}");
        assert_eq!(h["streams"], 20, "{h}");
        assert!(h["max_open_at_once"].as_u64().unwrap() > 0, "{h}");
    }
}

#[test]
fn bench_hyper_floor_needs_an_upstream() {
    let out = Command::new(BIN)
        .args(["bench", "hyper-floor", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"));
}

/// Runs `mvllm ARGS --json FILE`, which must succeed; returns the JSON report and the terminal
/// output.
fn bench_report(args: &[&str]) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(BIN)
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (report, String::from_utf8_lossy(&out.stdout).into_owned())
}
