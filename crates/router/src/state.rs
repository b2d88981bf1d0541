//! What the request path shares: the fleet's state, and beside it what serves requests (the
//! HTTP client, metrics, admission: access control, the wait queue, the retry and body
//! budgets, stored responses' servers).
//!
//! Why its own module: handlers (the proxy, the API) and the app that assembles them all need
//! it; here it depends on none of them, so the crate's modules depend on each other one way.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

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
    /// What guards requests: access, the wait queue, the retry and body budgets, affinity.
    pub admission: crate::admission::Admission,
    pub reloader: Arc<Reloader>,
    /// False once shutdown began: `/readyz` tells load balancers in front to stop sending.
    pub accepting: AtomicBool,
    /// This router's token in the `Via` header of what it forwards: a request carrying it came
    /// back through a config that lists the router itself (508).
    pub instance: String,
    /// `1.1 <instance>`: this router's `Via` entry, made once.
    pub via: axum::http::HeaderValue,
}
