//! Simulated servers in a child process, so that the load generator and the servers do not
//! share a runtime, and the servers' CPU time can be read apart.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct SimProcess {
    pub child: Child,
    pub urls: Vec<String>,
    /// Each instance's KV-event endpoint and replay endpoint (with `--kv-events`).
    pub kv_events: Vec<(String, Option<String>)>,
}

impl SimProcess {
    /// Starts `mvllm sim --port 0 <args>` from the running executable and waits until every
    /// instance printed its address.
    pub async fn start(instances: usize, args: &[&str]) -> Result<SimProcess, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("sim")
            .args(["--port", "0", "--instances", &instances.to_string()])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the simulator: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut urls = Vec::new();
        let mut kv_events = Vec::new();
        let want_kv = if args.contains(&"--kv-events") {
            instances
        } else {
            0
        };
        while urls.len() < instances || kv_events.len() < want_kv {
            let line = lines
                .next_line()
                .await
                .map_err(|e| e.to_string())?
                .ok_or("simulator exited early")?;
            if let Some(rest) = line.trim_start().strip_prefix("KV events (rank 0) at ") {
                let (at, replay) = match rest.split_once(", replay ") {
                    Some((a, r)) => (a.to_string(), Some(r.to_string())),
                    None => (rest.to_string(), None),
                };
                kv_events.push((at, replay));
            }
            if let Some(rest) = line.strip_prefix("simulated vLLM server at ") {
                urls.push(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(SimProcess {
            child,
            urls,
            kv_events,
        })
    }

    /// User plus system CPU seconds the process has used (Linux `/proc`), if readable.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(self.child.id()?)
    }
}

/// User plus system CPU seconds of a process and its children (nginx's workers, say).
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let own = cpu_seconds_of_one(pid)?;
    Some(
        own + children_of(pid)
            .iter()
            .filter_map(|&c| cpu_seconds_of_one(c))
            .sum::<f64>(),
    )
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let after = s.rsplit_once(')')?.1.to_string();
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// User plus system CPU seconds of one process, from `/proc/<pid>/stat`.
fn cpu_seconds_of_one(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Resident memory of a process and its children in MiB (`VmRSS`, or `VmHWM` for the peak).
pub fn memory_mib(pid: u32, field: &str) -> Option<f64> {
    let own = memory_mib_one(pid, field)?;
    Some(
        own + children_of(pid)
            .iter()
            .filter_map(|&c| memory_mib_one(c, field))
            .sum::<f64>(),
    )
}

fn memory_mib_one(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
