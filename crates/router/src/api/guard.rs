//! The access middleware: every route a client uses passes its key through
//! [`crate::admission::access::Access`] first; refusals are counted and logged without the key's value.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::admission::access::{KeyGuard, Refusal};
use crate::admission::tenants::TenantOf;
use crate::state::AppState;

/// A response body that keeps a key counted in flight until the body ends or is dropped.
struct GuardedBody {
    inner: Body,
    _guard: KeyGuard,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware for every route that needs a key: checks it, drops it from the request (servers
/// never see clients' keys), and keeps the key counted until the response ends.
pub async fn require_key(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    require_key_around(&app, req, |req| next.run(req)).await
}

/// [`require_key`] around any `next` (the forwarding path calls it without axum's routing).
pub async fn require_key_around<F, Fut>(app: &AppState, mut req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    // The keys' guard is let go before the request is awaited: an arc-swap guard held across
    // an await takes one of the thread's few fast slots for the request's whole life, and with
    // dozens of requests in flight every other load on the thread fell to the slow path.
    let tenants = app.admission.tenants.load();
    let tenant_of = |key: Option<&str>, headers: &axum::http::HeaderMap| {
        tenants
            .active()
            .then(|| tenants.of(key, headers).cloned())
            .flatten()
    };
    let admitted = app
        .admission
        .access
        .load()
        .admit(req.headers())
        .map(|a| a.map(|(guard, name)| (guard, tenant_of(Some(name), req.headers()))));
    let admitted = match admitted {
        Ok(a) => a,
        Err(refusal) => {
            tracing::info!(target: "mvllm::access", path = %req.uri().path(), refusal = ?redacted(&refusal), "request refused");
            app.telemetry
                .refusals
                .get_or_create(&crate::metrics::labels::ReasonLabels {
                    reason: match refusal {
                        Refusal::MissingKey => "missing_key",
                        Refusal::WrongKey => "wrong_key",
                        Refusal::RateLimited { .. } => "rate_limited",
                        Refusal::TooManyInFlight { .. } => "too_many_in_flight",
                    },
                })
                .inc();
            return refusal.into_response();
        }
    };
    let Some((guard, tenant)) = admitted else {
        if let Some(t) = tenant_of(None, req.headers()) {
            req.extensions_mut().insert(TenantOf(t));
        }
        drop(tenants);
        return next(req).await;
    };
    drop(tenants);
    if let Some(t) = tenant {
        req.extensions_mut().insert(TenantOf(t));
    }
    req.headers_mut().remove(header::AUTHORIZATION);
    req.headers_mut().remove("x-api-key");
    let response = next(req).await;
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Body::new(GuardedBody {
            inner: body,
            _guard: guard,
        }),
    )
}

/// `/metrics`: open unless `protect_metrics` is set (and keys exist).
pub async fn require_key_for_metrics(
    state: State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let protects = state.admission.access.load().protects_metrics();
    if protects {
        require_key(state, req, next).await
    } else {
        next.run(req).await
    }
}

/// A refusal as logged: key names are fine, key values never appear in one.
fn redacted(r: &Refusal) -> String {
    match r {
        Refusal::MissingKey => "missing key".into(),
        Refusal::WrongKey => "unknown key".into(),
        Refusal::RateLimited { name, .. } => format!("key {name}: rate limited"),
        Refusal::TooManyInFlight { name, .. } => format!("key {name}: too many in flight"),
    }
}
