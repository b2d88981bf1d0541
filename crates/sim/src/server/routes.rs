//! The route table and the checks every request passes first: the `hang` fault and the API key.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use super::errors::{method_not_allowed, route_not_found, unauthorized};
use super::state::Sim;
use super::{generate, kv_transfer, misc, responses};

pub fn app(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(generate::chat))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/embeddings", post(misc::embeddings))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::retrieve))
        .route("/v1/responses/{id}/cancel", post(responses::cancel))
        .route("/v1/models", get(misc::models))
        .route("/v1/load_lora_adapter", post(misc::load_lora))
        .route("/v1/unload_lora_adapter", post(misc::unload_lora))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize))
        .route("/health", get(misc::health))
        .route("/ping", get(misc::health).post(misc::health))
        .route("/version", get(misc::version))
        .route("/load", get(misc::load))
        .route("/metrics", get(misc::metrics))
        .route("/reset_prefix_cache", post(misc::reset_prefix_cache))
        .route("/sim/faults", get(misc::get_faults).post(misc::set_faults))
        .route("/sim/stats", get(misc::stats))
        .route("/sim/kv/pull", post(kv_transfer::pull))
        .route("/sim/kv/done", post(kv_transfer::done))
        .fallback(|| async { route_not_found() })
        .method_not_allowed_fallback(|| async { method_not_allowed() })
        .layer(middleware::from_fn_with_state(sim.clone(), gate))
        .with_state(sim)
}

/// Hangs every request while the `hang` fault is set (the `/sim/` routes excepted), and checks
/// the bearer token on `/v1`, `/v2` and `/inference` paths when an API key is configured.
async fn gate(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/sim/") {
        return next.run(req).await;
    }
    if sim.faults.borrow().hang {
        // Never answer; the connection is dropped when the client gives up or the server goes
        // down or stops.
        std::future::pending::<()>().await;
    }
    if let Some(key) = &sim.cfg.api_key
        && (path.starts_with("/v1") || path.starts_with("/v2") || path.starts_with("/inference"))
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let ok = given
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == key);
        if !ok {
            return unauthorized();
        }
    }
    next.run(req).await
}
