//! Forwarding a client's request to a server and its answer back.
//!
//! The body is read once (bounded by `max_body_bytes`), inspected only for `model` and
//! `stream`, and sent byte for byte. A server is picked among the healthy, non-draining ones
//! that serve the model; if it cannot be reached, times out before answering, or answers
//! 502/503/504/429, another server not yet tried is picked, up to `max_retries` times, and only
//! while nothing has been sent to the client. A 4xx is the client's: it is passed through and
//! never counts against the server. The answer streams back through [`body::ProxyBody`].

pub mod affinity;
pub mod body;
pub mod errors;
pub mod headers;
pub mod meta;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use rand::Rng;
use tokio::time::Instant;

use crate::app::AppState;
use crate::fleet::Server;
use crate::fleet::events::EventKind;
use crate::fleet::probe::describe;
use crate::telemetry::{self, DecisionLabels, ReasonLabels, RequestLabels, RouteLabels};
use body::{ProxyBody, RequestLog};
use errors::ProxyError;
use meta::RequestMeta;

const REQUEST_ID: &str = "x-request-id";

/// The fallback handler: everything that is not one of the router's own routes.
pub async fn forward(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let request_id = match parts.headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            let id = format!("{:032x}", rand::rng().random::<u128>());
            if let Ok(v) = HeaderValue::from_str(&id) {
                parts.headers.insert(REQUEST_ID, v);
            }
            id
        }
    };
    let settings = app.fleet.settings();
    let route = telemetry::route_label(parts.uri.path());
    let result = async {
        let body = match Limited::new(body, settings.max_body_bytes).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ProxyError::TooLarge(settings.max_body_bytes));
            }
            Err(e) => {
                return Err(ProxyError::BadRequest(format!(
                    "could not read the request body: {e}"
                )));
            }
        };
        let meta = meta::read_meta(&parts.headers, &body).await?;
        send(&app, parts, body, meta, &request_id, started).await
    }
    .await;
    let mut response = result.unwrap_or_else(|e| {
        tracing::info!(target: "mvllm::access", id = %request_id, status = e.status().as_u16(), error = ?e, "request refused");
        let t = &app.fleet.telemetry;
        let route = RouteLabels { route };
        t.requests.get_or_create(&RequestLabels { route: route.route, model: "none".into(), server: "none".into(), status: e.status().as_u16() }).inc();
        t.ttfb.get_or_create(&route).observe(started.elapsed().as_secs_f64());
        t.duration.get_or_create(&route).observe(started.elapsed().as_secs_f64());
        e.into_response()
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    app.fleet
        .telemetry
        .live
        .lock()
        .record_request(is_failure(response.status()));
    response
}

/// An answer that counts as an error in the live figures: the server's or the router's failure,
/// or too busy to answer. Other 4xx are the client's and do not count.
fn is_failure(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// Why one attempt did not produce an answer for the client.
enum Attempt {
    /// Worth trying another server.
    Retry(ProxyError),
    /// The answer to send (a response, or a final error).
    Done(Result<Response, ProxyError>),
}

async fn send(
    app: &AppState,
    parts: axum::http::request::Parts,
    body: Bytes,
    meta: RequestMeta,
    request_id: &str,
    started: Instant,
) -> Result<Response, ProxyError> {
    let fleet = &app.fleet;
    let settings = fleet.settings();
    let servers = fleet.servers();
    if let Some(model) = &meta.model
        && !servers.iter().any(|s| s.serves(model))
    {
        return Err(ProxyError::UnknownModel {
            model: model.clone(),
            available: fleet.all_models(),
        });
    }
    // A stored response lives on the server that created it: no choice, no retry elsewhere.
    let pinned = app.affinity.server_for_path(parts.uri.path());
    let could_serve = |s: &Server| {
        pinned.as_deref().is_none_or(|url| s.url() == url)
            && meta.model.as_deref().is_none_or(|m| s.serves(m))
    };
    if let Some(ticket) = wait_for_slot(app, &servers, &could_serve).await? {
        ticket.used();
    }
    let picker = fleet.picker();
    let max_age = fleet.metrics_max_age();
    let mut tried: Vec<usize> = Vec::new();
    let mut timeouts = 0;
    let mut last_error = None;
    fleet.retry_budget.record_request();
    // Whether the next attempt was already charged to the retry budget (status retries are
    // charged before the answer is given up, so that a denied retry returns the server's answer).
    let mut charged = false;
    for attempt in 0..=settings.max_retries {
        if attempt > 0 && !std::mem::take(&mut charged) && !retry_allowed(app) {
            break;
        }
        let usable = |i: &usize, ok: &dyn Fn(&Server) -> bool| {
            let s = &servers[*i];
            ok(s) && !tried.contains(i) && could_serve(s)
        };
        let mut eligible: Vec<usize> = (0..servers.len())
            .filter(|i| usable(i, &|s| s.takes_requests()))
            .collect();
        if eligible.is_empty() {
            // Panic routing (as Envoy's): with every server out, rather than refusing everyone,
            // try the ones ejected for failing requests whose health checks still pass. A server
            // failing half its requests serves half the clients; an empty fleet serves none.
            eligible = (0..servers.len())
                .filter(|i| {
                    usable(i, &|s| {
                        !s.draining.load(std::sync::atomic::Ordering::Relaxed)
                            && s.ejected_but_reachable()
                    })
                })
                .collect();
            if !eligible.is_empty() {
                fleet.telemetry.panic_routed.inc();
                fleet.telemetry.events.push(
                    EventKind::Unhealthy,
                    None,
                    "every server is out: trying ejected servers that still pass health checks",
                );
            }
        }
        let candidates: Vec<_> = eligible
            .iter()
            .map(|&i| servers[i].candidate(max_age))
            .collect();
        let Some(choice) = picker.pick(&candidates, &mut rand::rng()) else {
            break;
        };
        let index = eligible[choice];
        tried.push(index);
        let server = &servers[index];
        fleet
            .telemetry
            .decisions
            .get_or_create(&DecisionLabels {
                policy: picker.kind().name(),
                server: server.url().to_string(),
            })
            .inc();
        match try_server(
            app, server, &parts, &body, &meta, request_id, started, attempt,
        )
        .await
        {
            Attempt::Done(r) => {
                if attempt > 0 && r.is_ok() {
                    fleet.telemetry.failovers.inc();
                }
                return r;
            }
            Attempt::Retry(e) => {
                charged = matches!(&e, ProxyError::BadGateway(why) if why.starts_with("HTTP"));
                let reason = match &e {
                    ProxyError::Timeout => "timeout",
                    ProxyError::BadGateway(why) if why.starts_with("HTTP") => "status",
                    _ => "connection",
                };
                fleet
                    .telemetry
                    .retries
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
                fleet.telemetry.live.lock().record_retry();
                let why = match &e {
                    ProxyError::BadGateway(why) => why.as_str(),
                    _ => "no response headers in time",
                };
                fleet.telemetry.events.push(
                    EventKind::Retry,
                    Some(servers[index].url()),
                    format!("retried elsewhere: {why}"),
                );
                if e == ProxyError::Timeout {
                    timeouts += 1;
                    if timeouts > settings.timeout_retries {
                        return Err(e);
                    }
                }
                last_error = Some(e);
            }
        }
    }
    Err(match last_error {
        Some(e) => e,
        None if pinned.is_some() => {
            ProxyError::NoServerAvailable("the server holding this response is unavailable".into())
        }
        None => ProxyError::NoServerAvailable(match &meta.model {
            Some(m) => format!("no healthy server serves `{m}`"),
            None => "no healthy server".into(),
        }),
    })
}

#[allow(clippy::too_many_arguments)]
async fn try_server(
    app: &AppState,
    server: &Arc<Server>,
    parts: &axum::http::request::Parts,
    body: &Bytes,
    meta: &RequestMeta,
    request_id: &str,
    started: Instant,
    attempt: u32,
) -> Attempt {
    let settings = app.fleet.settings();
    let guard = server.begin_request();
    let req = match upstream_request(server, parts, body.clone()) {
        Ok(r) => r,
        Err(e) => return Attempt::Done(Err(e)),
    };
    let sent = tokio::time::timeout(settings.request_timeout, app.fleet.client.request(req)).await;
    let resp = match sent {
        Err(_) => {
            server.live.lock().record_request(true);
            let t =
                server.record_failure("time-out waiting for response headers".into(), &settings);
            app.fleet.on_transition(server, t).await;
            tracing::warn!(
                id = request_id,
                server = server.url(),
                "no response headers within request_timeout"
            );
            return Attempt::Retry(ProxyError::Timeout);
        }
        Ok(Err(e)) => {
            server.live.lock().record_request(true);
            let why = describe(&e);
            let t = server.record_failure(why.clone(), &settings);
            app.fleet.on_transition(server, t).await;
            tracing::warn!(id = request_id, server = server.url(), reason = %why, "server unreachable; trying another");
            return Attempt::Retry(ProxyError::BadGateway(why));
        }
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    server.live.lock().record_request(is_failure(status));
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
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
    let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
    if retryable && attempt < settings.max_retries && retry_allowed(app) {
        tracing::info!(
            id = request_id,
            server = server.url(),
            status = status.as_u16(),
            "retrying on another server"
        );
        return Attempt::Retry(ProxyError::BadGateway(format!("HTTP {}", status.as_u16())));
    }
    let (mut rparts, incoming) = resp.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
    let sse = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let telemetry = app.fleet.telemetry.clone();
    let route = telemetry::route_label(parts.uri.path());
    let model = match &meta.model {
        Some(m) if server.serves(m) => m.clone(),
        Some(_) => "unknown".into(),
        None => "none".into(),
    };
    telemetry
        .requests
        .get_or_create(&RequestLabels {
            route,
            model,
            server: server.url().to_string(),
            status: status.as_u16(),
        })
        .inc();
    telemetry
        .ttfb
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    let log = RequestLog {
        route,
        telemetry,
        id: request_id.to_string(),
        model: meta.model.clone(),
        server: server.url().to_string(),
        status: status.as_u16(),
        started,
        ttfb: started.elapsed(),
        retries: attempt,
    };
    let mut body = ProxyBody::new(incoming, guard, settings, sse, log);
    if parts.method == axum::http::Method::POST
        && parts.uri.path() == "/v1/responses"
        && status.is_success()
    {
        body = body.remember_response_id(app.affinity.clone());
    }
    Attempt::Done(Ok(Response::from_parts(rparts, Body::new(body))))
}

/// With `queue_size > 0`: when no server that could serve the request has a free slot (or others
/// are already waiting), waits in line for one, up to `queue_timeout`. `Ok(None)`: no wait was
/// needed; `Ok(Some)`: a slot freed up for this request (mark the ticket used).
async fn wait_for_slot<'a>(
    app: &'a AppState,
    servers: &[Arc<Server>],
    could_serve: &(dyn Fn(&Server) -> bool + Sync),
) -> Result<Option<crate::fleet::wait_queue::Ticket<'a>>, ProxyError> {
    let settings = app.fleet.settings();
    let queue = &app.fleet.wait_queue;
    let free = || servers.iter().any(|s| could_serve(s) && s.has_free_slot());
    if settings.queue_size == 0 || (queue.is_empty() && free()) {
        return Ok(None);
    }
    // Nothing healthy could ever serve it: do not wait for nothing.
    if !servers.iter().any(|s| could_serve(s) && s.takes_requests()) {
        return Ok(None);
    }
    let deadline = Instant::now() + settings.queue_timeout;
    let mut ticket = queue
        .join(settings.queue_size)
        .ok_or(ProxyError::Overloaded("the wait queue is full"))?;
    loop {
        // Woken when a slot frees up; a periodic look catches servers that joined or recovered.
        let look = (Instant::now() + std::time::Duration::from_millis(100)).min(deadline);
        let woken = tokio::time::timeout_at(look, &mut ticket.woken)
            .await
            .is_ok();
        if free() {
            return Ok(Some(ticket));
        }
        if Instant::now() >= deadline {
            return Err(ProxyError::Overloaded(
                "no slot freed up within queue_timeout",
            ));
        }
        if woken {
            // Woken, but the slot was not one this request can use: pass the turn on, and
            // keep this request's place at the front.
            drop(ticket);
            ticket = queue.rejoin_front();
        }
    }
}

/// Asks the retry budget for one more attempt; a refusal is counted.
fn retry_allowed(app: &AppState) -> bool {
    let fleet = &app.fleet;
    let s = fleet.settings();
    let ok = fleet
        .retry_budget
        .try_retry(s.retry_budget_ratio, s.retry_budget_min_per_second);
    if !ok {
        fleet
            .telemetry
            .retries
            .get_or_create(&ReasonLabels {
                reason: "budget_exhausted",
            })
            .inc();
    }
    ok
}

/// The request as the server gets it: same method, path, query and body; hop-by-hop headers
/// dropped; the server's API key as the bearer when one is configured.
fn upstream_request(
    server: &Server,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>, ProxyError> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("{}{path}", server.url())
        .parse()
        .map_err(|_| ProxyError::BadRequest("the request path cannot be forwarded".into()))?;
    let mut req = hyper::Request::new(Full::new(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    *headers = parts.headers.clone();
    headers::strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    if let Some(key) = server.api_key()
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}"))
    {
        headers.insert(header::AUTHORIZATION, v);
    }
    Ok(req)
}
