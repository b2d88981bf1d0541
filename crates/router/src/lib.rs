//! `mvllm-router`: the router as a library, so tests and the `mvllm` binary start it the same
//! way. [`start`] binds, probes the fleet once, starts the background loops and serves.

pub mod api;
pub mod app;
pub mod config;
pub mod fleet;
pub mod proxy;
pub mod routing;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError, Settings};
pub use fleet::Fleet;

/// A running router. Dropping it stops it.
pub struct RouterHandle {
    pub addr: SocketAddr,
    pub fleet: Arc<Fleet>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RouterHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish, and returns when it has stopped.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for RouterHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the router on `listener` with `config`: one round of probes first (health, models,
/// metrics), so the first request already knows the fleet.
pub async fn start(config: &Config, listener: TcpListener) -> std::io::Result<RouterHandle> {
    let addr = listener.local_addr()?;
    let fleet = Fleet::new(config);
    fleet.probe_all().await;
    let shutdown = CancellationToken::new();
    fleet.spawn_loops(shutdown.clone());
    let app = app::app(Arc::new(app::AppState {
        fleet: fleet.clone(),
        affinity: Default::default(),
    }));
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    Ok(RouterHandle {
        addr,
        fleet,
        shutdown,
        task: Some(task),
    })
}
