//! Every route but generation: models, health, version, load, metrics, tokenize, detokenize,
//! embeddings, LoRA adapters, the prefix-cache reset, and the simulator's own `/sim/*` control.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::body::parse_json;
use super::errors::ApiError;
use super::generate::{Message, encode_messages, encode_prompt_value, resolve_model};
use super::listener::SpareOnDown;
use super::state::Sim;
use crate::faults::FaultsPatch;
use crate::tokenizer;

fn model_card(
    sim: &Sim,
    id: &str,
    root: &str,
    parent: Option<&str>,
    max_model_len: Option<usize>,
) -> Value {
    let perm = xxh3_64_with_seed(id.as_bytes(), sim.cfg.seed);
    json!({
        "id": id, "object": "model", "created": sim.created, "owned_by": "vllm", "root": root,
        "parent": parent, "max_model_len": max_model_len,
        "permission": [{
            "id": format!("modelperm-{perm:016x}"), "object": "model_permission", "created": sim.created,
            "allow_create_engine": false, "allow_sampling": true, "allow_logprobs": true,
            "allow_search_indices": false, "allow_view": true, "allow_fine_tuning": false,
            "organization": "*", "group": null, "is_blocking": false,
        }],
    })
}

pub async fn models(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let base = sim.cfg.model_name();
    let mut data: Vec<Value> = sim
        .cfg
        .served_model_names
        .iter()
        .map(|n| model_card(&sim, n, base, None, Some(sim.cfg.max_model_len)))
        .collect();
    for (name, path) in sim.loras.lock().iter() {
        data.push(model_card(&sim, name, path, Some(base), None));
    }
    Json(json!({"object": "list", "data": data}))
}

pub async fn health() -> StatusCode {
    StatusCode::OK
}

/// The vLLM release the simulator answers as: the one whose real answers are pinned in tests.
pub const VLLM_VERSION: &str = "0.32.0";

pub async fn version() -> Json<Value> {
    Json(json!({ "version": VLLM_VERSION }))
}

pub async fn load(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!({"server_load": sim.server_load.load(Ordering::Relaxed)}))
}

pub async fn metrics(State(sim): State<Arc<Sim>>) -> Response {
    let (delay, malformed) = {
        let f = sim.faults.borrow();
        (f.metrics_delay_ms, f.metrics_malformed)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let text = if malformed {
        "<html><body>502 Bad Gateway</body></html>\nvllm:num_requests_running{engine=\"0\" 3 garbage\n".to_string()
    } else {
        sim.render_metrics()
    };
    // prometheus_client's: 1.0.0 as vLLM 0.32 sends it, 0.0.4 from the older releases.
    let content_type = if sim.cfg.legacy_metrics {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; version=1.0.0; charset=utf-8"
    };
    let mut r = text.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[derive(Deserialize)]
struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<Value>,
    messages: Option<Vec<Message>>,
    #[serde(default = "yes")]
    add_special_tokens: bool,
    #[serde(default = "yes")]
    add_generation_prompt: bool,
    #[serde(default)]
    return_token_strs: bool,
}

fn yes() -> bool {
    true
}

pub async fn tokenize(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: TokenizeRequest = parse_json(&headers, &body, "TokenizeRequest")?;
    resolve_model(&sim, req.model.as_deref())?;
    let tokens = match (&req.prompt, &req.messages) {
        (Some(p), None) => {
            encode_prompt_value(sim.tokenizer.as_deref(), p, req.add_special_tokens)?
        }
        (None, Some(m)) => encode_messages(sim.tokenizer.as_deref(), m, req.add_generation_prompt)?,
        _ => {
            return Err(ApiError::bad_request(
                "exactly one of 'prompt' or 'messages' is required",
            ));
        }
    };
    let strs = req.return_token_strs.then(|| {
        tokens
            .iter()
            .map(|&t| match &sim.tokenizer {
                Some(tok) => tok.token_str(t).unwrap_or_default(),
                None => tokenizer::decode_one(t),
            })
            .collect::<Vec<_>>()
    });
    Ok(Json(
        json!({"count": tokens.len(), "max_model_len": sim.cfg.max_model_len, "tokens": tokens, "token_strs": strs}),
    ))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<u32>,
}

pub async fn detokenize(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: DetokenizeRequest = parse_json(&headers, &body, "DetokenizeRequest")?;
    resolve_model(&sim, req.model.as_deref())?;
    let prompt = match &sim.tokenizer {
        Some(t) => t
            .decode(&req.tokens)
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => tokenizer::decode(&req.tokens),
    };
    Ok(Json(json!({"prompt": prompt})))
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: Option<String>,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

/// A unit vector that depends only on the tokens (and the seed).
fn embed(tokens: &[u32], dim: usize, seed: u64) -> Vec<f32> {
    let key = tokenizer::prompt_fingerprint(seed, tokens);
    let mut v: Vec<f32> = (0..dim)
        .map(|i| {
            let h = xxh3_64_with_seed(&(i as u64).to_le_bytes(), key);
            (h >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

pub async fn embeddings(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: EmbeddingRequest = parse_json(&headers, &body, "EmbeddingRequest")?;
    let (model, _) = resolve_model(&sim, req.model.as_deref())?;
    // vLLM (and OpenAI) answer `base64` with the float32 values, little-endian, in base64; the
    // OpenAI SDKs ask for that by default.
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding_format must be 'float' or 'base64', got '{other}'"
            )));
        }
    };
    let inputs: Vec<Vec<u32>> = match &req.input {
        Value::Array(items)
            if !items.is_empty() && items.iter().all(|i| i.is_string() || i.is_array()) =>
        {
            items
                .iter()
                .map(|i| encode_prompt_value(sim.tokenizer.as_deref(), i, true))
                .collect::<Result<_, _>>()?
        }
        Value::String(_) | Value::Array(_) => vec![encode_prompt_value(
            sim.tokenizer.as_deref(),
            &req.input,
            true,
        )?],
        _ => {
            return Err(ApiError::bad_request(
                "input must be a string, a list of strings, or token ids",
            ));
        }
    };
    if let Some(too_long) = inputs.iter().find(|t| t.len() > sim.cfg.max_model_len) {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {} tokens. However, your request has {} input tokens.",
            sim.cfg.max_model_len,
            too_long.len()
        )));
    }
    let dim = req.dimensions.unwrap_or(sim.cfg.embedding_dim);
    let prompt_tokens: usize = inputs.iter().map(Vec::len).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = embed(t, dim, sim.cfg.seed);
            let embedding = if base64 {
                use base64::Engine;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"index": i, "object": "embedding", "embedding": embedding})
        })
        .collect();
    let id = format!("embd-{}", super::generate::request_id(&sim, &headers));
    Ok(Json(json!({
        "id": id, "object": "list", "created": crate::metrics::unix_now() as u64, "model": model, "data": data,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0, "prompt_tokens_details": null},
    })))
}

#[derive(Deserialize)]
struct LoraRequest {
    lora_name: String,
    #[serde(default)]
    lora_path: Option<String>,
}

pub async fn load_lora(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: LoraRequest = parse_json(&headers, &body, "LoadLoRAAdapterRequest")?;
    let Some(path) = req.lora_path.filter(|p| !p.is_empty()) else {
        return Err(ApiError::bad_request(
            "Both 'lora_name' and 'lora_path' must be provided.",
        ));
    };
    let mut loras = sim.loras.lock();
    if loras.iter().any(|(n, _)| *n == req.lora_name) {
        return Err(ApiError::bad_request(format!(
            "The lora adapter '{}' has already been loaded.",
            req.lora_name
        )));
    }
    loras.push((req.lora_name.clone(), path));
    Ok(format!(
        "Success: LoRA adapter '{}' added successfully.",
        req.lora_name
    )
    .into_response())
}

pub async fn unload_lora(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: LoraRequest = parse_json(&headers, &body, "UnloadLoRAAdapterRequest")?;
    let mut loras = sim.loras.lock();
    let Some(pos) = loras.iter().position(|(n, _)| *n == req.lora_name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("The lora adapter '{}' cannot be found.", req.lora_name),
        ));
    };
    loras.remove(pos);
    Ok(format!(
        "Success: LoRA adapter '{}' removed successfully.",
        req.lora_name
    )
    .into_response())
}

pub async fn reset_prefix_cache(State(sim): State<Arc<Sim>>) -> StatusCode {
    for e in &sim.engines {
        e.reset_prefix_cache();
    }
    StatusCode::OK
}

pub async fn get_faults(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!(*sim.faults.borrow()))
}

/// `POST /sim/faults`: applies a [`FaultsPatch`] and answers with the faults now in force.
pub async fn set_faults(
    State(sim): State<Arc<Sim>>,
    Extension(spare): Extension<SpareOnDown>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let patch: FaultsPatch = parse_json(&headers, &body, "FaultsPatch")?;
    let new = patch
        .apply(&sim.faults.borrow())
        .map_err(ApiError::bad_request)?;
    let going_down = new.down && !sim.faults.borrow().down;
    if going_down {
        // This connection may finish this answer; every other one is cut.
        spare.0.store(true, Ordering::Relaxed);
    }
    sim.faults.send_replace(new.clone());
    if let Some(ms) = patch.down_for_ms {
        let sim = sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            sim.faults.send_modify(|f| f.down = false);
        });
    }
    let mut r = Json(json!(new)).into_response();
    if going_down {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(r)
}

/// `GET /sim/stats`: each engine's step accounting, for benchmarks.
pub async fn stats(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let engines: Vec<Value> = sim
        .engines
        .iter()
        .map(|e| {
            let m = e.metrics();
            json!({
                "steps": m.steps, "model_busy_seconds": m.model_busy_seconds, "wall_busy_seconds": m.wall_busy_seconds,
                "running": m.running, "waiting": m.waiting, "kv_cache_usage": m.kv_usage, "in_engine": e.load(),
                "preemptions": m.preemptions, "prefix_cache_queries": m.prefix_queries, "prefix_cache_hits": m.prefix_hits,
            })
        })
        .collect();
    Json(json!({"engines": engines, "server_load": sim.server_load.load(Ordering::Relaxed)}))
}
