//! `mvllm-router`: the router as a library, so tests and the `mvllm` binary start it the same
//! way. [`start`] binds, probes the fleet once, starts the background loops and serves;
//! [`RouterHandle::shutdown`] drains it.

pub mod admission;
pub mod api;
pub mod app;
pub mod config;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod otel;
pub mod paths;
pub mod prometheus_text;
pub mod proxy;
pub mod reload;
pub mod resolver;
pub mod routing;
pub mod server;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod tls;
/// A model's own tokenizer and chat template (shared with the simulator).
pub use mvllm_tokenizer as tokenizer;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError, Settings};
pub use fleet::Fleet;
pub use reload::Reloader;

/// How to start a router.
pub struct Options {
    pub config: Config,
    /// The file the config came from: watched and reloaded.
    pub config_path: Option<PathBuf>,
    pub listener: TcpListener,
    /// A listener for the admin API alone (`admin_listen`); `None` mounts it on `listener`.
    pub admin_listener: Option<TcpListener>,
    /// Where to export request spans (OpenTelemetry); `None`: no tracing.
    pub otel: Option<otel::OtelConfig>,
}

use server::ServeTask;

/// A running router. Dropping it stops it at once; [`RouterHandle::shutdown`] drains it.
pub struct RouterHandle {
    pub addr: SocketAddr,
    /// Whether the main listener speaks TLS.
    pub tls: bool,
    pub admin_addr: Option<SocketAddr>,
    pub fleet: Arc<Fleet>,
    pub reloader: Arc<Reloader>,
    /// What serves requests: the fleet, metrics, access, the HTTP client.
    pub state: Arc<state::AppState>,
    stop_accepting: CancellationToken,
    background: CancellationToken,
    tasks: Vec<ServeTask>,
}

impl RouterHandle {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Graceful shutdown: report not ready, stop accepting, let in-flight requests and streams
    /// finish for up to `grace`. Returns whether everything finished in time.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        self.state.accepting.store(false, Ordering::Relaxed);
        self.stop_accepting.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        let finished = tokio::time::timeout(grace, futures_util::future::join_all(tasks))
            .await
            .is_ok();
        self.background.cancel();
        self.flush_traces().await;
        if let Some(otel) = self.state.otel.clone() {
            let _ = tokio::task::spawn_blocking(move || otel.shutdown()).await;
        }
        finished
    }

    /// Sends the spans batched so far (a no-op without tracing).
    pub async fn flush_traces(&self) {
        if let Some(otel) = self.state.otel.clone() {
            let _ = tokio::task::spawn_blocking(move || otel.flush()).await;
        }
    }
}

impl Drop for RouterHandle {
    fn drop(&mut self) {
        self.stop_accepting.cancel();
        self.background.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a router on `listener` with `config` (no file watching, admin API on the same port).
pub async fn start(config: &Config, listener: TcpListener) -> std::io::Result<RouterHandle> {
    start_with(Options {
        config: config.clone(),
        config_path: None,
        listener,
        admin_listener: None,
        otel: None,
    })
    .await
}

/// Config mistakes that are not errors: one server listed under two names, the router itself.
pub fn warn_about_servers(config: &Config, listening: SocketAddr) {
    for (a, b) in config::aliases::aliases(&config.servers) {
        tracing::warn!("{a} and {b} are the same server under two names: it gets twice its share");
    }
    for s in &config.servers {
        if config::aliases::is_self(&s.url, listening) {
            tracing::warn!(
                "{} is this router's own address: requests sent there come back (and get 508 Loop Detected)",
                s.url
            );
        }
    }
}

/// Starts a router: one round of probes first (health, models, metrics), so the first request
/// already knows the fleet; then the background loops, the config watcher and the listeners.
pub async fn start_with(opts: Options) -> std::io::Result<RouterHandle> {
    let addr = opts.listener.local_addr()?;
    if let Some(why) = opts.config.settings.insecure_admin() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    }
    warn_about_servers(&opts.config, addr);
    let settings = &opts.config.settings;
    let client = upstream::client(
        settings.connect_timeout,
        settings.tls_ca_file.as_deref(),
        settings.dns_server,
    );
    let telemetry = Arc::new(telemetry::Telemetry::new());
    let admission = admission::Admission::new(settings);
    let fleet = Fleet::new(
        &opts.config,
        client.clone(),
        telemetry.clone(),
        admission.wait_queue.clone(),
    );
    // `dns` entries are resolved once before serving, like the listed servers are probed.
    if !opts.config.dns.is_empty() {
        match resolver::resolver(settings.dns_server) {
            Ok(r) => fleet::dns::refresh(&fleet, &r, &mut Default::default()).await,
            Err(e) => tracing::error!("dns discovery: {e}"),
        }
    }
    fleet.probe_all().await;
    let background = CancellationToken::new();
    fleet.spawn_loops(background.clone());
    let reloader = Reloader::new(
        opts.config_path,
        fleet.clone(),
        telemetry.clone(),
        admission.access.clone(),
        admission.tenants.clone(),
    );
    reloader.spawn_watch(background.clone());
    let otel = match &opts.otel {
        Some(c) => Some(Arc::new(
            otel::Otel::start(c, client.clone()).map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    let instance = format!("mvllm-{:016x}", rand::random::<u64>());
    let state = Arc::new(state::AppState {
        fleet: fleet.clone(),
        otel,
        client,
        telemetry,
        admission,
        reloader: reloader.clone(),
        accepting: AtomicBool::new(true),
        via: axum::http::HeaderValue::from_str(&format!("1.1 {instance}"))
            .expect("a hex token is a header value"),
        instance,
    });
    let stop_accepting = CancellationToken::new();
    let mut tasks = Vec::new();
    let s = &opts.config.settings;
    let limits = server::Limits {
        max_connections: s.max_connections,
        header_read_timeout: s.header_read_timeout,
        max_header_bytes: s.max_header_bytes,
    };
    let tls = match (&s.tls_cert_file, &s.tls_key_file) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            tls::server_config(cert, key).map_err(std::io::Error::other)?,
        ))),
        _ => None,
    };
    let tls_on = tls.is_some();
    match opts.config.settings.auth.keys.len() {
        0 => tracing::warn!(
            "no client API keys: anyone who reaches this port can use the servers ([auth] keys in the config)"
        ),
        n => tracing::info!("{n} client API keys"),
    }
    let admin_addr = match opts.admin_listener {
        Some(l) => {
            let a = l.local_addr()?;
            tasks.push(server::serve(
                l,
                app::admin_app(state.clone()),
                None,
                stop_accepting.clone(),
                limits,
                None,
            ));
            Some(a)
        }
        None => {
            if opts.config.settings.admin_token.is_none() {
                tracing::warn!(
                    "the admin API is open on the main port: set admin_token, or admin_listen to a private address"
                );
            }
            None
        }
    };
    tasks.push(server::serve(
        opts.listener,
        app::app(state.clone(), admin_addr.is_none()),
        Some(state.clone()),
        stop_accepting.clone(),
        limits,
        tls,
    ));
    Ok(RouterHandle {
        addr,
        tls: tls_on,
        admin_addr,
        fleet,
        reloader,
        state,
        stop_accepting,
        background,
        tasks,
    })
}
