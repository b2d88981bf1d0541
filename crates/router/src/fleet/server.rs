//! One upstream server's live state, shared by the request path and the background loops.
//!
//! The request path reads it without waiting on anything slow: counters are atomics, the model
//! list is an `ArcSwap`, and the two small mutexes (health, last scrape) are held for a few
//! instructions and never across an `.await`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::time::Instant;

use super::health::{Health, Transition};
use super::prom::ServerMetrics;
use super::window::Window;
use crate::config::{ServerConfig, Settings};
use crate::routing::ServerChange;
use crate::routing::{Candidate, Scraped};

/// The models a server serves, as discovered from its `/v1/models`.
#[derive(Debug, Clone, Default)]
pub struct Models {
    pub ids: Vec<String>,
    /// `ids` as a set: routing asks "does it serve this model?" per request and per card.
    /// Hashed with foldhash: looked up several times per request (SipHash cost ~1,400
    /// instructions a request here).
    pub index: HashSet<String, foldhash::fast::RandomState>,
    /// How many models the server listed when that was more than `max_models_per_server`.
    pub truncated_from: Option<usize>,
    /// The cards as the server wrote them (served names and LoRA adapters).
    pub cards: Vec<Value>,
    pub updated: Option<SystemTime>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Scrape {
    pub metrics: Option<ServerMetrics>,
    /// The router's in-flight count to the server when `metrics` was read.
    pub in_flight_then: usize,
    /// When `metrics` was read.
    pub at: Option<Instant>,
    /// When `metrics` was last read, or when the server joined the fleet before that (what the
    /// Python mvllm showed as `last_updated`).
    pub wall_at: SystemTime,
    pub last_error: Option<String>,
    pub errors: u64,
    /// Output tokens per second between the last two successful scrapes.
    pub tokens_per_second: Option<f64>,
    /// Prefix-cache queries and output tokens at the last successful scrape, kept across failed
    /// ones: counters that went back mean the server restarted.
    pub counters: Option<(f64, f64)>,
    /// Seconds per output token, learned over scrapes (kept across failed ones).
    pub pace: super::pace::Pace,
    /// Whether its capacity is its real limit (kept across failed scrapes).
    pub limit: super::limit::CapacityLimit,
}

impl Scrape {
    /// The metrics, if read within `max_age` (older ones must not steer routing).
    pub fn fresh(&self, max_age: Duration) -> Option<ServerMetrics> {
        match (self.metrics, self.at) {
            (Some(m), Some(at)) if at.elapsed() <= max_age => Some(m),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct ServerStats {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub client_errors: AtomicU64,
    /// Answers 429 or 503 (overloaded).
    pub overloaded: AtomicU64,
}

/// How far back a server's live figures reach.
pub const LIVE_WINDOW_SECONDS: usize = 60;

/// How long a 429 or 503 lowers a server's share.
pub const OVERLOAD_PENALTY: Duration = Duration::from_secs(1);

/// A server's URL in parts, so request paths are appended structurally, never by string
/// concatenation (`http://host:8101` + `*` would address port 80).
#[derive(Debug, Clone)]
struct Target {
    scheme: hyper::http::uri::Scheme,
    authority: hyper::http::uri::Authority,
    /// The URL's own path (`/base` of `http://host/base`), without a trailing slash.
    base_path: String,
    /// The `Host` header the server gets, as hyper's client would write it (host, and the port
    /// unless the scheme's default), made once: hyper formats it per request otherwise.
    host: hyper::header::HeaderValue,
}

impl Target {
    fn parse(url: &str) -> Target {
        // The config validated the URL; an unparsable one cannot get here.
        let uri: hyper::Uri = url
            .parse()
            .expect("server URLs are validated by the config");
        let scheme = uri
            .scheme()
            .cloned()
            .unwrap_or(hyper::http::uri::Scheme::HTTP);
        let authority = uri.authority().cloned().expect("server URLs have a host");
        let default_port = if scheme == hyper::http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let host = match authority.port_u16() {
            Some(p) if p != default_port => format!("{}:{p}", authority.host()),
            _ => authority.host().to_string(),
        };
        Target {
            host: hyper::header::HeaderValue::from_str(&host)
                .expect("a URL's host is a header value"),
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
        }
    }
}

#[derive(Debug)]
pub struct Server {
    /// The server's identity: a reload that keeps the URL keeps the server and its state.
    /// Shared, so a metric label or log record takes a reference, not a copy, per request.
    url: Arc<str>,
    target: Target,
    /// Capacity, API key and static models, which a reload may change in place.
    cfg: ArcSwap<ServerConfig>,
    in_flight: AtomicUsize,
    /// Requests in flight that have not yet received their first response byte (queued or in
    /// prefill, for a stream; the whole request, for a non-streamed answer).
    awaiting_first_byte: AtomicUsize,
    healthy: AtomicBool,
    /// Half-open after an ejection: one request at a time (mirrors `health`).
    probing: AtomicBool,
    pub draining: AtomicBool,
    pub health: Mutex<Health>,
    /// Until when the server counts as overloaded after answering 429 or 503.
    overloaded_until: Mutex<Option<Instant>>,
    pub scrape: Mutex<Scrape>,
    pub models: ArcSwap<Models>,
    pub stats: ServerStats,
    /// Requests, errors and time to first token over the last minute (the dashboard's view).
    pub live: Mutex<Window>,
    /// Told when a request here ends (a slot freed up): the app's wait queue.
    slots: Arc<dyn super::slots::SlotObserver>,
    /// Which background probes of this server are running now (one of each kind at a time).
    probes_running: [AtomicBool; 3],
    /// This server's request and decision counters, kept once taken from their families.
    pub counters: crate::metrics::server_counters::ServerCounters,
    /// Estimated uncached prompt tokens of this router's requests here still in prefill.
    pending_prefill: AtomicU64,
    /// A hash of the URL: the server's id in rendezvous hashing, the same on every replica.
    id: u64,
    /// What its KV events say it caches, and whether that can be trusted now.
    pub kv: super::kv_state::KvState,
}

/// The background probes each server gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Health = 0,
    Metrics = 1,
    Models = 2,
}

/// A background probe of one server in progress; dropping it marks it finished.
pub struct ProbeRunning {
    server: Arc<Server>,
    kind: ProbeKind,
}

impl Drop for ProbeRunning {
    fn drop(&mut self) {
        self.server.probes_running[self.kind as usize].store(false, Ordering::Release);
    }
}

impl Server {
    pub fn new(
        cfg: ServerConfig,
        active_checks: bool,
        slots: Arc<dyn super::slots::SlotObserver>,
    ) -> Self {
        let health = if active_checks {
            Health::default()
        } else {
            Health::assumed_healthy()
        };
        let ids = cfg.models.clone().unwrap_or_default();
        let models = Models {
            index: ids.iter().cloned().collect(),
            ids,
            ..Default::default()
        };
        let target = Target::parse(&cfg.url);
        Server {
            healthy: AtomicBool::new(health.is_healthy()),
            probing: AtomicBool::new(false),
            health: Mutex::new(health),
            in_flight: AtomicUsize::new(0),
            awaiting_first_byte: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            scrape: Mutex::new(Scrape {
                metrics: None,
                in_flight_then: 0,
                at: None,
                wall_at: SystemTime::now(),
                last_error: None,
                errors: 0,
                tokens_per_second: None,
                counters: None,
                pace: Default::default(),
                limit: Default::default(),
            }),
            overloaded_until: Mutex::new(None),
            models: ArcSwap::from_pointee(models),
            stats: ServerStats::default(),
            live: Mutex::new(Window::new(LIVE_WINDOW_SECONDS)),
            slots,
            probes_running: Default::default(),
            counters: Default::default(),
            pending_prefill: AtomicU64::new(0),
            kv: Default::default(),
            id: xxhash_rust::xxh3::xxh3_64(cfg.url.as_bytes()),
            url: Arc::from(cfg.url.as_str()),
            target,
            cfg: ArcSwap::from_pointee(cfg),
        }
    }

    /// The address of `path_and_query` (origin-form, starting with `/`) on this server, built
    /// from its parts: the scheme and authority always the configured ones, whatever the path.
    pub fn uri_for(&self, path_and_query: &str) -> Result<hyper::Uri, String> {
        if !path_and_query.starts_with('/') {
            return Err(format!("`{path_and_query}` is not a path"));
        }
        let t = &self.target;
        let mut pq = String::with_capacity(t.base_path.len() + path_and_query.len());
        pq.push_str(&t.base_path);
        pq.push_str(path_and_query);
        hyper::Uri::builder()
            .scheme(t.scheme.clone())
            .authority(t.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| format!("cannot address `{path_and_query}` on the server: {e}"))
    }

    /// The `Host` header for requests to this server.
    pub fn host_header(&self) -> &hyper::header::HeaderValue {
        &self.target.host
    }

    /// The URL as a shared label value, borrowed (no reference count taken).
    pub fn url_shared(&self) -> &Arc<str> {
        &self.url
    }

    /// The URL as a shared label value (metrics, access records).
    pub fn url_label(&self) -> Arc<str> {
        self.url.clone()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Marks a background probe of `kind` as running, unless one already is.
    pub fn start_probe(self: &Arc<Self>, kind: ProbeKind) -> Option<ProbeRunning> {
        let flag = &self.probes_running[kind as usize];
        (!flag.swap(true, Ordering::AcqRel)).then(|| ProbeRunning {
            server: self.clone(),
            kind,
        })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.cfg.load_full()
    }

    /// Applies a reloaded config for this URL; health, models, load and in-flight are kept.
    pub fn set_config(&self, cfg: ServerConfig) {
        debug_assert_eq!(cfg.url, *self.url);
        self.cfg.store(Arc::new(cfg));
    }

    /// Its part in prefill/decode disaggregation.
    pub fn role(&self) -> crate::config::ServerRole {
        self.cfg.load().role
    }

    pub fn api_key(&self) -> Option<String> {
        self.cfg.load().api_key.clone()
    }

    pub fn capacity(&self) -> u32 {
        self.cfg.load().max_concurrent_requests
    }

    /// Whether the config lists this server's models (no discovery needed for routing).
    pub fn has_static_models(&self) -> bool {
        self.cfg.load().models.is_some()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Half-open after an ejection: takes a request only when it has none in flight.
    pub fn is_probing(&self) -> bool {
        self.probing.load(Ordering::Relaxed)
    }

    /// Ejected for failing requests, though its health checks pass: the last resort when every
    /// server is out (see `proxy::send`'s panic routing).
    pub fn ejected_but_reachable(&self) -> bool {
        let h = self.health.lock();
        !h.is_healthy() && h.ejections > 0 && h.consecutive_check_failures == 0
    }

    /// Whether it has room under its capacity for one more request now.
    pub fn has_free_slot(&self) -> bool {
        self.takes_requests() && self.in_flight() < self.capacity() as usize
    }

    /// Whether it can take a new request now (healthy, not draining, not a busy probe).
    pub fn takes_requests(&self) -> bool {
        self.is_healthy()
            && !self.draining.load(Ordering::Relaxed)
            && !(self.is_probing() && self.in_flight() > 0)
    }

    /// Publishes the health state machine's verdict to the atomics the request path reads.
    fn publish(&self, h: &Health) {
        self.healthy.store(h.is_healthy(), Ordering::Relaxed);
        self.probing.store(h.is_probing(), Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped (end of stream, error or client
    /// disconnect).
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.awaiting_first_byte.fetch_add(1, Ordering::Relaxed);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            server: self.clone(),
            awaiting_first_byte: true,
            prefill_tokens: 0,
        }
    }

    pub fn awaiting_first_byte(&self) -> usize {
        self.awaiting_first_byte.load(Ordering::Relaxed)
    }

    /// The server answered 429 or 503: it is busy, not broken. For [`OVERLOAD_PENALTY`] it
    /// weighs more in routing (see `routing::adaptive_score`) instead of being ejected.
    pub fn note_overloaded(&self) {
        self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
        *self.overloaded_until.lock() = Some(Instant::now() + OVERLOAD_PENALTY);
    }

    pub fn is_overloaded(&self) -> bool {
        self.overloaded_until
            .lock()
            .is_some_and(|t| Instant::now() < t)
    }

    /// Whether this server serves `model` (static list, else discovered).
    pub fn serves(&self, model: &str) -> bool {
        match &self.cfg.load().models {
            Some(list) => list.iter().any(|m| m == model),
            None => self.models.load().index.contains(model),
        }
    }

    /// The model ids routing uses for this server.
    pub fn model_ids(&self) -> Vec<String> {
        match &self.cfg.load().models {
            Some(list) => list.clone(),
            None => self.models.load().ids.clone(),
        }
    }

    /// The last scrape, if recent enough to trust.
    pub fn fresh_metrics(&self, max_age: Duration) -> Option<ServerMetrics> {
        self.scrape.lock().fresh(max_age)
    }

    /// Its stable id (the hash of its URL), the same on every router replica.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn candidate(&self, max_age: Duration) -> Candidate {
        let (scraped, seconds_per_token, capacity_is_limit) = {
            let s = self.scrape.lock();
            let scraped = s.fresh(max_age).map(|m| Scraped {
                running: m.running,
                waiting: m.waiting,
                kv_usage: m.kv_usage,
                in_flight_then: s.in_flight_then as f64,
            });
            (scraped, s.pace.seconds_per_token(), s.limit.is_real())
        };
        Candidate {
            id: self.id,
            pending_prefill_tokens: self.pending_prefill.load(Ordering::Relaxed) as f64,
            cached_tokens: 0.0,
            held_tokens: 0.0,
            exact_tokens: None,
            capacity: f64::from(self.capacity()),
            in_flight: self.in_flight() as f64,
            awaiting_first_byte: self.awaiting_first_byte() as f64,
            overloaded: self.is_overloaded(),
            scraped,
            seconds_per_token,
            capacity_is_limit,
        }
    }

    pub fn record_check(
        &self,
        result: Result<f64, super::probe_error::ProbeError>,
        s: &Settings,
    ) -> Transition {
        let mut h = self.health.lock();
        let t = h.record_check(result.map_err(|e| e.to_string()), s);
        self.publish(&h);
        t
    }

    pub fn record_failure(&self, why: String, s: &Settings) -> Transition {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let mut h = self.health.lock();
        let t = h.record_request_failure(why, s);
        self.publish(&h);
        t
    }

    pub fn record_success(&self) {
        let mut h = self.health.lock();
        h.record_request_success();
        self.publish(&h);
    }

    pub fn auto_recover(&self, after: Duration) -> Transition {
        let mut h = self.health.lock();
        let t = h.auto_recover(Instant::now(), after);
        self.publish(&h);
        t
    }

    /// Keeps a scrape's figures (or its failure). Returns what a routing policy should hear of
    /// it: the server restarted (its counters went back, so its cache is empty), and its cache's
    /// size and prefix-cache counters.
    pub fn record_scrape(
        &self,
        result: Result<ServerMetrics, super::probe_error::ProbeError>,
    ) -> Vec<ServerChange> {
        let mut s = self.scrape.lock();
        let mut changes = Vec::new();
        match result {
            Ok(m) => {
                let now = Instant::now();
                if s.counters.is_some_and(|(queries, tokens)| {
                    m.prefix_cache_queries < queries || m.generation_tokens < tokens
                }) {
                    changes.push(ServerChange::Restarted);
                }
                s.counters = Some((m.prefix_cache_queries, m.generation_tokens));
                changes.push(ServerChange::Scraped {
                    kv_cache_tokens: m.kv_cache_tokens as usize,
                    prefix_hits: m.prefix_cache_hits,
                    prefix_queries: m.prefix_cache_queries,
                });
                match s.metrics {
                    Some(prev) => s.pace.observe(&prev, &m),
                    None => s.pace.start(&m),
                }
                s.limit.observe(&m, f64::from(self.capacity()));
                s.tokens_per_second = match (s.metrics, s.at) {
                    (Some(prev), Some(at)) if m.generation_tokens >= prev.generation_tokens => {
                        let dt = now.duration_since(at).as_secs_f64();
                        (dt > 0.0).then(|| (m.generation_tokens - prev.generation_tokens) / dt)
                    }
                    _ => None,
                };
                s.metrics = Some(m);
                s.in_flight_then = self.in_flight();
                s.at = Some(now);
                s.wall_at = SystemTime::now();
                s.last_error = None;
            }
            Err(e) => {
                // Stale data is worse than none: policies fall back to in-flight counts.
                s.metrics = None;
                s.tokens_per_second = None;
                s.last_error = Some(e.to_string());
                s.errors += 1;
            }
        }
        changes
    }
}

/// A request counted in flight on a server; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight {
    server: Arc<Server>,
    awaiting_first_byte: bool,
    /// Uncached prompt tokens counted in the server's pending prefill until the first byte.
    prefill_tokens: u64,
}

impl InFlight {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// The response's first byte arrived: the request is no longer waiting on the server.
    /// True the first time only.
    pub fn first_byte(&mut self) -> bool {
        let first = std::mem::take(&mut self.awaiting_first_byte);
        if first {
            self.server
                .awaiting_first_byte
                .fetch_sub(1, Ordering::Relaxed);
            let tokens = std::mem::take(&mut self.prefill_tokens);
            self.server
                .pending_prefill
                .fetch_sub(tokens, Ordering::Relaxed);
        }
        first
    }

    /// Counts this request's uncached prompt tokens as pending prefill on the server until its
    /// first byte.
    pub fn set_prefill_tokens(&mut self, tokens: u64) {
        if self.awaiting_first_byte {
            self.server
                .pending_prefill
                .fetch_add(tokens, Ordering::Relaxed);
            self.prefill_tokens += tokens;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.first_byte();
        self.server.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.server.slots.slot_freed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_is_written_as_hypers_client_writes_it() {
        for (url, host) in [
            ("http://127.0.0.1:8001", "127.0.0.1:8001"),
            ("http://gpu-a", "gpu-a"),
            ("http://gpu-a:80/base", "gpu-a"),
            ("https://gpu-a:443", "gpu-a"),
            ("https://gpu-a:8443", "gpu-a:8443"),
            ("http://[::1]:8000", "[::1]:8000"),
        ] {
            assert_eq!(Target::parse(url).host, host, "{url}");
        }
    }

    #[test]
    fn a_scrape_with_counters_gone_back_says_the_server_restarted() {
        let s = Server::new(
            ServerConfig {
                url: "http://127.0.0.1:9".into(),
                max_concurrent_requests: 4,
                api_key: None,
                models: None,
                role: Default::default(),
                kv_events: None,
            },
            true,
            Arc::new(super::super::slots::NobodyWaits),
        );
        let scrape = |queries: f64, tokens: f64| ServerMetrics {
            prefix_cache_queries: queries,
            generation_tokens: tokens,
            engines: 1,
            ..ServerMetrics::default()
        };
        let restarted = |changes: Vec<ServerChange>| changes.contains(&ServerChange::Restarted);
        assert!(!restarted(s.record_scrape(Ok(scrape(5000.0, 800.0)))));
        assert!(
            !restarted(s.record_scrape(Ok(scrape(6000.0, 900.0)))),
            "counters grew"
        );
        // Down for a moment (a failed scrape), then back with its counters from zero.
        assert!(
            s.record_scrape(Err(super::super::probe_error::ProbeError::Unreachable(
                "connection refused".into()
            )))
            .is_empty()
        );
        assert!(restarted(s.record_scrape(Ok(scrape(100.0, 10.0)))));
    }
}
