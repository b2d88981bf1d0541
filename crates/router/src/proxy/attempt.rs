//! One attempt: the request sent to one server, and a typed outcome — the answer for the client
//! (`Done`), or `Retry` with why (connect error, time-out, a busy or failed status) — so the
//! retry loop decides from a type, never from an error's text.
//!
//! `request_timeout` catches dead and hung servers, not busy ones. A non-streamed answer's
//! headers come only when the whole generation is done, which can take minutes on a healthy
//! server. So when no headers have come within `request_timeout`, the server is asked whether
//! it is alive (its `/health`, within `health_check_timeout`, while the request keeps waiting):
//! a server that answers is generating, and the request waits on, up to `generation_timeout`; a
//! server that does not is broken, and only then is the request counted against it and retried
//! elsewhere. Reaching `generation_timeout` is the request's length, not the server's fault: 504,
//! no retry, no failure counted.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;

use super::body::{ProxyBody, RequestLog};
use super::errors::ProxyError;
use super::headers;
use super::meta::RequestMeta;
use super::retries::{is_failure, retry_allowed};
use crate::fleet::Server;
use crate::fleet::probe;
use crate::routing::prefix_index::Prediction;
use crate::state::AppState;

/// The client's request, as every attempt sends it.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub parts: &'a axum::http::request::Parts,
    pub body: &'a Bytes,
    pub meta: &'a RequestMeta,
    pub id: &'a str,
    pub started: Instant,
    /// This router's `Via` token, so a request that loops back is recognised.
    pub via: &'a HeaderValue,
    /// The request's trace span, taken by the answer that is streamed back.
    pub span: &'a crate::otel::SpanSlot,
    /// The request's charge to its tenant, taken by the answer that is streamed back.
    pub charge: &'a crate::admission::tenants::ChargeSlot,
    /// Which part of the request this sends (see [`super::disaggregated`]).
    pub leg: Leg,
    /// The fleet as this request sees it: every attempt uses its settings and policy.
    pub view: &'a crate::fleet::FleetView,
}

/// What an attempt sends of the client's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// All of it, to one server.
    Whole,
    /// The prefill, for a decode server to continue: its answer is read by the router, not
    /// streamed to the client (it leaves the trace span and stored-response ids alone).
    Prefill,
    /// The decode, after a prefill elsewhere. `cached_tokens`: what the prefill server reported
    /// as cached, written over the decode server's count (which includes the transferred KV),
    /// so usage reads as a single server's.
    Decode { cached_tokens: Option<u64> },
}

/// Why an attempt is worth repeating on another server.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryCause {
    /// The server could not be reached (refused, reset, name not resolving, ...).
    Connect(String),
    /// No answer within `request_timeout`, and the server did not answer its health check.
    Timeout,
    /// The server answered 429, 502, 503, 504 or 508.
    Status(u16),
}

impl RetryCause {
    /// The `reason` label of `mvllm_retries_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connection",
            Self::Timeout => "timeout",
            Self::Status(_) => "status",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Connect(why) => why.clone(),
            Self::Timeout => "no response headers in time and no answer to a health check".into(),
            Self::Status(code) => format!("HTTP {code}"),
        }
    }

    /// The client's answer if no other attempt does better.
    pub fn error(&self) -> ProxyError {
        match self {
            Self::Timeout => ProxyError::Timeout,
            other => ProxyError::BadGateway(other.describe()),
        }
    }
}

pub enum Outcome {
    Done(Result<Response, ProxyError>),
    Retry(RetryCause),
}

/// Sends the request to `server`. `may_retry`: another server could take it if this one fails.
/// `prediction`: how much of the prompt the prefix index believes the server holds (when the
/// policy routes by prefixes); the rest is prefill queued there, and the answer's reported
/// cached tokens are checked against it.
pub async fn run(
    app: &AppState,
    server: &Arc<Server>,
    request: &Request<'_>,
    attempt: u32,
    may_retry: bool,
    prediction: Option<Prediction>,
) -> Outcome {
    let settings = request.view.settings.clone();
    let mut guard = server.begin_request();
    if let Some(p) = prediction {
        guard.set_prefill_tokens((p.prompt_tokens - p.cached_tokens).max(0.0) as u64);
    }
    let req = match upstream_request(server, request) {
        Ok(r) => r,
        Err(e) => return Outcome::Done(Err(e)),
    };
    let resp = match await_headers(app, server, request, req).await {
        Headers::Answer(resp) => resp,
        Headers::Unreachable(e) => {
            server.live.lock().record_request(true);
            let why = probe::describe(&e);
            let t = server.record_failure(why.clone(), &settings);
            app.fleet.on_transition(server, t).await;
            tracing::warn!(id = request.id, server = server.url(), reason = %why, "server unreachable; trying another");
            return Outcome::Retry(RetryCause::Connect(why));
        }
        Headers::Hung => {
            server.live.lock().record_request(true);
            let t = server.record_failure(
                "no answer within request_timeout, nor to a health check".into(),
                &settings,
            );
            app.fleet.on_transition(server, t).await;
            tracing::warn!(
                id = request.id,
                server = server.url(),
                "no response headers within request_timeout and no answer to a health check"
            );
            return Outcome::Retry(RetryCause::Timeout);
        }
        Headers::TooLong => {
            tracing::warn!(
                id = request.id,
                server = server.url(),
                "no answer within generation_timeout ({:?}); the server is alive, so it is not counted against it",
                settings.generation_timeout
            );
            return Outcome::Done(Err(ProxyError::Timeout));
        }
    };
    let status = resp.status();
    server.live.lock().record_request(is_failure(status));
    let busy = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    );
    if busy {
        // Overloaded, not broken (vLLM's 503 is its admission control saying "busy"): do not
        // eject, but lower its share for a moment and try elsewhere.
        server.note_overloaded();
    } else if status.is_server_error() {
        let t = server.record_failure(format!("HTTP {}", status.as_u16()), &settings);
        app.fleet.on_transition(server, t).await;
    } else {
        server.record_success();
        if status.is_client_error() {
            server
                .stats
                .client_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    // 508: the server is (or leads back to) this router, listed by mistake.
    let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504 | 508);
    if retryable && may_retry && retry_allowed(app, &request.view.settings) {
        tracing::info!(
            id = request.id,
            server = server.url(),
            status = status.as_u16(),
            "retrying on another server"
        );
        return Outcome::Retry(RetryCause::Status(status.as_u16()));
    }
    Outcome::Done(Ok(respond(
        app, server, request, attempt, resp, guard, prediction,
    )))
}

/// The server's answer, streamed back through [`ProxyBody`].
fn respond(
    app: &AppState,
    server: &Arc<Server>,
    request: &Request<'_>,
    attempt: u32,
    resp: hyper::Response<hyper::body::Incoming>,
    guard: crate::fleet::InFlight,
    prediction: Option<Prediction>,
) -> Response {
    let settings = request.view.settings.clone();
    let status = resp.status();
    let (mut rparts, incoming) = resp.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
    let sse = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let telemetry = app.telemetry.clone();
    let route = crate::metrics::labels::route_label(request.parts.uri.path());
    let model = match request.meta.model.as_deref() {
        Some(m) if server.serves(m) => m,
        Some(_) => "unknown",
        None => "none",
    };
    server.counters.count_request(
        &telemetry.requests,
        server.url_shared(),
        route,
        model,
        status.as_u16(),
    );
    telemetry
        .ttfb(route)
        .observe(request.started.elapsed().as_secs_f64());
    let log = RequestLog {
        route,
        telemetry,
        fleet: app.fleet.clone(),
        id: request.id.to_string(),
        model: request.meta.model.clone(),
        server: server.url_label(),
        status: status.as_u16(),
        started: request.started,
        ttfb: request.started.elapsed(),
        retries: attempt,
        tenant: request
            .parts
            .extensions
            .get::<crate::admission::tenants::TenantOf>()
            .map(|t| t.0.clone()),
        span: match request.leg {
            Leg::Prefill => None,
            _ => request.span.take(),
        },
    };
    let mut body = ProxyBody::new(incoming, guard, settings, sse, log);
    if request.parts.method == axum::http::Method::POST
        && request.parts.uri.path() == "/v1/responses"
        && status.is_success()
        && request.leg != Leg::Prefill
    {
        body = body.remember_response_id(app.admission.affinity.clone());
    }
    if request.leg != Leg::Prefill
        && let Some(mut charge) = request.charge.take()
    {
        charge.keep();
        body = body.settle_charge(charge);
    }
    if let Some(p) = prediction.filter(|_| status.is_success()) {
        body = body.measure_cache_hits(p, request.view.policy.clone(), request.meta.reports_usage);
    }
    let body = match request.leg {
        Leg::Decode {
            cached_tokens: Some(n),
        } if status.is_success() => {
            // The count's digits may change the length.
            rparts.headers.remove(header::CONTENT_LENGTH);
            Body::new(super::usage_rewrite::CachedTokens::new(body, n))
        }
        _ => Body::new(body),
    };
    let mut response = Response::from_parts(rparts, body);
    // The fleet is busy and nothing else can take it: the client gets the server's own answer,
    // told when to come back.
    crate::error::ensure_retry_after(&mut response, 1);
    response
}

enum Headers {
    Answer(hyper::Response<hyper::body::Incoming>),
    Unreachable(hyper_util::client::legacy::Error),
    /// No headers within `request_timeout` and no answer to a health check either.
    Hung,
    /// The server stayed alive, but the answer took longer than `generation_timeout`.
    TooLong,
}

/// Waits for the answer's headers; see the module doc for how a busy server is told from a
/// hung one.
async fn await_headers(
    app: &AppState,
    server: &Server,
    request: &Request<'_>,
    req: hyper::Request<Full<Bytes>>,
) -> Headers {
    let settings = request.view.settings.clone();
    let limit = Instant::now() + settings.generation_timeout;
    let call = app.client.request(req);
    tokio::pin!(call);
    loop {
        let check_at = (Instant::now() + settings.request_timeout).min(limit);
        match tokio::time::timeout_at(check_at, &mut call).await {
            Ok(Ok(resp)) => return Headers::Answer(resp),
            Ok(Err(e)) => return Headers::Unreachable(e),
            Err(_) if Instant::now() >= limit => return Headers::TooLong,
            Err(_) => {}
        }
        let check = probe::check_health(&app.client, server, settings.health_check_timeout);
        tokio::select! {
            answer = &mut call => return match answer {
                Ok(resp) => Headers::Answer(resp),
                Err(e) => Headers::Unreachable(e),
            },
            alive = check => {
                if alive.is_err() {
                    return Headers::Hung;
                }
                tracing::debug!(
                    id = request.id,
                    server = server.url(),
                    "no answer yet, but the server is alive: waiting on"
                );
            }
        }
    }
}

/// The request as the server gets it: same method, path, query and body, at an address built
/// from the server's configured scheme and authority; hop-by-hop headers dropped; `Via` names
/// this router; the server's API key as the bearer when one is configured.
fn upstream_request(
    server: &Server,
    request: &Request<'_>,
) -> Result<hyper::Request<Full<Bytes>>, ProxyError> {
    let parts = request.parts;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = server.uri_for(path).map_err(|e| {
        tracing::info!(id = request.id, "{e}");
        ProxyError::BadRequest("the request path cannot be forwarded".into())
    })?;
    let mut req = hyper::Request::new(Full::new(request.body.clone()));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    *headers = headers::forwardable(&parts.headers);
    headers.insert(header::HOST, server.host_header().clone());
    headers::add_via(headers, request.via);
    if let Some(key) = server.api_key()
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}"))
    {
        headers.insert(header::AUTHORIZATION, v);
    }
    Ok(req)
}
