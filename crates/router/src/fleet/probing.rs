//! Probing the servers: health checks, model discovery and `/metrics` scrapes, one server at a
//! time, and what a health change sets off (events, the observer, the policy told).

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::join_all;

use super::events;
use super::health::Transition;
use super::probe;
use super::server::Server;
use super::state::Fleet;
use crate::routing::ServerChange;

impl Fleet {
    /// One round of everything: health, models and metrics of every server, in parallel.
    /// Run before serving so that the first request already knows the fleet.
    pub async fn probe_all(&self) {
        let servers = self.servers();
        join_all(servers.iter().map(|s| async move {
            tokio::join!(self.check(s), self.discover(s), self.scrape(s));
        }))
        .await;
    }

    pub(super) async fn check(&self, server: &Arc<Server>) {
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
    pub(super) async fn discover(&self, server: &Arc<Server>) {
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
            Err(e) => models.last_error = Some(e.to_string()),
        }
        server.models.store(Arc::new(models));
    }

    pub(super) async fn scrape(&self, server: &Arc<Server>) {
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
}
