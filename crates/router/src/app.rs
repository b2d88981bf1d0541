//! The router as an axum app: its own routes first, everything else forwarded.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::fleet::Fleet;
use crate::{api, proxy};

pub struct AppState {
    pub fleet: Arc<Fleet>,
    pub affinity: Arc<crate::proxy::affinity::Affinity>,
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(api::root))
        .route("/health", get(api::health))
        .route("/load-stats", get(api::load_stats))
        .route("/server-models", get(api::server_models))
        .route("/v1/models", get(api::models))
        .fallback(proxy::forward)
        .with_state(state)
}
