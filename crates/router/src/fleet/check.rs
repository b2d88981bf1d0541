//! `mvllm check-config`: probe every configured server once and say what works.
//!
//! Why: the Python mvllm's check-config never contacted a server, so a typo in a URL or a
//! missing API key surfaced only under traffic. Each server is probed in parallel for
//! reachability and `/health`, its served models (`/v1/models`) and a readable `/metrics`.

use futures_util::future::join_all;

use super::probe::{self, ProbeError};
use super::prom::ServerMetrics;
use super::server::Server;
use crate::config::Config;
use crate::upstream;

pub struct ServerReport {
    pub url: String,
    pub health: Result<f64, ProbeError>,
    pub models: Result<Vec<String>, ProbeError>,
    pub metrics: Result<ServerMetrics, ProbeError>,
    /// Models the config lists for this server that it does not serve.
    pub missing_models: Vec<String>,
}

impl ServerReport {
    pub fn ok(&self) -> bool {
        self.health.is_ok()
            && self.models.is_ok()
            && self.metrics.is_ok()
            && self.missing_models.is_empty()
    }

    pub fn render(&self) -> String {
        let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
        let mut out = format!("{} {}\n", mark(self.ok()), self.url);
        out += &match &self.health {
            Ok(t) => format!("       health   ok ({:.1} ms)\n", t * 1e3),
            Err(e) => format!("       health   FAIL: {e}\n"),
        };
        out += &match &self.models {
            Ok(m) => format!(
                "       models   {}\n",
                if m.is_empty() {
                    "(none)".to_string()
                } else {
                    m.join(", ")
                }
            ),
            Err(e) => format!("       models   FAIL: {e}\n"),
        };
        if !self.missing_models.is_empty() {
            out += &format!(
                "       models   FAIL: configured but not served: {}\n",
                self.missing_models.join(", ")
            );
        }
        out += &match &self.metrics {
            Ok(m) => format!(
                "       metrics  ok (running {}, waiting {}, KV cache {:.0}%)",
                m.running,
                m.waiting,
                m.kv_usage * 100.0
            ),
            Err(e) => format!("       metrics  FAIL: {e}"),
        };
        out
    }
}

/// What one `dns` entry resolved to.
pub struct DnsReport {
    pub name: String,
    pub addresses: Result<Vec<std::net::IpAddr>, crate::resolver::ResolveError>,
}

impl DnsReport {
    pub fn ok(&self) -> bool {
        self.addresses.as_ref().is_ok_and(|a| !a.is_empty())
    }

    pub fn render(&self) -> String {
        match &self.addresses {
            Ok(a) if !a.is_empty() => {
                let list: Vec<String> = a.iter().map(ToString::to_string).collect();
                format!("ok   dns {}: {}", self.name, list.join(", "))
            }
            Ok(_) => format!("FAIL dns {}: the name has no address", self.name),
            Err(e) => format!("FAIL dns {}: {e}", self.name),
        }
    }
}

/// Resolves every `dns` entry (each address then checked as a server).
pub async fn resolve_all(config: &Config) -> Vec<DnsReport> {
    if config.dns.is_empty() {
        return Vec::new();
    }
    let resolver = match crate::resolver::resolver(config.settings.dns_server) {
        Ok(r) => r,
        Err(e) => {
            return config
                .dns
                .iter()
                .map(|d| DnsReport {
                    name: d.name(),
                    addresses: Err(e.clone()),
                })
                .collect();
        }
    };
    join_all(config.dns.iter().map(|d| {
        let resolver = &resolver;
        async move {
            DnsReport {
                name: d.name(),
                addresses: crate::resolver::lookup(resolver, &d.host).await,
            }
        }
    }))
    .await
}

/// Checks every listed server, and every address the `dns` entries resolve to.
pub async fn check_all(config: &Config, dns: &[DnsReport]) -> Vec<ServerReport> {
    let s = &config.settings;
    let client = upstream::client(s.connect_timeout, s.tls_ca_file.as_deref(), s.dns_server);
    let mut servers = config.servers.clone();
    for (entry, report) in config.dns.iter().zip(dns) {
        for ip in report.addresses.iter().flatten() {
            servers.push(entry.server_at(*ip));
        }
    }
    join_all(servers.iter().map(|cfg| {
        let client = client.clone();
        async move {
            let server = Server::new(
                cfg.clone(),
                true,
                std::sync::Arc::new(super::slots::NobodyWaits),
            );
            let (health, models, metrics) = tokio::join!(
                probe::check_health(&client, &server, s.health_check_timeout),
                probe::discover_models(&client, &server, s.health_check_timeout),
                probe::scrape(
                    &client,
                    &server,
                    s.health_check_timeout.max(s.metrics_timeout)
                ),
            );
            let models = models.map(|(ids, _)| ids);
            let missing_models = match (&cfg.models, &models) {
                (Some(listed), Ok(served)) => listed
                    .iter()
                    .filter(|m| !served.contains(m))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            ServerReport {
                url: cfg.url.clone(),
                health,
                models,
                metrics,
                missing_models,
            }
        }
    }))
    .await
}
