//! vLLM's `/metrics`: the same names, types, labels, buckets and `_created` series.
//!
//! Why written by hand: the point is to reproduce vLLM's exact text (Python prometheus_client's
//! layout, `engine` and `model_name` labels, the families without those labels), including the
//! older names (`--legacy-metrics`) that routers must still read. Each engine keeps one
//! [`EngineMetrics`], updated once per step under a lock that is never held across an await.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's NIXL transfer-time buckets.
pub const NIXL_XFER_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0,
];
/// vLLM's NIXL bytes-per-transfer buckets: 2^11, 2^13, ... 2^33.
pub const NIXL_BYTES_BUCKETS: &[f64] = &[
    2048.0,
    8192.0,
    32768.0,
    131072.0,
    524288.0,
    2097152.0,
    8388608.0,
    33554432.0,
    134217728.0,
    536870912.0,
    2147483648.0,
    8589934592.0,
];
pub const LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }
    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        if i < self.counts.len() {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Why a request finished, as the `finished_reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    Abort,
    Error,
}

impl FinishReason {
    pub const ALL: [FinishReason; 4] = [Self::Stop, Self::Length, Self::Abort, Self::Error];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
            Self::Error => "error",
        }
    }
}

/// One engine's figures.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    pub running: usize,
    pub waiting: usize,
    pub kv_usage: f64,
    pub num_gpu_blocks: usize,
    /// Blocks in the prefix cache (what KV events stored and did not remove).
    pub cached_blocks: usize,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub preemptions: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub success: [u64; 4],
    pub ttft: Histogram,
    pub itl: Histogram,
    pub tpot: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
    pub inference: Histogram,
    pub prefill: Histogram,
    pub decode: Histogram,
    /// Steps run, and their modelled and measured durations (for `mvllm bench sim`).
    pub steps: u64,
    pub model_busy_seconds: f64,
    pub wall_busy_seconds: f64,
    pub running_lora_adapters: Vec<String>,
    pub waiting_lora_adapters: Vec<String>,
    pub created: f64,
    /// KV transfers pulled from prefill servers (decode side), and their sizes.
    pub nixl_xfer_time: Histogram,
    pub nixl_bytes_transferred: Histogram,
    pub nixl_failed_transfers: u64,
    /// Requests whose held KV expired unread (prefill side).
    pub nixl_expired_requests: u64,
}

impl EngineMetrics {
    pub fn new(num_gpu_blocks: usize) -> Self {
        EngineMetrics {
            running: 0,
            waiting: 0,
            kv_usage: 0.0,
            num_gpu_blocks,
            cached_blocks: 0,
            prefix_queries: 0,
            prefix_hits: 0,
            preemptions: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            success: [0; 4],
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            tpot: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(LATENCY_BUCKETS),
            queue: Histogram::new(LATENCY_BUCKETS),
            inference: Histogram::new(LATENCY_BUCKETS),
            prefill: Histogram::new(LATENCY_BUCKETS),
            decode: Histogram::new(LATENCY_BUCKETS),
            steps: 0,
            model_busy_seconds: 0.0,
            wall_busy_seconds: 0.0,
            running_lora_adapters: Vec::new(),
            waiting_lora_adapters: Vec::new(),
            created: unix_now(),
            nixl_xfer_time: Histogram::new(NIXL_XFER_BUCKETS),
            nixl_bytes_transferred: Histogram::new(NIXL_BYTES_BUCKETS),
            nixl_failed_transfers: 0,
            nixl_expired_requests: 0,
        }
    }

    pub fn count_finished(&mut self, reason: FinishReason) {
        self.success[reason as usize] += 1;
    }
    pub fn finished(&self, reason: FinishReason) -> u64 {
        self.success[reason as usize]
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What the whole server shows on `/metrics`.
pub struct Exposition<'a> {
    pub model_name: &'a str,
    pub engines: &'a [EngineMetrics],
    pub legacy: bool,
    pub max_loras: usize,
    pub block_size: usize,
    pub prefix_caching: bool,
    /// Started with a KV connector (`--kv-role`): vLLM then exports its `nixl_*` families.
    pub kv_connector: bool,
}

/// Formats a float as Python's prometheus_client does (`12.0`, `1.8432e+06`, `NaN`, `+Inf`).
pub fn fmt_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v == v.trunc() && v.abs() < 1e15 {
        let _ = write!(out, "{v:.1}");
    } else {
        let _ = write!(out, "{v}");
    }
}

impl Exposition<'_> {
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let legacy = self.legacy;

        self.gauge(
            &mut out,
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            |m| m.running as f64,
        );
        self.gauge(
            &mut out,
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            |m| m.waiting as f64,
        );
        if !legacy {
            family(
                &mut out,
                "vllm:num_requests_waiting_by_reason",
                "Number of requests waiting, by the reason they wait.",
                "gauge",
            );
            for (i, m) in self.engines.iter().enumerate() {
                for (reason, v) in [("capacity", m.waiting as f64), ("deferred", 0.0)] {
                    self.series(
                        &mut out,
                        "vllm:num_requests_waiting_by_reason",
                        i,
                        &[("reason", reason)],
                        v,
                    );
                }
            }
            family(
                &mut out,
                "vllm:engine_sleep_state",
                "Engine sleep state; awake = 0 means engine is sleeping.",
                "gauge",
            );
            for i in 0..self.engines.len() {
                for (state, v) in [
                    ("awake", 1.0),
                    ("weights_offloaded", 0.0),
                    ("discard_all", 0.0),
                ] {
                    self.series(
                        &mut out,
                        "vllm:engine_sleep_state",
                        i,
                        &[("sleep_state", state)],
                        v,
                    );
                }
            }
        }
        family(
            &mut out,
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            "gauge",
        );
        for m in self.engines.iter().take(1) {
            let _ = write!(
                out,
                "vllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"}} ",
                self.max_loras,
                m.running_lora_adapters.join(","),
                m.waiting_lora_adapters.join(",")
            );
            fmt_value(&mut out, unix_now());
            out.push('\n');
        }
        let usage_name = if legacy {
            "vllm:gpu_cache_usage_perc"
        } else {
            "vllm:kv_cache_usage_perc"
        };
        self.gauge(
            &mut out,
            usage_name,
            "KV-cache usage. 1 means 100 percent usage.",
            |m| m.kv_usage,
        );

        let (queries, hits) = if legacy {
            (
                "vllm:gpu_prefix_cache_queries",
                "vllm:gpu_prefix_cache_hits",
            )
        } else {
            ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits")
        };
        self.counter(
            &mut out,
            queries,
            "Prefix cache queries, in terms of number of queried tokens.",
            |m| m.prefix_queries,
        );
        self.counter(
            &mut out,
            hits,
            "Prefix cache hits, in terms of number of cached tokens.",
            |m| m.prefix_hits,
        );
        self.counter(
            &mut out,
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            |m| m.preemptions,
        );
        self.counter(
            &mut out,
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            |m| m.prompt_tokens,
        );
        self.counter(
            &mut out,
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            |m| m.generation_tokens,
        );
        self.render_requests(&mut out);
        out
    }

    /// Request counts and latency histograms, the KV connector's figures, the cache config.
    fn render_requests(&self, out: &mut String) {
        let legacy = self.legacy;
        family(
            out,
            "vllm:request_success_total",
            "Count of successfully processed requests.",
            "counter",
        );
        for (i, m) in self.engines.iter().enumerate() {
            for r in FinishReason::ALL {
                self.series(
                    out,
                    "vllm:request_success_total",
                    i,
                    &[("finished_reason", r.as_str())],
                    m.finished(r) as f64,
                );
            }
        }
        for (i, m) in self.engines.iter().enumerate() {
            for r in FinishReason::ALL {
                self.series(
                    out,
                    "vllm:request_success_created",
                    i,
                    &[("finished_reason", r.as_str())],
                    m.created,
                );
            }
        }

        self.histogram(
            out,
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            |m| &m.ttft,
        );
        let itl_name = if legacy {
            "vllm:time_per_output_token_seconds"
        } else {
            "vllm:inter_token_latency_seconds"
        };
        self.histogram(
            out,
            itl_name,
            "Histogram of inter-token latency in seconds.",
            |m| &m.itl,
        );
        if !legacy {
            self.histogram(
                out,
                "vllm:request_time_per_output_token_seconds",
                "Histogram of time_per_output_token_seconds per request.",
                |m| &m.tpot,
            );
        }
        self.histogram(
            out,
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            |m| &m.e2e,
        );
        self.histogram(
            out,
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            |m| &m.queue,
        );
        self.histogram(
            out,
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            |m| &m.inference,
        );
        self.histogram(
            out,
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            |m| &m.prefill,
        );
        self.histogram(
            out,
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            |m| &m.decode,
        );

        if self.kv_connector {
            self.histogram(
                out,
                "vllm:nixl_xfer_time_seconds",
                "Histogram of transfer duration for NIXL KV Cache transfers.",
                |m| &m.nixl_xfer_time,
            );
            self.histogram(
                out,
                "vllm:nixl_bytes_transferred",
                "Histogram of bytes transferred per NIXL KV Cache transfers.",
                |m| &m.nixl_bytes_transferred,
            );
            self.counter(
                out,
                "vllm:nixl_num_failed_transfers",
                "Number of failed NIXL KV Cache transfers.",
                |m| m.nixl_failed_transfers,
            );
            self.counter(
                out,
                "vllm:nixl_num_kv_expired_reqs",
                "Number of requests that had their KV expire.",
                |m| m.nixl_expired_requests,
            );
        }
        family(
            out,
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            "gauge",
        );
        for (i, m) in self.engines.iter().enumerate() {
            let _ = writeln!(
                out,
                "vllm:cache_config_info{{block_size=\"{}\",cache_dtype=\"auto\",enable_prefix_caching=\"{}\",engine=\"{i}\",gpu_memory_utilization=\"0.9\",num_gpu_blocks=\"{}\"}} 1.0",
                self.block_size,
                if self.prefix_caching { "True" } else { "False" },
                m.num_gpu_blocks
            );
        }
    }

    fn series(&self, out: &mut String, name: &str, engine: usize, extra: &[(&str, &str)], v: f64) {
        out.push_str(name);
        out.push('{');
        for (k, val) in extra {
            let _ = write!(out, "{k}=\"{val}\",");
        }
        let _ = write!(
            out,
            "engine=\"{engine}\",model_name=\"{}\"}} ",
            self.model_name
        );
        fmt_value(out, v);
        out.push('\n');
    }

    fn gauge(&self, out: &mut String, name: &str, help: &str, get: impl Fn(&EngineMetrics) -> f64) {
        family(out, name, help, "gauge");
        for (i, m) in self.engines.iter().enumerate() {
            self.series(out, name, i, &[], get(m));
        }
    }

    fn counter(
        &self,
        out: &mut String,
        base: &str,
        help: &str,
        get: impl Fn(&EngineMetrics) -> u64,
    ) {
        let total = format!("{base}_total");
        family(out, &total, help, "counter");
        for (i, m) in self.engines.iter().enumerate() {
            self.series(out, &total, i, &[], get(m) as f64);
        }
        let created = format!("{base}_created");
        for (i, m) in self.engines.iter().enumerate() {
            self.series(out, &created, i, &[], m.created);
        }
    }

    fn histogram(
        &self,
        out: &mut String,
        name: &str,
        help: &str,
        get: impl Fn(&EngineMetrics) -> &Histogram,
    ) {
        family(out, name, help, "histogram");
        let bucket = format!("{name}_bucket");
        for (i, m) in self.engines.iter().enumerate() {
            let h = get(m);
            let mut cumulative = 0;
            let mut le = String::new();
            for (b, c) in h.bounds.iter().zip(&h.counts) {
                cumulative += c;
                le.clear();
                fmt_value(&mut le, *b);
                self.series(out, &bucket, i, &[("le", &le)], cumulative as f64);
            }
            self.series(out, &bucket, i, &[("le", "+Inf")], h.count as f64);
            self.series(out, &format!("{name}_count"), i, &[], h.count as f64);
            self.series(out, &format!("{name}_sum"), i, &[], h.sum);
        }
        for (i, m) in self.engines.iter().enumerate() {
            self.series(out, &format!("{name}_created"), i, &[], m.created);
        }
    }
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_as_python_does() {
        let mut s = String::new();
        for v in [12.0, 0.4213, f64::NAN, f64::INFINITY] {
            fmt_value(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "12.0 0.4213 NaN +Inf ");
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_le_labels() {
        let mut m = EngineMetrics::new(100);
        m.ttft.observe(0.003);
        m.ttft.observe(0.5);
        let text = Exposition {
            model_name: "m",
            engines: &[m],
            legacy: false,
            max_loras: 1,
            block_size: 16,
            prefix_caching: true,
            kv_connector: false,
        }
        .render();
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket{le=\"0.005\",engine=\"0\",model_name=\"m\"} 1.0\n"));
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket{le=\"0.5\",engine=\"0\",model_name=\"m\"} 2.0\n"));
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket{le=\"+Inf\",engine=\"0\",model_name=\"m\"} 2.0\n"));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_count{engine=\"0\",model_name=\"m\"} 2.0\n"
        ));
        assert!(text.contains("# TYPE vllm:kv_cache_usage_perc gauge\n"));
        assert!(!text.contains("gpu_cache_usage_perc"));
    }
}
