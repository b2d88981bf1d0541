//! `/v1/responses` (OpenAI's Responses API, non-streamed): create, retrieve, cancel.
//!
//! Why in the simulator: a response is stored on the server that created it, so a router must
//! send `GET /v1/responses/{id}` and `.../cancel` back to that server; testing that needs a
//! server that keeps responses. Generation reuses the chat path; the last 1024 responses are
//! kept.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::parse_json;
use super::errors::ApiError;
use super::generate::{request_id, resolve_model};
use super::response_store::KEEP;
use super::state::Sim;
use crate::metrics::FinishReason;
use crate::tokenizer::{self, ChatTurn};

#[derive(Deserialize)]
struct CreateRequest {
    model: Option<String>,
    input: Value,
    #[serde(default)]
    stream: bool,
    max_output_tokens: Option<usize>,
}

fn input_text(input: &Value) -> Result<String, ApiError> {
    match input {
        Value::String(s) => Ok(s.clone()),
        Value::Array(items) => Ok(items
            .iter()
            .map(|i| match i.get("content") {
                Some(Value::String(s)) => s.clone(),
                _ => i.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")),
        _ => Err(ApiError::bad_request(
            "input must be a string or a list of messages",
        )),
    }
}

pub async fn create(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: CreateRequest = parse_json(&headers, &body, "ResponsesRequest")?;
    if req.stream {
        return Err(ApiError::bad_request(
            "the simulator does not stream /v1/responses; send stream: false",
        ));
    }
    let (model, salt) = resolve_model(&sim, req.model.as_deref())?;
    let text = input_text(&req.input)?;
    let prompt = tokenizer::encode_chat(
        &[ChatTurn {
            role: "user",
            content: &text,
        }],
        true,
    );
    let max = req.max_output_tokens.unwrap_or(16).clamp(1, 4096);
    let fingerprint = tokenizer::prompt_fingerprint(sim.cfg.seed ^ salt, &prompt);
    let words: Vec<usize> = (0..max)
        .map(|i| tokenizer::output_word_index(fingerprint, i) % sim.output.len())
        .collect();
    let mut tokens = prompt.clone();
    tokens.extend(words.iter().map(|&w| sim.output.id(w)));
    let spec = crate::engine::SeqSpec {
        tokens,
        prompt_len: prompt.len(),
        hash_salt: salt,
        ..Default::default()
    };
    let done = sim
        .pick_engine()
        .submit(spec, FinishReason::Length)
        .outbox
        .wait_finished()
        .await;
    let id = format!("resp_{}", request_id(&sim, &headers));
    let output: String = words.iter().map(|&w| sim.output.piece(w)).collect();
    let response = json!({
        "id": id, "object": "response", "created_at": crate::metrics::unix_now() as u64, "model": model,
        "status": "completed",
        "output": [{"type": "message", "id": format!("msg_{}", &id[5..]), "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": output, "annotations": []}]}],
        "usage": {"input_tokens": prompt.len(), "output_tokens": done.emitted, "total_tokens": prompt.len() + done.emitted,
                  "input_tokens_details": {"cached_tokens": done.cached_tokens}},
    });
    let mut store = sim.responses.lock();
    store.items.push_back((id, response.clone()));
    while store.items.len() > KEEP {
        store.items.pop_front();
    }
    Ok(Json(response))
}

fn find(sim: &Sim, id: &str) -> Result<Value, ApiError> {
    sim.responses
        .lock()
        .items
        .iter()
        .find(|(k, _)| k == id)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Response with id '{id}' not found."),
            )
        })
}

pub async fn retrieve(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    find(&sim, &id).map(Json)
}

pub async fn cancel(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    find(&sim, &id)?;
    Err(ApiError::bad_request(
        "Cannot cancel a synchronous response.",
    ))
}
