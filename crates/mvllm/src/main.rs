//! The `mvllm` binary: one executable, one subcommand per job.

/// jemalloc rather than glibc's malloc. Measured on the same commit (release builds):
/// `scripts/instructions-per-request.sh` 81.6k -> 76.1k instructions per proxied request, and
/// `mvllm bench overhead --quick --no-dashboard --no-nginx --hold-streams 10000` 326 -> 319 MiB
/// with 9,900 streams open. (mimalloc, tried before, cut instructions as much but took 553 MiB
/// there.)
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod bench_cmd;
mod run_cmd;
mod sim_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mvllm",
    version,
    about = "A load balancer for fleets of vLLM servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router (reads servers.toml).
    Run(Box<run_cmd::RunArgs>),
    /// Validate a config file and probe every server it lists.
    CheckConfig(run_cmd::CheckArgs),
    /// The router in front of three simulated vLLM servers, all in this process.
    Demo(run_cmd::DemoArgs),
    /// The live dashboard of a router running elsewhere, from its status API.
    Top(run_cmd::TopArgs),
    /// Run simulated vLLM servers (no GPU needed) for tests, demos and benchmarks.
    Sim(Box<sim_cmd::SimArgs>),
    /// Run a benchmark suite.
    Bench(bench_cmd::BenchArgs),
    /// Exit 0 if a URL answers 2xx (a container HEALTHCHECK with no shell or curl in the image).
    Healthcheck(run_cmd::HealthcheckArgs),
    /// Print the version.
    Version,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run_cmd::run(*args),
        Command::CheckConfig(args) => run_cmd::check_config(args),
        Command::Demo(args) => run_cmd::demo(args),
        Command::Top(args) => run_cmd::top(args),
        Command::Sim(args) => sim_cmd::run(*args),
        Command::Bench(args) => bench_cmd::run(args),
        Command::Healthcheck(args) => run_cmd::healthcheck(args),
        Command::Version => {
            println!("mvllm {}", env!("CARGO_PKG_VERSION"));
            std::process::ExitCode::SUCCESS
        }
    }
}
