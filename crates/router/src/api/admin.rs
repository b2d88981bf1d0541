//! The runtime admin API (JSON): reload, list, add, remove, drain and undrain servers.
//!
//! Runtime changes live until the next reload: the config file is the source of truth, so a
//! reload brings the server list back to the file (a server added at run time and not in the
//! file is removed; one removed at run time and still in the file returns). Drain is
//! operational state, not config: a drained server stays drained across reloads while it stays
//! in the fleet. With `admin_token` set every admin route needs `Authorization: Bearer <token>`;
//! with `admin_listen` set they are served only on that address.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::config::ServerConfig;
use crate::error::ApiError;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// Requires the admin token when one is configured. Digests are compared in constant time, as
/// client keys are, so neither the token's contents nor its length show in the timing.
pub async fn require_token(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(token) = app.fleet.settings().admin_token.as_deref() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| {
            bool::from(crate::access::digest(g).ct_eq(&crate::access::digest(token)))
        });
        if !ok {
            return error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs Authorization: Bearer <admin_token>",
            );
        }
    }
    next.run(req).await
}

/// The fleet at a glance, for `mvllm top` and scripts: see [`crate::status`].
pub async fn status(State(app): State<Arc<AppState>>) -> Json<crate::status::FleetStatus> {
    Json(crate::status::snapshot(&app.fleet))
}

pub async fn reload(State(app): State<Arc<AppState>>) -> Response {
    match app.reloader.reload().await {
        Ok(summary) => Json(json!({"status": "reloaded", "summary": summary})).into_response(),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!("config refused, the running config stays: {e}"),
        ),
    }
}

pub async fn list(State(app): State<Arc<AppState>>) -> Json<Value> {
    let max_age = app.fleet.metrics_max_age();
    let servers: Vec<Value> = app
        .fleet
        .servers()
        .iter()
        .map(|s| {
            let mut v = super::server_health(s);
            let cfg = s.config();
            v["max_concurrent_requests"] = json!(cfg.max_concurrent_requests);
            v["static_models"] = json!(cfg.models);
            v["api_key_set"] = json!(cfg.api_key.is_some());
            v["in_flight"] = json!(s.in_flight());
            v["requests"] = json!(s.stats.requests.load(Ordering::Relaxed));
            v["failures"] = json!(s.stats.failures.load(Ordering::Relaxed));
            v["metrics"] = json!(s.fresh_metrics(max_age).map(|m| json!({
                "running": m.running, "waiting": m.waiting, "kv_cache_usage": m.kv_usage, "engines": m.engines,
            })));
            v
        })
        .collect();
    Json(
        json!({"servers": servers, "config_file": app.reloader.path().map(|p| p.display().to_string())}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddServer {
    url: String,
    #[serde(default = "default_capacity")]
    max_concurrent_requests: u32,
    api_key: Option<String>,
    models: Option<Vec<String>>,
}

fn default_capacity() -> u32 {
    3
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByUrl {
    url: String,
}

/// An admin request that cannot be done, and why.
pub struct AdminError(StatusCode, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, AdminError> {
    serde_json::from_slice(body)
        .map_err(|e| AdminError(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))
}

pub async fn add(State(app): State<Arc<AppState>>, body: Bytes) -> Result<Response, AdminError> {
    let req: AddServer = parse(&body)?;
    let url = crate::config::normalize_url(&req.url)
        .map_err(|e| AdminError(StatusCode::BAD_REQUEST, e))?;
    if req.max_concurrent_requests == 0 {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "max_concurrent_requests must be >= 1".into(),
        ));
    }
    let cfg = ServerConfig {
        url: url.clone(),
        max_concurrent_requests: req.max_concurrent_requests,
        api_key: req.api_key,
        models: req.models,
    };
    app.fleet
        .add_server(cfg)
        .map_err(|e| AdminError(StatusCode::CONFLICT, e))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"status": "added", "url": url})),
    )
        .into_response())
}

pub async fn remove(State(app): State<Arc<AppState>>, body: Bytes) -> Result<Response, AdminError> {
    let req: ByUrl = parse(&body)?;
    let url = crate::config::normalize_url(&req.url).unwrap_or(req.url);
    app.fleet
        .remove_server(&url)
        .map_err(|e| AdminError(StatusCode::NOT_FOUND, e))?;
    Ok(Json(json!({"status": "removed", "url": url})).into_response())
}

async fn set_drain(app: &AppState, body: &Bytes, drain: bool) -> Result<Response, AdminError> {
    let req: ByUrl = parse(body)?;
    let url = crate::config::normalize_url(&req.url).unwrap_or(req.url);
    let in_flight = app
        .fleet
        .set_draining(&url, drain)
        .map_err(|e| AdminError(StatusCode::NOT_FOUND, e))?;
    Ok(Json(json!({"status": if drain { "draining" } else { "undrained" }, "url": url, "in_flight": in_flight})).into_response())
}

pub async fn drain(State(app): State<Arc<AppState>>, body: Bytes) -> Result<Response, AdminError> {
    set_drain(&app, &body, true).await
}

pub async fn undrain(
    State(app): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, AdminError> {
    set_drain(&app, &body, false).await
}
