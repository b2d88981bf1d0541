//! The router's own requests to servers: health checks, `/metrics` scrapes, model discovery.
//! Each is bounded by a time-out and reads at most a few MiB.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode, header};
use serde_json::Value;
use tokio::time::Instant;

pub use super::probe_error::ProbeError;
use super::prom::{self, ServerMetrics};
use super::server::Server;
use crate::upstream::Client;

const MAX_PROBE_BODY: usize = 8 * 1024 * 1024;

pub use crate::upstream::describe;

async fn get(
    client: &Client,
    server: &Server,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ProbeError> {
    let mut req = Request::get(server.uri_for(path).map_err(ProbeError::BadUri)?);
    if let Some(key) = server.api_key() {
        req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| ProbeError::BadUri(e.to_string()))?;
    let call = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| ProbeError::Unreachable(describe(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_PROBE_BODY)
            .collect()
            .await
            .map_err(|e| ProbeError::Body(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(ProbeError::TimedOut))
}

/// `GET /health`: the seconds it took, or why it failed.
pub async fn check_health(
    client: &Client,
    server: &Server,
    timeout: Duration,
) -> Result<f64, ProbeError> {
    let t0 = Instant::now();
    let (status, _) = get(client, server, "/health", timeout).await?;
    if status != StatusCode::OK {
        return Err(ProbeError::Status(status.as_u16()));
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// `GET /metrics`, parsed.
pub async fn scrape(
    client: &Client,
    server: &Server,
    timeout: Duration,
) -> Result<ServerMetrics, ProbeError> {
    let (status, body) = get(client, server, "/metrics", timeout).await?;
    if status != StatusCode::OK {
        return Err(ProbeError::Status(status.as_u16()));
    }
    let text = std::str::from_utf8(&body).map_err(|_| ProbeError::MetricsNotUtf8)?;
    prom::parse(text).map_err(ProbeError::Metrics)
}

/// `GET /v1/models`: the ids and the cards as written.
pub async fn discover_models(
    client: &Client,
    server: &Server,
    timeout: Duration,
) -> Result<(Vec<String>, Vec<Value>), ProbeError> {
    let (status, body) = get(client, server, "/v1/models", timeout).await?;
    if status != StatusCode::OK {
        return Err(ProbeError::Status(status.as_u16()));
    }
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| ProbeError::ModelsJson(e.to_string()))?;
    let cards = v
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .ok_or(ProbeError::NoModelList)?;
    let ids = cards
        .iter()
        .filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_string))
        .collect();
    Ok((ids, cards))
}
