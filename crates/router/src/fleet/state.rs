//! The fleet's state in one place: the current [`FleetView`] (servers, settings, policy,
//! tokenizers), the fleet as declared, recent events, and what the background loops share.
//!
//! Changes to it are in [`super::membership`] (reloads, admin changes, DNS answers); probing
//! the servers in [`super::probing`]; the loops in [`super::loops`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::events;
use super::observer::FleetObserver;
use super::server::Server;
use super::slots::SlotObserver;
use super::view::{FleetView, Tokenizers};
use crate::config::{Config, DnsServers, ServerConfig, Settings};
use crate::routing::{self, Policy};
use crate::upstream::Client;

/// The fleet's state: its servers (health, models, load figures, prefix indexes), the settings
/// and policy in force, and what happened to it lately. What guards and serves requests (the
/// HTTP client for proxying, admission, metrics) lives in the app's state.
pub struct Fleet {
    /// The servers, settings, policy and tokenizers in force, swapped whole on a change.
    pub(super) view: ArcSwap<FleetView>,
    /// For health checks, model discovery and scrapes.
    pub(super) prober: Client,
    /// Told about health changes and failed scrapes (the router's metrics).
    pub(super) observer: Arc<dyn FleetObserver>,
    /// Told by servers when a request ends and a slot frees up (the app's wait queue).
    pub(super) slots: Arc<dyn SlotObserver>,
    /// Recent health changes, reloads, retries and drains.
    pub events: events::EventLog,
    /// Wakes the background loops after a reload, so new intervals apply at once.
    pub(super) wake: tokio::sync::Notify,
    /// The fleet as declared (the file, then admin changes): its `servers` and `dns` entries.
    /// Holding it serialises changes to the server list (reloads, admin add and remove, DNS
    /// answers), so that two read-change-apply sequences cannot interleave and lose one
    /// another's change.
    pub(super) declared: parking_lot::Mutex<Config>,
    /// The last addresses each `dns` entry resolved to, by [`DnsServers::name`].
    pub(super) resolved: parking_lot::Mutex<HashMap<String, Vec<IpAddr>>>,
    /// Wakes the DNS loop when a reload changed the `dns` entries.
    pub(super) dns_changed: tokio::sync::Notify,
}

pub(super) fn has_split_roles(servers: &[ServerConfig]) -> bool {
    servers
        .iter()
        .any(|c| c.role != crate::config::ServerRole::Both)
}

impl Fleet {
    /// `prober`: the HTTP client for probes; `observer`: told about health changes and failed
    /// scrapes; `slots`: told by servers when a slot frees up.
    pub fn new(
        config: &Config,
        prober: Client,
        observer: Arc<dyn FleetObserver>,
        slots: Arc<dyn SlotObserver>,
    ) -> Arc<Fleet> {
        let active = config.settings.enable_active_health_check;
        let servers: Vec<Arc<Server>> = config
            .servers
            .iter()
            .map(|c| Arc::new(Server::new(c.clone(), active, slots.clone())))
            .collect();
        let policy = routing::build(config.settings.routing_policy);
        share_index_memory(&servers, &*policy, config);
        let view = FleetView {
            servers,
            settings: Arc::new(config.settings.clone()),
            policy: Arc::new(policy),
            decode_policy: Arc::new(routing::build(routing::PolicyKind::Adaptive)),
            tokenizers: Arc::new(load_tokenizers(&config.settings, &Vec::new())),
            split_roles: has_split_roles(&config.servers),
        };
        Arc::new(Fleet {
            view: ArcSwap::from_pointee(view),
            prober,
            observer,
            slots,
            wake: tokio::sync::Notify::new(),
            events: events::EventLog::default(),
            declared: parking_lot::Mutex::new(config.clone()),
            resolved: parking_lot::Mutex::new(HashMap::new()),
            dns_changed: tokio::sync::Notify::new(),
        })
    }

    /// The fleet as it is now, as one consistent value: a request takes it once.
    pub fn view(&self) -> Arc<FleetView> {
        self.view.load_full()
    }

    /// The `dns` entries declared now.
    pub fn dns_entries(&self) -> Vec<DnsServers> {
        self.declared.lock().dns.clone()
    }

    /// The fleet as declared: the listed servers, the `dns` entries and the current `[config]`.
    pub fn current_config(&self) -> Config {
        self.declared.lock().clone()
    }

    /// Whether some server is a `prefill` or `decode` server (see [`crate::proxy::disaggregated`]).
    pub fn has_split_roles(&self) -> bool {
        self.view.load().split_roles
    }

    /// The servers now (background loops and the API; a request uses its [`FleetView`]).
    pub fn servers(&self) -> Vec<Arc<Server>> {
        self.view.load().servers.clone()
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.view.load().settings.clone()
    }

    /// `model`'s tokenizer, if one is configured and loaded.
    pub fn tokenizer(&self, model: &str) -> Option<Arc<mvllm_tokenizer::ModelTokenizer>> {
        self.view.load().tokenizer(model).cloned()
    }

    pub fn policy(&self) -> Arc<Box<dyn Policy>> {
        self.view.load().policy.clone()
    }

    /// How old a scrape may be and still steer routing.
    pub fn metrics_max_age(&self) -> Duration {
        self.view.load().metrics_max_age()
    }

    /// Every model some server serves (healthy or not), sorted.
    pub fn all_models(&self) -> Vec<String> {
        self.view.load().all_models()
    }
}

/// Loads the tokenizers `settings` name, reusing those of `kept` from the same directory. One
/// that cannot be loaded is logged and left out: its model is matched approximately.
pub(super) fn load_tokenizers(settings: &Settings, kept: &Tokenizers) -> Tokenizers {
    let mut out = Vec::new();
    for (model, dir) in &settings.tokenizers {
        if let Some((_, _, t)) = kept.iter().find(|(m, d, _)| m == model && d == dir) {
            out.push((model.clone(), dir.clone(), t.clone()));
            continue;
        }
        match mvllm_tokenizer::ModelTokenizer::load(dir) {
            Ok(t) => out.push((model.clone(), dir.clone(), Arc::new(t))),
            Err(e) => {
                tracing::error!(%model, error = %e, "tokenizer not loaded: the model's prompts are matched approximately")
            }
        }
    }
    out
}

/// Gives each server's indexes their share of `prefix_index_bytes`: with KV events, half goes
/// to the exact indexes (split among the servers that publish), half to the policy's learned
/// ones (the fallback), so that all stay within the budget.
pub(super) fn share_index_memory(servers: &[Arc<Server>], policy: &dyn Policy, config: &Config) {
    let bytes = config.settings.prefix_index_bytes;
    let exact_servers = config
        .servers
        .iter()
        .filter(|c| c.kv_events.is_some())
        .count();
    let learned = if exact_servers > 0 { bytes / 2 } else { bytes };
    let exact_share =
        bytes / 2 / exact_servers.max(1) / routing::exact_index::BYTES_PER_EXACT_BLOCK;
    for s in servers {
        s.kv.index.lock().set_budget(exact_share);
    }
    policy.fleet_changed(&ids(servers), learned);
}

fn ids(servers: &[Arc<Server>]) -> Vec<routing::ServerId> {
    servers.iter().map(|s| s.id()).collect()
}
