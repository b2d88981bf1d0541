//! SGLang's gateway (smg 1.13.0) beside mvllm in `mvllm bench tenants`, with its priority
//! scheduler on: the same keys as tenants (`--tenant-api-key`), the same fleet capacity as its
//! admission limit (`--max-concurrent-requests`, four servers of
//! [`super::tenants_suite::CAPACITY_SETTING`]), classes from its `x-smg-priority` header
//! (critical: `interactive`, batch: `bulk`, the rest `default`), and its own class settings
//! with the queues as deep as mvllm's and `interactive` holding 8 slots in reserve
//! (`reserved_floor`, as smg 1.13.0 names it).
//!
//! Not compared: smg's per-tenant token budgets, which it enforces only on its gRPC router
//! (workers speaking SGLang's or vLLM's gRPC), not in front of OpenAI-HTTP servers like these.

use std::io::Write as _;

use crate::peer_routers::{self, Peer, PeerProcess};

/// smg's class for a tenant of the suite, sent as `x-smg-priority`.
pub fn priority_header(critical: bool, batch: bool) -> Option<&'static str> {
    match (critical, batch) {
        (true, _) => Some("interactive"),
        (_, true) => Some("bulk"),
        _ => None,
    }
}

/// The running gateway and its config file (removed when dropped).
pub struct Smg {
    pub process: PeerProcess,
    _config: tempfile::NamedTempFile,
}

/// Starts smg in front of `workers` with `keys` (tenant name, key) and a queue timeout of
/// `timeout_secs`; `Ok(None)` when smg is not installed.
pub async fn start(
    workers: &[String],
    keys: &[(&str, &str)],
    capacity: u32,
    timeout_secs: u64,
) -> Result<Option<Smg>, String> {
    let mut config = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let class = |reserved: u32, starvation: u32, preempt: bool| {
        format!(
            "{{reserved_floor: {reserved}, reserved_per_slot: 0.0, queue_size: 100000, queue_timeout_secs: {timeout_secs}, starvation_threshold_secs: {starvation}, can_preempt: {preempt}}}"
        )
    };
    let yaml = format!(
        "classes:\n  system: {}\n  interactive: {}\n  default: {}\n  bulk: {}\n",
        class(0, 5, true),
        class(8, 5, true),
        class(0, 30, false),
        class(0, 120, false),
    );
    config
        .write_all(yaml.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut args: Vec<String> = [
        "--max-concurrent-requests",
        &capacity.to_string(),
        "--queue-size",
        "100000",
        "--queue-timeout-secs",
        &timeout_secs.to_string(),
        "--priority-scheduler-enabled",
        "--priority-scheduler-default-max-class",
        "interactive",
        "--priority-scheduler-config",
        &config.path().display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    for (tenant, key) in keys {
        args.push("--tenant-api-key".into());
        args.push(format!("{tenant}:{key}"));
    }
    let probe_key = keys.first().map(|(_, k)| *k);
    Ok(
        peer_routers::start_with(Peer::SglangRouter, workers, &args, probe_key)
            .await?
            .map(|process| Smg {
                process,
                _config: config,
            }),
    )
}
