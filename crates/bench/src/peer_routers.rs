//! Other routers run side by side with mvllm in `mvllm bench routing`, each as a child process
//! in front of the same simulated servers: vLLM's router (`pip install vllm-router==0.1.17`) and
//! SGLang's gateway (`pip install smg==1.13.0`, `smg launch`), both with `--policy
//! cache_aware`. A router that is not installed is skipped with a note.
//!
//! Where they are looked for: `$MVLLM_BENCH_VLLM_ROUTER` / `$MVLLM_BENCH_SGLANG_ROUTER` (the
//! executable), then `PATH`, then the virtual environments the overhead kit and the README use
//! (`/tmp/peers/<name>/bin`, `/tmp/venv-<name>/bin`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::client::http_client;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    VllmRouter,
    SglangRouter,
}

impl Peer {
    pub const ALL: [Peer; 2] = [Peer::VllmRouter, Peer::SglangRouter];

    pub fn name(self) -> &'static str {
        match self {
            Peer::VllmRouter => "vllm-router",
            Peer::SglangRouter => "sglang-router",
        }
    }

    fn executable(self) -> Option<PathBuf> {
        let (env, bin, venvs): (&str, &str, [&str; 2]) = match self {
            Peer::VllmRouter => (
                "MVLLM_BENCH_VLLM_ROUTER",
                "vllm-router",
                ["/tmp/peers/vllmrouter/bin", "/tmp/venv-vllm-router/bin"],
            ),
            Peer::SglangRouter => (
                "MVLLM_BENCH_SGLANG_ROUTER",
                "smg",
                ["/tmp/peers/sglrouter/bin", "/tmp/venv-sglang-router/bin"],
            ),
        };
        if let Some(p) = std::env::var_os(env) {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(venvs.iter().map(PathBuf::from))
            .map(|dir| dir.join(bin))
            .find(|p| p.is_file())
    }
}

/// A peer router running as a child process; stopped when dropped.
pub struct PeerProcess {
    _child: Child,
    pub url: String,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Starts `peer` with `--policy cache_aware` in front of `workers`; `Ok(None)` (with a note on
/// stderr) when it is not installed.
pub async fn start(peer: Peer, workers: &[String]) -> Result<Option<PeerProcess>, String> {
    start_with(peer, workers, &[], None).await
}

/// [`start`], with `extra` arguments, and `api_key` sent with the readiness probe (a peer
/// started with keys refuses requests without one).
pub async fn start_with(
    peer: Peer,
    workers: &[String],
    extra: &[String],
    api_key: Option<&str>,
) -> Result<Option<PeerProcess>, String> {
    let Some(exe) = peer.executable() else {
        eprintln!(
            "  ({} is not installed: skipped; pip install {} into a venv, see bench/README.md)",
            peer.name(),
            match peer {
                Peer::VllmRouter => "vllm-router==0.1.17",
                Peer::SglangRouter => "smg==1.13.0",
            }
        );
        return Ok(None);
    };
    let (port, prom) = (free_port()?, free_port()?);
    let mut cmd = Command::new(&exe);
    if peer == Peer::SglangRouter {
        cmd.arg("launch");
    }
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--worker-urls")
        .args(workers)
        .args(["--policy", "cache_aware"])
        .args(["--prometheus-host", "127.0.0.1"])
        .args(["--prometheus-port", &prom.to_string()])
        .args(["--worker-startup-timeout-secs", "30"])
        .args(["--worker-startup-check-interval", "1"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let url = format!("http://127.0.0.1:{port}");
    // Ready when a chat completion goes through it.
    let client = match api_key {
        Some(k) => http_client().with_api_key(k)?,
        None => http_client(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let model = loop {
        if let Ok(m) = crate::load::first_model(&client, &workers[0]).await {
            break m;
        }
        if Instant::now() > deadline {
            return Err("the simulated servers do not answer /v1/models".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "ready?"}], "max_tokens": 1}).to_string();
    loop {
        if let Ok(t) = crate::client::post_timed(
            &client,
            &format!("{url}/v1/chat/completions"),
            body.clone(),
            false,
        )
        .await
            && t.status == 200
        {
            return Ok(Some(PeerProcess { _child: child, url }));
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not become ready in 60 s", peer.name()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
