//! Why the router answers a forwarded request itself, as a typed error; the answer's shape is
//! [`crate::error::ApiError`]'s (vLLM's). Details that would leak internals (addresses, OS
//! errors) go to the log, not to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// How many model names an unknown-model answer lists at most (a server may serve thousands).
pub const MODELS_LISTED: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub enum ProxyError {
    /// The client's request is malformed (400).
    BadRequest(String),
    /// The body is not valid JSON: vLLM's own 400 for it, word for word.
    Validation(mvllm_validation::Validation),
    /// The body is larger than `max_body_bytes` (413).
    TooLarge(usize),
    /// The body did not arrive within `body_read_timeout`, or slower than its minimum rate (408).
    BodyTimeout(String),
    /// A route clients may not use through the router (403), e.g. vLLM's management routes.
    Forbidden(String),
    /// The request already passed through this router: the config lists the router itself (508).
    LoopDetected,
    /// No server serves this model (404), with the models that exist.
    UnknownModel {
        model: String,
        available: Vec<String>,
    },
    /// Servers exist for the request but none can take it now (503, Retry-After).
    NoServerAvailable(String),
    /// Every attempt failed to reach a server (502); the reason is for the client, so it must
    /// not carry OS error text or addresses.
    BadGateway(String),
    /// The server did not answer in time (504).
    Timeout,
    /// Every eligible server is full and the wait queue is full or timed out (503, Retry-After).
    Overloaded(&'static str),
    /// The tenant's token or request budget is spent for now (429, Retry-After: when it refills).
    OverBudget(crate::admission::tenants::OverBudget),
    /// A request of this class was waiting for a slot and a higher class needed its place
    /// (429, Retry-After).
    Shed(&'static str),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::Validation(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::LoopDetected => StatusCode::LOOP_DETECTED,
            Self::UnknownModel { .. } => StatusCode::NOT_FOUND,
            Self::NoServerAvailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::OverBudget(_) | Self::Shed(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn api_error(&self) -> ApiError {
        let message = match self {
            Self::Validation(v) => return ApiError::validation(v),
            Self::BadRequest(m) | Self::BodyTimeout(m) | Self::Forbidden(m) => m.clone(),
            Self::TooLarge(limit) => {
                format!("request body is larger than the limit of {limit} bytes")
            }
            Self::LoopDetected => "this request already passed through this router: its config lists the router itself as a server".into(),
            // vLLM's own words (`OpenAIServing._check_model`), over the fleet's models.
            Self::UnknownModel { model, available } => {
                let listed = match available.len() {
                    n if n <= MODELS_LISTED => available.join(", "),
                    n => format!(
                        "{} and {} more (GET /v1/models lists them all)",
                        available[..MODELS_LISTED].join(", "),
                        n - MODELS_LISTED
                    ),
                };
                format!("The model `{model}` does not exist. Valid aliases: {listed}.")
            }
            Self::NoServerAvailable(why) => {
                format!("No server is available to handle this request: {why}. Please retry.")
            }
            Self::BadGateway(why) => format!("The upstream server failed: {why}"),
            Self::Timeout => "The upstream server did not answer in time.".to_string(),
            Self::Overloaded(why) => format!("Every server is at capacity and {why}. Please retry."),
            Self::OverBudget(o) => format!(
                "Tenant `{}` has spent its budget of {} {} per minute: retry in {:.1} s.",
                o.tenant,
                o.per_minute,
                o.what,
                o.retry_after.as_secs_f64()
            ),
            Self::Shed(class) => format!(
                "Every server is at capacity and a request of a higher class needed this {class} request's place in the wait queue. Please retry."
            ),
        };
        let e = ApiError::new(self.status(), message);
        match self {
            Self::UnknownModel { .. } => e.with_param("model"),
            Self::OverBudget(o) => {
                e.retry_after(o.retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            Self::Shed(_) => e.retry_after(1),
            _ => e,
        }
    }

    /// The JSON error object (also used inside an SSE error event).
    pub fn body(&self) -> serde_json::Value {
        self.api_error().body()
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        self.api_error().into_response()
    }
}
