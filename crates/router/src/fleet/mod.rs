//! The fleet: every server's state, and the background loops that keep it current (active
//! health checks, `/metrics` scrapes, model discovery), each over all servers in parallel.
//!
//! The request path reads a snapshot (`ArcSwap` of the server list) with one atomic load.

pub mod check;
pub mod health;
pub mod probe;
pub mod prom;
pub mod server;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Settings};
use crate::routing::Picker;
use crate::upstream::{self, Client};
use health::Transition;
pub use server::{InFlight, Models, Server};

pub struct Fleet {
    servers: ArcSwap<Vec<Arc<Server>>>,
    settings: ArcSwap<Settings>,
    picker: ArcSwap<Picker>,
    pub client: Client,
}

impl Fleet {
    pub fn new(config: &Config) -> Arc<Fleet> {
        let active = config.settings.enable_active_health_check;
        let servers = config
            .servers
            .iter()
            .map(|c| Arc::new(Server::new(c.clone(), active)))
            .collect();
        Arc::new(Fleet {
            servers: ArcSwap::from_pointee(servers),
            picker: ArcSwap::from_pointee(Picker::new(config.settings.routing_policy)),
            client: upstream::client(config.settings.connect_timeout),
            settings: ArcSwap::from_pointee(config.settings.clone()),
        })
    }

    pub fn servers(&self) -> Arc<Vec<Arc<Server>>> {
        self.servers.load_full()
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    pub fn picker(&self) -> Arc<Picker> {
        self.picker.load_full()
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
            let r = probe::check_health(&self.client, server, s.health_check_timeout).await;
            server.record_check(r, &s)
        } else {
            server.auto_recover(s.auto_recovery_threshold)
        };
        self.on_transition(server, t).await;
    }

    /// Logs a health change; a server that came back has its models rediscovered at once.
    pub async fn on_transition(&self, server: &Arc<Server>, t: Transition) {
        match t {
            Transition::None => {}
            Transition::BecameUnhealthy => {
                let why = server.health.lock().last_error.clone().unwrap_or_default();
                tracing::warn!(server = server.url(), reason = %why, "server unhealthy");
            }
            Transition::BecameHealthy => {
                tracing::info!(server = server.url(), "server healthy");
                self.discover(server).await;
            }
        }
    }

    async fn discover(&self, server: &Arc<Server>) {
        if server.cfg.models.is_some() {
            return;
        }
        let timeout = self.settings().health_check_timeout;
        let result = probe::discover_models(&self.client, server, timeout).await;
        let mut models = (**server.models.load()).clone();
        match result {
            Ok((ids, cards)) => {
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
        server.record_scrape(probe::scrape(&self.client, server, timeout).await);
    }

    /// Starts the health, metrics and model loops; they stop when `shutdown` is cancelled.
    pub fn spawn_loops(self: &Arc<Self>, shutdown: CancellationToken) {
        self.spawn_loop(
            shutdown.clone(),
            |s| s.health_check_interval,
            |fleet, server| Box::pin(async move { fleet.check(&server).await }),
        );
        self.spawn_loop(
            shutdown.clone(),
            |s| s.metrics_interval,
            |fleet, server| Box::pin(async move { fleet.scrape(&server).await }),
        );
        self.spawn_loop(
            shutdown,
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

    fn spawn_loop(
        self: &Arc<Self>,
        shutdown: CancellationToken,
        interval: fn(&Settings) -> Duration,
        task: fn(Arc<Fleet>, Arc<Server>) -> futures_util::future::BoxFuture<'static, ()>,
    ) {
        let fleet = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = interval(&fleet.settings());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
                let servers = fleet.servers();
                join_all(servers.iter().map(|s| task(fleet.clone(), s.clone()))).await;
            }
        });
    }
}
