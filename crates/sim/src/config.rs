//! What one simulated server is: its models, its engine's limits, its speed and its faults.

use std::net::SocketAddr;
use std::time::Duration;

use crate::engine::Profile;
use crate::engine::blocks::{BLOCK_SIZES, DEFAULT_BLOCK_SIZE};
use crate::faults::Faults;

pub const DEFAULT_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// The part a server plays in disaggregated prefill (vLLM's `kv_role` of `--kv-transfer-config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvRole {
    /// Computes prefills and holds their KV for decode servers to read (`kv_producer`).
    Producer,
    /// Reads KV computed elsewhere instead of computing the prefill (`kv_consumer`).
    Consumer,
    /// Either, per request (`kv_both`, what vLLM's NixlConnector runs as).
    Both,
}

impl KvRole {
    /// `producer`, `consumer`, `both`, or vLLM's spelling (`kv_producer`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        match s.strip_prefix("kv_").unwrap_or(s) {
            "producer" => Some(Self::Producer),
            "consumer" => Some(Self::Consumer),
            "both" => Some(Self::Both),
            _ => None,
        }
    }

    pub fn produces(self) -> bool {
        self != Self::Consumer
    }

    pub fn consumes(self) -> bool {
        self != Self::Producer
    }
}

/// A KV connector (vLLM's NixlConnector): how this server takes part in disaggregated prefill.
#[derive(Debug, Clone, PartialEq)]
pub struct KvTransfer {
    pub role: KvRole,
    /// How long a producer keeps a request's blocks for a decode server to read; renewed when
    /// one starts reading (vLLM: 30 s).
    pub lease: Duration,
    /// KV cache bytes per token: Llama-3.1-8B in BF16 holds 32 layers x 8 KV heads x 128
    /// dimensions x 2 (K and V) x 2 bytes = 128 KiB.
    pub kv_bytes_per_token: u64,
    /// Bandwidth of the link KV crosses, bytes per second (25 GB/s: 200 Gb/s RDMA).
    pub link_bytes_per_second: f64,
}

impl KvTransfer {
    pub fn new(role: KvRole) -> Self {
        KvTransfer {
            role,
            lease: Duration::from_secs(30),
            kv_bytes_per_token: 131_072,
            link_bytes_per_second: 25e9,
        }
    }

    /// How long moving `tokens` tokens of KV takes.
    pub fn transfer_time(&self, tokens: usize) -> Duration {
        Duration::from_secs_f64(
            tokens as f64 * self.kv_bytes_per_token as f64 / self.link_bytes_per_second,
        )
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where to listen; port 0 picks a free port (see [`crate::SimHandle::addr`]).
    pub addr: SocketAddr,
    /// Served model names; the first is the one `/metrics` labels and a request without
    /// `model` gets. vLLM's `--served-model-name`.
    pub served_model_names: Vec<String>,
    pub max_model_len: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    /// KV cache capacity of each engine, in tokens (rounded down to whole blocks).
    pub kv_cache_tokens: usize,
    /// Tokens per KV block (`--block-size`): 16, vLLM's default on GPUs; its CPU build uses 128.
    /// Prefix-cache hits, `cached_tokens` and KV events come in whole blocks.
    pub block_size: usize,
    pub prefix_caching: bool,
    pub profile: Profile,
    /// Relative GPU speed: 0.5 takes twice as long per step.
    pub speed: f64,
    /// Seed of the output text (and of injected errors).
    pub seed: u64,
    /// Bearer token required on `/v1` paths.
    pub api_key: Option<String>,
    /// LoRA adapters loaded at start.
    pub loras: Vec<String>,
    pub max_loras: usize,
    /// Engines behind this one server (vLLM's `--data-parallel-size`).
    pub data_parallel: usize,
    /// Older metric names (`gpu_cache_usage_perc`, `gpu_prefix_cache_*`).
    pub legacy_metrics: bool,
    pub faults: Faults,
    /// Time the port refuses connections after start, as vLLM while it loads weights.
    pub startup_delay: Duration,
    pub embedding_dim: usize,
    /// A KV connector for disaggregated prefill (`--kv-role`); `None`: `kv_transfer_params`
    /// are ignored, as by a vLLM started without `--kv-transfer-config`.
    pub kv_transfer: Option<KvTransfer>,
    /// Publish KV events as vLLM's `--kv-events-config` does; `None`: no events.
    pub kv_events: Option<KvEvents>,
    /// A model's tokenizer directory (`tokenizer.json`, `tokenizer_config.json`): prompts are
    /// tokenized with it (chat template and all) and answers written in its words, so that KV
    /// events carry the ids a router with the same tokenizer computes. `None`: the built-in
    /// tokenizer.
    pub tokenizer: Option<std::path::PathBuf>,
}

/// Where KV events go (vLLM's `--kv-events-config` with `"publisher": "zmq"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEvents {
    /// The PUB socket, `tcp://host:port` (port 0: a free one). Engine (data-parallel rank) `r`
    /// binds `port + r`, as vLLM offsets its endpoint by rank.
    pub endpoint: String,
    /// The ROUTER socket answering replay requests, offset by rank likewise.
    pub replay_endpoint: Option<String>,
    pub topic: String,
}

impl KvEvents {
    /// `endpoint` with its port moved up by `rank` (port 0 stays 0).
    pub fn for_rank(endpoint: &str, rank: usize) -> String {
        match endpoint.rsplit_once(':') {
            Some((base, port)) => match port.parse::<u16>() {
                Ok(p) if p != 0 && rank > 0 => format!("{base}:{}", p as usize + rank),
                _ => endpoint.to_string(),
            },
            None => endpoint.to_string(),
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            served_model_names: vec![DEFAULT_MODEL.to_string()],
            max_model_len: 131_072,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            kv_cache_tokens: 400_000,
            block_size: DEFAULT_BLOCK_SIZE,
            prefix_caching: true,
            profile: Profile::h100_llama8b(),
            speed: 1.0,
            seed: 0,
            api_key: None,
            loras: Vec::new(),
            max_loras: 4,
            data_parallel: 1,
            legacy_metrics: false,
            faults: Faults::default(),
            startup_delay: Duration::ZERO,
            embedding_dim: 384,
            kv_transfer: None,
            kv_events: None,
            tokenizer: None,
        }
    }
}

impl SimConfig {
    /// The configuration with every step free: for measuring what sits in front of it.
    pub fn instant() -> Self {
        SimConfig {
            profile: Profile::instant(),
            ..Default::default()
        }
    }

    pub fn model_name(&self) -> &str {
        &self.served_model_names[0]
    }

    pub fn num_blocks(&self) -> usize {
        self.kv_cache_tokens / self.block_size
    }

    /// Refuses settings vLLM would refuse at start-up.
    pub fn validate(&self) -> Result<(), String> {
        if self.served_model_names.is_empty()
            || self.served_model_names.iter().any(|m| m.is_empty())
        {
            return Err("at least one non-empty model name is required".into());
        }
        if let Some(dir) = &self.tokenizer
            && !dir.join("tokenizer.json").is_file()
        {
            return Err(format!(
                "tokenizer {}: no tokenizer.json in it (give the model's directory)",
                dir.display()
            ));
        }
        if self.max_num_seqs == 0 || self.max_num_batched_tokens == 0 || self.data_parallel == 0 {
            return Err(
                "max_num_seqs, max_num_batched_tokens and data_parallel must be at least 1".into(),
            );
        }
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(format!(
                "speed must be a positive number, got {}",
                self.speed
            ));
        }
        if self.max_model_len < 2 {
            return Err("max_model_len must be at least 2".into());
        }
        if !BLOCK_SIZES.contains(&self.block_size) {
            return Err(format!(
                "block size {} is not one vLLM accepts (one of {BLOCK_SIZES:?})",
                self.block_size
            ));
        }
        if self.num_blocks() * self.block_size < self.max_model_len {
            return Err(format!(
                "the KV cache ({} tokens) cannot hold one sequence of max_model_len {} tokens; \
                 lower max_model_len or raise kv_cache_tokens",
                self.num_blocks() * self.block_size,
                self.max_model_len
            ));
        }
        if let Some(kv) = &self.kv_transfer
            && !(kv.link_bytes_per_second.is_finite() && kv.link_bytes_per_second > 0.0)
        {
            return Err(format!(
                "the KV link bandwidth must be a positive number, got {}",
                kv.link_bytes_per_second
            ));
        }
        self.faults.validate()
    }
}
