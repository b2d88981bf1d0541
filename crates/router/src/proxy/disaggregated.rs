//! Prefill/decode disaggregation: one request through a prefill server and a decode server, as
//! vLLM's NixlConnector expects (its `toy_proxy_server.py` is the reference).
//!
//! Why: long prompts computed on the servers that stream tokens stall every stream there for
//! the length of the prefill. A fleet that gives some servers `role = "prefill"` and others
//! `role = "decode"` keeps prompts off the decode servers:
//!
//! 1. The prefill leg: the client's body with `kv_transfer_params.do_remote_decode`, one token,
//!    no stream, to a prefill server chosen by the fleet's policy (cache-aware by default:
//!    prefill is where a cached prefix pays). Both legs carry the same `X-Request-Id`: the
//!    prefill server keeps the KV under that id.
//! 2. The decode leg: the client's own body plus the `kv_transfer_params` the prefill server
//!    answered, to a decode server chosen by load alone, streamed back as usual. Its usage gets
//!    the prefill server's `cached_tokens` ([`super::usage_rewrite`]).
//!
//! When the prefill leg cannot help, the request goes whole to a decode server, which computes
//! the prefill itself: `n > 1`, a prompt whose part not cached on its decode server is below
//! `prefill_leg_min_tokens`, no prefill server up, and a prefill leg that fails (5xx, 429, no
//! answer in time, unreachable) or answers without `kv_transfer_params`. A 4xx from the prefill
//! server is the client's error and goes back to it. Each way is counted in
//! `mvllm_disaggregated_requests_total{path}`. A client that disconnects drops whichever leg is
//! running (its connection to the server closes, and vLLM aborts the request).

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use super::attempt::{self, Leg};
use super::dispatch::{Dispatch, dispatch, eligible, no_server};
use super::errors::ProxyError;
use crate::config::ServerRole;
use crate::fleet::Server;
use crate::routing::RouteRequest;
use crate::routing::prefix_index::Prediction;
use crate::state::AppState;

/// The prefill server's JSON answer is one token long; more is not an answer to read.
const PREFILL_ANSWER_LIMIT: usize = 1 << 20;

/// Whether requests for `model` meet a fleet that disaggregates: some server that serves it
/// has the role `prefill` or `decode`.
pub fn fleet_disaggregates(servers: &[Arc<Server>], model: Option<&str>) -> bool {
    servers
        .iter()
        .any(|s| s.role() != ServerRole::Both && model.is_none_or(|m| s.serves(m)))
}

/// How a request to a disaggregating fleet was served: the `path` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    TwoLegs,
    /// Not a generation request (models, embeddings, ...): one server.
    NotGeneration,
    /// `n > 1`.
    ManyChoices,
    ShortPrompt,
    NoPrefillServer,
    /// No decode server is up either: the request gets the usual answer for that.
    NoDecodeServer,
    PrefillFailed,
    NoKvParams,
    /// The prefill server answered 4xx: the client's error, returned as it is.
    PrefillRefused,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Self::TwoLegs => "two_legs",
            Self::NotGeneration => "not_generation",
            Self::ManyChoices => "n_above_1",
            Self::ShortPrompt => "short_prompt",
            Self::NoPrefillServer => "no_prefill_server",
            Self::NoDecodeServer => "no_decode_server",
            Self::PrefillFailed => "prefill_failed",
            Self::NoKvParams => "no_kv_transfer_params",
            Self::PrefillRefused => "prefill_refused",
        }
    }
}

fn count(app: &AppState, path: Path) {
    app.telemetry
        .disaggregated
        .get_or_create(&crate::metrics::labels::PathLabels { path: path.label() })
        .inc();
}

/// Serves a request in a fleet that disaggregates (see the module doc).
pub async fn send(
    app: &AppState,
    request: &attempt::Request<'_>,
    route: &RouteRequest<'_>,
    could_serve: &(dyn Fn(&Server) -> bool + Sync),
) -> Result<Response, ProxyError> {
    let view = request.view;
    let (servers, settings, policy) = (&view.servers, &view.settings, &view.policy);
    // Whole requests and decode legs go to servers that decode; prefill-only servers take whole
    // requests only when no other server could.
    let any_decoder = servers
        .iter()
        .any(|s| s.role().decodes() && could_serve(s) && s.takes_requests());
    let decodes = |s: &Server| could_serve(s) && (s.role().decodes() || !any_decoder);
    let (policy, decodes) = (&policy, &decodes);
    let alone = |path: Path| async move {
        if path != Path::NotGeneration {
            count(app, path);
        }
        let whole = Dispatch {
            could_serve: decodes,
            choose: &****policy,
            predict: true,
        };
        dispatch(app, request, route, &whole)
            .await
            .map_err(|e| e.unwrap_or_else(|| no_server(request.meta, false)))
    };
    let Some(api) = Api::of(request) else {
        return alone(Path::NotGeneration).await;
    };
    if request.meta.n.is_some() {
        return alone(Path::ManyChoices).await;
    }
    if !any_decoder {
        // Only prefill servers are up: they serve whole requests, not two legs to each other.
        return alone(Path::NoDecodeServer).await;
    }
    // What the decode server (chosen by load) would have to compute itself.
    let decoders = eligible(servers, &[], decodes).0;
    let max_age = view.metrics_max_age();
    let mut candidates: Vec<_> = decoders
        .iter()
        .map(|&i| servers[i].candidate(max_age))
        .collect();
    policy.assess(route, &mut candidates);
    let Some(decoder) = view
        .decode_policy
        .pick(route, &candidates, &mut rand::rng())
    else {
        return alone(Path::NoPrefillServer).await;
    };
    let uncached = route.prompt_tokens - candidates[decoder].cached_tokens;
    if uncached < f64::from(settings.prefill_leg_min_tokens) {
        return alone(Path::ShortPrompt).await;
    }
    // A `both` server prefills only for another server to decode.
    let prefills = |s: &Server| {
        could_serve(s)
            && match s.role() {
                ServerRole::Prefill => true,
                ServerRole::Both => decoders.len() > 1,
                ServerRole::Decode => false,
            }
    };
    let (prefillers, panic) = eligible(servers, &[], &prefills);
    if prefillers.is_empty() || panic {
        return alone(Path::NoPrefillServer).await;
    }
    let Ok(body) = api.prefill_body(request.body) else {
        return alone(Path::NotGeneration).await;
    };
    let no_span = crate::otel::SpanSlot::new(None);
    let leg = attempt::Request {
        body: &body,
        span: &no_span,
        leg: Leg::Prefill,
        ..*request
    };
    let mut candidates: Vec<_> = prefillers
        .iter()
        .map(|&i| servers[i].candidate(max_age))
        .collect();
    policy.assess(route, &mut candidates);
    let choice = policy
        .pick(route, &candidates, &mut rand::rng())
        .expect("candidates are not empty");
    let prefill_server = &servers[prefillers[choice]];
    policy.routed(route, &candidates[choice]);
    prefill_server.counters.count_decision(
        &app.telemetry.decisions,
        prefill_server.url_shared(),
        policy.kind().name(),
    );
    let prediction = route.prompt.map(|p| Prediction {
        prompt_tokens: route.prompt_tokens,
        cached_tokens: candidates[choice].cached_tokens,
        last_block: p.blocks.last().copied(),
    });
    let answer = match attempt::run(app, prefill_server, &leg, 0, false, prediction).await {
        attempt::Outcome::Done(Ok(resp)) => resp,
        attempt::Outcome::Done(Err(ProxyError::Timeout)) | attempt::Outcome::Retry(_) => {
            return alone(Path::PrefillFailed).await;
        }
        attempt::Outcome::Done(Err(e)) => return Err(e),
    };
    let status = answer.status();
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        count(app, Path::PrefillRefused);
        return Ok(answer);
    }
    if !status.is_success() {
        return alone(Path::PrefillFailed).await;
    }
    let read = tokio::time::timeout(
        settings.request_timeout,
        http_body_util::Limited::new(answer.into_body(), PREFILL_ANSWER_LIMIT).collect(),
    )
    .await;
    let Ok(Ok(answer)) = read else {
        tracing::info!(
            id = request.id,
            server = prefill_server.url(),
            "the prefill answer could not be read; decoding alone"
        );
        return alone(Path::PrefillFailed).await;
    };
    let Some(prefilled) = Prefilled::read(&answer.to_bytes()) else {
        tracing::info!(
            id = request.id,
            server = prefill_server.url(),
            "the prefill answer has no kv_transfer_params; decoding alone"
        );
        return alone(Path::NoKvParams).await;
    };
    let Ok(body) = Api::decode_body(request.body, prefilled.params) else {
        return alone(Path::NotGeneration).await;
    };
    let leg = attempt::Request {
        body: &body,
        leg: Leg::Decode {
            cached_tokens: prefilled.cached_tokens,
        },
        ..*request
    };
    // Decode elsewhere than the prefill, unless that server is the only one left.
    let elsewhere =
        |s: &Server| decodes(s) && (s.url() != prefill_server.url() || decoders.len() < 2);
    count(app, Path::TwoLegs);
    let by_load = Dispatch {
        could_serve: &elsewhere,
        choose: &**view.decode_policy,
        predict: false,
    };
    dispatch(app, &leg, route, &by_load)
        .await
        .map_err(|e| e.unwrap_or_else(|| no_server(request.meta, false)))
}

/// The generation APIs whose bodies the two legs rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
    Responses,
}

impl Api {
    fn of(request: &attempt::Request<'_>) -> Option<Api> {
        if request.parts.method != Method::POST || !request.meta.json {
            return None;
        }
        match request.parts.uri.path() {
            "/v1/chat/completions" => Some(Api::Chat),
            "/v1/completions" => Some(Api::Completions),
            "/v1/responses" => Some(Api::Responses),
            _ => None,
        }
    }

    /// The prefill leg's body: the client's, asking for one token, not streamed, with the
    /// parameters that make the server keep the KV for a decode server.
    fn prefill_body(self, client: &[u8]) -> Result<Bytes, serde_json::Error> {
        let mut body: Map<String, Value> = serde_json::from_slice(client)?;
        body.insert(
            "kv_transfer_params".into(),
            json!({
                "do_remote_decode": true,
                "do_remote_prefill": false,
                "remote_engine_id": null,
                "remote_block_ids": null,
                "remote_host": null,
                "remote_port": null,
            }),
        );
        body.insert("stream".into(), Value::Bool(false));
        body.remove("stream_options");
        body.remove("min_tokens");
        if self == Api::Responses {
            body.insert("max_output_tokens".into(), json!(1));
        } else {
            body.insert("max_tokens".into(), json!(1));
            if body.contains_key("max_completion_tokens") {
                body.insert("max_completion_tokens".into(), json!(1));
            }
        }
        serde_json::to_vec(&body).map(Bytes::from)
    }

    /// The decode leg's body: the client's own, plus the prefill server's parameters.
    fn decode_body(client: &[u8], params: Value) -> Result<Bytes, serde_json::Error> {
        let mut body: Map<String, Value> = serde_json::from_slice(client)?;
        body.insert("kv_transfer_params".into(), params);
        serde_json::to_vec(&body).map(Bytes::from)
    }
}

/// What the prefill server's answer hands on to the decode leg.
#[derive(Debug, PartialEq)]
struct Prefilled {
    params: Value,
    /// Its prefix-cache hit on the prompt, as its usage reported it.
    cached_tokens: Option<u64>,
}

impl Prefilled {
    fn read(answer: &[u8]) -> Option<Prefilled> {
        let mut answer: Map<String, Value> = serde_json::from_slice(answer).ok()?;
        let params = answer
            .remove("kv_transfer_params")
            .filter(Value::is_object)?;
        let usage = answer.get("usage");
        let cached_tokens = ["prompt_tokens_details", "input_tokens_details"]
            .iter()
            .find_map(|d| usage?.get(d)?.get("cached_tokens")?.as_u64());
        Some(Prefilled {
            params,
            cached_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefill_body_asks_one_unstreamed_token_and_keeps_the_rest() {
        let client = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
            "stream_options":{"include_usage":true},"max_tokens":500,"max_completion_tokens":500,
            "min_tokens":20,"temperature":0.5}"#;
        let b: Value = serde_json::from_slice(&Api::Chat.prefill_body(client).unwrap()).unwrap();
        assert_eq!(
            b,
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false,
                "max_tokens":1,"max_completion_tokens":1,"temperature":0.5,
                "kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,
                    "remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}})
        );
        let b: Value =
            serde_json::from_slice(&Api::Completions.prefill_body(br#"{"prompt":"x"}"#).unwrap())
                .unwrap();
        assert_eq!(b["max_tokens"], 1);
        assert!(
            b.get("max_completion_tokens").is_none(),
            "added only if present"
        );
        let b: Value = serde_json::from_slice(
            &Api::Responses
                .prefill_body(br#"{"input":"x","max_output_tokens":300}"#)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(b["max_output_tokens"], 1);
        assert!(b.get("max_tokens").is_none());
    }

    #[test]
    fn the_decode_body_is_the_clients_plus_the_parameters() {
        let params = json!({"do_remote_prefill": true, "remote_block_ids": [1, 2]});
        let b: Value = serde_json::from_slice(
            &Api::decode_body(
                br#"{"prompt":"x","stream":true,"max_tokens":9}"#,
                params.clone(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            b,
            json!({"prompt":"x","stream":true,"max_tokens":9,"kv_transfer_params":params})
        );
    }

    #[test]
    fn the_prefill_answer_hands_on_its_parameters_and_cached_tokens() {
        let p = Prefilled::read(
            br#"{"usage":{"prompt_tokens":90,"prompt_tokens_details":{"cached_tokens":64}},
                "kv_transfer_params":{"do_remote_prefill":true}}"#,
        )
        .unwrap();
        assert_eq!(p.cached_tokens, Some(64));
        assert_eq!(p.params, json!({"do_remote_prefill": true}));
        let p = Prefilled::read(
            br#"{"usage":{"input_tokens_details":{"cached_tokens":3}},"kv_transfer_params":{}}"#,
        )
        .unwrap();
        assert_eq!(p.cached_tokens, Some(3));
        for missing in [
            &br#"{"kv_transfer_params":null}"#[..],
            br#"{"usage":{}}"#,
            br#"not json"#,
            br#"{"kv_transfer_params":[1]}"#,
        ] {
            assert_eq!(Prefilled::read(missing), None);
        }
    }
}
