//! The fleet's background loops: health checks, `/metrics` scrapes and model discovery on
//! their intervals, DNS discovery and the KV-event subscribers; all stop when the fleet's
//! shutdown token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::server::{ProbeKind, Server};
use super::state::Fleet;
use super::{dns, kv_subscriber};
use crate::config::Settings;

impl Fleet {
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
