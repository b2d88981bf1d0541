//! Forwarding a client's request to a server and its answer back.
//!
//! The body is read once (bounded by `max_body_bytes`), inspected only for `model` and
//! `stream`, and sent byte for byte. A server is picked among the healthy, non-draining ones
//! that serve the model; if it cannot be reached, times out before answering, or answers
//! 502/503/504/429, another server not yet tried is picked, up to `max_retries` times, and only
//! while nothing has been sent to the client. A 4xx is the client's: it is passed through and
//! never counts against the server. The answer streams back through [`body::ProxyBody`]. In a
//! fleet with prefill and decode servers, a generation request may instead take two legs, with
//! bodies the router writes ([`disaggregated`]).

mod attempt;
pub mod body;
pub mod disaggregated;
mod dispatch;
pub mod errors;
pub mod headers;
pub mod meta;
pub mod prompt;
pub mod read_body;
mod retries;
pub mod usage;
pub mod usage_rewrite;
mod wait;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rand::Rng;
use tokio::time::Instant;

use crate::admission::tenants::{ChargeSlot, DEFAULT_COMPLETION_ESTIMATE, TenantOf};
use crate::admission::wait_queue::Place;
use crate::config::Priority;
use crate::fleet::{FleetView, Server};
use crate::metrics::labels::{self, RequestLabels, RouteLabels};
use crate::paths;
use crate::routing::RouteRequest;
use crate::state::AppState;
use dispatch::{Dispatch, dispatch, no_server};
use errors::ProxyError;
use meta::RequestMeta;
use retries::is_failure;

/// A name made once: inserting by `&str` builds (and allocates) a non-standard name each time.
const REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

/// Everything that is not one of the router's own routes: the app's fallback, reached from the
/// connection through [`crate::app::forward_directly`] (CORS and the key guard first).
pub async fn forward(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let request_id = match parts.headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            let id = new_request_id(rand::rng().random());
            if let Ok(v) = HeaderValue::from_str(&id) {
                parts.headers.insert(REQUEST_ID, v);
            }
            id
        }
    };
    // The fleet as this request sees it, from its first byte to its last (see `FleetView`).
    let view = app.fleet.view();
    let route = labels::route_label(parts.uri.path());
    let span = crate::otel::SpanSlot::new(
        app.otel
            .as_ref()
            .map(|o| o.request_span(&mut parts.headers, parts.method.as_str(), route)),
    );
    let mut named_model: Option<String> = None;
    let tenant = parts.extensions.get::<TenantOf>().map(|t| t.0.clone());
    let result = async {
        let class = admit(&app, &parts, &view.settings)?;
        let body = read_body::read(
            body,
            &parts.headers,
            &view.settings,
            &app.admission.body_budget,
        )
        .await?;
        let generation = class == paths::PathClass::Generation && parts.method == Method::POST;
        let mut meta = meta::read_meta(&parts.headers, &body.bytes, generation).await?;
        if meta.model.is_none() {
            meta.model = meta::model_in_query(parts.uri.query());
        }
        named_model.clone_from(&meta.model);
        // A generation request is charged to its tenant before it is routed (see `tenants`).
        let charge = match parts.extensions.get::<TenantOf>() {
            Some(TenantOf(t)) if generation => Some(
                t.charge(estimated_tokens(&meta))
                    .map_err(ProxyError::OverBudget)?,
            ),
            _ => None,
        };
        let charge = ChargeSlot::new(charge);
        let origin = Origin {
            id: &request_id,
            started,
            span: &span,
            charge: &charge,
        };
        let answer = send(&app, view.clone(), parts, body.bytes.clone(), meta, origin).await;
        drop(body);
        answer
    }
    .await;
    let mut response = result.unwrap_or_else(|e| {
        let tenant = tenant.as_ref().map_or("-", |t| t.name.as_str());
        tracing::info!(target: "mvllm::access", id = %request_id, status = e.status().as_u16(), tenant, error = ?e, "request refused");
        let t = &app.telemetry;
        let route = RouteLabels { route };
        let model = model_label(&view.servers, named_model.as_deref());
        t.requests.get_or_create(&RequestLabels { route: route.route, model, server: std::sync::Arc::from("none"), status: e.status().as_u16() }).inc();
        t.ttfb(route.route).observe(started.elapsed().as_secs_f64());
        t.duration(route.route).observe(started.elapsed().as_secs_f64());
        e.into_response()
    });
    // A span still here was not taken by a server's answer: the router answered (refused) it.
    if let Some(s) = span.take() {
        s.finish(crate::otel::Finished {
            status: response.status().as_u16(),
            model: named_model.as_deref(),
            server: None,
            attempts: 0,
            ttfb: None,
            outcome: "answered by the router",
        });
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    app.telemetry
        .live
        .lock()
        .record_request(is_failure(response.status()));
    response
}

/// A request id: 32 hex digits, written without the formatting machinery (per request).
fn new_request_id(n: u128) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    (0..32)
        .rev()
        .map(|i| char::from(HEX[((n >> (i * 4)) & 0xf) as usize]))
        .collect()
}

/// The `model` label of a request's metrics: the model if some server serves it, `unknown` if
/// it named one nobody serves (labels stay bounded by the fleet's models), `none` if it named
/// none.
fn model_label(servers: &[Arc<Server>], model: Option<&str>) -> String {
    match model {
        Some(m) if servers.iter().any(|s| s.serves(m)) => m.to_string(),
        Some(_) => "unknown".into(),
        None => "none".into(),
    }
}

/// What is refused before the body is read: request targets that are not a path, the admin
/// API's paths in disguise, vLLM's management routes (unless allowed), and requests that already
/// passed through this router (a config listing the router itself).
fn admit(
    app: &AppState,
    parts: &axum::http::request::Parts,
    settings: &crate::config::Settings,
) -> Result<paths::PathClass, ProxyError> {
    if parts.method == Method::CONNECT || !parts.uri.path().starts_with('/') {
        return Err(ProxyError::BadRequest(
            "the request target must be a path (origin-form, such as /v1/chat/completions)".into(),
        ));
    }
    if headers::has_passed(&parts.headers, &app.instance) {
        return Err(ProxyError::LoopDetected);
    }
    let (class, norm) = paths::classify(parts.uri.path());
    match class {
        paths::PathClass::Admin => Err(ProxyError::Forbidden(
            "the admin API is not served at this path".into(),
        )),
        paths::PathClass::Management
            if !settings.allow_management_routes.iter().any(|r| *r == norm) =>
        {
            Err(ProxyError::Forbidden(format!(
                "`{norm}` is a server management route: clients cannot call it through the router (operators: POST /admin/upstream{norm} with the admin token)"
            )))
        }
        _ => Ok(class),
    }
}

/// Where a request came from, for its logs and trace: its id, when it arrived, its span; and
/// its charge to its tenant.
struct Origin<'a> {
    id: &'a str,
    started: Instant,
    span: &'a crate::otel::SpanSlot,
    charge: &'a ChargeSlot,
}

/// The header with which a request lowers its own class (`batch`, say), never raising it.
const PRIORITY_HEADER: &str = "x-mvllm-priority";

/// A request's class: its tenant's, lowered by the request's own header.
fn class_of(parts: &axum::http::request::Parts) -> Priority {
    let own = parts
        .extensions
        .get::<TenantOf>()
        .map_or(Priority::Standard, |t| t.0.priority);
    parts
        .headers
        .get(PRIORITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Priority::parse)
        .map_or(own, |p| p.max(own))
}

/// A request's place if it has to wait (only then worked out): its class, its tenant's share,
/// and its estimated tokens.
fn place_in_line(parts: &axum::http::request::Parts, meta: &RequestMeta) -> Place {
    let tenant = parts.extensions.get::<TenantOf>().map(|t| &t.0);
    Place {
        priority: class_of(parts),
        tenant: tenant.map_or_else(|| Arc::from(""), |t| Arc::from(t.name.as_str())),
        weight: tenant.map_or(1.0, |t| t.weight),
        cost: estimated_tokens(meta) as f64,
    }
}

/// The body with vLLM's `priority` (lower goes first) set from the request's class: written in
/// front of the object's first key, the rest untouched. The standard class is vLLM's default,
/// 0, and is left out.
fn with_vllm_priority(body: Bytes, class: Priority) -> Bytes {
    let value = match class {
        Priority::Critical => -1,
        Priority::Standard => return body,
        Priority::Batch => 1,
    };
    let Some(open) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return body;
    };
    if body[open] != b'{' {
        return body;
    }
    let rest = &body[open + 1..];
    let empty = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
    let mut out = Vec::with_capacity(body.len() + 16);
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(format!("\"priority\":{value}").as_bytes());
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

/// What a request will cost before it is answered: its prompt as read here, and the answer's
/// longest length (`max_tokens`, else [`DEFAULT_COMPLETION_ESTIMATE`]) for each choice.
fn estimated_tokens(meta: &RequestMeta) -> u64 {
    let prompt = match (&meta.prompt_token_ids, &meta.fingerprint) {
        (Some(ids), _) => ids.len() as u64,
        (None, Some(f)) => f.tokens() as u64,
        (None, None) => 0,
    };
    let answer = meta.max_tokens.unwrap_or(DEFAULT_COMPLETION_ESTIMATE);
    prompt + answer.saturating_mul(meta.n.unwrap_or(1))
}

async fn send(
    app: &AppState,
    mut view: Arc<FleetView>,
    parts: axum::http::request::Parts,
    body: Bytes,
    mut meta: RequestMeta,
    origin: Origin<'_>,
) -> Result<Response, ProxyError> {
    let Origin {
        id: request_id,
        started,
        span,
        charge,
    } = origin;
    // A text prompt is matched exactly against KV events when its model's tokenizer is known
    // and some server's events are trusted; otherwise tokenizing would buy nothing.
    if meta.prompt_token_ids.is_none()
        && view.servers.iter().any(|s| s.kv.is_exact())
        && let Some(t) = meta.model.as_deref().and_then(|m| view.tokenizer(m))
    {
        meta.prompt_token_ids = t.request_tokens(&body);
    }
    if let Some(model) = &meta.model
        && !view.servers.iter().any(|s| s.serves(model))
    {
        return Err(ProxyError::UnknownModel {
            model: model.clone(),
            available: view.all_models(),
        });
    }
    // A stored response lives on the server that created it: no choice, no retry elsewhere
    // (reading it, cancelling it, or continuing from it with `previous_response_id`).
    let pinned = app
        .admission
        .affinity
        .server_for_path(parts.uri.path())
        .or_else(|| {
            meta.previous_response_id
                .as_deref()
                .and_then(|id| app.admission.affinity.server_for_id(id))
        });
    let could_serve = |s: &Server| {
        pinned.as_deref().is_none_or(|url| s.url() == url)
            && meta.model.as_deref().is_none_or(|m| s.serves(m))
    };
    let body = if view.settings.set_vllm_priority && meta.json && !meta.has_priority {
        with_vllm_priority(body, class_of(&parts))
    } else {
        body
    };
    let place = || place_in_line(&parts, &meta);
    let waited = wait::for_slot(app, &mut view, &could_serve, &place, charge).await?;
    // A request that waited for a slot takes a server with one free, while there is one: the
    // slot it waited for, not a place in some full server's own queue.
    let servers = &view.servers;
    let could_serve = |s: &Server| {
        could_serve(s)
            && (!waited
                || s.has_free_slot()
                || !servers.iter().any(|o| could_serve(o) && o.has_free_slot()))
    };
    let (settings, policy) = (&view.settings, &view.policy);
    let session = meta.session_key(
        parts
            .headers
            .get(settings.session_header.as_str())
            .and_then(|v| v.to_str().ok()),
    );
    let route = RouteRequest {
        prompt: meta.fingerprint.as_ref().filter(|_| policy.uses_prompt()),
        // The prompt's own length when it was tokenized (or sent as ids); else an estimate
        // from its bytes.
        prompt_tokens: match (&meta.prompt_token_ids, &meta.fingerprint) {
            (Some(ids), _) => ids.len() as f64,
            (None, f) => f.as_ref().map_or(0.0, |f| f.tokens() as f64),
        },
        affinity: session
            .map(|k| xxhash_rust::xxh3::xxh3_64(k.as_bytes()))
            .or_else(|| meta.fingerprint.as_ref().and_then(|f| f.affinity())),
        anchor_tokens: meta
            .fingerprint
            .as_ref()
            .map_or(0.0, |f| f.anchor_tokens() as f64),
    };
    app.admission.retry_budget.record_request();
    let request = attempt::Request {
        parts: &parts,
        body: &body,
        meta: &meta,
        id: request_id,
        started,
        via: &app.via,
        span,
        charge,
        leg: attempt::Leg::Whole,
        view: &view,
    };
    if pinned.is_none()
        && view.split_roles
        && disaggregated::fleet_disaggregates(&view.servers, meta.model.as_deref())
    {
        // Boxed: inline, its two legs' futures would grow every request's future (and the
        // copies made of it), disaggregated or not.
        return Box::pin(disaggregated::send(app, &request, &route, &could_serve)).await;
    }
    let whole = Dispatch {
        could_serve: &could_serve,
        choose: &***policy,
        predict: true,
    };
    dispatch(app, &request, &route, &whole)
        .await
        .map_err(|e| e.unwrap_or_else(|| no_server(&meta, pinned.is_some())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn vllm_priority_is_written_first_and_the_rest_is_untouched() {
        use super::{Bytes, Priority, with_vllm_priority};
        let body = Bytes::from_static(br#" {"model":"m","messages":[]}"#);
        assert_eq!(
            &with_vllm_priority(body.clone(), Priority::Batch)[..],
            br#" {"priority":1,"model":"m","messages":[]}"#
        );
        assert_eq!(
            &with_vllm_priority(Bytes::from_static(b"{ }"), Priority::Critical)[..],
            br#"{"priority":-1 }"#
        );
        assert_eq!(with_vllm_priority(body.clone(), Priority::Standard), body);
        let v: serde_json::Value =
            serde_json::from_slice(&with_vllm_priority(body, Priority::Critical)).unwrap();
        assert_eq!(v["priority"], -1);
    }

    #[test]
    fn request_ids_are_32_hex_digits_as_format_writes_them() {
        for n in [
            0u128,
            1,
            0xdead_beef,
            u128::MAX,
            0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        ] {
            assert_eq!(super::new_request_id(n), format!("{n:032x}"));
        }
    }
}
