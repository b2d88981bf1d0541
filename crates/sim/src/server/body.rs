//! Reading a JSON request body the way vLLM's FastAPI front does: `Content-Type` must be JSON,
//! the body must parse, and the fields must validate, each failure a 400 with a clear message.

use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use mvllm_validation::Validation;

use super::errors::ApiError;

pub fn parse_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    schema: &str,
) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::bad_request(format!(
            "Unsupported Media Type: Only 'application/json' is allowed, got '{ct}'"
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        // FastAPI reads no body at all as a missing one.
        return Err(ApiError::validation(&Validation::missing_body()));
    }
    if let Some(v) = Validation::malformed_json(body) {
        return Err(ApiError::validation(&v));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("1 validation error for {schema}\n{e}")))
}
