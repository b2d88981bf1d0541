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

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::state::AppState;

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
            bool::from(crate::config::auth::digest(g).ct_eq(&crate::config::auth::digest(token)))
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
    let mut status = crate::status::snapshot(&app.fleet, &app.telemetry);
    status.tenants = app.admission.tenants.load().status();
    Json(status)
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
    /// `prefill`, `decode` or `both` (the default).
    role: Option<String>,
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
    let url = crate::config::values::normalize_url(&req.url)
        .map_err(|e| AdminError(StatusCode::BAD_REQUEST, e))?;
    if req.max_concurrent_requests == 0 {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "max_concurrent_requests must be >= 1".into(),
        ));
    }
    let role = match req.role.as_deref() {
        None => crate::config::ServerRole::default(),
        Some(r) => crate::config::ServerRole::parse(r).ok_or_else(|| {
            AdminError(
                StatusCode::BAD_REQUEST,
                format!("role `{r}` is not one of \"prefill\", \"decode\", \"both\""),
            )
        })?,
    };
    let cfg = ServerConfig {
        url: url.clone(),
        max_concurrent_requests: req.max_concurrent_requests,
        api_key: req.api_key,
        models: req.models,
        role,
        kv_events: None,
    };
    app.fleet.add_server(cfg).map_err(refused)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"status": "added", "url": url})),
    )
        .into_response())
}

pub async fn remove(State(app): State<Arc<AppState>>, body: Bytes) -> Result<Response, AdminError> {
    let req: ByUrl = parse(&body)?;
    let url = crate::config::values::normalize_url(&req.url).unwrap_or(req.url);
    app.fleet.remove_server(&url).map_err(refused)?;
    Ok(Json(json!({"status": "removed", "url": url})).into_response())
}

/// A refused change to the server list: 409 for a server already there, 404 for one that is not
/// (or not by its own entry).
fn refused(e: crate::fleet::MembershipError) -> AdminError {
    use crate::fleet::MembershipError::*;
    let status = match e {
        AlreadyInFleet(_) => StatusCode::CONFLICT,
        NotInFleet(_) | FromDns(_) => StatusCode::NOT_FOUND,
    };
    AdminError(status, e.to_string())
}

async fn set_drain(app: &AppState, body: &Bytes, drain: bool) -> Result<Response, AdminError> {
    let req: ByUrl = parse(body)?;
    let url = crate::config::values::normalize_url(&req.url).unwrap_or(req.url);
    let in_flight = app.fleet.set_draining(&url, drain).map_err(refused)?;
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

/// How much of a server's answer to a management call is shown.
const UPSTREAM_ANSWER_SHOWN: usize = 64 * 1024;

/// `GET|POST /admin/upstream/<route>[?server=<url>]`: calls one of vLLM's management routes
/// (`/sleep`, `/v1/load_lora_adapter`, ...; see `proxy::paths::MANAGEMENT_ROUTES`) on the named
/// server, or on every server without `server`. The body and the rest of the query are passed
/// on. Answers each server's status and body; 200 when every server answered 2xx, else 502.
/// After a LoRA adapter is loaded or unloaded, that server's models are refreshed at once.
pub async fn upstream(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(route): axum::extract::Path<String>,
    req: Request,
) -> Result<Response, AdminError> {
    use crate::paths;
    let path = paths::normalize(&format!("/{route}"));
    if !paths::MANAGEMENT_ROUTES.contains(&path.as_str()) {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            format!(
                "`{path}` is not a server management route; one of: {}",
                paths::MANAGEMENT_ROUTES.join(", ")
            ),
        ));
    }
    let (parts, body) = req.into_parts();
    let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, 1 << 20))
        .await
        .map_err(|_| AdminError(StatusCode::BAD_REQUEST, "body over 1 MiB".into()))?
        .to_bytes();
    let mut target = None;
    let mut query = Vec::new();
    for pair in parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.strip_prefix("server=") {
            Some(url) => target = Some(url.to_string()),
            None => query.push(pair),
        }
    }
    let path_and_query = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let servers = app.fleet.servers();
    let chosen: Vec<_> = match target.as_deref() {
        None | Some("all") => servers.clone(),
        Some(url) => {
            let url = paths::percent_decode(url);
            let url = crate::config::values::normalize_url(&url).unwrap_or(url);
            let s = servers.iter().find(|s| s.url() == url).ok_or_else(|| {
                AdminError(
                    StatusCode::NOT_FOUND,
                    format!("no server {url} in the fleet"),
                )
            })?;
            vec![s.clone()]
        }
    };
    let timeout = app.fleet.settings().request_timeout;
    let lora = path.ends_with("_lora_adapter");
    let calls = chosen.iter().map(|s| {
        let app = app.clone();
        let (method, headers, body, pq) = (
            parts.method.clone(),
            parts.headers.clone(),
            body.clone(),
            path_and_query.clone(),
        );
        async move {
            let answer = call_upstream(&app, s, method, &headers, body, &pq, timeout).await;
            if lora && answer.as_ref().is_ok_and(|(st, _)| st.is_success()) {
                app.fleet.refresh_models(s).await;
            }
            match answer {
                Ok((status, text)) => (
                    status.is_success(),
                    json!({"server": s.url(), "status": status.as_u16(), "body": text}),
                ),
                Err(e) => (false, json!({"server": s.url(), "error": e})),
            }
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let all_ok = results.iter().all(|(ok, _)| *ok);
    tracing::info!(route = %path, servers = chosen.len(), all_ok, "management call through the admin API");
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    Ok((
        status,
        Json(json!({"route": path_and_query, "results": results.into_iter().map(|(_, v)| v).collect::<Vec<_>>()})),
    )
        .into_response())
}

async fn call_upstream(
    app: &AppState,
    server: &crate::fleet::Server,
    method: axum::http::Method,
    headers: &axum::http::HeaderMap,
    body: Bytes,
    path_and_query: &str,
    timeout: std::time::Duration,
) -> Result<(StatusCode, String), String> {
    let mut req = hyper::Request::new(http_body_util::Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = server.uri_for(path_and_query)?;
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        req.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    if let Some(key) = server.api_key()
        && let Ok(v) = axum::http::HeaderValue::from_str(&format!("Bearer {key}"))
    {
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
    let call = async {
        let resp = app
            .client
            .request(req)
            .await
            .map_err(|e| crate::upstream::describe(&e))?;
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(
            resp.into_body(),
            UPSTREAM_ANSWER_SHOWN,
        ))
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_else(|_| "(answer too long to show)".into());
        Ok((status, body))
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err("no answer within request_timeout".into()))
}
