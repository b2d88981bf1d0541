//! What every handler of one simulated server shares: its config, engines, faults, adapters,
//! stored responses and KV leases.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use tokio::sync::watch;

use std::sync::Arc;

use mvllm_tokenizer::ModelTokenizer;

use super::kv_lease::{Leases, SideChannelClient};
use super::response_store::Store;
use crate::config::SimConfig;
use crate::engine::EngineHandle;
use crate::faults::Faults;
use crate::metrics::{EngineMetrics, Exposition};
use crate::output_words::OutputWords;

/// State shared by every handler of one simulated server.
pub(crate) struct Sim {
    pub cfg: SimConfig,
    pub engines: Vec<EngineHandle>,
    pub faults: watch::Sender<Faults>,
    /// Loaded LoRA adapters: (name, path).
    pub loras: Mutex<Vec<(String, String)>>,
    pub rng: Mutex<StdRng>,
    /// Stored `/v1/responses` results.
    pub responses: Mutex<Store>,
    /// Generation requests being handled (vLLM's `/load`).
    pub server_load: AtomicUsize,
    pub created: u64,
    /// The W3C `traceparent` of the last generation request (vLLM continues the trace from it
    /// when started with `--otlp-traces-endpoint`).
    pub last_traceparent: Mutex<Option<String>>,
    /// The last generation request's `X-Request-Id` and body, for tests to see what a router
    /// sent.
    pub last_request: Mutex<Option<(Option<String>, bytes::Bytes)>>,
    /// Each engine's id in `kv_transfer_params` (vLLM's `engine_id`, unique per engine).
    pub engine_ids: Vec<String>,
    /// Each engine's KV-event endpoints (PUB, replay), ports resolved.
    pub kv_event_endpoints: Vec<(String, Option<String>)>,
    /// KV blocks held for decode servers (`--kv-role producer|both`).
    pub leases: Leases,
    /// Where decode servers reach this one for KV: its own address (`remote_host`/`remote_port`).
    pub side_channel: SocketAddr,
    pub side_channel_client: SideChannelClient,
    /// The model's own tokenizer (`--tokenizer`); `None`: the built-in one.
    pub tokenizer: Option<Arc<ModelTokenizer>>,
    /// The words answers are written in, one token each.
    pub output: Arc<OutputWords>,
    /// `system_fingerprint` of every answer: `vllm-<version>-<8 hex digits>`, the digits a hash
    /// of what this server serves, as vLLM hashes its configuration.
    pub fingerprint: Arc<str>,
}

impl Sim {
    /// The engine a new request goes to: the least loaded (vLLM's data-parallel balancing).
    pub fn pick_engine(&self) -> &EngineHandle {
        &self.engines[self.pick_engine_index()]
    }

    /// The index of [`Sim::pick_engine`]'s choice.
    pub fn pick_engine_index(&self) -> usize {
        (0..self.engines.len())
            .min_by_key(|&i| self.engines[i].load())
            .expect("at least one engine")
    }

    /// The LoRA adapter named `model`, if loaded.
    pub fn lora_index(&self, model: &str) -> Option<usize> {
        self.loras.lock().iter().position(|(n, _)| n == model)
    }

    pub fn render_metrics(&self) -> String {
        let engines: Vec<EngineMetrics> = self.engines.iter().map(EngineHandle::metrics).collect();
        Exposition {
            model_name: self.cfg.model_name(),
            engines: &engines,
            legacy: self.cfg.legacy_metrics,
            max_loras: self.cfg.max_loras,
            lora_enabled: !self.loras.lock().is_empty(),
            block_size: self.cfg.block_size,
            max_model_len: self.cfg.max_model_len,
            prefix_caching: self.cfg.prefix_caching,
            kv_connector: self.cfg.kv_transfer.is_some(),
        }
        .render()
    }
}
