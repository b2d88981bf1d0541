//! CORS, as the Python mvllm had it (any origin by default) and configurable with
//! `cors_allow_origins`: browser apps call the router directly.
//!
//! Only requests carrying `Origin` are CORS requests. A preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered by the router itself, before the API-key guard
//! (browsers send it without credentials), and never forwarded; any other `OPTIONS` is routed
//! as before. The allowed origins are read from the live settings, so a reload changes them.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// How long a browser may cache a preflight's answer.
const MAX_AGE_SECONDS: &str = "600";
/// Response headers a page may read besides the simple ones.
const EXPOSED: &str = "x-request-id, retry-after";

pub async fn cors(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    around(&app, req, |req| next.run(req)).await
}

/// [`cors`] around any `next` (the forwarding path calls it without axum's routing).
pub async fn around<F, Fut>(app: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        return next(req).await;
    };
    let allowed = allowed(&app.fleet.settings().cors_allow_origins, &origin);
    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut resp = StatusCode::OK.into_response();
        let h = resp.headers_mut();
        vary(h);
        if allowed {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            for (asked, allow) in [
                (
                    header::ACCESS_CONTROL_REQUEST_METHOD,
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                ),
                // Echoed rather than `*`: the wildcard does not cover `Authorization`.
                (
                    header::ACCESS_CONTROL_REQUEST_HEADERS,
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                ),
            ] {
                if let Some(v) = req.headers().get(asked) {
                    h.insert(allow, v.clone());
                }
            }
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE_SECONDS),
            );
        }
        return resp;
    }
    let mut resp = next(req).await;
    let h = resp.headers_mut();
    vary(h);
    if allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
    }
    resp
}

/// The answer depends on the origin: caches must keep one per origin.
fn vary(h: &mut HeaderMap) {
    h.append(header::VARY, HeaderValue::from_static("origin"));
}

fn allowed(origins: &[String], origin: &HeaderValue) -> bool {
    origins
        .iter()
        .any(|o| o == "*" || o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_origin_with_a_star_listed_ones_otherwise_none_when_empty() {
        let o = HeaderValue::from_static("https://app.example.com");
        assert!(allowed(&["*".into()], &o));
        assert!(allowed(&["https://APP.example.com".into()], &o));
        assert!(!allowed(&["https://other.example.com".into()], &o));
        assert!(!allowed(&[], &o));
    }
}
