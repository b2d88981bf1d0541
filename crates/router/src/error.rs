//! The one shape of every error the router answers itself, vLLM's (since 0.10.1):
//! `{"error":{"message","type","param","code"}}`, with `type` named from the HTTP status as vLLM
//! names it (`BadRequestError`, `NotFoundError`, `ServiceUnavailableError`, ...) and `code` the
//! status as a number.
//!
//! Why one type: clients read the router's errors and vLLM's from the same endpoint, so they must
//! look alike; before this, four hand-built envelopes used five conventions. Busy answers (429,
//! 503) always carry `Retry-After`; 401 carries `WWW-Authenticate`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error answer: status, message for the client, and the request field it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    /// `type` when it is not the status's ([`error_type`]): "Bad Request" for a body vLLM's
    /// front could not validate.
    pub kind: Option<&'static str>,
    /// Seconds for `Retry-After` (429 and 503 get 1 when unset).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            kind: None,
            retry_after: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The 400 vLLM gives for a body its front could not validate (malformed JSON).
    pub fn validation(v: &mvllm_validation::Validation) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, v.message()).with_param(v.param());
        e.kind = Some(mvllm_validation::VALIDATION_ERROR_TYPE);
        e
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The JSON body (also sent inside an SSE error event).
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind.map_or_else(|| error_type(self.status), str::to_string),
            "param": self.param,
            "code": self.status.as_u16(),
        }})
    }
}

/// vLLM's `type` for a status: the reason phrase without spaces, plus `Error`
/// (`HTTPStatus(404).phrase` "Not Found" -> `NotFoundError`).
pub fn error_type(status: StatusCode) -> String {
    let phrase = match status.as_u16() {
        // The phrases Python's `http.HTTPStatus` uses where they differ from the `http` crate's.
        413 => "Request Entity Too Large",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    let mut name: String = phrase.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    if !name.ends_with("Error") {
        name.push_str("Error");
    }
    name
}

/// Adds `Retry-After` to a busy answer that has none (a server's own 429/503 passed through,
/// or the router's).
pub fn ensure_retry_after(response: &mut Response, seconds: u64) {
    let busy = matches!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    );
    if busy && !response.headers().contains_key(header::RETRY_AFTER) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        ensure_retry_after(&mut r, 1);
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_vllm_naming() {
        assert_eq!(error_type(StatusCode::BAD_REQUEST), "BadRequestError");
        assert_eq!(error_type(StatusCode::NOT_FOUND), "NotFoundError");
        assert_eq!(
            error_type(StatusCode::SERVICE_UNAVAILABLE),
            "ServiceUnavailableError"
        );
        assert_eq!(
            error_type(StatusCode::PAYLOAD_TOO_LARGE),
            "RequestEntityTooLargeError"
        );
        assert_eq!(error_type(StatusCode::FORBIDDEN), "ForbiddenError");
        assert_eq!(error_type(StatusCode::LOOP_DETECTED), "LoopDetectedError");
        assert_eq!(
            error_type(StatusCode::INTERNAL_SERVER_ERROR),
            "InternalServerError"
        );
    }

    #[test]
    fn busy_answers_carry_retry_after() {
        let r = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow down")
            .retry_after(7)
            .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        let r = ApiError::new(StatusCode::BAD_REQUEST, "no").into_response();
        assert!(!r.headers().contains_key(header::RETRY_AFTER));
    }
}
