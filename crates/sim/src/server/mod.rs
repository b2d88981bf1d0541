//! The simulated server's HTTP side: shared state ([`Sim`]), the in-process handle
//! ([`SimHandle`]) and [`spawn`].

mod body;
mod errors;
mod generate;
mod generation;
mod kv_lease;
mod kv_transfer;
mod listener;
mod misc;
mod response_store;
mod responses;
mod routes;
mod state;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::SimConfig;
use crate::engine::{EngineHandle, SchedulerConfig};
use crate::faults::Faults;
use crate::metrics::EngineMetrics;

pub use errors::ApiError;
use state::Sim;

/// A simulated server running in this process. Dropping it stops the server.
pub struct SimHandle {
    sim: Arc<Sim>,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl SimHandle {
    /// The bound address (the real port when the config asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &SimConfig {
        &self.sim.cfg
    }

    pub fn faults(&self) -> Faults {
        self.sim.faults.borrow().clone()
    }

    /// Replaces the faults; `down` takes effect at once (the port stops listening and in-flight
    /// requests are cut), clearing it listens again.
    pub fn set_faults(&self, faults: Faults) {
        self.sim.faults.send_replace(faults);
    }

    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        self.sim.faults.send_modify(f);
    }

    /// Each engine's current figures (one per data-parallel rank).
    pub fn engine_metrics(&self) -> Vec<EngineMetrics> {
        self.sim.engines.iter().map(EngineHandle::metrics).collect()
    }

    /// Requests in the engines (waiting or running), summed over ranks.
    pub fn requests_in_engine(&self) -> usize {
        self.sim.engines.iter().map(EngineHandle::load).sum()
    }

    /// The `traceparent` header of the last generation request, if it had one.
    pub fn last_traceparent(&self) -> Option<String> {
        self.sim.last_traceparent.lock().clone()
    }

    /// The last chat or completion request: its `X-Request-Id` and its body as JSON.
    pub fn last_request(&self) -> Option<(Option<String>, serde_json::Value)> {
        let (id, body) = self.sim.last_request.lock().clone()?;
        Some((id, serde_json::from_slice(&body).unwrap_or_default()))
    }

    /// Generation requests the HTTP side is handling.
    pub fn server_load(&self) -> usize {
        self.sim.server_load.load(Ordering::Relaxed)
    }

    /// Each engine's KV-event PUB endpoint and replay endpoint, ports resolved (empty without
    /// `kv_events`).
    pub fn kv_event_endpoints(&self) -> &[(String, Option<String>)] {
        &self.sim.kv_event_endpoints
    }

    /// Blocks in the prefix caches of all engines, as of their last step.
    pub fn cached_blocks(&self) -> usize {
        self.sim
            .engines
            .iter()
            .map(|e| e.metrics().cached_blocks)
            .sum()
    }

    /// Stops listening and cuts every connection.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a simulated server on the current tokio runtime. The port is bound before this
/// returns (so [`SimHandle::addr`] is final), but it only accepts connections after
/// `startup_delay`, and not while the `down` fault is set.
pub async fn spawn(cfg: SimConfig) -> std::io::Result<SimHandle> {
    cfg.validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = listener::bind_socket(cfg.addr)?;
    let addr = socket.local_addr()?;
    let sched = SchedulerConfig {
        max_num_seqs: cfg.max_num_seqs,
        max_num_batched_tokens: cfg.max_num_batched_tokens,
        num_blocks: cfg.num_blocks(),
        block_size: cfg.block_size,
        prefix_caching: cfg.prefix_caching,
        kv_events: false,
        max_model_len: cfg.max_model_len,
    };
    let mut engines = Vec::with_capacity(cfg.data_parallel);
    let mut kv_event_endpoints = Vec::new();
    for rank in 0..cfg.data_parallel {
        let publisher = match &cfg.kv_events {
            Some(k) => {
                let mut p = mvllm_kv_events::PublisherConfig::new(
                    crate::config::KvEvents::for_rank(&k.endpoint, rank),
                );
                p.replay_endpoint = k
                    .replay_endpoint
                    .as_deref()
                    .map(|r| crate::config::KvEvents::for_rank(r, rank));
                p.topic = k.topic.clone();
                p.data_parallel_rank = rank as i64;
                let p = mvllm_kv_events::Publisher::bind(p).await.map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::AddrInUse, e.to_string())
                })?;
                kv_event_endpoints.push((p.endpoint.clone(), p.replay_endpoint.clone()));
                Some(p)
            }
            None => None,
        };
        engines.push(EngineHandle::spawn_publishing(
            sched.clone(),
            cfg.profile.clone(),
            cfg.speed,
            publisher,
        ));
    }
    let loras = cfg
        .loras
        .iter()
        .map(|n| (n.clone(), format!("/sim/loras/{n}")))
        .collect();
    let (faults, _) = watch::channel(cfg.faults.clone());
    let shutdown = CancellationToken::new();
    let engine_ids = (0..cfg.data_parallel)
        .map(|_| format!("{:032x}", rand::random::<u128>()))
        .collect();
    let side_channel = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let (tokenizer, output) = match &cfg.tokenizer {
        Some(dir) => {
            let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
            let t =
                mvllm_tokenizer::ModelTokenizer::load(dir).map_err(|e| invalid(e.to_string()))?;
            let words = crate::output_words::OutputWords::from_tokenizer(&t)
                .map_err(|e| invalid(format!("{}: {e}", dir.display())))?;
            (Some(Arc::new(t)), Arc::new(words))
        }
        None => (None, Arc::new(crate::output_words::OutputWords::builtin())),
    };
    let fingerprint = format!(
        "vllm-{}-{:08x}",
        misc::VLLM_VERSION,
        xxhash_rust::xxh3::xxh3_64(format!("{:?}{}", cfg.served_model_names, cfg.seed).as_bytes())
            as u32
    );
    let sim = Arc::new(Sim {
        fingerprint: fingerprint.into(),
        tokenizer,
        output,
        kv_event_endpoints,
        engine_ids,
        leases: Default::default(),
        side_channel,
        side_channel_client: kv_lease::side_channel_client(),
        rng: Mutex::new(StdRng::seed_from_u64(cfg.seed)),
        created: crate::metrics::unix_now() as u64,
        last_traceparent: Mutex::new(None),
        last_request: Mutex::new(None),
        cfg,
        engines,
        faults,
        loras: Mutex::new(loras),
        server_load: AtomicUsize::new(0),
        responses: Mutex::new(Default::default()),
    });
    let app = routes::app(sim.clone());
    let port = listener::Port::open(socket, &sim.cfg)?;
    tokio::spawn(listener::serve(
        sim.clone(),
        addr,
        port,
        app,
        shutdown.clone(),
    ));
    Ok(SimHandle {
        sim,
        addr,
        shutdown,
    })
}
