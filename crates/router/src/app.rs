//! The router as an axum app: its own routes first, everything else forwarded; the admin routes
//! either on the same listener or, with `admin_listen`, on their own.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::state::AppState;
use crate::{api, proxy};

/// The paths the router answers itself on its main listener (with `/admin` and everything
/// under it); every other path is forwarded. Kept beside [`app`], which routes these.
const OWN_PATHS: [&str; 8] = [
    "/",
    "/health",
    "/livez",
    "/readyz",
    "/metrics",
    "/load-stats",
    "/server-models",
    "/v1/models",
];

/// Whether the main listener's [`app`] answers `path` itself (rather than forwarding it).
pub fn is_own_path(path: &str) -> bool {
    OWN_PATHS.contains(&path) || path == "/admin" || path.starts_with("/admin/")
}

/// A request for a path that is not the router's own, as [`app`]'s fallback would handle it
/// (CORS, the API-key guard, then [`proxy::forward`]) without going through axum's routing:
/// per request that saved the path lookup, two middleware layers' boxed services and futures
/// (about twenty allocations) and their extensions.
pub async fn forward_directly(state: Arc<AppState>, req: axum::extract::Request) -> Response {
    let app = state.clone();
    api::cors::around(&app, req, |req| async move {
        let guard = state.clone();
        api::guard::require_key_around(&guard, req, |req| proxy::forward(State(state), req)).await
    })
    .await
}

/// The main listener's routes. With `with_admin`, the admin API is mounted here too.
/// Paths for which [`is_own_path`] is false reach the fallback, [`proxy::forward`]; the server
/// sends those to [`forward_directly`] instead, which does the same.
pub fn app(state: Arc<AppState>, with_admin: bool) -> Router {
    use axum::middleware::from_fn_with_state;
    // Everything a client uses needs its API key when keys are configured; probes do not.
    let protected = Router::new()
        .route("/", get(api::root))
        .route("/load-stats", get(api::load_stats))
        .route("/server-models", get(api::server_models))
        .route("/v1/models", get(api::models))
        .fallback(proxy::forward)
        .layer(from_fn_with_state(
            state.clone(),
            crate::api::guard::require_key,
        ));
    let mut router = Router::new()
        .route("/health", get(api::health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(metrics).route_layer(from_fn_with_state(
                state.clone(),
                crate::api::guard::require_key_for_metrics,
            )),
        )
        .merge(protected);
    if with_admin {
        router = router.merge(admin_routes(state.clone()));
    } else {
        // The admin API lives on its own listener: never forward these paths to a server.
        router = router
            .route("/admin", axum::routing::any(not_here))
            .route("/admin/{*rest}", axum::routing::any(not_here));
    }
    router
        .layer(from_fn_with_state(state.clone(), api::cors::cors))
        .with_state(state)
}

/// The admin API alone, for a separate listener.
pub fn admin_app(state: Arc<AppState>) -> Router {
    admin_routes(state.clone())
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(state)
}

fn admin_routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    use api::admin;
    Router::new()
        .route("/admin/reload", post(admin::reload))
        .route("/admin/status", get(admin::status))
        .route("/admin/servers", get(admin::list).post(admin::add))
        .route("/admin/servers/remove", post(admin::remove))
        .route("/admin/servers/drain", post(admin::drain))
        .route("/admin/servers/undrain", post(admin::undrain))
        .route(
            "/admin/upstream/{*route}",
            axum::routing::any(admin::upstream),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            admin::require_token,
        ))
}

async fn not_here() -> Response {
    crate::error::ApiError::new(
        StatusCode::NOT_FOUND,
        "the admin API is served on admin_listen",
    )
    .into_response()
}

/// OpenMetrics when the scraper asks for it, the classic text format otherwise.
async fn metrics(State(app): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    use crate::prometheus_text as text;
    app.telemetry
        .set_tenants(&app.admission.tenants.load().status());
    let body = app.telemetry.render(&app.fleet);
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (content_type, body) = if text::wants_openmetrics(accept) {
        (text::OPENMETRICS, body)
    } else {
        (text::CLASSIC, text::to_classic(&body))
    };
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn livez() -> Response {
    axum::Json(json!({"status": "alive"})).into_response()
}

/// Ready once the config is loaded and at least one server is healthy, until shutdown begins.
async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let healthy = app
        .fleet
        .servers()
        .iter()
        .filter(|s| s.is_healthy())
        .count();
    let (ready, why) = if !app.accepting.load(Ordering::Relaxed) {
        (false, "shutting down")
    } else if healthy == 0 {
        (false, "no healthy server")
    } else {
        (true, "ready")
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(json!({"ready": ready, "reason": why, "healthy_servers": healthy})),
    )
        .into_response()
}
