//! How long a step takes on the simulated GPU.
//!
//! Why a formula: a router's benefit comes from servers slowing down as they fill, so the step
//! time must grow with the batch the way a real GPU's does. A step is limited either by memory
//! bandwidth (reading the weights once, plus every decoding sequence's KV cache) or by compute
//! (every token in the step), whichever is larger, plus fixed and per-sequence CPU overheads:
//!
//! ```text
//! memory  = weights_read + kv_read_per_token * sum(context of scheduled sequences)
//! compute = compute_per_token * tokens in the step
//! step    = (max(memory, compute) + step_overhead + per_seq_overhead * sequences) / speed
//! ```
//!
//! The default profile is close to Llama-3.1-8B in BF16 on one H100 (VLLM-SURFACE.md): a
//! batch-1 decode step of ~6.4 ms, prefill at ~28k tokens/s, 0.05 ms per 1k tokens of context.

use std::time::Duration;

use super::scheduler::StepPlan;

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Seconds to read the weights once (the floor of every step).
    pub weights_read: f64,
    /// Seconds per token of context read by a scheduled sequence.
    pub kv_read_per_token: f64,
    /// Seconds of compute per token in the step.
    pub compute_per_token: f64,
    /// Seconds of fixed CPU work per step (scheduling, sampling, output processing).
    pub step_overhead: f64,
    /// Seconds of CPU work per sequence in the step.
    pub per_seq_overhead: f64,
    /// Seconds the API server spends on a request before the engine sees it (parsing,
    /// tokenization): it delays the first step after the engine was idle, so it is part of a
    /// lone request's time to first token; a busy engine overlaps it with running steps.
    pub api_latency: f64,
}

impl Profile {
    /// Llama-3.1-8B BF16 on one H100.
    pub fn h100_llama8b() -> Self {
        Profile {
            weights_read: 6.0e-3,
            kv_read_per_token: 0.05e-3 / 1000.0,
            compute_per_token: 35e-6,
            step_overhead: 0.35e-3,
            per_seq_overhead: 0.04e-3,
            api_latency: 1.0e-3,
        }
    }

    /// Every step takes no time: a backend that is never the bottleneck, for measuring routers.
    pub fn instant() -> Self {
        Profile {
            weights_read: 0.0,
            kv_read_per_token: 0.0,
            compute_per_token: 0.0,
            step_overhead: 0.0,
            per_seq_overhead: 0.0,
            api_latency: 0.0,
        }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "h100-llama8b" => Some(Self::h100_llama8b()),
            "instant" => Some(Self::instant()),
            _ => None,
        }
    }

    /// Seconds a step takes, from the shape of its batch: `(sequences, context per sequence,
    /// new tokens per sequence)`.
    pub fn step_seconds<I>(&self, seqs: I, speed: f64) -> f64
    where
        I: IntoIterator<Item = (usize, usize)>,
    {
        let (mut n, mut context, mut tokens) = (0usize, 0usize, 0usize);
        for (ctx, new) in seqs {
            n += 1;
            context += ctx;
            tokens += new;
        }
        if n == 0 {
            return 0.0;
        }
        let memory = self.weights_read + self.kv_read_per_token * context as f64;
        let compute = self.compute_per_token * tokens as f64;
        (memory.max(compute) + self.step_overhead + self.per_seq_overhead * n as f64) / speed
    }

    /// Duration of a planned step.
    pub fn step_time(&self, plan: &StepPlan, speed: f64) -> Duration {
        let secs = self.step_seconds(
            plan.scheduled
                .iter()
                .map(|s| (s.context_len, s.num_new_tokens)),
            speed,
        );
        Duration::from_secs_f64(secs)
    }

    /// Predicted time to first token for a lone request on an idle server (API latency plus one
    /// prefill step over the uncached tokens).
    pub fn lone_ttft(&self, uncached_prompt_tokens: usize, cached: usize, speed: f64) -> f64 {
        self.api_latency / speed + self.step_seconds([(cached, uncached_prompt_tokens)], speed)
    }

    /// Predicted inter-token latency for a batch of `batch` sequences decoding at `context` each.
    pub fn decode_step(&self, batch: usize, context: usize, speed: f64) -> f64 {
        self.step_seconds((0..batch).map(|_| (context, 1)), speed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_matches_published_points() {
        let p = Profile::h100_llama8b();
        let itl1 = p.decode_step(1, 1000, 1.0);
        assert!((6.3e-3..6.7e-3).contains(&itl1), "batch-1 decode {itl1}");
        let prefill_8k = p.step_seconds([(0, 8192)], 1.0);
        assert!(
            (0.25..0.32).contains(&prefill_8k),
            "8k prefill step {prefill_8k}"
        );
        assert!(
            p.decode_step(64, 1000, 1.0) > 1.3 * itl1,
            "batching slows every token"
        );
        assert_eq!(p.decode_step(1, 1000, 0.5), 2.0 * itl1, "speed scales");
        assert_eq!(Profile::instant().decode_step(256, 1000, 1.0), 0.0);
    }
}
