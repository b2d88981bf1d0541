//! `POST /v1/chat/completions` and `POST /v1/completions`: from a request body to a
//! [`Generation`] (prompt tokens, the output the simulated model will write, how it ends), then
//! to a JSON answer or an SSE stream ([`super::stream`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::parse_json;
use super::errors::ApiError;
use super::generation::{Generation, Kind, LoadGuard, UsageIn, finish_str, usage};
use super::kv_lease::KvParams;
use super::kv_transfer;
use super::state::Sim;
use super::stream;
use crate::engine::SeqSpec;
use crate::metrics::FinishReason;
use crate::tokenizer::{self, ChatTurn};
use mvllm_tokenizer::ModelTokenizer;

/// Request header that forces this one request's answer to an error status (429, 500 or 503).
pub const FORCE_ERROR_HEADER: &str = "x-sim-error";

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields of both request kinds that the simulator acts on; others are accepted and ignored.
#[derive(Debug, Deserialize)]
struct GenerationRequest {
    model: Option<String>,
    messages: Option<Vec<Message>>,
    prompt: Option<Value>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    min_tokens: u64,
    #[serde(default)]
    ignore_eos: bool,
    n: Option<u32>,
    temperature: Option<f64>,
    #[serde(default = "yes")]
    add_generation_prompt: bool,
    #[serde(default = "yes")]
    add_special_tokens: bool,
    /// Disaggregated prefill's instructions to the KV connector ([`super::kv_transfer`]).
    kv_transfer_params: Option<Value>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Value,
}

/// The text of a message's content: a string, or the `text` of each part of an array.
pub(crate) fn content_text(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some(other), _) if other != "text" => {
                        return Err(ApiError::bad_request(format!(
                            "content part type '{other}' is not supported by this model"
                        )));
                    }
                    _ => {
                        return Err(ApiError::bad_request(
                            "each content part needs a 'type' and a 'text'",
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::bad_request(
            "message content must be a string or an array of content parts",
        )),
    }
}

/// A chat's messages as token ids: with the model's tokenizer (`tok`), rendered by its chat
/// template; otherwise by the built-in tokenizer.
pub(crate) fn encode_messages(
    tok: Option<&ModelTokenizer>,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<Vec<u32>, ApiError> {
    let texts = messages
        .iter()
        .map(|m| content_text(&m.content))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(t) = tok {
        let chat: Vec<Value> = messages
            .iter()
            .zip(&texts)
            .map(|(m, text)| json!({"role": m.role, "content": text}))
            .collect();
        return t
            .encode_chat(&Value::Array(chat))
            .map_err(|e| ApiError::bad_request(e.to_string()));
    }
    let turns: Vec<ChatTurn<'_>> = messages
        .iter()
        .zip(&texts)
        .map(|(m, t)| ChatTurn {
            role: &m.role,
            content: t,
        })
        .collect();
    Ok(tokenizer::encode_chat(&turns, add_generation_prompt))
}

/// A completion prompt: a string, a list of one string, or token ids (a list, or a list of one).
pub(crate) fn encode_prompt_value(
    tok: Option<&ModelTokenizer>,
    prompt: &Value,
    add_special_tokens: bool,
) -> Result<Vec<u32>, ApiError> {
    let text = |s: &str| match tok {
        Some(t) if add_special_tokens => t
            .encode_text(s)
            .map_err(|e| ApiError::bad_request(e.to_string())),
        Some(t) => t
            .encode_plain(s)
            .map_err(|e| ApiError::bad_request(e.to_string())),
        None => Ok(tokenizer::encode_prompt(s, add_special_tokens)),
    };
    let ids = |arr: &[Value]| -> Option<Vec<u32>> {
        arr.iter()
            .map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect()
    };
    match prompt {
        Value::String(s) => text(s),
        Value::Array(items) if items.len() == 1 && items[0].is_string() => {
            text(items[0].as_str().unwrap_or_default())
        }
        Value::Array(items) if items.len() == 1 && items[0].is_array() => {
            ids(items[0].as_array().map(Vec::as_slice).unwrap_or_default()).ok_or_else(|| {
                ApiError::bad_request("prompt token ids must be non-negative integers")
            })
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            ids(items).ok_or_else(|| {
                ApiError::bad_request("prompt token ids must be non-negative integers")
            })
        }
        Value::Array(items) if items.len() > 1 => Err(ApiError::bad_request(
            "batched prompts are not supported by the simulator; send one prompt per request",
        )),
        _ => Err(ApiError::bad_request(
            "prompt must be a string, a list of one string, or a list of token ids",
        )),
    }
}

/// FastAPI's error for a required field the body's object lacks (it counts the object's keys).
fn missing_field(field: &str, body: &[u8]) -> ApiError {
    let items =
        serde_json::from_slice::<serde_json::Map<String, Value>>(body).map_or(0, |m| m.len());
    ApiError::validation(&mvllm_validation::Validation::missing(field, items))
}

/// How many tokens a request may generate, or vLLM 0.32's 400 for a request it refuses, in
/// the order vLLM checks (`TokenizeParams`, the prompt's length, then `SamplingParams`). A
/// prompt plus `max_tokens` longer than the context is not refused: the output is cut to what
/// fits (`get_max_tokens`), and finishes with "length".
fn output_budget(
    req: &GenerationRequest,
    prompt_len: usize,
    prompt_is_text: bool,
    max_len: usize,
) -> Result<usize, ApiError> {
    let requested = req.max_completion_tokens.or(req.max_tokens);
    if let Some(m) = requested
        && m > 0
        && m as u64 > max_len as u64
    {
        return Err(ApiError::invalid_param(
            format!(
                "max_tokens={m} cannot be greater than max_model_len={max_len}. Please request fewer output tokens."
            ),
            "max_tokens",
            m.to_string(),
        ));
    }
    if prompt_len > max_len {
        // vLLM's tokenizer stops one token past the limit, so a text prompt is "at least" that.
        let count = if prompt_is_text {
            max_len + 1
        } else {
            prompt_len
        };
        let qualifier = if count == max_len + 1 {
            "at least "
        } else {
            ""
        };
        return Err(ApiError::invalid_param(
            format!(
                "This model's maximum context length is {max_len} tokens. However, your prompt contains {qualifier}{count} input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt."
            ),
            "input_tokens",
            count.to_string(),
        ));
    }
    if let Some(t) = req.temperature {
        let problem = if !t.is_finite() {
            Some("must be a finite number")
        } else if t < 0.0 {
            Some("must be non-negative")
        } else if t > 2.0 {
            Some("must be in [0, 2]")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ApiError::invalid_param(
                format!("temperature {problem}, got {t:?}."),
                "temperature",
                format!("{t:?}"),
            ));
        }
    }
    let room = max_len - prompt_len;
    let budget = requested.map_or(room as i64, |m| m.min(room as i64));
    if budget < 1 {
        return Err(ApiError::invalid_param(
            format!("max_tokens must be at least 1, got {budget}."),
            "max_tokens",
            budget.to_string(),
        ));
    }
    Ok(budget as usize)
}

/// The served model a request names (a base name or a loaded adapter), and its cache salt.
pub(crate) fn resolve_model(sim: &Sim, requested: Option<&str>) -> Result<(String, u64), ApiError> {
    let Some(name) = requested else {
        return Ok((sim.cfg.model_name().to_string(), 0));
    };
    if sim.cfg.served_model_names.iter().any(|m| m == name) {
        return Ok((name.to_string(), 0));
    }
    match sim.lora_index(name) {
        Some(i) => Ok((name.to_string(), 1 + i as u64)),
        None => Err(ApiError::model_not_found(name, &sim.cfg.served_model_names)),
    }
}

pub(crate) fn request_id(sim: &Sim, headers: &HeaderMap) -> String {
    match headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("{:032x}", sim.rng.lock().random::<u128>()),
    }
}

fn prepare(
    sim: &Sim,
    headers: &HeaderMap,
    body: &[u8],
    kind: Kind,
) -> Result<Generation, ApiError> {
    let schema = match kind {
        Kind::Chat => "ChatCompletionRequest",
        Kind::Completion => "CompletionRequest",
    };
    let req: GenerationRequest = parse_json(headers, body, schema)?;
    let (model, salt) = resolve_model(sim, req.model.as_deref())?;
    if req.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad_request(
            "n > 1 is not supported by the simulator",
        ));
    }
    let prompt = match kind {
        Kind::Chat => {
            let messages = req
                .messages
                .as_deref()
                .ok_or_else(|| missing_field("messages", body))?;
            if messages.is_empty() {
                return Err(ApiError::bad_request(
                    "messages must contain at least one message",
                ));
            }
            encode_messages(
                sim.tokenizer.as_deref(),
                messages,
                req.add_generation_prompt,
            )?
        }
        Kind::Completion => {
            let prompt = req
                .prompt
                .as_ref()
                .ok_or_else(|| missing_field("prompt", body))?;
            encode_prompt_value(sim.tokenizer.as_deref(), prompt, req.add_special_tokens)?
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::bad_request("The prompt cannot be empty."));
    }
    let prompt_is_text = kind == Kind::Chat || req.prompt.as_ref().is_some_and(Value::is_string);
    let max_tokens = output_budget(&req, prompt.len(), prompt_is_text, sim.cfg.max_model_len)?;
    let fingerprint = tokenizer::prompt_fingerprint(sim.cfg.seed ^ salt, &prompt);
    let natural = if req.ignore_eos {
        usize::MAX
    } else {
        tokenizer::natural_output_len(fingerprint).max(req.min_tokens as usize)
    };
    let (out_len, finish) = if natural < max_tokens {
        (natural, FinishReason::Stop)
    } else {
        (max_tokens, FinishReason::Length)
    };
    let words: Vec<u8> = (0..out_len)
        .map(|i| (tokenizer::output_word_index(fingerprint, i) % sim.output.len()) as u8)
        .collect();
    let mut tokens = prompt;
    let prompt_len = tokens.len();
    tokens.extend(words.iter().map(|&w| sim.output.id(w as usize)));
    let prefix = match kind {
        Kind::Chat => "chatcmpl-",
        Kind::Completion => "cmpl-",
    };
    let request_id = request_id(sim, headers);
    let lora_name = (salt != 0).then(|| model.clone());
    Ok(Generation {
        kind,
        id: format!("{prefix}{request_id}"),
        request_id,
        kv: KvParams::read(req.kv_transfer_params.as_ref()),
        model,
        created: crate::metrics::unix_now() as u64,
        stream: req.stream,
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        spec: SeqSpec {
            tokens,
            prompt_len,
            hash_salt: salt,
            lora_name,
            max_tokens,
            ..Default::default()
        },
        words,
        output: sim.output.clone(),
        finish,
        block_size: sim.cfg.block_size,
        fingerprint: sim.fingerprint.clone(),
    })
}

/// An error status this request must get from an injected fault, if any.
pub(crate) fn injected_error(sim: &Sim, headers: &HeaderMap) -> Option<ApiError> {
    if let Some(v) = headers
        .get(FORCE_ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        let status = v.trim().parse().unwrap_or(500);
        return Some(ApiError::injected(status));
    }
    let faults = sim.faults.borrow();
    if faults.error_rate > 0.0 && sim.rng.lock().random_bool(faults.error_rate) {
        return Some(ApiError::injected(faults.error_status));
    }
    None
}

pub(crate) async fn chat(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(sim, headers, body, Kind::Chat).await
}

pub(crate) async fn completions(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    generate(sim, headers, body, Kind::Completion).await
}

async fn generate(sim: Arc<Sim>, headers: HeaderMap, body: Bytes, kind: Kind) -> Response {
    let load = LoadGuard::new(&sim);
    *sim.last_traceparent.lock() = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    *sim.last_request.lock() = Some((
        headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body.clone(),
    ));
    let mut generation = match prepare(&sim, &headers, &body, kind) {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    if let Some(e) = injected_error(&sim, &headers) {
        sim.pick_engine().count_error();
        return e.into_response();
    }
    let engine = sim.pick_engine_index();
    let role = sim.cfg.kv_transfer.as_ref().map(|k| k.role);
    // A prefill for a decode server: keep the KV when done, and say where it is.
    let producing =
        role.is_some_and(|r| r.produces()) && generation.kv.do_remote_decode && !generation.stream;
    generation.spec.hold_blocks = producing;
    if role.is_some_and(|r| r.consumes()) && generation.kv.do_remote_prefill {
        match kv_transfer::receive(
            &sim,
            engine,
            &generation.kv,
            &generation.request_id,
            generation.prompt_tokens(),
        )
        .await
        {
            Ok(tokens) => generation.spec.preloaded = tokens,
            Err(why) => {
                sim.engines[engine].count_failed_transfer();
                tracing::info!(request_id = %generation.request_id, "KV transfer failed, computing the prefill here: {why}");
            }
        }
    }
    let submission = sim.engines[engine].submit(generation.spec.clone(), generation.finish);
    let die_after = sim.faults.borrow().die_after_chunks;
    let request_id = headers.get("x-request-id").cloned();
    let mut response = if generation.stream {
        stream::sse_response(generation, submission, die_after, load)
    } else {
        // Held blocks nobody will be told about (the client left before the answer) are freed.
        let mut unclaimed =
            ReleaseOnDrop(producing.then(|| (&sim.engines[engine], submission.id())));
        let done = submission.outbox.wait_finished().await;
        drop(load);
        let kv = if producing {
            unclaimed.0 = None;
            kv_transfer::hold(
                &sim,
                &generation.request_id,
                engine,
                submission.id(),
                submission.outbox.held_blocks(),
                generation.prompt_tokens(),
            )
        } else {
            Value::Null
        };
        (
            StatusCode::OK,
            axum::Json(full_response(&generation, done.cached_tokens, kv)),
        )
            .into_response()
    };
    if let Some(id) = request_id {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

/// Frees a finished request's held blocks unless disarmed (forgotten) first.
struct ReleaseOnDrop<'a>(
    Option<(
        &'a crate::engine::EngineHandle,
        crate::engine::scheduler::ReqId,
    )>,
);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some((engine, id)) = self.0.take() {
            engine.release(id);
        }
    }
}

fn full_response(g: &Generation, cached: usize, kv_transfer_params: Value) -> Value {
    let text = g.text(0..g.words.len());
    let usage = usage(g, g.words.len(), cached, UsageIn::Answer);
    // vLLM 0.32's fields, in its order (`null` where the simulator has nothing to say).
    match g.kind {
        Kind::Chat => json!({
            "id": g.id, "object": "chat.completion", "created": g.created, "model": g.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null, "annotations": null,
                            "audio": null, "function_call": null, "reasoning": null},
                "logprobs": null, "finish_reason": finish_str(g.finish), "stop_reason": null,
                "token_ids": null, "routed_experts": null,
            }],
            "service_tier": null, "system_fingerprint": &*g.fingerprint, "usage": usage,
            "prompt_logprobs": null, "prompt_token_ids": null, "prompt_text": null,
            "kv_transfer_params": kv_transfer_params, "ec_transfer_params": null, "metrics": null,
        }),
        Kind::Completion => json!({
            "id": g.id, "object": "text_completion", "created": g.created, "model": g.model,
            "choices": [{
                "index": 0, "text": text, "logprobs": null, "finish_reason": finish_str(g.finish),
                "stop_reason": null, "token_ids": null, "prompt_logprobs": null,
                "prompt_token_ids": null, "routed_experts": null,
            }],
            "service_tier": null, "system_fingerprint": &*g.fingerprint, "usage": usage,
            "kv_transfer_params": kv_transfer_params, "ec_transfer_params": null, "metrics": null,
        }),
    }
}
