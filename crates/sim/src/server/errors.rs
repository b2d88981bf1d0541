//! Error responses exactly as vLLM writes them.
//!
//! Since vLLM 0.10.1: `{"error":{"message","type","param","code"}}`. Two exceptions keep their
//! own shapes: a failed API key check (`{"error":"Unauthorized"}`) and FastAPI's unknown route
//! (`{"detail":"Not Found"}`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    /// `type` when not the status's: "Bad Request" for a body FastAPI could not validate.
    pub kind: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            kind: None,
        }
    }

    /// FastAPI's 400 for a body it could not read or validate, as vLLM 0.32 words it.
    pub fn validation(v: &mvllm_validation::Validation) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: v.message(),
            param: Some(v.param().to_string()),
            kind: Some(mvllm_validation::VALIDATION_ERROR_TYPE),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// vLLM's `VLLMValidationError`: the parameter and its value are named in the message too.
    pub fn invalid_param(message: String, param: &str, value: String) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("{message} (parameter={param}, value={value})"),
            param: Some(param.into()),
            kind: None,
        }
    }

    /// vLLM's words (`OpenAIServing._check_model`): the served names, not the adapters.
    pub fn model_not_found(model: &str, served: &[String]) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model `{model}` does not exist. Valid aliases: {}.",
                served.join(", ")
            ),
            param: Some("model".into()),
            kind: None,
        }
    }

    /// The error a fault injects, with vLLM's wording for each status.
    pub fn injected(status: u16) -> Self {
        match status {
            503 => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The engine is currently busy and cannot accept new requests. Please try again later or on a different instance.",
            ),
            429 => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests. Please slow down.",
            ),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "EngineCore encountered an issue. See stack trace (above) for the root cause.",
            ),
        }
    }

    /// vLLM's `type` field for this status.
    pub fn kind(&self) -> &'static str {
        if let Some(k) = self.kind {
            return k;
        }
        match self.status.as_u16() {
            400 => "BadRequestError",
            401 => "UnauthorizedError",
            404 => "NotFoundError",
            429 => "RateLimitError",
            503 => "ServiceUnavailableError",
            _ => "InternalServerError",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.status.as_u16()}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

pub fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "Unauthorized"})),
    )
        .into_response()
}

pub fn route_not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response()
}

pub fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"detail": "Method Not Allowed"})),
    )
        .into_response()
}
