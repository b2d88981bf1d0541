//! Hot reload: one path for every trigger (the file changing, SIGHUP, `POST /admin/reload`).
//!
//! Why: operators edit the server list while traffic flows. The new file is parsed and
//! validated first; an invalid file leaves the running config in place, is logged and counted,
//! and `/admin/reload` answers 400 with the reason. A valid one is applied as a diff
//! ([`Fleet::apply`]), so nothing is forgotten. File events are debounced, and the parent
//! directory is watched because editors replace files rather than write them; a poll of the
//! file's contents every `config_reload_interval` catches what events miss.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::xxh3_64;

use arc_swap::ArcSwap;

use crate::admission::access::Access;
use crate::admission::tenants::Tenants;
use crate::config::{Config, ConfigError};
use crate::fleet::events::EventKind;
use crate::fleet::{Fleet, ReloadSummary};
use crate::metrics::labels::ResultLabels;
use crate::telemetry::Telemetry;

/// File events closer together than this are one change.
const DEBOUNCE: Duration = Duration::from_millis(150);

pub struct Reloader {
    path: Option<PathBuf>,
    fleet: Arc<Fleet>,
    telemetry: Arc<Telemetry>,
    /// Rebuilt when `[auth]` changes, keeping the live state of keys that stay.
    access: Arc<ArcSwap<Access>>,
    /// Rebuilt when `[auth]` changes, keeping the buckets of tenants that stay.
    tenants: Arc<ArcSwap<Tenants>>,
    /// Hash of the file as last applied (or last refused), to skip no-op events.
    last_hash: Mutex<Option<u64>>,
    /// Serialises reloads.
    lock: tokio::sync::Mutex<()>,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl Reloader {
    pub fn new(
        path: Option<PathBuf>,
        fleet: Arc<Fleet>,
        telemetry: Arc<Telemetry>,
        access: Arc<ArcSwap<Access>>,
        tenants: Arc<ArcSwap<Tenants>>,
    ) -> Arc<Self> {
        let hash = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| xxh3_64(&b));
        Arc::new(Reloader {
            path,
            fleet,
            telemetry,
            access,
            tenants,
            last_hash: Mutex::new(hash),
            lock: tokio::sync::Mutex::new(()),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads, validates and applies the config file, whatever its contents.
    pub async fn reload(&self) -> Result<ReloadSummary, ConfigError> {
        let _one_at_a_time = self.lock.lock().await;
        let Some(path) = &self.path else {
            return Err(ConfigError {
                file: "-".into(),
                line: 0,
                column: 0,
                message: "the router was started without a config file".into(),
            });
        };
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| ConfigError {
                file: path.display().to_string(),
                line: 0,
                column: 0,
                message: format!("cannot read the config file: {e}"),
            });
        let result = text.and_then(|t| {
            *self.last_hash.lock() = Some(xxh3_64(t.as_bytes()));
            Config::parse(&t, &path.display().to_string())
        });
        match result {
            Ok(config) => {
                let auth_changed = self.fleet.settings().auth != config.settings.auth;
                let summary = self.fleet.apply(&config);
                if auth_changed {
                    let previous = self.access.load_full();
                    self.access.store(Arc::new(Access::new(
                        &config.settings.auth,
                        Some(&previous),
                    )));
                    let previous = self.tenants.load_full();
                    self.tenants.store(Arc::new(Tenants::new(
                        &config.settings.auth,
                        Some(&previous),
                    )));
                }
                self.succeeded.fetch_add(1, Ordering::Relaxed);
                self.telemetry
                    .reloads
                    .get_or_create(&ResultLabels { result: "success" })
                    .inc();
                *self.last_error.lock() = None;
                self.fleet.events.push(
                    EventKind::Reload,
                    None,
                    format!(
                        "config reloaded: {} added, {} removed, {} changed{}",
                        summary.added.len(),
                        summary.removed.len(),
                        summary.changed.len(),
                        if summary.settings_changed {
                            ", settings changed"
                        } else {
                            ""
                        }
                    ),
                );
                tracing::info!(
                    added = ?summary.added, removed = ?summary.removed, changed = ?summary.changed,
                    settings_changed = summary.settings_changed, "config reloaded"
                );
                Ok(summary)
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.telemetry
                    .reloads
                    .get_or_create(&ResultLabels { result: "failure" })
                    .inc();
                *self.last_error.lock() = Some(e.to_string());
                self.fleet.events.push(
                    EventKind::ReloadFailed,
                    None,
                    format!("reload refused: {e}"),
                );
                tracing::error!("config reload refused, the running config stays: {e}");
                Err(e)
            }
        }
    }

    /// Reloads only if the file's contents differ from what was last read.
    async fn reload_if_changed(&self) {
        let Some(path) = &self.path else { return };
        let Ok(bytes) = tokio::fs::read(path).await else {
            return;
        };
        if *self.last_hash.lock() != Some(xxh3_64(&bytes)) {
            let _ = self.reload().await;
        }
    }

    /// Watches the file (events, a periodic poll, and SIGHUP on Unix) until `shutdown`.
    pub fn spawn_watch(self: &Arc<Self>, shutdown: CancellationToken) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let file_name = path.file_name().map(|n| n.to_os_string());
        let watched_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        // The file itself, or Kubernetes' `..data` symlink: a mounted ConfigMap is updated by
        // writing a new `..<timestamp>` directory and renaming `..data_tmp` over `..data`, which
        // `servers.toml -> ..data/servers.toml` points through; the file's own name never shows.
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(e) = event
                && e.paths.iter().any(|p| {
                    p.file_name().is_some_and(|n| {
                        Some(n) == file_name.as_deref() || n.as_encoded_bytes().starts_with(b"..")
                    })
                })
            {
                let _ = tx.send(());
            }
        });
        let watcher = match watcher {
            Ok(mut w) => {
                use notify::Watcher;
                match w.watch(&watched_dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => Some(w),
                    Err(e) => {
                        tracing::warn!(
                            "cannot watch {}: {e}; polling every config_reload_interval",
                            watched_dir.display()
                        );
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!("no file watcher: {e}; polling every config_reload_interval");
                None
            }
        };
        // Registered before this returns, not in the task: a SIGHUP that arrives once the
        // router answers must reload it, never kill it (the default action) because the task
        // had not run yet.
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let me = self.clone();
        tokio::spawn(async move {
            let _keep_watching = watcher;
            loop {
                let poll = me.fleet.settings().config_reload_interval;
                #[cfg(unix)]
                let sighup = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let sighup = std::future::pending::<Option<()>>();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(poll) => me.reload_if_changed().await,
                    _ = sighup => {
                        tracing::info!("SIGHUP: reloading the config");
                        let _ = me.reload().await;
                    }
                    Some(()) = rx.recv() => {
                        // Debounce: wait for the events to settle, then look at the contents.
                        while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                        me.reload_if_changed().await;
                    }
                }
            }
        });
    }
}
