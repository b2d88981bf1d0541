//! The router's own error answers, in OpenAI's format: `{"error":{"message","type","param","code"}}`.
//! Details that would leak internals (addresses, OS errors) go to the log, not to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub enum ProxyError {
    /// The client's request is malformed (400).
    BadRequest(String),
    /// The body is larger than `max_body_bytes` (413).
    TooLarge(usize),
    /// No server serves this model (404), with the models that exist.
    UnknownModel {
        model: String,
        available: Vec<String>,
    },
    /// Servers exist for the request but none can take it now (503, Retry-After).
    NoServerAvailable(String),
    /// Every attempt failed to reach a server (502).
    BadGateway(String),
    /// The server did not answer within `request_timeout` (504).
    Timeout,
    /// Every eligible server is full and the wait queue is full or timed out (503, Retry-After).
    Overloaded(&'static str),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownModel { .. } => StatusCode::NOT_FOUND,
            Self::NoServerAvailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn parts(&self) -> (String, &'static str, Option<&'static str>) {
        match self {
            Self::BadRequest(m) => (m.clone(), "invalid_request_error", None),
            Self::TooLarge(limit) => (
                format!("request body is larger than the limit of {limit} bytes"),
                "invalid_request_error",
                None,
            ),
            Self::UnknownModel { model, available } => (
                format!(
                    "The model `{model}` does not exist. Available models: {}",
                    if available.is_empty() {
                        "none".to_string()
                    } else {
                        available.join(", ")
                    }
                ),
                "NotFoundError",
                Some("model"),
            ),
            Self::NoServerAvailable(why) => (
                format!("No server is available to handle this request: {why}. Please retry."),
                "ServiceUnavailableError",
                None,
            ),
            Self::BadGateway(why) => (
                format!("The upstream server failed: {why}"),
                "BadGatewayError",
                None,
            ),
            Self::Timeout => (
                "The upstream server did not answer in time.".to_string(),
                "GatewayTimeoutError",
                None,
            ),
            Self::Overloaded(why) => (
                format!("Every server is at capacity and {why}. Please retry."),
                "ServiceUnavailableError",
                None,
            ),
        }
    }

    /// The JSON error object (also used inside an SSE error event).
    pub fn body(&self) -> serde_json::Value {
        let (message, kind, param) = self.parts();
        json!({"error": {"message": message, "type": kind, "param": param, "code": self.status().as_u16()}})
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let mut r = (self.status(), Json(self.body())).into_response();
        if matches!(self, Self::NoServerAvailable(_) | Self::Overloaded(_)) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}
