//! Changes to which servers the fleet has and how they are set up: a reloaded config applied as
//! a diff, servers added and removed through the admin API, DNS answers, drains.
//!
//! Every change to the server list holds the declared config's lock from read to apply, and
//! ends in one new [`FleetView`] stored whole.

use std::net::IpAddr;
use std::sync::Arc;

use super::events;
use super::server::Server;
use super::state::{Fleet, has_split_roles, load_tokenizers, share_index_memory};
use super::view::FleetView;
use crate::config::{Config, DnsServers, ServerConfig};
use crate::routing;

/// Why a change to the server list at run time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("server {0} is already in the fleet")]
    AlreadyInFleet(String),
    #[error("no server {0} in the fleet")]
    NotInFleet(String),
    #[error(
        "{0} comes from a `dns` entry: it leaves when its name stops resolving to it (drain it meanwhile)"
    )]
    FromDns(String),
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Kept, with a changed capacity, API key or model list.
    pub changed: Vec<String>,
    pub unchanged: usize,
    pub settings_changed: bool,
}

impl Fleet {
    /// Applies a new config as a diff. A server whose URL stays keeps its health, models, load
    /// figures and in-flight requests (its capacity, key and model list may change); an added
    /// server is probed at once and takes traffic once healthy; a removed one takes no new
    /// requests while its in-flight streams finish (they hold it). Settings apply at once.
    pub fn apply(self: &Arc<Self>, config: &Config) -> ReloadSummary {
        let mut declared = self.declared.lock();
        if declared.dns != config.dns {
            self.dns_changed.notify_one();
        }
        *declared = config.clone();
        let names: Vec<String> = config.dns.iter().map(DnsServers::name).collect();
        self.resolved.lock().retain(|name, _| names.contains(name));
        self.apply_locked(&self.expand(&declared))
    }

    /// The declared config with each `dns` entry replaced by a server per address it last
    /// resolved to (a URL also listed by itself is taken once, as listed).
    fn expand(&self, declared: &Config) -> Config {
        let resolved = self.resolved.lock();
        let mut out = Config {
            servers: declared.servers.clone(),
            dns: Vec::new(),
            settings: declared.settings.clone(),
        };
        for group in &declared.dns {
            for ip in resolved.get(&group.name()).into_iter().flatten() {
                let server = group.server_at(*ip);
                if !out.servers.iter().any(|s| s.url == server.url) {
                    out.servers.push(server);
                }
            }
        }
        out
    }

    /// A `dns` entry's new answer: addresses that appeared join (probed at once, taking traffic
    /// once healthy), addresses that vanished leave (no new requests; in-flight ones finish).
    /// `None` if nothing changed.
    pub fn set_resolved(
        self: &Arc<Self>,
        name: &str,
        mut addrs: Vec<IpAddr>,
    ) -> Option<ReloadSummary> {
        let declared = self.declared.lock();
        if !declared.dns.iter().any(|d| d.name() == name) {
            return None; // the entry was removed by a reload meanwhile
        }
        addrs.sort();
        addrs.dedup();
        {
            let mut resolved = self.resolved.lock();
            if resolved.get(name) == Some(&addrs) {
                return None;
            }
            resolved.insert(name.to_string(), addrs);
        }
        Some(self.apply_locked(&self.expand(&declared)))
    }

    fn apply_locked(self: &Arc<Self>, config: &Config) -> ReloadSummary {
        let old = self.view();
        let (servers, added, mut summary) = self.diff_servers(&old.servers, config);
        let mut view = FleetView {
            servers,
            settings: old.settings.clone(),
            policy: old.policy.clone(),
            decode_policy: old.decode_policy.clone(),
            tokenizers: old.tokenizers.clone(),
            split_roles: has_split_roles(&config.servers),
        };
        if *old.settings != config.settings {
            summary.settings_changed = true;
            if old.settings.tokenizers != config.settings.tokenizers {
                view.tokenizers = Arc::new(load_tokenizers(&config.settings, &old.tokenizers));
            }
            if old.settings.connect_timeout != config.settings.connect_timeout {
                tracing::warn!("connect_timeout changes apply after a restart");
            }
            view.settings = Arc::new(config.settings.clone());
            if old.policy.kind() != config.settings.routing_policy {
                view.policy = Arc::new(routing::build(config.settings.routing_policy));
            }
        }
        let view = Arc::new(view);
        self.view.store(view.clone());
        for url in &summary.added {
            self.events
                .push(events::EventKind::Added, Some(url), "added to the fleet");
        }
        for url in &summary.removed {
            self.events.push(
                events::EventKind::Removed,
                Some(url),
                "removed; its in-flight requests finish",
            );
        }
        share_index_memory(&view.servers, &**view.policy, config);
        for s in added {
            let fleet = self.clone();
            tokio::spawn(async move {
                tokio::join!(fleet.check(&s), fleet.discover(&s), fleet.scrape(&s));
            });
        }
        // New intervals apply at once; a reload that changed no setting costs no probe round
        // (added servers were probed above), so a burst of reloads is no burst of probes.
        if summary.settings_changed {
            self.wake.notify_waiters();
        }
        summary
    }

    /// The servers `config` lists: those whose URL stays are kept (their config updated), the
    /// others are new. Returns them, the new ones, and what changed.
    fn diff_servers(
        &self,
        old: &[Arc<Server>],
        config: &Config,
    ) -> (Vec<Arc<Server>>, Vec<Arc<Server>>, ReloadSummary) {
        let mut summary = ReloadSummary::default();
        let mut next = Vec::with_capacity(config.servers.len());
        let mut added = Vec::new();
        let active = config.settings.enable_active_health_check;
        for c in &config.servers {
            match old.iter().find(|s| s.url() == c.url) {
                Some(s) => {
                    if *s.config() == *c {
                        summary.unchanged += 1;
                    } else {
                        s.set_config(c.clone());
                        summary.changed.push(c.url.clone());
                    }
                    next.push(s.clone());
                }
                None => {
                    let s = Arc::new(Server::new(c.clone(), active, self.slots.clone()));
                    summary.added.push(c.url.clone());
                    added.push(s.clone());
                    next.push(s);
                }
            }
        }
        summary.removed = old
            .iter()
            .filter(|s| !config.servers.iter().any(|c| c.url == s.url()))
            .map(|s| s.url().to_string())
            .collect();
        (next, added, summary)
    }

    /// Adds one server at run time (the admin API); `Err` if its URL is already in the fleet.
    pub fn add_server(self: &Arc<Self>, cfg: ServerConfig) -> Result<(), MembershipError> {
        let mut declared = self.declared.lock();
        if self.servers().iter().any(|s| s.url() == cfg.url) {
            return Err(MembershipError::AlreadyInFleet(cfg.url));
        }
        declared.servers.push(cfg);
        self.apply_locked(&self.expand(&declared));
        Ok(())
    }

    /// Removes one server at run time; `Err` if no server has that URL.
    pub fn remove_server(self: &Arc<Self>, url: &str) -> Result<(), MembershipError> {
        let mut declared = self.declared.lock();
        let before = declared.servers.len();
        declared.servers.retain(|s| s.url != url);
        if declared.servers.len() == before {
            return Err(if self.servers().iter().any(|s| s.url() == url) {
                MembershipError::FromDns(url.to_string())
            } else {
                MembershipError::NotInFleet(url.to_string())
            });
        }
        self.apply_locked(&self.expand(&declared));
        Ok(())
    }

    /// Drains a server (no new requests; in-flight ones finish) or puts it back in rotation.
    /// Returns its in-flight count; `Err` if no server has that URL.
    pub fn set_draining(&self, url: &str, drain: bool) -> Result<usize, MembershipError> {
        let servers = self.servers();
        let s = servers
            .iter()
            .find(|s| s.url() == url)
            .ok_or_else(|| MembershipError::NotInFleet(url.to_string()))?;
        s.draining
            .store(drain, std::sync::atomic::Ordering::Relaxed);
        let (kind, what) = if drain {
            (events::EventKind::Drain, "draining")
        } else {
            (events::EventKind::Undrain, "undrained")
        };
        tracing::info!(server = %url, "server {what}");
        self.events.push(
            kind,
            Some(url),
            format!("{what} with {} in flight", s.in_flight()),
        );
        Ok(s.in_flight())
    }
}
