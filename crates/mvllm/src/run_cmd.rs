//! `mvllm run`, `mvllm check-config` and `mvllm demo`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use mvllm_router::Config;
use mvllm_router::config::ServerConfig;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The config file (the Python mvllm's servers.toml works unchanged).
    #[arg(long, env = "MVLLM_CONFIG", default_value = "servers.toml")]
    config: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "MVLLM_HOST", default_value = "0.0.0.0")]
    host: IpAddr,
    /// Port to listen on.
    #[arg(short, long, env = "MVLLM_PORT", default_value_t = 8888)]
    port: u16,
    /// Log lines to the console instead of the full-screen dashboard (the dashboard needs a
    /// terminal: without one, mvllm logs anyway).
    #[arg(short, long, env = "MVLLM_CONSOLE")]
    console: bool,
    /// debug, info, warning or error (case-insensitive).
    #[arg(long, env = "MVLLM_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Show each server's served models in the dashboard (a MODELS column; `m` toggles it).
    #[arg(short, long, env = "MVLLM_SHOW_MODELS")]
    model: bool,
    /// Log lines as text or as one JSON object per line (for log shippers).
    #[arg(long, env = "MVLLM_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    /// Accepted for the Python mvllm's scripts; hot reload is always on (the file is watched,
    /// SIGHUP and POST /admin/reload reload it too).
    #[arg(long)]
    reload: bool,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured only on a terminal, and never with NO_COLOR set).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, message and fields.
    Json,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The config file to check.
    #[arg(long, env = "MVLLM_CONFIG", default_value = "servers.toml")]
    config: PathBuf,
    /// Validate the file only: no name is resolved, no server contacted (for CI, or a config
    /// written for another network).
    #[arg(long)]
    offline: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Port of the router; the simulated servers take any free ports.
    #[arg(short, long, env = "MVLLM_PORT", default_value_t = 8888)]
    port: u16,
    /// Address of the router.
    #[arg(long, env = "MVLLM_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// debug, info, warning or error (case-insensitive).
    #[arg(long, env = "MVLLM_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log lines to the console instead of the full-screen dashboard.
    #[arg(short, long, env = "MVLLM_CONSOLE")]
    console: bool,
    /// Streamed chat requests per second sent through the router, so the demo has something
    /// to show (0: none).
    #[arg(long, default_value_t = 3.0)]
    traffic: f64,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    /// The router's URL (or its admin_listen address).
    #[arg(long, env = "MVLLM_URL", default_value = "http://127.0.0.1:8888")]
    url: String,
    /// The router's admin_token, if it has one.
    #[arg(long, env = "MVLLM_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// A PEM file of CA certificates to trust besides the public roots, for an https:// URL
    /// with a private CA.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Show served models.
    #[arg(short, long)]
    model: bool,
}

/// How the router shows itself: the dashboard on a terminal unless `--console`, log lines
/// otherwise (never silent).
#[derive(Debug, Clone, Copy)]
struct Display {
    dashboard: bool,
    show_models: bool,
}

impl Display {
    fn choose(console: bool, show_models: bool) -> Self {
        use std::io::IsTerminal;
        Display {
            dashboard: !console && std::io::stdout().is_terminal(),
            show_models,
        }
    }
}

type LogFilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log filter, switched off while the dashboard owns the screen (so lines are neither
/// printed over it nor formatted for nothing) and back on for the shutdown messages.
static LOG_FILTER: std::sync::OnceLock<(LogFilterHandle, String)> = std::sync::OnceLock::new();

fn set_logging(on: bool) {
    if let Some((handle, level)) = LOG_FILTER.get() {
        let filter = if on {
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level))
        } else {
            tracing_subscriber::EnvFilter::new("off")
        };
        let _ = handle.reload(filter);
    }
}

/// Sets up logging; `level` takes the seed's names (WARNING) as well as tracing's. Colour only
/// when the log goes to a terminal and `NO_COLOR` is unset, so `mvllm run --console > file`
/// and container logs hold plain text.
pub fn init_logging(level: &str, format: LogFormat) -> Result<(), String> {
    let lower = level.to_ascii_lowercase();
    let level = match lower.as_str() {
        "warning" | "warn" => "warn",
        l @ ("trace" | "debug" | "info" | "error") => l,
        other => {
            return Err(format!(
                "unknown --log-level `{other}`: use debug, info, warning or error"
            ));
        }
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG_FILTER.set((handle, level.to_string()));
    tracing_subscriber::registry()
        .with(filter)
        .with((format == LogFormat::Text).then(|| {
            use std::io::IsTerminal;
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(colour)
        }))
        .with((format == LogFormat::Json).then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
        }))
        .init();
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("mvllm: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

async fn serve(
    config: Config,
    config_path: Option<PathBuf>,
    addr: SocketAddr,
    display: Display,
    banner: impl FnOnce(&str),
) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mvllm: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin_listener = match config.settings.admin_listen {
        None => None,
        Some(a) => match tokio::net::TcpListener::bind(a).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("mvllm: cannot listen on admin_listen {a}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    // Each client stream holds two sockets (client and server side): lift the soft limit on
    // open files to the hard one, as nginx's worker_rlimit_nofile would.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < 4096 => tracing::warn!(
            "open files limited to {n}: about {} concurrent streams",
            n / 2
        ),
        Ok(n) => tracing::debug!("open files limit {n}"),
        Err(e) => tracing::warn!("cannot read the open files limit: {e}"),
    }
    let grace = config.settings.shutdown_grace_period;
    let opts = mvllm_router::Options {
        config: config.clone(),
        config_path,
        listener,
        admin_listener,
        otel: mvllm_router::otel::OtelConfig::from_env(),
    };
    let router = match mvllm_router::start_with(opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mvllm: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let healthy = router
        .fleet
        .servers()
        .iter()
        .filter(|s| s.is_healthy())
        .count();
    tracing::info!(
        "mvllm {} listening on {} ({healthy}/{} servers healthy, policy {}){}",
        env!("CARGO_PKG_VERSION"),
        router.addr,
        config.servers.len(),
        config.settings.routing_policy.name(),
        router
            .admin_addr
            .map(|a| format!(", admin API on {a}"))
            .unwrap_or_default()
    );
    banner(&router.url());
    // Listening for signals from here on: one that comes while shutdown begins is not lost.
    let mut signals = Signals::new();
    let signal = if display.dashboard {
        set_logging(false);
        let options = mvllm_dashboard::Options {
            address: router.url(),
            color: mvllm_dashboard::color_wanted(),
            show_models: display.show_models,
        };
        let (done, stop, thread) = mvllm_dashboard::spawn_local(router.state.clone(), options);
        let ended = tokio::select! {
            r = done => match r {
                Ok(Ok(())) => "quit from the dashboard",
                Ok(Err(e)) => {
                    set_logging(true);
                    tracing::error!("the dashboard failed: {e}; logging to the console");
                    signals.next().await
                }
                Err(_) => {
                    set_logging(true);
                    tracing::error!("the dashboard stopped; logging to the console");
                    signals.next().await
                }
            },
            s = signals.next() => {
                // Let the dashboard restore the terminal before the shutdown messages.
                let _ = stop.send(());
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                s
            }
        };
        set_logging(true);
        ended
    } else {
        signals.next().await
    };
    tracing::info!(
        "{signal}: no longer accepting; finishing in-flight requests (up to {grace:?}; a second signal exits at once)"
    );
    tokio::select! {
        finished = router.shutdown(grace) => {
            if finished {
                tracing::info!("all requests finished; bye");
            } else {
                tracing::warn!("grace period over with requests still in flight; exiting");
            }
            ExitCode::SUCCESS
        }
        second = signals.next() => {
            tracing::warn!("{second} again: exiting now");
            ExitCode::from(130)
        }
    }
}

/// SIGINT (Ctrl-C) and, on Unix, SIGTERM, listened for from when this is made, so that a signal
/// sent between two waits is kept for the next one (a stream made afresh for each wait would
/// miss a second signal sent while shutdown begins).
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                streams: signal(SignalKind::interrupt())
                    .ok()
                    .zip(signal(SignalKind::terminate()).ok()),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        if let Some((int, term)) = &mut self.streams {
            return tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

pub fn run(args: RunArgs) -> ExitCode {
    if let Err(e) = init_logging(&args.log_level, args.log_format) {
        eprintln!("mvllm run: {e}");
        return ExitCode::from(2);
    }
    if args.reload {
        tracing::info!(
            "--reload: hot reload is always on ({} is watched; SIGHUP and POST /admin/reload reload it too)",
            args.config.display()
        );
    }
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mvllm run: invalid config: {e}");
            return ExitCode::from(2);
        }
    };
    if config.servers.is_empty() {
        tracing::warn!(
            "{} lists no servers: every request will get 503",
            args.config.display()
        );
    }
    let display = Display::choose(args.console, args.model);
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    rt.block_on(serve(
        config,
        Some(args.config),
        SocketAddr::new(args.host, args.port),
        display,
        |_| {},
    ))
}

pub fn check_config(args: CheckArgs) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL {e}");
            return ExitCode::from(2);
        }
    };
    if config.servers.is_empty() && config.dns.is_empty() {
        println!(
            "FAIL {}: no servers: list them under [servers] (servers = [{{ url = \"http://host:8000\" }}]), or a DNS name ({{ dns = \"name:8000\" }})",
            args.config.display()
        );
        return ExitCode::from(2);
    }
    println!(
        "ok   {}: {} servers{}, policy {}",
        args.config.display(),
        config.servers.len(),
        if config.dns.is_empty() {
            String::new()
        } else {
            format!(" and {} dns names", config.dns.len())
        },
        config.settings.routing_policy.name()
    );
    if args.offline {
        return ExitCode::SUCCESS;
    }
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let (failures, checked) = rt.block_on(async {
        use mvllm_router::fleet::check;
        let dns = check::resolve_all(&config).await;
        let mut failures = 0;
        for d in &dns {
            println!("{}", d.render());
            failures += usize::from(!d.ok());
        }
        let reports = check::check_all(&config, &dns).await;
        for r in &reports {
            println!("{}", r.render());
            failures += usize::from(!r.ok());
        }
        (failures, reports.len() + dns.len())
    });
    if failures > 0 {
        println!("{failures} of {checked} checks failed");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub fn demo(args: DemoArgs) -> ExitCode {
    if let Err(e) = init_logging(&args.log_level, LogFormat::Text) {
        eprintln!("mvllm demo: {e}");
        return ExitCode::from(2);
    }
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    rt.block_on(async move {
        let mut sims = Vec::new();
        for (speed, lora) in [(1.0, Some("sql-lora")), (1.0, None), (0.5, None)] {
            let cfg = mvllm_sim::SimConfig { speed, loras: lora.into_iter().map(String::from).collect(), ..Default::default() };
            match mvllm_sim::spawn(cfg).await {
                Ok(s) => sims.push(s),
                Err(e) => {
                    eprintln!("mvllm demo: cannot start a simulated server: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let servers = sims
            .iter()
            .map(|s| ServerConfig { url: s.url(), max_concurrent_requests: 64, api_key: None, models: None, role: Default::default(), kv_events: None })
            .collect();
        for (s, speed) in sims.iter().zip([1.0, 1.0, 0.5]) {
            tracing::info!("simulated vLLM server at {} (speed {speed})", s.url());
        }
        let config = Config { servers, ..Default::default() };
        let display = Display::choose(args.console, true);
        let traffic = args.traffic;
        serve(config, None, SocketAddr::new(args.host, args.port), display, move |url| {
            if traffic > 0.0 {
                tokio::spawn(demo_traffic(url.to_string(), traffic));
            }
            println!("\nmvllm demo: a router at {url} in front of 3 simulated vLLM servers. Try:\n");
            println!(
                "  curl -sN {url}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}],\"max_tokens\":32,\"stream\":true}}'",
                mvllm_sim::config::DEFAULT_MODEL
            );
            println!("  curl -s {url}/load-stats\n  curl -s {url}/health\n\nCtrl-C stops.");
        })
        .await
    })
}

pub fn top(args: TopArgs) -> ExitCode {
    let source =
        match mvllm_dashboard::Source::remote(&args.url, args.admin_token, args.ca_file.as_deref())
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("mvllm top: {e}");
                return ExitCode::from(2);
            }
        };
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        eprintln!(
            "mvllm top: needs a terminal (for a script, read {}/admin/status)",
            args.url.trim_end_matches('/')
        );
        return ExitCode::from(2);
    }
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let options = mvllm_dashboard::Options {
        address: args.url.clone(),
        color: mvllm_dashboard::color_wanted(),
        show_models: args.model,
    };
    match rt.block_on(mvllm_dashboard::run(
        source,
        options,
        std::future::pending(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mvllm top: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Poisson arrivals of streamed chat requests of 16 to 256 tokens at `rate` per second, forever.
async fn demo_traffic(url: String, rate: f64) {
    use rand::Rng;
    let client = mvllm_bench::client::http_client();
    let endpoint = format!("{url}/v1/chat/completions");
    loop {
        let (wait, tokens) = {
            let mut rng = rand::rng();
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            (-u.ln() / rate, rng.random_range(16..=256))
        };
        tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
        let body = serde_json::json!({
            "model": mvllm_sim::config::DEFAULT_MODEL,
            "messages": [{"role": "user", "content": "Tell me about load balancing."}],
            "max_tokens": tokens,
            "stream": true,
        })
        .to_string();
        let client = client.clone();
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _ = mvllm_bench::client::stream_post(&client, &endpoint, body).await;
        });
    }
}

#[derive(Args, Debug)]
pub struct HealthcheckArgs {
    /// The URL to ask [default: the router's liveness probe, http://127.0.0.1:$MVLLM_PORT/livez,
    /// port 8888 when MVLLM_PORT is unset].
    url: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
}

/// `GET url`: exit 0 on a 2xx answer, 1 otherwise, saying why on stderr.
pub fn healthcheck(args: HealthcheckArgs) -> ExitCode {
    use http_body_util::Full;
    let timeout = std::time::Duration::from_secs_f64(args.timeout.clamp(0.1, 300.0));
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let url = args.url.unwrap_or_else(|| {
        let port = std::env::var("MVLLM_PORT").unwrap_or_else(|_| "8888".into());
        format!("http://127.0.0.1:{port}/livez")
    });
    let request = match hyper::Request::get(&url).body(Full::new(bytes::Bytes::new())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mvllm healthcheck: `{url}` is not a URL: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async {
        let client = mvllm_router::upstream::client(timeout, None, None);
        match tokio::time::timeout(timeout, client.request(request)).await {
            Ok(Ok(resp)) if resp.status().is_success() => ExitCode::SUCCESS,
            Ok(Ok(resp)) => {
                eprintln!("mvllm healthcheck: {} answered {}", url, resp.status());
                ExitCode::FAILURE
            }
            Ok(Err(e)) => {
                eprintln!(
                    "mvllm healthcheck: {}: {}",
                    url,
                    mvllm_router::upstream::describe(&e)
                );
                ExitCode::FAILURE
            }
            Err(_) => {
                eprintln!("mvllm healthcheck: {}: no answer within {timeout:?}", url);
                ExitCode::FAILURE
            }
        }
    })
}
