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
    match args.suite {
        Suite::Sim { quick, json } => {
            let report = runtime.block_on(mvllm_bench::sim_suite::run(
                mvllm_bench::sim_suite::Options { quick },
            ));
            match report {
                Ok(r) => {
                    print!("{}", mvllm_bench::sim_suite::render(&r));
                    if let Some(path) = json
                        && let Err(e) = std::fs::write(
                            &path,
                            serde_json::to_string_pretty(&r).unwrap_or_default(),
                        )
                    {
                        eprintln!("mvllm bench: cannot write {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mvllm bench sim: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
