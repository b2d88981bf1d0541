//! `/metrics` as vLLM 0.32 writes it: the same families in the same order, with the same help,
//! labels (sorted), buckets and `_created` gauges (prometheus_client gives each counter and
//! histogram a `<name>_created` family of its own). With `--legacy-metrics`, the older names
//! routers must still read (`gpu_cache_usage_perc`, `gpu_prefix_cache_*`,
//! `time_per_output_token_seconds`) and the older layout, `_created` inside its family.
//!
//! Pinned against a real server's `/metrics` in `tests/real_vllm_answers.rs`.

use super::figures::{EngineMetrics, FinishReason, Histogram, unix_now};
use super::text::{family, fmt_value, series};

/// What the whole server shows on `/metrics`.
pub struct Exposition<'a> {
    pub model_name: &'a str,
    pub engines: &'a [EngineMetrics],
    pub legacy: bool,
    pub max_loras: usize,
    /// LoRA adapters are loaded: vLLM then shows `lora_requests_info`.
    pub lora_enabled: bool,
    pub block_size: usize,
    pub max_model_len: usize,
    pub prefix_caching: bool,
    /// Started with a KV connector (`--kv-role`): vLLM then exports its `nixl_*` families.
    pub kv_connector: bool,
}

/// vLLM 0.32's finish reasons in `request_success_total`; the simulator never repeats itself.
const FINISHED_REASONS: [&str; 5] = ["stop", "length", "abort", "error", "repetition"];

impl Exposition<'_> {
    pub fn render(&self) -> String {
        let mut w = Writer {
            out: String::with_capacity(32 * 1024),
            x: self,
        };
        if self.legacy {
            w.legacy();
        } else {
            w.current();
        }
        w.out
    }
}

struct Writer<'a, 'b> {
    out: String,
    x: &'b Exposition<'a>,
}

impl Writer<'_, '_> {
    fn current(&mut self) {
        for (what, help) in [
            ("flops", "floating point operations"),
            ("read_bytes", "bytes read from memory"),
            ("write_bytes", "bytes written to memory"),
        ] {
            self.counter(
                &format!("vllm:estimated_{what}_per_gpu"),
                &format!(
                    "Estimated number of {help} per GPU (for Model Flops Utilization calculations)."
                ),
                |_| 0.0,
            );
        }
        self.running_and_waiting();
        self.labelled(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
            "gauge",
            ("reason", &["capacity", "deferred"]),
            |m, i| if i == 0 { m.waiting as f64 } else { 0.0 },
        );
        self.labelled(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
            "gauge",
            ("sleep_state", &["awake", "weights_offloaded", "discard_all"]),
            |_, i| if i == 0 { 1.0 } else { 0.0 },
        );
        if self.x.lora_enabled {
            self.lora_info();
        }
        self.gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            |m| m.kv_usage,
        );
        self.tokens();
        self.per_request();
        self.kv_connector();
        self.cache_config_info();
    }

    /// Prefix-cache, prompt and generation token counters, requests by how they ended.
    fn tokens(&mut self) {
        self.counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            |m| m.prefix_queries as f64,
        );
        self.counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            |m| m.prefix_hits as f64,
        );
        self.counter("vllm:external_prefix_cache_queries", "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.", |_| 0.0);
        self.counter("vllm:external_prefix_cache_hits", "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.", |_| 0.0);
        self.counter(
            "vllm:mm_cache_queries",
            "Multi-modal cache queries, in terms of number of queried items.",
            |_| 0.0,
        );
        self.counter(
            "vllm:mm_cache_hits",
            "Multi-modal cache hits, in terms of number of cached items.",
            |_| 0.0,
        );
        self.preemptions_and_prompt_tokens();
        self.labelled_counter(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            (
                "source",
                &["local_compute", "local_cache_hit", "external_kv_transfer"],
            ),
            |m, i| match i {
                0 => m.prompt_tokens.saturating_sub(m.prefix_hits) as f64,
                1 => m.prefix_hits as f64,
                _ => 0.0,
            },
        );
        self.counter(
            "vllm:prompt_tokens_cached",
            "Number of cached prompt tokens (local + external).",
            |m| m.prefix_hits as f64,
        );
        self.labelled_counter(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at admission time.",
            ("source", &["device", "host", "p2p", "disk", "external_unspecified"]),
            |m, i| if i == 0 { m.prefix_hits as f64 } else { 0.0 },
        );
        self.generation_tokens();
        self.labelled_counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ("finished_reason", &FINISHED_REASONS),
            |m, i| {
                FinishReason::ALL
                    .get(i)
                    .map_or(0.0, |&r| m.finished(r) as f64)
            },
        );
        self.admission_rejections();
    }

    /// The per-request and per-step histograms.
    fn per_request(&mut self) {
        self.histogram(
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            |m| &m.request_prompt_tokens,
        );
        self.histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            |m| &m.request_generation_tokens,
        );
        self.histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            |m| &m.iteration_tokens,
        );
        self.histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            |m| &m.request_generation_tokens,
        );
        self.histogram(
            "vllm:request_params_n",
            "Histogram of the n request parameter.",
            |m| &m.request_params_n,
        );
        self.histogram(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            |m| &m.request_params_max_tokens,
        );
        self.latencies("vllm:inter_token_latency_seconds");
        self.histogram(
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            |m| &m.request_preemptions,
        );
        self.histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            |m| &m.request_prefill_computed,
        );
    }

    fn legacy(&mut self) {
        self.running_and_waiting();
        self.lora_info();
        self.gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            |m| m.kv_usage,
        );
        self.counter(
            "vllm:gpu_prefix_cache_queries",
            "GPU prefix cache queries, in terms of number of queried tokens.",
            |m| m.prefix_queries as f64,
        );
        self.counter(
            "vllm:gpu_prefix_cache_hits",
            "GPU prefix cache hits, in terms of number of cached tokens.",
            |m| m.prefix_hits as f64,
        );
        self.preemptions_and_prompt_tokens();
        self.generation_tokens();
        self.labelled_counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ("finished_reason", &FINISHED_REASONS[..4]),
            |m, i| m.finished(FinishReason::ALL[i]) as f64,
        );
        self.latencies("vllm:time_per_output_token_seconds");
        self.kv_connector();
        self.cache_config_info();
    }

    /// The families both layouts share, written where each puts them.
    fn running_and_waiting(&mut self) {
        self.gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            |m| m.running as f64,
        );
        self.gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            |m| m.waiting as f64,
        );
    }

    fn preemptions_and_prompt_tokens(&mut self) {
        self.counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            |m| m.preemptions as f64,
        );
        self.counter(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            |m| m.prompt_tokens as f64,
        );
    }

    fn generation_tokens(&mut self) {
        self.counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            |m| m.generation_tokens as f64,
        );
    }

    /// The latency histograms, in vLLM's order; `itl` is the inter-token family's name.
    fn latencies(&mut self, itl: &str) {
        let legacy = self.x.legacy;
        self.histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            |m| &m.ttft,
        );
        self.histogram(itl, "Histogram of inter-token latency in seconds.", |m| {
            &m.itl
        });
        if !legacy {
            self.histogram(
                "vllm:request_time_per_output_token_seconds",
                "Histogram of time_per_output_token_seconds per request.",
                |m| &m.tpot,
            );
        }
        self.histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            |m| &m.e2e,
        );
        self.histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            |m| &m.queue,
        );
        self.histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            |m| &m.inference,
        );
        self.histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            |m| &m.prefill,
        );
        self.histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            |m| &m.decode,
        );
    }

    fn kv_connector(&mut self) {
        if !self.x.kv_connector {
            return;
        }
        self.histogram(
            "vllm:nixl_xfer_time_seconds",
            "Histogram of transfer duration for NIXL KV Cache transfers.",
            |m| &m.nixl_xfer_time,
        );
        self.histogram(
            "vllm:nixl_bytes_transferred",
            "Histogram of bytes transferred per NIXL KV Cache transfers.",
            |m| &m.nixl_bytes_transferred,
        );
        self.counter(
            "vllm:nixl_num_failed_transfers",
            "Number of failed NIXL KV Cache transfers.",
            |m| m.nixl_failed_transfers as f64,
        );
        self.counter(
            "vllm:nixl_num_kv_expired_reqs",
            "Number of requests that had their KV expire.",
            |m| m.nixl_expired_requests as f64,
        );
    }

    fn engine_series(&mut self, name: &str, engine: usize, extra: &[(&str, &str)], v: f64) {
        let e = engine.to_string();
        let mut labels = vec![("engine", e.as_str()), ("model_name", self.x.model_name)];
        labels.extend_from_slice(extra);
        series(&mut self.out, name, &labels, v);
    }

    fn gauge(&mut self, name: &str, help: &str, get: impl Fn(&EngineMetrics) -> f64) {
        family(&mut self.out, name, help, "gauge");
        for (i, m) in self.x.engines.iter().enumerate() {
            self.engine_series(name, i, &[], get(m));
        }
    }

    /// A family with one series per engine and value of `label`.
    fn labelled(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        (label, values): (&str, &[&str]),
        get: impl Fn(&EngineMetrics, usize) -> f64,
    ) {
        family(&mut self.out, name, help, kind);
        for (i, m) in self.x.engines.iter().enumerate() {
            for (j, v) in values.iter().enumerate() {
                self.engine_series(name, i, &[(label, v)], get(m, j));
            }
        }
    }

    fn counter(&mut self, base: &str, help: &str, get: impl Fn(&EngineMetrics) -> f64) {
        self.labelled_counter(base, help, ("", &[""]), |m, _| get(m));
    }

    /// `<base>_total`, then its `_created` (an empty label name: no extra label).
    fn labelled_counter(
        &mut self,
        base: &str,
        help: &str,
        (label, values): (&str, &[&str]),
        get: impl Fn(&EngineMetrics, usize) -> f64,
    ) {
        let total = format!("{base}_total");
        family(&mut self.out, &total, help, "counter");
        for (i, m) in self.x.engines.iter().enumerate() {
            for (j, v) in values.iter().enumerate() {
                let labels: &[(&str, &str)] = if label.is_empty() { &[] } else { &[(label, v)] };
                self.engine_series(&total, i, labels, get(m, j));
            }
        }
        self.created(base, help, |w, name| {
            for (i, m) in w.x.engines.iter().enumerate() {
                for v in values {
                    let labels: &[(&str, &str)] =
                        if label.is_empty() { &[] } else { &[(label, v)] };
                    w.engine_series(name, i, labels, m.created);
                }
            }
        });
    }

    /// `<base>_created`: its own gauge family since prometheus_client 0.20, inside the family
    /// before that (the legacy layout).
    fn created(&mut self, base: &str, help: &str, write: impl FnOnce(&mut Self, &str)) {
        let name = format!("{base}_created");
        if !self.x.legacy {
            family(&mut self.out, &name, help, "gauge");
        }
        write(self, &name);
    }

    fn histogram(&mut self, name: &str, help: &str, get: impl Fn(&EngineMetrics) -> &Histogram) {
        family(&mut self.out, name, help, "histogram");
        let bucket = format!("{name}_bucket");
        let mut le = String::new();
        for (i, m) in self.x.engines.iter().enumerate() {
            let h = get(m);
            let mut cumulative = 0;
            for (b, c) in h.buckets() {
                cumulative += c;
                le.clear();
                fmt_value(&mut le, b);
                self.engine_series(&bucket, i, &[("le", &le)], cumulative as f64);
            }
            self.engine_series(&bucket, i, &[("le", "+Inf")], h.count() as f64);
            self.engine_series(&format!("{name}_count"), i, &[], h.count() as f64);
            self.engine_series(&format!("{name}_sum"), i, &[], h.sum());
        }
        self.created(name, help, |w, created| {
            for (i, m) in w.x.engines.iter().enumerate() {
                w.engine_series(created, i, &[], m.created);
            }
        });
    }

    fn lora_info(&mut self) {
        family(
            &mut self.out,
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            "gauge",
        );
        if let Some(m) = self.x.engines.first() {
            let max = self.x.max_loras.to_string();
            let (running, waiting) = (
                m.running_lora_adapters.join(","),
                m.waiting_lora_adapters.join(","),
            );
            let labels = [
                ("max_lora", max.as_str()),
                ("running_lora_adapters", &running),
                ("waiting_lora_adapters", &waiting),
            ];
            series(
                &mut self.out,
                "vllm:lora_requests_info",
                &labels,
                unix_now(),
            );
        }
    }

    /// Requests refused by the queue limits: one series per server, no `engine` label.
    fn admission_rejections(&mut self) {
        let (name, help) = (
            "vllm:admission_rejections",
            "Number of admission attempts rejected by a queue limit, by reason.",
        );
        let reasons = ["max_num_queued_reqs", "max_num_queued_tokens"];
        let total = format!("{name}_total");
        family(&mut self.out, &total, help, "counter");
        for r in reasons {
            series(
                &mut self.out,
                &total,
                &[("model_name", self.x.model_name), ("reason", r)],
                0.0,
            );
        }
        let created = self.x.engines.first().map_or_else(unix_now, |m| m.created);
        self.created(name, help, |w, n| {
            for r in reasons {
                series(
                    &mut w.out,
                    n,
                    &[("model_name", w.x.model_name), ("reason", r)],
                    created,
                );
            }
        });
    }

    fn cache_config_info(&mut self) {
        let name = "vllm:cache_config_info";
        family(
            &mut self.out,
            name,
            "Information of the LLMEngine CacheConfig",
            "gauge",
        );
        let x = self.x;
        let (bs, caching) = (
            x.block_size.to_string(),
            if x.prefix_caching { "True" } else { "False" },
        );
        // Labelled by engine, not by model.
        for (i, m) in x.engines.iter().enumerate() {
            let (blocks, engine) = (m.num_gpu_blocks.to_string(), i.to_string());
            if x.legacy {
                let labels = [
                    ("block_size", bs.as_str()),
                    ("cache_dtype", "auto"),
                    ("enable_prefix_caching", caching),
                    ("engine", &engine),
                    ("gpu_memory_utilization", "0.9"),
                    ("num_gpu_blocks", &blocks),
                ];
                series(&mut self.out, name, &labels, 1.0);
                continue;
            }
            let tokens = m.num_gpu_blocks * x.block_size;
            let size_tokens = tokens.to_string();
            let mut concurrency = String::new();
            fmt_value(
                &mut concurrency,
                tokens as f64 / x.max_model_len.max(1) as f64,
            );
            // The tiny CPU model's 2048 bytes per token; a real model's depend on its layers.
            let bytes = (tokens * 2048).to_string();
            let labels = [
                ("_block_size_resolved", "True"),
                ("block_size", &bs),
                ("cache_dtype", "auto"),
                ("cache_hit_alignment_tokens", "None"),
                ("effective_attention_block_size", &bs),
                ("engine", &engine),
                ("enable_mamba_shared_prefix_checkpoint", "False"),
                ("enable_prefix_caching", caching),
                ("gpu_memory_utilization", "0.9"),
                ("hash_block_size", "None"),
                ("is_attention_free", "False"),
                ("kv_cache_dtype_skip_layers", "[]"),
                ("kv_cache_layout", "None"),
                ("kv_cache_max_concurrency", &concurrency),
                ("kv_cache_memory_bytes", &bytes),
                ("kv_cache_size_tokens", &size_tokens),
                ("kv_offloading_backend", "native"),
                ("kv_offloading_size", "None"),
                ("kv_sharing_fast_prefill", "False"),
                ("mamba_block_size", "None"),
                ("mamba_cache_dtype", "auto"),
                ("mamba_cache_mode", "none"),
                ("mamba_page_size_padded", "None"),
                ("mamba_ssm_cache_dtype", "auto"),
                ("num_cpu_blocks", "None"),
                ("num_gpu_blocks", &blocks),
                ("num_gpu_blocks_override", "None"),
                ("prefix_cache_retention_interval", "0"),
                ("prefix_caching_hash_algo", "sha256"),
                ("prefix_match_unit", "None"),
                ("replayssm_buffer_len", "16"),
                ("skip_page_size_padded", "None"),
                ("sliding_window", "None"),
                ("swa_bounded_replay", "True"),
                ("use_kda_recoverssm", "False"),
                ("use_replayssm", "False"),
                ("user_specified_block_size", "False"),
            ];
            series(&mut self.out, name, &labels, 1.0);
        }
    }
}
