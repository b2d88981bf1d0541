//! CORS, as the Python mvllm had it (any origin by default) and configurable with
//! `cors_allow_origins`: browser apps call the router directly. The layer sits outside the API-key
//! guard so a preflight `OPTIONS` (which browsers send without credentials) is answered by the
//! router itself, never forwarded and never refused for a missing key. The allowed origins are
//! read from the live settings on each request, so a reload changes them.

use std::sync::Arc;

use axum::http::HeaderValue;
use axum::http::request::Parts;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use crate::state::AppState;

pub fn layer(state: Arc<AppState>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(
            move |origin: &HeaderValue, _: &Parts| {
                allowed(&state.fleet.settings().cors_allow_origins, origin)
            },
        ))
        .allow_methods(AllowMethods::mirror_request())
        // Mirrored rather than `*`: the wildcard does not cover `Authorization`.
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            axum::http::HeaderName::from_static("x-request-id"),
            axum::http::header::RETRY_AFTER,
        ])
        .max_age(std::time::Duration::from_secs(600))
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
