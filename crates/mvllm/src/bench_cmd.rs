//! `mvllm bench`: the benchmark suites (numbers for the README, never pass/fail tests).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand, Debug)]
enum Suite {
    /// Router overhead: direct against through the router, on an instant backend.
    Overhead {
        /// A seconds-long smoke run instead of the full one.
        #[arg(long)]
        quick: bool,
        /// Leave out mvllm with its dashboard on (run in a pseudo-terminal).
        #[arg(long)]
        no_dashboard: bool,
        /// Leave out nginx even when it is installed.
        #[arg(long)]
        no_nginx: bool,
        /// Another proxy to measure the same way, as NAME=COMMAND; the command is run by sh with
        /// {backend} (URL), {backend_addr} (host:port) and {port} (where to listen) filled in,
        /// and must answer GET /health. Repeatable.
        #[arg(long = "proxy")]
        proxies: Vec<String>,
        /// Concurrent streams for the holding test (default 10000, 500 with --quick; 0 skips).
        #[arg(long)]
        hold_streams: Option<usize>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Routing quality: each policy on simulated fleets at 50/80/100% of capacity.
    Routing {
        /// A seconds-long smoke run instead of the full one.
        #[arg(long)]
        quick: bool,
        /// Only this fleet: heterogeneous or homogeneous.
        #[arg(long)]
        fleet: Option<String>,
        /// Only these loads, as fractions of capacity (e.g. 0.8 or 0.5,1.0).
        #[arg(long, value_delimiter = ',')]
        load: Option<Vec<f64>>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Does the simulator match its cost model? (TTFT, ITL vs batch, prefix reuse, scale)
    Sim {
        /// A seconds-long smoke run instead of the full one.
        #[arg(long)]
        quick: bool,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

pub fn run(args: BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mvllm bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (report, render) = match args.suite {
        Suite::Overhead {
            quick,
            json,
            no_dashboard,
            no_nginx,
            proxies,
            hold_streams,
        } => {
            let extra: Result<Vec<_>, String> = proxies
                .iter()
                .map(|p| mvllm_bench::proxies::ProxyKind::parse_command(p))
                .collect();
            let opts = extra.map(|extra| mvllm_bench::overhead_suite::Options {
                quick,
                no_dashboard,
                no_nginx,
                extra,
                hold_streams: hold_streams.unwrap_or(if quick { 500 } else { 10_000 }),
            });
            (
                opts.and_then(|o| runtime.block_on(mvllm_bench::overhead_suite::run(o)))
                    .map(|r| (r, json)),
                mvllm_bench::overhead_suite::render as fn(&serde_json::Value) -> String,
            )
        }
        Suite::Sim { quick, json } => (
            runtime
                .block_on(mvllm_bench::sim_suite::run(
                    mvllm_bench::sim_suite::Options { quick },
                ))
                .map(|r| (r, json)),
            mvllm_bench::sim_suite::render as fn(&serde_json::Value) -> String,
        ),
        Suite::Routing {
            quick,
            fleet,
            load,
            json,
        } => (
            runtime
                .block_on(mvllm_bench::routing_suite::run(
                    mvllm_bench::routing_suite::Options {
                        quick,
                        fleet,
                        loads: load,
                    },
                ))
                .map(|r| (r, json)),
            mvllm_bench::routing_suite::render as fn(&serde_json::Value) -> String,
        ),
    };
    match report {
        Ok((r, json)) => {
            print!("{}", render(&r));
            if let Some(path) = json
                && let Err(e) =
                    std::fs::write(&path, serde_json::to_string_pretty(&r).unwrap_or_default())
            {
                eprintln!("mvllm bench: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mvllm bench: {e}");
            ExitCode::FAILURE
        }
    }
}
