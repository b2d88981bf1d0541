//! The classic Prometheus text format (`text/plain; version=0.0.4`), made from the OpenMetrics
//! text `prometheus-client` writes.
//!
//! Why: older Prometheus servers and the classic parsers (Python `prometheus_client`'s, Go's
//! `expfmt` text parser, many agents) read `/metrics` as classic text. In OpenMetrics a counter
//! family is named without `_total` (`# TYPE mvllm_requests counter` over samples
//! `mvllm_requests_total`), so a classic parser finds no type for the samples and calls them
//! `unknown`; `# UNIT` and `# EOF` are foreign to it. The translation is line by line: counter
//! and info families are renamed to their samples' names, `unknown` becomes `untyped`, `_created`
//! samples and `# UNIT` / `# EOF` lines go. The scraper chooses with `Accept`: OpenMetrics when
//! it asks for it, classic otherwise.

/// The content type of the classic format.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (Prometheus 2.x and later do).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// OpenMetrics text as classic text.
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // Families' metadata comes first (HELP, TYPE, UNIT), then their samples; HELP precedes
    // TYPE, so it is held until the type says what the family is called in classic text.
    let mut help: Option<(&str, String)> = None;
    let mut counters_created: Vec<String> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = help.take() {
                push_help(&mut out, name, &text);
            }
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text.replace("\\\"", "\"")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (classic_name, classic_kind) = match kind {
                "counter" => (with_suffix(name, "_total"), "counter"),
                "info" => (with_suffix(name, "_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                "gaugehistogram" => (name.to_string(), "histogram"),
                "stateset" => (name.to_string(), "gauge"),
                k => (name.to_string(), k),
            };
            if kind == "counter" {
                counters_created.push(format!("{name}_created"));
            }
            if let Some((help_name, text)) = help.take() {
                let named = if help_name == name {
                    &classic_name
                } else {
                    help_name
                };
                push_help(&mut out, named, &text);
            }
            out.push_str("# TYPE ");
            out.push_str(&classic_name);
            out.push(' ');
            out.push_str(classic_kind);
            out.push('\n');
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else if line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        } else {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            if counters_created.iter().any(|c| c == &line[..name_end]) {
                continue;
            }
            // Exemplars (` # {...} value`) are OpenMetrics only.
            let sample = line.split_once(" # ").map_or(line, |(s, _)| s);
            out.push_str(sample);
            out.push('\n');
        }
    }
    if let Some((name, text)) = help {
        push_help(&mut out, name, &text);
    }
    out
}

fn with_suffix(name: &str, suffix: &str) -> String {
    if name.ends_with(suffix) {
        name.to_string()
    } else {
        format!("{name}{suffix}")
    }
}

fn push_help(out: &mut String, name: &str, text: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    out.push_str(text);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_info_take_their_samples_names_and_openmetrics_only_lines_go() {
        let om = "# HELP reqs Requests \\\"served\\\".\n# TYPE reqs counter\n# UNIT reqs requests\n\
                  reqs_total{route=\"chat\"} 7\nreqs_created{route=\"chat\"} 1.7e9\n\
                  # HELP build Build.\n# TYPE build info\nbuild_info{version=\"1\"} 1\n\
                  # HELP odd Odd.\n# TYPE odd unknown\nodd 1\n\
                  # HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le=\"+Inf\"} 2 # {id=\"x\"} 0.3\n\
                  lat_sum 0.5\nlat_count 2\n# EOF\n";
        let classic = to_classic(om);
        assert_eq!(
            classic,
            "# HELP reqs_total Requests \"served\".\n# TYPE reqs_total counter\n\
             reqs_total{route=\"chat\"} 7\n\
             # HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{version=\"1\"} 1\n\
             # HELP odd Odd.\n# TYPE odd untyped\nodd 1\n\
             # HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le=\"+Inf\"} 2\n\
             lat_sum 0.5\nlat_count 2\n"
        );
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
