//! The router's own endpoints, with every field the Python mvllm's clients and scripts read
//! (`/`, `/health`, `/load-stats`, `/server-models`) and `/v1/models` as the union of the
//! healthy servers' model cards. The admin API is in [`admin`].

pub mod admin;
pub mod cors;
pub mod guard;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::fleet::Server;
use crate::state::AppState;

/// A time as the Python mvllm wrote it (`datetime.now().isoformat()`): local time, no offset,
/// microseconds unless zero, e.g. `2026-11-26T20:08:44.723149`. Its scripts parse it with
/// `datetime.fromisoformat` and subtract it from `datetime.now()`, which an offset would break.
pub(crate) fn iso(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| {
        let local = chrono::DateTime::<chrono::Local>::from(t).naive_local();
        let format = if local.and_utc().timestamp_subsec_micros() == 0 {
            "%Y-%m-%dT%H:%M:%S"
        } else {
            "%Y-%m-%dT%H:%M:%S%.6f"
        };
        json!(local.format(format).to_string())
    })
}

/// A count read from a server's gauges (whole numbers, as floats in Prometheus text) as the
/// integer the Python mvllm reported.
fn count(v: f64) -> Value {
    json!(v.max(0.0).round() as u64)
}

/// Seconds as the seed's integer settings were written: an integer when whole.
fn seconds(d: std::time::Duration) -> Value {
    if d.subsec_nanos() == 0 {
        json!(d.as_secs())
    } else {
        json!(d.as_secs_f64())
    }
}

pub async fn root() -> Json<Value> {
    Json(
        json!({"service": "vLLM Router", "version": env!("CARGO_PKG_VERSION"), "status": "running"}),
    )
}

pub(crate) fn server_health(s: &Server) -> Value {
    let h = s.health.lock().clone();
    let models = s.models.load();
    json!({
        "url": s.url(),
        "healthy": s.is_healthy(),
        "draining": s.draining.load(Ordering::Relaxed),
        "last_check": iso(h.last_check),
        "consecutive_failures": h.consecutive_check_failures.max(h.consecutive_request_failures),
        "success_rate": h.success_rate(),
        "avg_response_time": h.avg_response_time(),
        "last_response_time": h.last_response_time,
        "total_checks": h.total_checks,
        "last_error": if s.is_healthy() { None } else { h.last_error.clone() },
        "supported_models": s.model_ids(),
        "models_last_updated": iso(models.updated),
    })
}

/// Fleet health: `status` is "healthy" (>= 80% of servers healthy), "degraded" (>= 50%),
/// "unhealthy" or "no_servers". Answers 503 when unhealthy or empty, so that a load balancer in
/// front can act on the status code; the body is the same either way.
///
/// With `[auth]` keys, a request without a valid key sees only the counts: server URLs, models
/// and errors are for the router's clients.
pub async fn health(State(app): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    let servers = app.fleet.servers();
    let settings = app.fleet.settings();
    let total = servers.len();
    let healthy = servers.iter().filter(|s| s.is_healthy()).count();
    let score = if total == 0 {
        0.0
    } else {
        healthy as f64 / total as f64
    };
    let status = match (total, score) {
        (0, _) => "no_servers",
        (_, s) if s >= 0.8 => "healthy",
        (_, s) if s >= 0.5 => "degraded",
        _ => "unhealthy",
    };
    let code = if matches!(status, "healthy" | "degraded") {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": status,
        "health_score": score,
        "total_servers": total,
        "healthy_servers": healthy,
        "unhealthy_servers": total - healthy,
    });
    if !app.admission.access.load().knows(&headers) {
        return (code, Json(body)).into_response();
    }
    let detail = json!({
        "servers": servers.iter().map(|s| server_health(s)).collect::<Vec<_>>(),
        "config": {
            "health_check_enabled": settings.enable_active_health_check,
            "health_check_interval": seconds(settings.health_check_interval),
            "min_success_rate": settings.health_check_min_success_rate,
            "max_response_time": settings.health_check_max_response_time.as_secs_f64(),
            "routing_policy": settings.routing_policy.name(),
        },
    });
    if let (Some(b), Value::Object(d)) = (body.as_object_mut(), detail) {
        b.extend(d);
    }
    (code, Json(body)).into_response()
}

/// Load per server, in the Python mvllm's field names and types (integers for loads and
/// capacities, `status` the healthy flag, ISO times), plus our own fields under new names
/// (`state` with draining, `in_flight`, `metrics_fresh`, `prefix_index`, ...). `current_load` is
/// the larger of the router's in-flight count and the server's own running + waiting (from its
/// last fresh scrape); the summary counts every server, as the seed's did.
pub async fn load_stats(State(app): State<Arc<AppState>>) -> Json<Value> {
    let servers = app.fleet.servers();
    let max_age = app.fleet.metrics_max_age();
    let mut total_load = 0u64;
    let mut total_capacity = 0u64;
    let policy = app.fleet.policy();
    let rows: Vec<Value> = servers
        .iter()
        .map(|s| {
            let prefix = policy.report(s.id()).unwrap_or_default();
            let fresh = s.fresh_metrics(max_age);
            let scrape = s.scrape.lock().clone();
            let in_flight = s.in_flight() as u64;
            let load = fresh.map_or(in_flight, |m| {
                in_flight.max((m.running + m.waiting).max(0.0).round() as u64)
            });
            let capacity = u64::from(s.capacity());
            total_load += load;
            total_capacity += capacity;
            let state = if !s.is_healthy() {
                "unhealthy"
            } else if s.draining.load(Ordering::Relaxed) {
                "draining"
            } else {
                "healthy"
            };
            json!({
                "url": s.url(),
                "current_load": load,
                "max_capacity": capacity,
                "available_capacity": capacity.saturating_sub(load),
                "utilization_percent": utilization(load, capacity),
                "status": s.is_healthy(),
                "state": state,
                "last_updated": iso(Some(scrape.wall_at)),
                "in_flight": in_flight,
                "prefix_index": {
                    "blocks": prefix.blocks,
                    "bytes": prefix.bytes,
                    "predicted_hit_rate": prefix.predicted_hit_rate,
                    "actual_hit_rate": prefix.actual_hit_rate,
                    "resets": prefix.resets,
                },
                "cache_state": s.kv.state().name(),
                "cached_blocks": s.config().kv_events.is_some().then(|| s.kv.cached_blocks()),
                "kv_events": s.config().kv_events.as_ref().map(|_| kv_events_json(&s.kv)),
                "metrics_fresh": fresh.is_some(),
                "metrics_error": scrape.last_error,
                "detailed_metrics": {
                    "num_requests_running": count(fresh.map_or(0.0, |m| m.running)),
                    "num_requests_waiting": count(fresh.map_or(0.0, |m| m.waiting)),
                    "gpu_cache_usage_perc": fresh.map_or(0.0, |m| m.kv_usage),
                    "process_max_fds": scrape.metrics.and_then(|m| m.process_max_fds).map_or(DEFAULT_MAX_FDS, |n| n as u64),
                    "kv_cache_usage_perc": fresh.map(|m| m.kv_usage),
                    "prefix_cache_hits": fresh.map(|m| m.prefix_cache_hits),
                    "prefix_cache_queries": fresh.map(|m| m.prefix_cache_queries),
                    "engines": fresh.map(|m| m.engines),
                },
            })
        })
        .collect();
    let healthy = servers.iter().filter(|s| s.is_healthy()).count();
    Json(json!({
        "servers": rows,
        "summary": {
            "total_servers": servers.len(),
            "healthy_servers": healthy,
            "total_active_load": total_load,
            "total_capacity": total_capacity,
            "overall_utilization_percent": utilization(total_load, total_capacity),
            "routing_policy": app.fleet.settings().routing_policy.name(),
        },
    }))
}

/// The value the Python mvllm reported when a server's `/metrics` had no `process_max_fds`.
const DEFAULT_MAX_FDS: u64 = 65535;

/// Load as a percentage of capacity, capped at 100 as the seed's was (a server can hold more
/// than its `max_concurrent_requests` in its own queue).
/// A server's KV-event stream: why its state is approximate (if it is) and its counts.
fn kv_events_json(kv: &crate::fleet::kv_state::KvState) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &kv.counters;
    json!({
        "reason": Some(kv.reason()).filter(|r| !r.is_empty()),
        "batches": c.batches.load(Relaxed),
        "malformed": c.malformed.load(Relaxed),
        "gaps": c.gaps.load(Relaxed),
        "replays": c.replays.load(Relaxed),
        "replay_failures": c.replay_failures.load(Relaxed),
        "restarts": c.restarts.load(Relaxed),
        "over_budget": c.over_budget.load(Relaxed),
        "index_bytes": kv.index.lock().bytes(),
    })
}

fn utilization(load: u64, capacity: u64) -> f64 {
    if capacity == 0 {
        0.0
    } else {
        (100.0 * load as f64 / capacity as f64).min(100.0)
    }
}

pub async fn server_models(State(app): State<Arc<AppState>>) -> Json<Value> {
    let servers = app.fleet.servers();
    let map: serde_json::Map<String, Value> = servers
        .iter()
        .map(|s| {
            let models = s.models.load();
            (
                s.url().to_string(),
                json!({"supported_models": s.model_ids(), "models_last_updated": iso(models.updated), "healthy": s.is_healthy()}),
            )
        })
        .collect();
    Json(json!({
        "servers": map,
        "total_servers": servers.len(),
        "healthy_servers": servers.iter().filter(|s| s.is_healthy()).count(),
    }))
}

/// The union of the healthy servers' model cards as they wrote them (first seen wins), plus a
/// minimal card for a model a server's static `models` list names but it did not describe.
pub async fn models(State(app): State<Arc<AppState>>) -> Json<Value> {
    let mut data: Vec<Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in app.fleet.servers().iter().filter(|s| s.is_healthy()) {
        let models = s.models.load();
        for card in &models.cards {
            if let Some(id) = card.get("id").and_then(Value::as_str)
                && s.serves(id)
                && seen.insert(id.to_string())
            {
                data.push(card.clone());
            }
        }
        for id in s.model_ids() {
            if seen.insert(id.clone()) {
                data.push(json!({"id": id, "object": "model", "owned_by": "vllm"}));
            }
        }
    }
    Json(json!({"object": "list", "data": data}))
}
