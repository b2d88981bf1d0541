//! The fleet at a glance, as one JSON document (`GET /admin/status`): what the dashboard shows,
//! whether it runs in the router's own terminal or elsewhere (`mvllm top`).
//!
//! One type for both: the in-process dashboard builds a [`FleetStatus`] from the fleet directly,
//! `mvllm top` deserializes the same type from the status API, so the two cannot drift apart.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fleet::events::Event;
use crate::fleet::server::LIVE_WINDOW_SECONDS;
use crate::fleet::{Fleet, Server};
use crate::routing::Policy;
use crate::telemetry::Telemetry;

/// Rates are taken over the last this many seconds.
const RATE_SECONDS: usize = 10;
/// Sparkline points: one per this many seconds.
pub const HISTORY_STEP_SECONDS: usize = 5;
const EVENTS: usize = 50;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub version: String,
    pub policy: String,
    pub uptime_seconds: f64,
    pub summary: FleetSummary,
    /// Oldest first, one point per [`HISTORY_STEP_SECONDS`].
    pub history: Vec<HistoryPoint>,
    pub servers: Vec<ServerStatus>,
    /// Oldest first.
    pub events: Vec<Event>,
    /// Tenants and their budgets, by name (only when some tenant has a budget).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantStatus>,
}

pub use crate::admission::tenants::TenantStatus;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetSummary {
    pub total_servers: usize,
    pub healthy_servers: usize,
    pub in_flight: usize,
    /// Client requests answered per second (last 10 s).
    pub requests_per_second: f64,
    /// Output tokens per second, from the servers' `vllm:generation_tokens_total`; `None` when
    /// no server's metrics could be read.
    pub output_tokens_per_second: Option<f64>,
    /// Time to first token of streamed requests over the last minute.
    pub ttft_p50: Option<f64>,
    pub ttft_p99: Option<f64>,
    /// Share of requests over the last minute answered with a 5xx or 429, or failed mid-stream.
    pub error_rate: f64,
    /// Attempts retried on another server over the last minute.
    pub retries_last_minute: u64,
    /// Memory the prefix index takes, all servers together.
    #[serde(default)]
    pub prefix_index_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    pub requests_per_second: f64,
    pub ttft_p50: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    Healthy,
    Draining,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub url: String,
    pub state: ServerState,
    /// Its part in prefill/decode disaggregation: `prefill`, `decode` or `both`.
    #[serde(default = "role_both")]
    pub role: String,
    /// Drained by an operator (also while unhealthy, when `state` says so first).
    pub draining: bool,
    /// Why it is unhealthy (refused, time-out, HTTP 5xx, ...).
    pub reason: Option<String>,
    pub models: Vec<String>,
    /// The server's own figures, from its last fresh `/metrics` scrape.
    pub running: Option<f64>,
    pub waiting: Option<f64>,
    pub kv_usage: Option<f64>,
    pub output_tokens_per_second: Option<f64>,
    /// Requests the router has in flight to it.
    pub in_flight: usize,
    pub capacity: u32,
    pub requests_per_second: f64,
    pub ttft_p50: Option<f64>,
    pub ttft_p95: Option<f64>,
    /// Failed attempts over the last minute.
    pub errors_last_minute: u64,
    /// Failed attempts since the router started.
    pub errors_total: u64,
    /// Seconds since its `/metrics` was last read successfully.
    pub scrape_age_seconds: Option<f64>,
    /// Why the last scrape failed, if it did.
    pub scrape_error: Option<String>,
    /// The prefix index (`cache_aware`): the memory it takes for this server, and over its last
    /// calibration window the share of prompt tokens it predicted cached and the share the
    /// server reported cached.
    #[serde(default)]
    pub prefix_index_bytes: u64,
    #[serde(default)]
    pub predicted_hit_rate: Option<f64>,
    #[serde(default)]
    pub actual_hit_rate: Option<f64>,
    /// `exact` (from the server's KV events) or `approximate` (learned from routing).
    #[serde(default = "approximate")]
    pub cache_state: String,
    /// Blocks in its prefix cache, from its KV events (`None` without them).
    #[serde(default)]
    pub cached_blocks: Option<u64>,
    /// Its mean seconds per output token lately, from its own inter-token latency histogram
    /// (`None` until it has generated enough): how fast it is. `cache_aware` weighs the cost of
    /// a server markedly slower than the fastest by the ratio.
    #[serde(default)]
    pub seconds_per_token: Option<f64>,
}

fn approximate() -> String {
    "approximate".into()
}

fn role_both() -> String {
    "both".into()
}

impl ServerStatus {
    /// Load as a share of capacity: the larger of the router's in-flight count and the server's
    /// own running + waiting.
    pub fn utilisation(&self) -> f64 {
        let scraped = self.running.unwrap_or(0.0) + self.waiting.unwrap_or(0.0);
        (self.in_flight as f64).max(scraped) / f64::from(self.capacity.max(1))
    }
}

pub fn snapshot(fleet: &Fleet, t: &Telemetry) -> FleetStatus {
    let max_age = fleet.metrics_max_age();
    let servers: Vec<ServerStatus> = fleet
        .servers()
        .iter()
        .map(|s| server_status(s, max_age, &**fleet.policy()))
        .collect();
    let (recent, minute, history) = {
        let mut live = t.live.lock();
        (
            live.summary(RATE_SECONDS),
            live.summary(60),
            live.series(crate::telemetry::FLEET_WINDOW_SECONDS, HISTORY_STEP_SECONDS),
        )
    };
    let tokens: Vec<f64> = servers
        .iter()
        .filter_map(|s| s.output_tokens_per_second)
        .collect();
    let summary = FleetSummary {
        total_servers: servers.len(),
        healthy_servers: servers
            .iter()
            .filter(|s| s.state != ServerState::Unhealthy)
            .count(),
        in_flight: servers.iter().map(|s| s.in_flight).sum(),
        requests_per_second: recent.requests_per_second(),
        output_tokens_per_second: (!tokens.is_empty()).then(|| tokens.iter().sum()),
        ttft_p50: minute.ttft_p50,
        ttft_p99: minute.ttft_p99,
        error_rate: minute.error_rate(),
        retries_last_minute: minute.retries,
        prefix_index_bytes: servers.iter().map(|s| s.prefix_index_bytes).sum(),
    };
    FleetStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        policy: fleet.policy().kind().name().to_string(),
        uptime_seconds: t.started.elapsed().as_secs_f64(),
        summary,
        history: history
            .into_iter()
            .map(|(rps, ttft)| HistoryPoint {
                requests_per_second: rps,
                ttft_p50: ttft,
            })
            .collect(),
        servers,
        events: fleet.events.recent(EVENTS),
        tenants: Vec::new(),
    }
}

fn server_status(s: &Server, max_age: Duration, policy: &dyn Policy) -> ServerStatus {
    let scrape = s.scrape.lock().clone();
    let fresh = scrape.fresh(max_age);
    let (recent, minute) = {
        let live = s.live.lock();
        (
            live.summary(RATE_SECONDS),
            live.summary(LIVE_WINDOW_SECONDS),
        )
    };
    let prefix = policy.report(s.id()).unwrap_or_default();
    let state = if !s.is_healthy() {
        ServerState::Unhealthy
    } else if s.draining.load(Ordering::Relaxed) {
        ServerState::Draining
    } else {
        ServerState::Healthy
    };
    ServerStatus {
        url: s.url().to_string(),
        state,
        role: s.role().name().into(),
        draining: s.draining.load(Ordering::Relaxed),
        reason: (state == ServerState::Unhealthy)
            .then(|| s.health.lock().last_error.clone())
            .flatten(),
        models: s.model_ids(),
        running: fresh.map(|m| m.running),
        waiting: fresh.map(|m| m.waiting),
        kv_usage: fresh.map(|m| m.kv_usage),
        output_tokens_per_second: fresh.and(scrape.tokens_per_second),
        in_flight: s.in_flight(),
        capacity: s.capacity(),
        requests_per_second: recent.requests_per_second(),
        ttft_p50: minute.ttft_p50,
        ttft_p95: minute.ttft_p95,
        errors_last_minute: minute.errors,
        errors_total: s.stats.failures.load(Ordering::Relaxed),
        scrape_age_seconds: scrape.at.map(|at| at.elapsed().as_secs_f64()),
        scrape_error: scrape.last_error,
        prefix_index_bytes: prefix.bytes as u64,
        predicted_hit_rate: prefix.predicted_hit_rate,
        actual_hit_rate: prefix.actual_hit_rate,
        cache_state: s.kv.state().name().into(),
        cached_blocks: s
            .config()
            .kv_events
            .is_some()
            .then(|| s.kv.cached_blocks() as u64),
        seconds_per_token: scrape.pace.seconds_per_token(),
    }
}
