//! The fleet: every server's state, and the background loops that keep it current (active
//! health checks, `/metrics` scrapes, model discovery), each over all servers in parallel.
//!
//! The request path reads a snapshot (`ArcSwap` of the server list) with one atomic load.

pub mod check;
pub mod dns;
pub mod events;
pub mod health;
pub mod kv_state;
pub mod kv_subscriber;
pub mod observer;
pub mod probe;
pub mod prom;
pub mod retry_budget;
pub mod server;
pub mod wait_queue;
pub mod window;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DnsServers, ServerConfig, Settings};
use crate::routing::{self, Policy, ServerChange};
use crate::upstream::Client;
use health::Transition;
use observer::FleetObserver;
pub use server::{InFlight, Models, Server};

/// The fleet's state: its servers (health, models, load figures, prefix indexes), the settings
/// and policy in force, and what happened to it lately. What serves requests (the HTTP client
/// for proxying, access control, the retry budget, metrics) lives in the app's state.
pub struct Fleet {
    servers: ArcSwap<Vec<Arc<Server>>>,
    /// Each configured model's tokenizer (`[models."NAME"] tokenizer`), loaded.
    tokenizers: ArcSwap<Tokenizers>,
    settings: ArcSwap<Settings>,
    /// The routing policy in force, with its state about each server.
    policy: ArcSwap<Box<dyn Policy>>,
    /// For health checks, model discovery and scrapes.
    prober: Client,
    /// Told about health changes and failed scrapes (the router's metrics).
    observer: Arc<dyn FleetObserver>,
    /// Servers notify it when a slot frees up (the app's wait queue).
    wait_queue: Arc<wait_queue::WaitQueue>,
    /// Recent health changes, reloads, retries and drains.
    pub events: events::EventLog,
    /// Wakes the background loops after a reload, so new intervals apply at once.
    wake: tokio::sync::Notify,
    /// The fleet as declared (the file, then admin changes): its `servers` and `dns` entries.
    /// Holding it serialises changes to the server list (reloads, admin add and remove, DNS
    /// answers), so that two read-change-apply sequences cannot interleave and lose one
    /// another's change.
    declared: parking_lot::Mutex<Config>,
    /// The last addresses each `dns` entry resolved to, by [`DnsServers::name`].
    resolved: parking_lot::Mutex<HashMap<String, Vec<IpAddr>>>,
    /// Wakes the DNS loop when a reload changed the `dns` entries.
    dns_changed: tokio::sync::Notify,
    /// Some server has the role `prefill` or `decode`: requests may take two legs. Read per
    /// request, so that a fleet that does not disaggregate pays one load for it.
    split_roles: std::sync::atomic::AtomicBool,
}

fn has_split_roles(servers: &[ServerConfig]) -> bool {
    servers
        .iter()
        .any(|c| c.role != crate::config::ServerRole::Both)
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
    /// `prober`: the HTTP client for probes; `observer`: told about health changes and failed
    /// scrapes; `wait_queue`: notified by servers when a slot frees up.
    pub fn new(
        config: &Config,
        prober: Client,
        observer: Arc<dyn FleetObserver>,
        wait_queue: Arc<wait_queue::WaitQueue>,
    ) -> Arc<Fleet> {
        let active = config.settings.enable_active_health_check;
        let servers: Vec<Arc<Server>> = config
            .servers
            .iter()
            .map(|c| Arc::new(Server::new(c.clone(), active, wait_queue.clone())))
            .collect();
        let policy = routing::build(config.settings.routing_policy);
        share_index_memory(&servers, &*policy, config);
        Arc::new(Fleet {
            tokenizers: ArcSwap::from_pointee(load_tokenizers(&config.settings, &Vec::new())),
            servers: ArcSwap::from_pointee(servers),
            policy: ArcSwap::from_pointee(policy),
            prober,
            observer,
            settings: ArcSwap::from_pointee(config.settings.clone()),
            wake: tokio::sync::Notify::new(),
            wait_queue,
            events: events::EventLog::default(),
            declared: parking_lot::Mutex::new(config.clone()),
            resolved: parking_lot::Mutex::new(HashMap::new()),
            dns_changed: tokio::sync::Notify::new(),
            split_roles: has_split_roles(&config.servers).into(),
        })
    }

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

    /// The `dns` entries declared now.
    pub fn dns_entries(&self) -> Vec<DnsServers> {
        self.declared.lock().dns.clone()
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
        let old = self.servers();
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
                    let s = Arc::new(Server::new(c.clone(), active, self.wait_queue.clone()));
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
        self.split_roles.store(
            has_split_roles(&config.servers),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.servers.store(Arc::new(next));
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
        let old_settings = self.settings();
        if *old_settings != config.settings {
            summary.settings_changed = true;
            if old_settings.tokenizers != config.settings.tokenizers {
                let kept = self.tokenizers.load_full();
                self.tokenizers
                    .store(Arc::new(load_tokenizers(&config.settings, &kept)));
            }
            if old_settings.connect_timeout != config.settings.connect_timeout {
                tracing::warn!("connect_timeout changes apply after a restart");
            }
            self.settings.store(Arc::new(config.settings.clone()));
            if self.policy().kind() != config.settings.routing_policy {
                self.policy
                    .store(Arc::new(routing::build(config.settings.routing_policy)));
            }
        }
        share_index_memory(&self.servers(), &**self.policy(), config);
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

    /// Adds one server at run time (the admin API); `Err` if its URL is already in the fleet.
    pub fn add_server(self: &Arc<Self>, cfg: ServerConfig) -> Result<(), String> {
        let mut declared = self.declared.lock();
        if self.servers().iter().any(|s| s.url() == cfg.url) {
            return Err(format!("server {} is already in the fleet", cfg.url));
        }
        declared.servers.push(cfg);
        self.apply_locked(&self.expand(&declared));
        Ok(())
    }

    /// Removes one server at run time; `Err` if no server has that URL.
    pub fn remove_server(self: &Arc<Self>, url: &str) -> Result<(), String> {
        let mut declared = self.declared.lock();
        let before = declared.servers.len();
        declared.servers.retain(|s| s.url != url);
        if declared.servers.len() == before {
            return Err(if self.servers().iter().any(|s| s.url() == url) {
                format!(
                    "{url} comes from a `dns` entry: it leaves when its name stops resolving to it (drain it meanwhile)"
                )
            } else {
                format!("no server {url} in the fleet")
            });
        }
        self.apply_locked(&self.expand(&declared));
        Ok(())
    }

    /// Drains a server (no new requests; in-flight ones finish) or puts it back in rotation.
    /// Returns its in-flight count; `Err` if no server has that URL.
    pub fn set_draining(&self, url: &str, drain: bool) -> Result<usize, String> {
        let servers = self.servers();
        let s = servers
            .iter()
            .find(|s| s.url() == url)
            .ok_or_else(|| format!("no server {url} in the fleet"))?;
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

    /// The fleet as declared: the listed servers, the `dns` entries and the current `[config]`.
    pub fn current_config(&self) -> Config {
        self.declared.lock().clone()
    }

    /// Whether some server is a `prefill` or `decode` server (see [`crate::proxy::disaggregated`]).
    pub fn has_split_roles(&self) -> bool {
        self.split_roles.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn servers(&self) -> Arc<Vec<Arc<Server>>> {
        self.servers.load_full()
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// `model`'s tokenizer, if one is configured and loaded.
    pub fn tokenizer(&self, model: &str) -> Option<Arc<crate::tokenizer::ModelTokenizer>> {
        self.tokenizers
            .load()
            .iter()
            .find(|(m, _, _)| m == model)
            .map(|(_, _, t)| t.clone())
    }

    pub fn policy(&self) -> Arc<Box<dyn Policy>> {
        self.policy.load_full()
    }

    /// How old a scrape may be and still steer routing.
    pub fn metrics_max_age(&self) -> Duration {
        let s = self.settings.load();
        (s.metrics_interval * 3).max(s.metrics_timeout + s.metrics_interval)
    }

    /// Every model some server serves (healthy or not), sorted.
    pub fn all_models(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .servers
            .load()
            .iter()
            .flat_map(|s| s.model_ids())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// One round of everything: health, models and metrics of every server, in parallel.
    /// Run before serving so that the first request already knows the fleet.
    pub async fn probe_all(&self) {
        let servers = self.servers();
        join_all(servers.iter().map(|s| async move {
            tokio::join!(self.check(s), self.discover(s), self.scrape(s));
        }))
        .await;
    }

    async fn check(&self, server: &Arc<Server>) {
        let s = self.settings();
        let t = if s.enable_active_health_check {
            let r = probe::check_health(&self.prober, server, s.health_check_timeout).await;
            server.record_check(r, &s)
        } else {
            server.auto_recover(s.auto_recovery_threshold)
        };
        self.on_transition(server, t).await;
    }

    /// Notes a health change among the events and tells the observer; a server that came back
    /// has its models rediscovered at once.
    pub async fn on_transition(&self, server: &Arc<Server>, t: Transition) {
        self.note_transition(server, t);
        if t == Transition::BecameHealthy {
            self.discover(server).await;
        }
    }

    /// [`Fleet::on_transition`] without the rediscovery (for synchronous callers).
    pub fn note_transition(&self, server: &Server, t: Transition) {
        let message = match t {
            Transition::None => return,
            Transition::BecameHealthy => "in rotation".to_string(),
            Transition::BecameUnhealthy => {
                server.health.lock().last_error.clone().unwrap_or_default()
            }
        };
        let kind = if t == Transition::BecameHealthy {
            events::EventKind::Healthy
        } else {
            events::EventKind::Unhealthy
        };
        self.events.push(kind, Some(server.url()), message);
        if t == Transition::BecameUnhealthy {
            // It may come back with an empty cache: what it held is not worth believing.
            self.policy()
                .server_changed(server.id(), ServerChange::Down);
        }
        self.observer.server_transition(server, t);
    }

    /// Fetches the server's model list now (after a LoRA adapter was loaded or unloaded, say).
    pub async fn refresh_models(&self, server: &Arc<Server>) {
        self.discover(server).await;
    }

    /// Fetches the server's model cards; for a server with a static `models` list the cards only
    /// feed `/v1/models`, routing uses the list.
    async fn discover(&self, server: &Arc<Server>) {
        let timeout = self.settings().health_check_timeout;
        let result = probe::discover_models(&self.prober, server, timeout).await;
        let mut models = (**server.models.load()).clone();
        match result {
            Ok((mut ids, mut cards)) => {
                let max = self.settings().max_models_per_server;
                let listed = ids.len();
                let was_truncated = models.truncated_from.is_some();
                models.truncated_from = (listed > max).then_some(listed);
                ids.truncate(max);
                models.index = ids.iter().cloned().collect();
                if listed > max {
                    if !was_truncated {
                        tracing::warn!(
                            server = server.url(),
                            "the server lists {listed} models; the router takes the first {max} (max_models_per_server)"
                        );
                    }
                    let index = &models.index;
                    cards.retain(|c| {
                        c.get("id")
                            .and_then(serde_json::Value::as_str)
                            .is_some_and(|id| index.contains(id))
                    });
                }
                models.ids = ids;
                models.cards = cards;
                models.updated = Some(SystemTime::now());
                models.last_error = None;
            }
            // Keep what we knew: a model list does not go stale the way load figures do.
            Err(e) => models.last_error = Some(e),
        }
        server.models.store(Arc::new(models));
    }

    async fn scrape(&self, server: &Arc<Server>) {
        let timeout = self.settings().metrics_timeout;
        let result = probe::scrape(&self.prober, server, timeout).await;
        if result.is_err() {
            self.observer.scrape_failed(server);
        }
        let policy = self.policy();
        for change in server.record_scrape(result) {
            policy.server_changed(server.id(), change);
        }
    }

    /// Starts the health, metrics and model loops; they stop when `shutdown` is cancelled.
    pub fn spawn_loops(self: &Arc<Self>, shutdown: CancellationToken) {
        dns::spawn(self.clone(), shutdown.clone());
        kv_subscriber::spawn(self.clone(), shutdown.clone());
        self.spawn_loop(
            shutdown.clone(),
            ProbeKind::Health,
            |s| s.health_check_interval,
            |fleet, server| Box::pin(async move { fleet.check(&server).await }),
        );
        self.spawn_loop(
            shutdown.clone(),
            ProbeKind::Metrics,
            |s| s.metrics_interval,
            |fleet, server| Box::pin(async move { fleet.scrape(&server).await }),
        );
        self.spawn_loop(
            shutdown,
            ProbeKind::Models,
            |s| s.models_refresh_interval,
            |fleet, server| {
                Box::pin(async move {
                    if server.is_healthy() {
                        fleet.discover(&server).await;
                    }
                })
            },
        );
    }

    /// Every `interval`, starts a probe of each server whose previous probe of this kind has
    /// finished. Each server's probe runs on its own task: a hung server (its probe waiting for
    /// its time-out) delays no other server's, and is not probed twice at once.
    fn spawn_loop(
        self: &Arc<Self>,
        shutdown: CancellationToken,
        kind: ProbeKind,
        interval: fn(&Settings) -> Duration,
        task: fn(Arc<Fleet>, Arc<Server>) -> futures_util::future::BoxFuture<'static, ()>,
    ) {
        let fleet = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = interval(&fleet.settings());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = fleet.wake.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
                for server in fleet.servers().iter() {
                    let Some(running) = server.start_probe(kind) else {
                        continue;
                    };
                    let probe = task(fleet.clone(), server.clone());
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = probe => {}
                            _ = shutdown.cancelled() => {}
                        }
                        drop(running);
                    });
                }
            }
        });
    }
}

pub use server::ProbeKind;

/// Each model's tokenizer, by name, with the directory it came from.
pub type Tokenizers = Vec<(
    String,
    std::path::PathBuf,
    Arc<crate::tokenizer::ModelTokenizer>,
)>;

/// Loads the tokenizers `settings` name, reusing those of `kept` from the same directory. One
/// that cannot be loaded is logged and left out: its model is matched approximately.
fn load_tokenizers(settings: &Settings, kept: &Tokenizers) -> Tokenizers {
    let mut out = Vec::new();
    for (model, dir) in &settings.tokenizers {
        if let Some((_, _, t)) = kept.iter().find(|(m, d, _)| m == model && d == dir) {
            out.push((model.clone(), dir.clone(), t.clone()));
            continue;
        }
        match crate::tokenizer::ModelTokenizer::load(dir) {
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
fn share_index_memory(servers: &[Arc<Server>], policy: &dyn Policy, config: &Config) {
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
