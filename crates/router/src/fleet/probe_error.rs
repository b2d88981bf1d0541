//! Why a probe of a server (health check, scrape, model discovery) failed.

/// Why a probe of a server failed; its text is what the server's status shows as its last
/// error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The server's URL and the probe's path make no request URI.
    #[error("{0}")]
    BadUri(String),
    /// Connecting or sending failed (refused, reset, TLS, name not resolving, ...).
    #[error("{0}")]
    Unreachable(String),
    #[error("reading the body: {0}")]
    Body(String),
    #[error("time-out")]
    TimedOut,
    /// The server answered, but not 200.
    #[error("HTTP {0}")]
    Status(u16),
    #[error("metrics are not UTF-8")]
    MetricsNotUtf8,
    /// The `/metrics` text lacks what routing needs, or cannot be read.
    #[error("{0}")]
    Metrics(String),
    #[error("invalid /v1/models JSON: {0}")]
    ModelsJson(String),
    #[error("/v1/models has no `data` list")]
    NoModelList,
}
