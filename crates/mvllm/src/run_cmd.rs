//! `mvllm run`, `mvllm check-config` and `mvllm demo`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use mvllm_router::Config;
use mvllm_router::config::{ServerConfig, Settings};

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
    /// Log lines to the console (the full-screen dashboard is not built yet, so this is always
    /// the case for now).
    #[arg(short, long, env = "MVLLM_CONSOLE")]
    console: bool,
    /// debug, info, warning or error (case-insensitive).
    #[arg(long, env = "MVLLM_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Show served models in the dashboard.
    #[arg(short, long, env = "MVLLM_SHOW_MODELS")]
    model: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The config file to check.
    #[arg(long, env = "MVLLM_CONFIG", default_value = "servers.toml")]
    config: PathBuf,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Port of the router; the simulated servers take any free ports.
    #[arg(short, long, env = "MVLLM_PORT", default_value_t = 8888)]
    port: u16,
    /// Address of the router.
    #[arg(long, env = "MVLLM_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, env = "MVLLM_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

/// Sets up logging; `level` takes the seed's names (WARNING) as well as tracing's.
pub fn init_logging(level: &str) -> Result<(), String> {
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
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
    let grace = config.settings.shutdown_grace_period;
    let opts = mvllm_router::Options {
        config: config.clone(),
        config_path,
        listener,
        admin_listener,
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
    let signal = shutdown_signal().await;
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
        second = shutdown_signal() => {
            tracing::warn!("{second} again: exiting now");
            ExitCode::from(130)
        }
    }
}

/// Waits for SIGINT (Ctrl-C) or, on Unix, SIGTERM; returns its name.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return "SIGINT";
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

pub fn run(args: RunArgs) -> ExitCode {
    if let Err(e) = init_logging(&args.log_level) {
        eprintln!("mvllm run: {e}");
        return ExitCode::from(2);
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
    let _ = (args.console, args.model);
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    rt.block_on(serve(
        config,
        Some(args.config),
        SocketAddr::new(args.host, args.port),
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
    println!(
        "ok   {}: {} servers, policy {}",
        args.config.display(),
        config.servers.len(),
        config.settings.routing_policy.name()
    );
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let failures = rt.block_on(async {
        let reports = mvllm_router::fleet::check::check_all(&config).await;
        let mut failures = 0;
        for r in &reports {
            println!("{}", r.render());
            failures += usize::from(!r.ok());
        }
        failures
    });
    if failures > 0 {
        println!(
            "{failures} of {} servers failed the check",
            config.servers.len()
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub fn demo(args: DemoArgs) -> ExitCode {
    if let Err(e) = init_logging(&args.log_level) {
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
            .map(|s| ServerConfig { url: s.url(), max_concurrent_requests: 64, api_key: None, models: None })
            .collect();
        for (s, speed) in sims.iter().zip([1.0, 1.0, 0.5]) {
            tracing::info!("simulated vLLM server at {} (speed {speed})", s.url());
        }
        let config = Config { servers, settings: Settings::default() };
        serve(config, None, SocketAddr::new(args.host, args.port), |url| {
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
