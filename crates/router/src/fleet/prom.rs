//! Reading the few figures the router needs out of a vLLM server's Prometheus text.
//!
//! Why by hand: the scrape runs every second for every server and needs five families out of a
//! few hundred lines, so a single pass that looks only at names is enough and cheap. It copes with
//! what real servers write: `# HELP`/`# TYPE` comments, label values with escaped quotes, values
//! such as `12.0`, `1.8432e+06`, `NaN`, `+Inf`, a timestamp after the value, and both the
//! current and the older metric names. Series are summed over the `engine` label (a
//! data-parallel server has one series per engine); cache usage is averaged over engines.
//! `vllm:num_requests_waiting_by_reason` is a different metric and is not mistaken for
//! `vllm:num_requests_waiting`.

/// What one scrape tells the router.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerMetrics {
    pub running: f64,
    pub waiting: f64,
    /// Mean KV-cache usage over engines (0..1).
    pub kv_usage: f64,
    pub prefix_cache_queries: f64,
    pub prefix_cache_hits: f64,
    /// Output tokens generated since the server started (`vllm:generation_tokens_total`).
    pub generation_tokens: f64,
    /// The inter-token latency histogram's sum (seconds) and count (tokens), summed over
    /// engines (`vllm:inter_token_latency_seconds`, before 0.11 `time_per_output_token_seconds`):
    /// between two scrapes, the server's mean seconds per output token.
    pub inter_token_seconds: f64,
    pub inter_tokens: f64,
    /// Engines seen (series of `num_requests_running`).
    pub engines: u32,
    /// Tokens the server's KV cache holds, from `vllm:cache_config_info` (`num_gpu_blocks` x
    /// `block_size`, summed over engines); 0 when not reported.
    pub kv_cache_tokens: f64,
    /// The server process's file-descriptor limit, shown in `/load-stats` as the Python mvllm did.
    pub process_max_fds: Option<f64>,
}

/// Parses Prometheus text; `Err` when no vLLM load figure is present (not a vLLM `/metrics`).
pub fn parse(text: &str) -> Result<ServerMetrics, String> {
    let mut m = ServerMetrics::default();
    let (mut kv_sum, mut kv_n) = (0.0, 0u32);
    let mut seen_waiting = false;
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, rest)) = split_name(line) else {
            continue;
        };
        if name == "vllm:cache_config_info" {
            let number = |label: &str| label_value(line, label).and_then(|v| v.parse::<f64>().ok());
            if let (Some(blocks), Some(size)) = (number("num_gpu_blocks"), number("block_size"))
                && blocks.is_finite()
                && size.is_finite()
                && blocks >= 0.0
                && size >= 0.0
            {
                m.kv_cache_tokens += blocks * size;
            }
            continue;
        }
        let target = match name {
            "vllm:num_requests_running" => 0,
            "vllm:num_requests_waiting" => 1,
            "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => 2,
            "vllm:prefix_cache_queries_total" | "vllm:gpu_prefix_cache_queries_total" => 3,
            "vllm:prefix_cache_hits_total" | "vllm:gpu_prefix_cache_hits_total" => 4,
            "vllm:generation_tokens_total" => 5,
            "process_max_fds" => 6,
            "vllm:inter_token_latency_seconds_sum" | "vllm:time_per_output_token_seconds_sum" => 7,
            "vllm:inter_token_latency_seconds_count"
            | "vllm:time_per_output_token_seconds_count" => 8,
            _ => continue,
        };
        let value =
            sample_value(rest).ok_or_else(|| format!("unreadable sample: {}", truncate(line)))?;
        if value.is_nan() {
            continue;
        }
        // Counts, gauges and ratios are finite and not negative; a server reporting -1e6
        // running requests or +Inf waiting would steer routing, so the scrape is malformed.
        if !value.is_finite() || value < 0.0 {
            return Err(format!(
                "{name} is {value}: not a count or a ratio ({})",
                truncate(line)
            ));
        }
        match target {
            0 => {
                m.running += value;
                m.engines += 1;
            }
            1 => {
                m.waiting += value;
                seen_waiting = true;
            }
            2 => {
                kv_sum += value;
                kv_n += 1;
            }
            3 => m.prefix_cache_queries += value,
            4 => m.prefix_cache_hits += value,
            5 => m.generation_tokens += value,
            6 => m.process_max_fds = Some(value),
            7 => m.inter_token_seconds += value,
            _ => m.inter_tokens += value,
        }
    }
    if m.engines == 0 || !seen_waiting {
        return Err("no vllm:num_requests_running / vllm:num_requests_waiting series".into());
    }
    if kv_n > 0 {
        m.kv_usage = (kv_sum / f64::from(kv_n)).clamp(0.0, 1.0);
    }
    Ok(m)
}

/// Splits `name{labels} value [ts]` or `name value [ts]` into the name and what follows the
/// labels.
fn split_name(line: &str) -> Option<(&str, &str)> {
    let end = line.find(['{', ' ', '\t'])?;
    let (name, rest) = line.split_at(end);
    if let Some(labels) = rest.strip_prefix('{') {
        let close = labels_end(labels)?;
        Some((name, &labels[close + 1..]))
    } else {
        Some((name, rest))
    }
}

/// The value of `label` in a sample line's label set (unescaped values only: the numbers read
/// here have no escapes).
fn label_value<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let labels = &line[line.find('{')? + 1..];
    let labels = &labels[..labels_end(labels)?];
    let mut rest = labels;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches([',', ' ']);
        let value_start = eq + 2;
        let value_len = rest[value_start..].find('"')?;
        if name == label {
            return Some(&rest[value_start..value_start + value_len]);
        }
        rest = &rest[value_start + value_len + 1..];
    }
    None
}

/// Index of the `}` closing a label set, skipping quoted values with escapes.
fn labels_end(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

fn sample_value(rest: &str) -> Option<f64> {
    let token = rest.split_whitespace().next()?;
    match token {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => token.parse().ok(),
    }
}

fn truncate(line: &str) -> &str {
    let mut end = line.len().min(80);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kv_cache_size_is_summed_over_engines() {
        let text = "vllm:num_requests_running{engine=\"0\"} 0\nvllm:num_requests_waiting 0\n\
vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",engine=\"0\",num_gpu_blocks=\"1000\"} 1.0\n\
vllm:cache_config_info{block_size=\"16\",engine=\"1\",num_gpu_blocks=\"500\"} 1.0\n";
        assert_eq!(parse(text).unwrap().kv_cache_tokens, 24_000.0);
    }

    #[test]
    fn negative_or_infinite_load_is_malformed() {
        for bad in [
            "vllm:num_requests_running{engine=\"0\"} -1e6",
            "vllm:num_requests_waiting{engine=\"0\"} +Inf",
            "vllm:kv_cache_usage_perc{engine=\"0\"} -0.5",
        ] {
            let text = format!("vllm:num_requests_running{{engine=\"1\"}} 1\n{bad}\n");
            assert!(parse(&text).is_err(), "{bad}");
        }
        assert!(
            parse("vllm:num_requests_running{engine=\"0\"} 0\nvllm:num_requests_waiting 0\n")
                .is_ok()
        );
    }

    #[test]
    fn sums_engines_and_ignores_waiting_by_reason() {
        let text = r#"
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 12.0
vllm:num_requests_running{engine="1",model_name="m"} 3.0 1700000000000
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.8e+01
vllm:num_requests_waiting_by_reason{reason="capacity",engine="0",model_name="m"} 99.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 921600.0
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1.8432e+06
vllm:generation_tokens_total{engine="0",model_name="m"} 100.0
vllm:generation_tokens_total{engine="1",model_name="m"} 23.0
"#;
        let m = parse(text).unwrap();
        assert_eq!(m.running, 15.0);
        assert_eq!(m.waiting, 20.0);
        assert_eq!(m.kv_usage, 0.375);
        assert_eq!(m.engines, 2);
        assert_eq!(m.prefix_cache_hits, 921600.0);
        assert_eq!(m.prefix_cache_queries, 1_843_200.0);
        assert_eq!(m.generation_tokens, 123.0);
    }

    #[test]
    fn legacy_names_and_tricky_labels() {
        let text = "vllm:num_requests_running{model_name=\"a \\\"quoted} name\",engine=\"0\"} 1\n\
                    vllm:num_requests_waiting 0\n\
                    vllm:gpu_cache_usage_perc{engine=\"0\"} 0.9\n\
                    vllm:gpu_prefix_cache_hits_total{engine=\"0\"} NaN\n";
        let m = parse(text).unwrap();
        assert_eq!((m.running, m.waiting, m.kv_usage), (1.0, 0.0, 0.9));
        assert_eq!(m.prefix_cache_hits, 0.0, "NaN is skipped");
    }

    #[test]
    fn refuses_what_is_not_vllm_metrics() {
        assert!(parse("<html>502 Bad Gateway</html>").is_err());
        assert!(parse("vllm:num_requests_running{engine=\"0\" 3 garbage\n").is_err());
        assert!(parse("vllm:num_requests_running 1\nvllm:num_requests_waiting abc\n").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn reads_the_inter_token_latency_a_real_vllm_writes_and_the_older_name() {
        let real = include_str!("../../../sim/tests/real-vllm/get_metrics_after.txt");
        let body = &real[real.find("\n\n").unwrap() + 2..];
        let m = parse(body).unwrap();
        assert_eq!(
            (m.inter_tokens, m.inter_token_seconds),
            (11638.0, 127.04418696699031)
        );
        let old = "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n\
                   vllm:time_per_output_token_seconds_sum{engine=\"0\"} 2.5\n\
                   vllm:time_per_output_token_seconds_count{engine=\"0\"} 100\n\
                   vllm:time_per_output_token_seconds_count{engine=\"1\"} 150\n";
        let m = parse(old).unwrap();
        assert_eq!((m.inter_tokens, m.inter_token_seconds), (250.0, 2.5));
    }
}
