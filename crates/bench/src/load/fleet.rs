//! What the servers say about a run: their prefix-cache hit counters (each server's own
//! `/metrics`) and, behind mvllm, how many requests each server answered (the router's
//! `mvllm_requests_total`). Read before and after; the report shows the differences.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::client::{HttpClient, get_text};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetCounters {
    /// Per server URL: (prefix-cache hits, queries), in tokens.
    pub prefix: BTreeMap<String, (f64, f64)>,
    /// Per server URL: requests the router sent it (empty when the target is not mvllm).
    pub requests: BTreeMap<String, f64>,
}

impl FleetCounters {
    /// Reads the servers behind `target` (from mvllm's `/load-stats`), or `target` itself when
    /// it is a server.
    pub async fn read(client: &HttpClient, target: &str) -> FleetCounters {
        let servers: Vec<String> = match get_text(client, &format!("{target}/load-stats")).await {
            Ok(text) => serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v["servers"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|s| s["url"].as_str().map(str::to_string))
                            .collect()
                    })
                })
                .unwrap_or_else(|| vec![target.to_string()]),
            Err(_) => vec![target.to_string()],
        };
        let mut out = FleetCounters::read_servers(client, &servers).await;
        if let Ok(text) = get_text(client, &format!("{target}/metrics")).await {
            out.requests = requests_by_server(&text);
        }
        out
    }

    /// Reads the prefix-cache counters of these servers.
    pub async fn read_servers(client: &HttpClient, servers: &[String]) -> FleetCounters {
        let mut out = FleetCounters::default();
        for s in servers.iter().cloned() {
            if let Ok(text) = get_text(client, &format!("{s}/metrics")).await
                && let Ok(m) = mvllm_router::fleet::prom::parse(&text)
            {
                out.prefix
                    .insert(s, (m.prefix_cache_hits, m.prefix_cache_queries));
            }
        }
        out
    }

    /// What happened between `before` and `self`: per-server request counts, and the fleet's
    /// prefix-cache (hits, queries).
    pub fn since(&self, before: &FleetCounters) -> (BTreeMap<String, f64>, (f64, f64)) {
        let requests = self
            .requests
            .iter()
            .map(|(s, n)| {
                (
                    s.clone(),
                    n - before.requests.get(s).copied().unwrap_or(0.0),
                )
            })
            .filter(|(_, n)| *n > 0.0)
            .collect();
        let mut prefix = (0.0, 0.0);
        for (s, (h, q)) in &self.prefix {
            let (h0, q0) = before.prefix.get(s).copied().unwrap_or((0.0, 0.0));
            // A counter that went down means the server restarted: count from zero.
            prefix.0 += if *h >= h0 { h - h0 } else { *h };
            prefix.1 += if *q >= q0 { q - q0 } else { *q };
        }
        (requests, prefix)
    }
}

/// Sums `mvllm_requests_total` by its `server` label (the router itself is "none").
fn requests_by_server(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("mvllm_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let server = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("server=\""))
            .map(|v| v.trim_end_matches('"'));
        if let (Some(server), Ok(v)) = (server, value.trim().parse::<f64>())
            && server != "none"
        {
            *out.entry(server.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_summed_by_server() {
        let text = "# TYPE mvllm_requests counter\n\
            mvllm_requests_total{route=\"chat_completions\",model=\"m\",server=\"http://a:1\",status=\"200\"} 5\n\
            mvllm_requests_total{route=\"completions\",model=\"m\",server=\"http://a:1\",status=\"503\"} 2\n\
            mvllm_requests_total{route=\"chat_completions\",model=\"none\",server=\"none\",status=\"404\"} 9\n\
            mvllm_requests_total{route=\"chat_completions\",model=\"m\",server=\"http://b:1\",status=\"200\"} 1\n";
        let m = requests_by_server(text);
        assert_eq!(m.get("http://a:1"), Some(&7.0));
        assert_eq!(m.get("http://b:1"), Some(&1.0));
        assert_eq!(m.len(), 2);
    }
}
