//! Disaggregated prefill, as vLLM's NixlConnector plays it (`--kv-role`).
//!
//! Why in the simulator: a router that drives prefill/decode disaggregation is only tested
//! for real against servers that keep their side of the protocol, including its failures.
//!
//! - A **producer** given `kv_transfer_params.do_remote_decode` computes the prefill (the
//!   router asks for one token), keeps the request's KV blocks for a lease instead of freeing
//!   them, and answers with `kv_transfer_params` naming its engine, the blocks, and where to
//!   read them (`remote_host`/`remote_port`: this server; `/sim/kv/*` stands for NIXL's side
//!   channel).
//! - A **consumer** given `do_remote_prefill` with those parameters reads the blocks instead
//!   of computing the prefill: it asks the producer for them (which renews the lease while the
//!   transfer runs), spends the transfer time (`tokens x KV bytes per token / link bandwidth`),
//!   then lets the producer free them. The request then starts with the prompt's KV present
//!   (all but its last token, computed for the logits), which vLLM reports as cached tokens.
//!   Parameters that are missing, malformed, from another request (the lease is keyed by
//!   `X-Request-Id`, which both legs must share), or expired make it compute the prefill
//!   itself, as vLLM does, counting `vllm:nixl_num_failed_transfers`.
//! - An unread lease runs out: the blocks are freed (`vllm:nixl_num_kv_expired_reqs`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::kv_lease::{KvParams, Lease, SIDE_CHANNEL_TIMEOUT, SideChannelClient};
use super::state::Sim;
use crate::engine::scheduler::ReqId;

/// A producer's request finished holding `blocks` of engine `engine`: keep them for `request_id`
/// for a lease, and name them in the answer's `kv_transfer_params`.
pub(crate) fn hold(
    sim: &Arc<Sim>,
    request_id: &str,
    engine: usize,
    request: ReqId,
    blocks: Vec<u32>,
    tokens: usize,
) -> Value {
    let lease = sim
        .cfg
        .kv_transfer
        .as_ref()
        .map_or(Duration::from_secs(30), |k| k.lease);
    let params = json!({
        "do_remote_prefill": true,
        "do_remote_decode": false,
        "remote_block_ids": blocks,
        "remote_engine_id": sim.engine_ids[engine],
        "remote_host": sim.side_channel.ip().to_string(),
        "remote_port": sim.side_channel.port(),
        "tp_size": 1,
    });
    let old = sim.leases.held.lock().insert(
        request_id.to_string(),
        Lease {
            engine,
            request,
            blocks,
            tokens,
            expires: Instant::now() + lease,
        },
    );
    if let Some(old) = old {
        // The same request id prefilled twice: the earlier blocks are nobody's now.
        sim.engines[old.engine].release(old.request);
    }
    tokio::spawn(expire(sim.clone(), request_id.to_string()));
    params
}

/// Frees a lease's blocks when it runs out unread (renewals move its end on).
async fn expire(sim: Arc<Sim>, request_id: String) {
    loop {
        let Some(end) = sim.leases.held.lock().get(&request_id).map(|l| l.expires) else {
            return;
        };
        tokio::time::sleep_until(end).await;
        let mut held = sim.leases.held.lock();
        match held.get(&request_id) {
            Some(l) if l.expires <= Instant::now() => {
                let l = held.remove(&request_id).expect("present above");
                drop(held);
                sim.engines[l.engine].release(l.request);
                sim.engines[l.engine].count_expired_kv();
                tracing::info!(request_id, "held KV expired unread; blocks freed");
                return;
            }
            Some(_) => {}
            None => return,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PullRequest {
    pub request_id: String,
    pub remote_engine_id: String,
    pub remote_block_ids: Vec<u32>,
}

/// `POST /sim/kv/pull` (producer side): the blocks a decode server is about to read. Renews the
/// lease for the transfer; answers how many tokens of KV they hold.
pub(crate) async fn pull(
    State(sim): State<Arc<Sim>>,
    Json(req): Json<PullRequest>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let lease = sim
        .cfg
        .kv_transfer
        .as_ref()
        .map_or(Duration::from_secs(30), |k| k.lease);
    let mut held = sim.leases.held.lock();
    let Some(l) = held.get_mut(&req.request_id) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "no KV held for request `{}` (expired, read already, or never prefilled here)",
                req.request_id
            ),
        ));
    };
    if sim.engine_ids[l.engine] != req.remote_engine_id || l.blocks != req.remote_block_ids {
        return Err((
            StatusCode::CONFLICT,
            "the engine id or block ids do not match what this request holds".into(),
        ));
    }
    l.expires = Instant::now() + lease;
    Ok(Json(json!({"tokens": l.tokens})))
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Done {
    pub request_id: String,
}

/// `POST /sim/kv/done` (producer side): the decode server has read the blocks; free them.
pub(crate) async fn done(State(sim): State<Arc<Sim>>, Json(req): Json<Done>) -> StatusCode {
    let lease = sim.leases.held.lock().remove(&req.request_id);
    match lease {
        Some(l) => {
            sim.engines[l.engine].release(l.request);
            StatusCode::OK
        }
        None => StatusCode::NOT_FOUND,
    }
}

/// Consumer side: reads the prompt's KV from the producer `params` name. `Ok(tokens)`: the
/// transfer is done (its time spent) and `tokens` of the prompt need no prefill here;
/// `Err(why)`: compute the prefill locally.
pub(crate) async fn receive(
    sim: &Sim,
    engine: usize,
    params: &KvParams,
    request_id: &str,
    prompt_tokens: usize,
) -> Result<usize, String> {
    let Some(kv) = sim.cfg.kv_transfer.as_ref() else {
        return Err("no KV connector".into());
    };
    let (Some(engine_id), Some(blocks), Some(host), Some(port)) = (
        &params.remote_engine_id,
        &params.remote_block_ids,
        &params.remote_host,
        params.remote_port,
    ) else {
        return Err("kv_transfer_params lack the remote engine, blocks, host or port".into());
    };
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| format!("remote_host `{host}` is not an IP address"))?;
    let producer = std::net::SocketAddr::new(ip, port);
    let answer = call(
        &sim.side_channel_client,
        producer,
        "/sim/kv/pull",
        &PullRequest {
            request_id: request_id.to_string(),
            remote_engine_id: engine_id.clone(),
            remote_block_ids: blocks.clone(),
        },
    )
    .await?;
    let tokens = answer.get("tokens").and_then(Value::as_u64).unwrap_or(0) as usize;
    if tokens != prompt_tokens {
        return Err(format!(
            "the producer holds {tokens} tokens of KV for this request, its prompt has {prompt_tokens}"
        ));
    }
    let started = Instant::now();
    tokio::time::sleep(kv.transfer_time(tokens)).await;
    sim.engines[engine].record_transfer(
        started.elapsed().as_secs_f64(),
        (tokens as u64 * kv.kv_bytes_per_token) as f64,
    );
    // The producer frees the blocks once told; a lost notice only leaves them to the lease.
    let done = Done {
        request_id: request_id.to_string(),
    };
    let client = sim.side_channel_client.clone();
    tokio::spawn(async move {
        let _ = call(&client, producer, "/sim/kv/done", &done).await;
    });
    Ok(tokens)
}

async fn call<T: Serialize>(
    client: &SideChannelClient,
    to: std::net::SocketAddr,
    path: &str,
    body: &T,
) -> Result<Value, String> {
    let req = hyper::Request::post(format!("http://{to}{path}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).expect("serializable"),
        )))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("the producer at {to} cannot be reached: {e}"))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "the producer refused: {} {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes)
            ));
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    };
    tokio::time::timeout(SIDE_CHANNEL_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("the producer at {to} did not answer in time"))?
}
