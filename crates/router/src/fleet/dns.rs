//! DNS discovery: a server entry `{ dns = "name:port", ... }` stands for one server per A/AAAA
//! record of the name, resolved again every `dns_refresh_interval`.
//!
//! Why: this is how a Kubernetes headless Service, a Compose service scaled to several replicas
//! or a Consul name list their members; servers come and go without anyone editing
//! `servers.toml`. An address that appears joins like a server added by a reload (probed at
//! once, taking traffic once healthy); one that vanishes leaves like a removed server (no new
//! requests, its in-flight ones finish). A lookup that fails (time-out, server failure) keeps
//! the last answer: a DNS hiccup must not empty the fleet. A name that does not exist or has no
//! address is an answer: its servers leave.
//!
//! Resolution is hickory's, with the system's configuration (`/etc/resolv.conf`, search domains
//! and `ndots` as in Kubernetes pods, `/etc/hosts`), or with `[config] dns_server` asked
//! instead. Answers are not cached between rounds: each round asks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::join_all;
use hickory_resolver::TokioResolver;
use tokio_util::sync::CancellationToken;

use super::Fleet;
use crate::resolver::{ResolveError, lookup, resolver};

/// One round: resolves every `dns` entry in parallel and applies the answers.
pub async fn refresh(
    fleet: &Arc<Fleet>,
    resolver: &TokioResolver,
    errors: &mut HashMap<String, ResolveError>,
) {
    let entries = fleet.dns_entries();
    let answers = join_all(
        entries
            .iter()
            .map(|e| async move { (e.name(), &e.host, lookup(resolver, &e.host).await) }),
    )
    .await;
    for (name, host, answer) in answers {
        match answer {
            Ok(addrs) => {
                if errors.remove(&name).is_some() {
                    tracing::info!(dns = %name, "resolves again");
                    fleet.events.push(
                        super::events::EventKind::Dns,
                        None,
                        format!("dns {name}: resolves again"),
                    );
                }
                if addrs.is_empty() {
                    tracing::warn!(dns = %name, "cannot resolve {host}: the name has no address");
                }
                let count = addrs.len();
                if let Some(summary) = fleet.set_resolved(&name, addrs) {
                    tracing::info!(
                        dns = %name, addresses = count, joined = ?summary.added, left = ?summary.removed,
                        "dns answer changed"
                    );
                }
            }
            Err(e) => {
                if errors.get(&name) != Some(&e) {
                    tracing::warn!(dns = %name, "{e}; keeping its last answer");
                    fleet.events.push(
                        super::events::EventKind::Dns,
                        None,
                        format!("dns {name}: {e}; its last answer is kept"),
                    );
                    errors.insert(name, e);
                }
            }
        }
    }
}

/// Resolves the `dns` entries every `dns_refresh_interval`, and at once after a reload that
/// changed them, until `shutdown`.
pub fn spawn(fleet: Arc<Fleet>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut current: Option<(Option<SocketAddr>, TokioResolver)> = None;
        let mut errors = HashMap::new();
        loop {
            let settings = fleet.settings();
            if !fleet.dns_entries().is_empty() {
                if current.as_ref().map(|c| c.0) != Some(settings.dns_server) {
                    current = match resolver(settings.dns_server) {
                        Ok(r) => Some((settings.dns_server, r)),
                        Err(e) => {
                            tracing::error!("dns discovery: {e}");
                            None
                        }
                    };
                }
                if let Some((_, r)) = &current {
                    refresh(&fleet, r, &mut errors).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(settings.dns_refresh_interval) => {}
                _ = fleet.dns_changed.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
}
