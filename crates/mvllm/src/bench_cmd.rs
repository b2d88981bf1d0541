//! `mvllm bench`: the load generator and the benchmark suites (numbers for the README, never
//! pass/fail tests).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use mvllm_bench::{
    disagg_suite, load, overhead_suite, plot, proxies, routing_suite, sim_suite, soak,
};
use serde_json::Value;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    suite: Suite,
}

/// Where a report goes besides the terminal.
#[derive(Args, Debug, Default)]
struct Output {
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also draw the report as an SVG plot here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Suite {
    /// Load an OpenAI-compatible endpoint (mvllm, another router, a vLLM server) with a workload.
    Load {
        /// The endpoint's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8888")]
        url: String,
        /// sharegpt-like, chat-sessions or prefix-heavy.
        #[arg(long, default_value = "sharegpt-like")]
        workload: String,
        /// Open loop: sessions started per second (Poisson).
        #[arg(long, conflicts_with = "concurrency")]
        rate: Option<f64>,
        /// Closed loop: users, each starting a new session when the last ends (default 8).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Seconds during which sessions start.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        /// Ask for whole answers instead of streams.
        #[arg(long)]
        no_stream: bool,
        /// The model to ask for (default: the endpoint's first model).
        #[arg(long)]
        model: Option<String>,
        /// Mean seconds of think time between the turns of a chat session.
        #[arg(long, default_value_t = 2.0)]
        think_time: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// An API key sent as `Authorization: Bearer` (a router with `[auth]` keys).
        #[arg(long, env = "MVLLM_API_KEY")]
        api_key: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Router overhead: direct against through each proxy, on an instant backend.
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
        /// Pinned mode, as the peers overhead kit: each proxy alone on the first CPU (taskset),
        /// this load generator and the backend on the others; 64 connections then saturate the
        /// router's core. Needs two CPUs and taskset.
        #[arg(long)]
        pin: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Routing quality: each policy on simulated fleets at 50/80/100% of capacity.
    Routing {
        /// A seconds-long smoke run instead of the full one.
        #[arg(long)]
        quick: bool,
        /// Only this fleet: heterogeneous (speeds 1,1,0.5,0.25), homogeneous (4 x 1) or mixed
        /// (1,1,0.5,0.5; with homogeneous, the default for chat-sessions).
        #[arg(long)]
        fleet: Option<String>,
        /// Only these loads, as fractions of capacity (e.g. 0.8 or 0.5,1.0).
        #[arg(long, value_delimiter = ',')]
        load: Option<Vec<f64>>,
        /// Compare the default policy without and with a router wait queue of this size.
        #[arg(long)]
        queue: Option<usize>,
        /// A load-generator workload (sharegpt-like, chat-sessions, prefix-heavy) instead of the
        /// suite's streamed completions.
        #[arg(long)]
        workload: Option<String>,
        /// What to compare: policies (adaptive, cache_aware, ...), POLICY-x2 (two router
        /// replicas, the client alternating), POLICY-exact (with KV events), oracle
        /// (client-side affinity, no router), oracle-warm (the oracle with every shared prefix
        /// cached on every server first: the floor on servers of one speed), vllm-router, sglang-router (skipped when not installed).
        #[arg(long, value_delimiter = ',')]
        compare: Option<Vec<String>>,
        /// The servers' speeds instead of the fleet's (e.g. 1,1,0.5,0.5).
        #[arg(long)]
        speeds: Option<String>,
        /// Each server's KV cache, in tokens (small: eviction matters).
        #[arg(long)]
        kv_cache_tokens: Option<usize>,
        /// Mean think time between a chat conversation's turns, seconds (default 3).
        #[arg(long)]
        think_time: Option<f64>,
        /// Seconds of arrivals per cell (default 20; 60 for chat-sessions; 2 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
        /// Other clients: requests per second to each server straight, not through the router,
        /// each an unrelated 1,500-token prompt (cache the router does not know about).
        #[arg(long)]
        other_clients: Option<f64>,
        #[command(flatten)]
        output: Output,
    },
    /// Prefill/decode disaggregation: four simulated GPUs co-located vs split into prefill and
    /// decode servers, on long prompts mixed with long generations (TTFT and ITL p50/p99).
    Disagg {
        /// A seconds-long smoke run instead of the full one.
        #[arg(long)]
        quick: bool,
        /// Requests per second to the fleet.
        #[arg(long, default_value_t = 8.0)]
        rate: f64,
        /// Seconds of arrivals per layout (default 60, 10 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A bare proxy on mvllm's own HTTP stack (hyper), with no routing, metrics or limits: the
    /// least a router on hyper costs. Measure it beside mvllm with `overhead --proxy`.
    HyperFloor {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Where to listen (0: any free port, printed at start).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// A server's base URL, e.g. http://127.0.0.1:8001; requests go to each in turn.
        /// Repeatable, or comma-separated.
        #[arg(long, required = true, value_delimiter = ',')]
        upstream: Vec<String>,
    },
    /// What matching a request to exact KV blocks costs: the chat template, the tokenizer and
    /// the block chain for a conversation of --tokens tokens, with a model's tokenizer.
    Tokenize {
        /// The model's directory (tokenizer.json, tokenizer_config.json).
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long, default_value_t = 2000)]
        tokens: usize,
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Tenants on a full fleet: a noisy neighbour, priority classes and a token budget, each
    /// with and without tenants (see docs/tenants.md).
    Tenants {
        /// A seconds-long smoke run instead of the full one.
        #[arg(long)]
        quick: bool,
        /// Seconds of arrivals per noisy-neighbour and priority cell (default 20).
        #[arg(long)]
        seconds: Option<f64>,
        /// Seconds of the budget cell (default 300).
        #[arg(long)]
        budget_seconds: Option<f64>,
        /// The budget cell's tokens per minute (default 60,000).
        #[arg(long)]
        tokens_per_minute: Option<u64>,
        /// The noisy tenant's and the batch tenant's loads, multiples of capacity (default 3,2).
        #[arg(long, value_delimiter = ',')]
        flood: Option<Vec<f64>>,
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
    /// Minutes of streaming load through mvllm with random faults injected; every request must
    /// complete or get a clear error (not in CI: see scripts/soak.sh).
    Soak {
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Sessions started per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Draw a saved JSON report (routing, overhead or load) as an SVG plot.
    Plot {
        /// routing, overhead or load.
        suite: String,
        /// The JSON report.
        report: PathBuf,
        /// The SVG to write.
        out: PathBuf,
    },
}

type Render = fn(&Value) -> String;
type Draw = fn(&Value, &Path) -> Result<(), String>;

fn drawer(suite: &str) -> Result<Draw, String> {
    match suite {
        "routing" => Ok(plot::routing),
        "overhead" => Ok(plot::overhead),
        "load" => Ok(plot::load),
        other => Err(format!(
            "no plot for `{other}`: use routing, overhead or load"
        )),
    }
}

pub fn run(args: BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mvllm bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let suite = match args.suite {
        Suite::HyperFloor {
            host,
            port,
            upstream,
        } => return hyper_floor(&runtime, &host, port, upstream),
        Suite::Plot { suite, report, out } => return plot_report(&suite, &report, &out),
        other => other,
    };
    let outcome = run_suite(suite, &runtime);
    let (report, render, output, draw) = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mvllm bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", render(&report));
    if let Some(path) = &output.json
        && let Err(e) = std::fs::write(
            path,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        )
    {
        eprintln!("mvllm bench: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if let (Some(path), Some(draw)) = (&output.plot, draw) {
        if let Err(e) = draw(&report, path) {
            eprintln!("mvllm bench: {e}");
            return ExitCode::FAILURE;
        }
        println!("plot: {}", path.display());
    }
    ExitCode::SUCCESS
}

/// `mvllm bench hyper-floor`: serves until stopped.
fn hyper_floor(
    runtime: &tokio::runtime::Runtime,
    host: &str,
    port: u16,
    upstream: Vec<String>,
) -> ExitCode {
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
        let at = listener.local_addr().map_err(|e| e.to_string())?;
        println!("hyper-floor proxy at http://{at}");
        mvllm_bench::hyper_floor::serve(listener, upstream).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mvllm bench hyper-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mvllm bench tenants` (split from [`run_suite`]).
fn run_tenants(
    suite: Suite,
    runtime: &tokio::runtime::Runtime,
) -> Result<(Value, Render, Output, Option<Draw>), String> {
    let Suite::Tenants {
        quick,
        seconds,
        budget_seconds,
        tokens_per_minute,
        flood,
        json,
    } = suite
    else {
        unreachable!("only called with the tenants suite")
    };
    let opts = mvllm_bench::tenants_suite::Options {
        quick,
        seconds,
        budget_seconds,
        tokens_per_minute,
        flood: flood
            .filter(|f| !f.is_empty())
            .map(|f| (f[0], f.get(1).copied().unwrap_or(f[0]))),
    };
    runtime
        .block_on(mvllm_bench::tenants_suite::run(opts))
        .map(|r| {
            let output = Output { json, plot: None };
            (
                r,
                mvllm_bench::tenants_suite::render as Render,
                output,
                None,
            )
        })
}

/// Runs one suite (all but `hyper-floor`): its report, how to print and draw it, where to write it.
fn run_suite(
    suite: Suite,
    runtime: &tokio::runtime::Runtime,
) -> Result<(Value, Render, Output, Option<Draw>), String> {
    match suite {
        Suite::HyperFloor { .. } | Suite::Plot { .. } => {
            Err("hyper-floor and plot make no report".into())
        }
        s @ Suite::Load { .. } => load_suite(s, runtime),
        Suite::Overhead {
            quick,
            no_dashboard,
            no_nginx,
            proxies,
            hold_streams,
            pin,
            output,
        } => proxies
            .iter()
            .map(|p| proxies::ProxyKind::parse_command(p))
            .collect::<Result<Vec<_>, String>>()
            .and_then(|extra| {
                let opts = overhead_suite::Options {
                    quick,
                    no_dashboard,
                    no_nginx,
                    extra,
                    hold_streams: hold_streams.unwrap_or(if quick { 500 } else { 10_000 }),
                    pin,
                };
                let r = runtime.block_on(overhead_suite::run(opts))?;
                Ok((
                    r,
                    overhead_suite::render as Render,
                    output,
                    Some(plot::overhead as Draw),
                ))
            }),
        Suite::Disagg {
            quick,
            rate,
            seconds,
            json,
        } => runtime
            .block_on(disagg_suite::run(disagg_suite::Options {
                quick,
                rate,
                seconds,
            }))
            .map(|r| {
                let output = Output { json, plot: None };
                (r, disagg_suite::render as Render, output, None)
            }),
        Suite::Tokenize {
            tokenizer,
            tokens,
            iterations,
            json,
        } => mvllm_bench::tokenize_suite::run(mvllm_bench::tokenize_suite::Options {
            tokenizer,
            tokens,
            iterations,
        })
        .map(|r| {
            let output = Output { json, plot: None };
            (
                r,
                mvllm_bench::tokenize_suite::render as Render,
                output,
                None,
            )
        }),
        tenants @ Suite::Tenants { .. } => run_tenants(tenants, runtime),
        Suite::Sim { quick, json } => runtime
            .block_on(sim_suite::run(sim_suite::Options { quick }))
            .map(|r| {
                let output = Output { json, plot: None };
                (r, sim_suite::render as Render, output, None)
            }),
        Suite::Routing {
            quick,
            fleet,
            load,
            queue,
            workload,
            compare,
            speeds,
            kv_cache_tokens,
            think_time,
            seconds,
            other_clients,
            output,
        } => workload
            .as_deref()
            .map(load::Workload::parse)
            .transpose()
            .and_then(|workload| {
                runtime.block_on(routing_suite::run(routing_suite::Options {
                    quick,
                    fleet,
                    loads: load,
                    queue,
                    workload,
                    contenders: compare,
                    speeds,
                    kv_cache_tokens,
                    think_time,
                    seconds,
                    other_clients,
                }))
            })
            .map(|r| {
                (
                    r,
                    routing_suite::render as Render,
                    output,
                    Some(plot::routing as Draw),
                )
            }),
        Suite::Soak {
            minutes,
            rate,
            seed,
            json,
        } => runtime
            .block_on(soak::run(soak::Options {
                minutes,
                rate,
                seed,
            }))
            .map(|r| (r, soak::render as Render, Output { json, plot: None }, None)),
    }
}

/// `mvllm bench plot`: draws a saved report.
fn plot_report(suite: &str, report: &std::path::Path, out: &std::path::Path) -> ExitCode {
    let drawn = drawer(suite).and_then(|draw| {
        let text = std::fs::read_to_string(report)
            .map_err(|e| format!("cannot read {}: {e}", report.display()))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a JSON report: {e}", report.display()))?;
        draw(&value, out)
    });
    match drawn {
        Ok(()) => {
            println!("wrote {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mvllm bench plot: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mvllm bench load`: one workload against one endpoint.
fn load_suite(
    suite: Suite,
    runtime: &tokio::runtime::Runtime,
) -> Result<(Value, Render, Output, Option<Draw>), String> {
    let Suite::Load {
        url,
        workload,
        rate,
        concurrency,
        duration,
        no_stream,
        model,
        think_time,
        seed,
        api_key,
        output,
    } = suite
    else {
        return Err("not the load suite".into());
    };
    load::Workload::parse(&workload).and_then(|workload| {
        let opts = load::Options {
            url,
            workload,
            arrivals: match rate {
                Some(r) if r > 0.0 => load::Arrivals::Rate(r),
                Some(r) => return Err(format!("--rate {r}: must be above 0")),
                None => load::Arrivals::Concurrency(concurrency.unwrap_or(8).max(1)),
            },
            duration,
            stream: !no_stream,
            model,
            think_time,
            seed,
            progress: true,
            replicas: Vec::new(),
            pin_to: Vec::new(),
            servers: Vec::new(),
            api_key,
            as_tokens: false,
        };
        let r = runtime.block_on(load::run(opts))?;
        Ok((r, load::render as Render, output, Some(plot::load as Draw)))
    })
}
