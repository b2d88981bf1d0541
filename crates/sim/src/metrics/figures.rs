//! The figures one engine keeps for `/metrics`: counters, gauges and histograms with vLLM's
//! buckets.

use std::sync::Arc;
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

/// vLLM's per-step token buckets (`iteration_tokens_total`).
pub const ITERATION_TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
pub const PARAMS_N_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
pub const PREEMPTION_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0];

/// vLLM's `build_1_2_5_buckets(max_model_len)`: 1, 2, 5, 10, 20, 50, ... up to the limit.
pub fn buckets_1_2_5(max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut scale = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            let v: f64 = m * scale;
            if v > max as f64 {
                return out;
            }
            out.push(v);
        }
        scale *= 10.0;
    }
}

#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: Arc<[f64]>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: impl Into<Arc<[f64]>>) -> Self {
        let bounds: Arc<[f64]> = bounds.into();
        Histogram {
            counts: vec![0; bounds.len()],
            bounds,
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
    /// Each bucket's upper bound and the observations in it (not cumulative).
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds.iter().copied().zip(self.counts.iter().copied())
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
    /// Per request: prompt length, tokens generated, its `max_tokens`, `n`, times preempted,
    /// prompt tokens computed (not cached).
    pub request_prompt_tokens: Histogram,
    pub request_generation_tokens: Histogram,
    pub request_params_max_tokens: Histogram,
    pub request_params_n: Histogram,
    pub request_preemptions: Histogram,
    pub request_prefill_computed: Histogram,
    /// Tokens per engine step.
    pub iteration_tokens: Histogram,
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
    pub fn new(num_gpu_blocks: usize, max_model_len: usize) -> Self {
        let tokens: Arc<[f64]> = buckets_1_2_5(max_model_len).into();
        EngineMetrics {
            request_prompt_tokens: Histogram::new(tokens.clone()),
            request_generation_tokens: Histogram::new(tokens.clone()),
            request_params_max_tokens: Histogram::new(tokens.clone()),
            request_params_n: Histogram::new(PARAMS_N_BUCKETS),
            request_preemptions: Histogram::new(PREEMPTION_BUCKETS),
            request_prefill_computed: Histogram::new(tokens),
            iteration_tokens: Histogram::new(ITERATION_TOKEN_BUCKETS),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Exposition;

    #[test]
    fn token_buckets_are_1_2_5_up_to_the_context() {
        assert_eq!(
            buckets_1_2_5(1024),
            [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
        assert_eq!(buckets_1_2_5(131072).last(), Some(&100000.0));
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_le_labels() {
        let mut m = EngineMetrics::new(100, 1024);
        m.ttft.observe(0.003);
        m.ttft.observe(0.5);
        let text = Exposition {
            model_name: "m",
            engines: &[m],
            legacy: false,
            max_loras: 1,
            lora_enabled: false,
            block_size: 16,
            max_model_len: 1024,
            prefix_caching: true,
            kv_connector: false,
        }
        .render();
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.005\",model_name=\"m\"} 1.0\n"));
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.5\",model_name=\"m\"} 2.0\n"));
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"m\"} 2.0\n"));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_count{engine=\"0\",model_name=\"m\"} 2.0\n"
        ));
        assert!(text.contains("# TYPE vllm:kv_cache_usage_perc gauge\n"));
        assert!(!text.contains("gpu_cache_usage_perc"));
    }
}
