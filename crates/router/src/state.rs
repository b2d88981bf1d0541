//! What the request path shares: the fleet's state, and beside it what serves requests (the
//! HTTP client, metrics, access control, the wait queue and retry budget, stored responses'
//! servers, the body budget).
//!
//! Why its own module: handlers (the proxy, the API) and the app that assembles them all need
//! it; here it depends on none of them, so the crate's modules depend on each other one way.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::affinity::Affinity;
use crate::fleet::Fleet;
use crate::reload::Reloader;

/// What serves requests: the fleet's state, and what the request path needs beside it.
pub struct AppState {
    pub fleet: Arc<Fleet>,
    /// Request spans' tracer, when traces are exported (OpenTelemetry).
    pub otel: Option<Arc<crate::otel::Otel>>,
    /// The HTTP client requests are forwarded with.
    pub client: crate::upstream::Client,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Client API keys and limits in force (rebuilt on reload, keeping live state).
    pub access: Arc<arc_swap::ArcSwap<crate::access::Access>>,
    /// Requests waiting for a free slot when every eligible server is full (`queue_size`).
    pub wait_queue: Arc<crate::fleet::wait_queue::WaitQueue>,
    /// Retries may add only a share of the recent requests.
    pub retry_budget: crate::fleet::retry_budget::RetryBudget,
    pub affinity: Arc<Affinity>,
    pub reloader: Arc<Reloader>,
    /// False once shutdown began: `/readyz` tells load balancers in front to stop sending.
    pub accepting: AtomicBool,
    /// This router's token in the `Via` header of what it forwards: a request carrying it came
    /// back through a config that lists the router itself (508).
    pub instance: String,
    /// `1.1 <instance>`: this router's `Via` entry, made once.
    pub via: axum::http::HeaderValue,
    /// The memory request bodies may take together (`max_buffered_body_bytes`).
    pub body_budget: crate::body_budget::BodyBudget,
    /// Chooses decode servers for disaggregated requests: by load alone (`adaptive`).
    pub decode_policy: Box<dyn crate::routing::Policy>,
}
