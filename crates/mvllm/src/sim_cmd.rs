//! `mvllm sim`: N simulated vLLM servers on consecutive ports, in one process.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use mvllm_sim::engine::Profile;
use mvllm_sim::{Faults, SimConfig};

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port of the first server; the others take the next ports. 0: each server takes a free
    /// port, printed at start ("simulated vLLM server at http://...").
    #[arg(long, default_value_t = 8001)]
    port: u16,
    /// Number of independent servers (one engine each, or --data-parallel engines).
    #[arg(long, default_value_t = 1)]
    instances: u16,
    /// Served model name (repeat for aliases); the first labels /metrics.
    #[arg(long = "model", default_value = mvllm_sim::config::DEFAULT_MODEL)]
    models: Vec<String>,
    /// Relative GPU speed per server, comma-separated (one value applies to all).
    #[arg(long, value_delimiter = ',', default_value = "1.0")]
    speed: Vec<f64>,
    /// Cost profile: h100-llama8b (Llama-3.1-8B BF16 on one H100) or instant (steps take no time).
    #[arg(long, default_value = "h100-llama8b")]
    profile: String,
    /// Most sequences in one batch.
    #[arg(long, default_value_t = 256)]
    max_num_seqs: usize,
    /// Token budget of one step.
    #[arg(long, default_value_t = 8192)]
    max_num_batched_tokens: usize,
    /// KV cache capacity per engine, in tokens.
    #[arg(long, default_value_t = 400_000)]
    kv_cache_tokens: usize,
    /// Tokens per KV block, as vLLM's --block-size: 16 (GPUs); vLLM's CPU build uses 128.
    /// Prefix-cache hits, cached_tokens and KV events come in whole blocks.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Longest prompt plus output.
    #[arg(long, default_value_t = 131_072)]
    max_model_len: usize,
    /// Turn prefix caching off.
    #[arg(long)]
    no_prefix_caching: bool,
    /// Seed of the output text and of injected errors.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Require this bearer token on /v1 paths.
    #[arg(long)]
    api_key: Option<String>,
    /// LoRA adapter loaded at start (repeatable).
    #[arg(long = "lora")]
    loras: Vec<String>,
    /// Engines behind each server (metrics get one series per engine).
    #[arg(long, default_value_t = 1)]
    data_parallel: usize,
    /// Emit the older metric names (gpu_cache_usage_perc, gpu_prefix_cache_*).
    #[arg(long)]
    legacy_metrics: bool,
    /// Dimension of /v1/embeddings vectors.
    #[arg(long, default_value_t = 384)]
    embedding_dim: usize,
    /// Seconds the ports refuse connections after start (as while loading weights).
    #[arg(long, default_value_t = 0.0)]
    startup_delay: f64,
    /// Disaggregated prefill (vLLM's NixlConnector `kv_role`): producer (prefill server: keeps
    /// a prefill's KV for a decode server), consumer (decode server: reads it instead of
    /// computing the prefill) or both; comma-separated for one per instance. Unset: no KV
    /// connector (kv_transfer_params are ignored).
    #[arg(long, value_delimiter = ',')]
    kv_role: Vec<String>,
    /// Seconds a producer keeps a prefill's KV unread (renewed while a decode server reads it).
    #[arg(long, default_value_t = 30.0)]
    kv_lease: f64,
    /// KV cache bytes per token (Llama-3.1-8B BF16: 131072).
    #[arg(long, default_value_t = 131_072)]
    kv_bytes_per_token: u64,
    /// Bandwidth of the KV transfer link, in GB/s (25: 200 Gb/s RDMA).
    #[arg(long, default_value_t = 25.0)]
    kv_link_gbps: f64,
    /// Fault: accept requests and never answer.
    #[arg(long)]
    hang: bool,
    /// Fault: cut every stream after this many content chunks.
    #[arg(long)]
    die_after_chunks: Option<usize>,
    /// Fault: fraction (0..1) of inference requests answered with --error-status.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Fault: status of injected errors (429, 500 or 503).
    #[arg(long, default_value_t = 500)]
    error_status: u16,
    /// Fault: delay /metrics answers by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    metrics_delay_ms: u64,
    /// Fault: answer /metrics with text that is not Prometheus format.
    #[arg(long)]
    metrics_malformed: bool,
    /// Publish KV events (what each server's prefix cache stored and evicted) as vLLM's
    /// `--kv-events-config` does: a ZMQ PUB socket at tcp://HOST:PORT. Instance i (and
    /// data-parallel rank r) binds PORT + i x data-parallel-size + r; port 0 picks free ports.
    #[arg(long, value_name = "tcp://HOST:PORT")]
    kv_events: Option<String>,
    /// With --kv-events: the ROUTER socket that replays missed batches, offset likewise.
    #[arg(long, value_name = "tcp://HOST:PORT", requires = "kv_events")]
    kv_events_replay: Option<String>,
    /// With --kv-events: the topic of every message.
    #[arg(long, default_value = "kv-events")]
    kv_events_topic: String,
    /// A model's tokenizer directory (`tokenizer.json`, `tokenizer_config.json`, as a Hugging
    /// Face model ships them): prompts are tokenized with it, chat template and all, and answers
    /// written in its words, so that KV events carry the ids a router given the same tokenizer
    /// (`[models."NAME"] tokenizer`) computes. Default: the simulator's own tokenizer.
    #[arg(long, value_name = "DIR")]
    tokenizer: Option<std::path::PathBuf>,
}

/// `endpoint` for instance `i`: its port moved up by `i` engines' worth (port 0 stays 0).
fn kv_endpoint_for(endpoint: &str, i: usize, engines: usize) -> String {
    mvllm_sim::config::KvEvents::for_rank(endpoint, i * engines)
}

fn check_kv_endpoint(flag: &str, e: &str) -> Result<(), String> {
    let port = e
        .strip_prefix("tcp://")
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p);
    match port.map(str::parse::<u16>) {
        Some(Ok(_)) => Ok(()),
        _ => Err(format!(
            "{flag} '{e}': use tcp://HOST:PORT (port 0 picks a free one)"
        )),
    }
}

impl SimArgs {
    /// One config per instance, or a readable reason the flags do not fit together.
    pub fn configs(&self) -> Result<Vec<SimConfig>, String> {
        let profile = Profile::by_name(&self.profile).ok_or_else(|| {
            format!(
                "unknown --profile '{}': use h100-llama8b or instant",
                self.profile
            )
        })?;
        let n = usize::from(self.instances);
        if n == 0 {
            return Err("--instances must be at least 1".into());
        }
        if self.speed.len() != 1 && self.speed.len() != n {
            return Err(format!(
                "--speed has {} values for {n} instances: give one, or one per instance",
                self.speed.len()
            ));
        }
        if usize::from(self.port) + n - 1 > usize::from(u16::MAX) {
            return Err(format!(
                "ports {}..{} do not fit below 65536",
                self.port,
                usize::from(self.port) + n
            ));
        }
        if !(self.startup_delay.is_finite() && self.startup_delay >= 0.0) {
            return Err("--startup-delay must be a number of seconds >= 0".into());
        }
        if self.kv_role.len() > 1 && self.kv_role.len() != n {
            return Err(format!(
                "--kv-role has {} values for {n} instances: give one, or one per instance",
                self.kv_role.len()
            ));
        }
        if !(self.kv_lease.is_finite() && self.kv_lease > 0.0) {
            return Err("--kv-lease must be a number of seconds > 0".into());
        }
        let kv_roles = self
            .kv_role
            .iter()
            .map(|r| {
                mvllm_sim::config::KvRole::parse(r).ok_or_else(|| {
                    format!("unknown --kv-role '{r}': use producer, consumer or both")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (flag, e) in [
            ("--kv-events", &self.kv_events),
            ("--kv-events-replay", &self.kv_events_replay),
        ] {
            if let Some(e) = e {
                check_kv_endpoint(flag, e)?;
            }
        }
        let faults = Faults {
            down: false,
            hang: self.hang,
            die_after_chunks: self.die_after_chunks,
            error_rate: self.error_rate,
            error_status: self.error_status,
            metrics_delay_ms: self.metrics_delay_ms,
            metrics_malformed: self.metrics_malformed,
        };
        (0..n)
            .map(|i| {
                let port = if self.port == 0 {
                    0
                } else {
                    self.port + i as u16
                };
                let cfg = SimConfig {
                    addr: SocketAddr::new(self.host, port),
                    served_model_names: self.models.clone(),
                    max_model_len: self.max_model_len,
                    max_num_seqs: self.max_num_seqs,
                    max_num_batched_tokens: self.max_num_batched_tokens,
                    kv_cache_tokens: self.kv_cache_tokens,
                    block_size: self.block_size,
                    prefix_caching: !self.no_prefix_caching,
                    profile: profile.clone(),
                    speed: if self.speed.len() == 1 {
                        self.speed[0]
                    } else {
                        self.speed[i]
                    },
                    seed: self.seed.wrapping_add(i as u64),
                    api_key: self.api_key.clone(),
                    loras: self.loras.clone(),
                    max_loras: self.loras.len().max(4),
                    data_parallel: self.data_parallel,
                    legacy_metrics: self.legacy_metrics,
                    faults: faults.clone(),
                    startup_delay: Duration::from_secs_f64(self.startup_delay),
                    embedding_dim: self.embedding_dim,
                    kv_transfer: kv_roles.get(if kv_roles.len() == 1 { 0 } else { i }).map(
                        |&role| mvllm_sim::config::KvTransfer {
                            role,
                            lease: Duration::from_secs_f64(self.kv_lease),
                            kv_bytes_per_token: self.kv_bytes_per_token,
                            link_bytes_per_second: self.kv_link_gbps * 1e9,
                        },
                    ),
                    tokenizer: self.tokenizer.clone(),
                    kv_events: self
                        .kv_events
                        .as_ref()
                        .map(|e| mvllm_sim::config::KvEvents {
                            endpoint: kv_endpoint_for(e, i, self.data_parallel),
                            replay_endpoint: self
                                .kv_events_replay
                                .as_ref()
                                .map(|r| kv_endpoint_for(r, i, self.data_parallel)),
                            topic: self.kv_events_topic.clone(),
                        }),
                };
                cfg.validate().map(|()| cfg)
            })
            .collect()
    }
}

pub fn run(args: SimArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let configs = match args.configs() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mvllm sim: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mvllm sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut handles = Vec::new();
        for cfg in configs {
            let speed = cfg.speed;
            let kv_role = match cfg.kv_transfer.as_ref().map(|k| k.role) {
                Some(mvllm_sim::config::KvRole::Producer) => ", kv_role producer",
                Some(mvllm_sim::config::KvRole::Consumer) => ", kv_role consumer",
                Some(mvllm_sim::config::KvRole::Both) => ", kv_role both",
                None => "",
            };
            match mvllm_sim::spawn(cfg.clone()).await {
                Ok(h) => {
                    println!("simulated vLLM server at {} (model {}, speed {speed}{kv_role})", h.url(), cfg.model_name());
                    for (rank, (e, r)) in h.kv_event_endpoints().iter().enumerate() {
                        let replay = r.as_ref().map(|r| format!(", replay {r}")).unwrap_or_default();
                        println!("  KV events (rank {rank}) at {e}{replay}");
                    }
                    handles.push(h);
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    eprintln!("mvllm sim: {e}");
                    return ExitCode::from(2);
                }
                Err(e) => {
                    eprintln!("mvllm sim: cannot listen on {}: {e}", cfg.addr);
                    return ExitCode::FAILURE;
                }
            }
        }
        println!("faults: POST /sim/faults on any server, e.g. curl -d '{{\"hang\":true}}' -H 'content-type: application/json' {}/sim/faults", handles[0].url());
        let _ = tokio::signal::ctrl_c().await;
        ExitCode::SUCCESS
    })
}
