//! The data of a KV transfer between a prefill (producer) and a decode (consumer) server: what a
//! request's `kv_transfer_params` ask, the blocks a producer holds for decode servers, and the
//! client of the side channel (see [`super::kv_transfer`] for the protocol).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::time::Instant;

use crate::engine::scheduler::ReqId;

/// The side channel's time limit for one call (a producer that is gone must not hold the
/// decode leg long: it then computes the prefill itself).
pub(crate) const SIDE_CHANNEL_TIMEOUT: Duration = Duration::from_secs(2);

/// Blocks a producer holds for decode servers, by request id.
#[derive(Default)]
pub(crate) struct Leases {
    pub(crate) held: Mutex<HashMap<String, Lease>>,
}

pub(crate) struct Lease {
    pub(crate) engine: usize,
    pub(crate) request: ReqId,
    pub(crate) blocks: Vec<u32>,
    pub(crate) tokens: usize,
    pub(crate) expires: Instant,
}

/// What a request's `kv_transfer_params` ask, read leniently: vLLM takes them as a free-form
/// object and ignores what it does not use.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct KvParams {
    pub do_remote_decode: bool,
    pub do_remote_prefill: bool,
    pub remote_engine_id: Option<String>,
    pub remote_block_ids: Option<Vec<u32>>,
    pub remote_host: Option<String>,
    pub remote_port: Option<u16>,
}

impl KvParams {
    pub fn read(v: Option<&Value>) -> KvParams {
        let Some(v) = v else {
            return KvParams::default();
        };
        let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        KvParams {
            do_remote_decode: flag("do_remote_decode"),
            do_remote_prefill: flag("do_remote_prefill"),
            remote_engine_id: v
                .get("remote_engine_id")
                .and_then(Value::as_str)
                .map(str::to_string),
            remote_block_ids: v.get("remote_block_ids").and_then(|b| {
                b.as_array()?
                    .iter()
                    .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
                    .collect()
            }),
            remote_host: v
                .get("remote_host")
                .and_then(Value::as_str)
                .map(str::to_string),
            remote_port: v
                .get("remote_port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok()),
        }
    }
}

pub(crate) type SideChannelClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub(crate) fn side_channel_client() -> SideChannelClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}
