//! The router's own Prometheus metrics (`GET /metrics`), every name defined here once.
//!
//! Labels have bounded values only: `route` is one of a fixed list, `model` is a model some
//! server serves (anything else is "unknown"), `server` is a configured URL, `status` an HTTP
//! code. Raw paths, request ids and client input never become labels. Per-server gauges are
//! refreshed from the fleet's state when scraped, so removed servers disappear from them.

use std::sync::atomic::Ordering;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::fleet::Fleet;
use crate::fleet::health::Transition;
use crate::fleet::observer::FleetObserver;
use crate::fleet::server::Server;
use crate::fleet::window::Window;
use crate::metrics::labels::*;

/// Registers the families of KV-event state and tenants (split from [`Telemetry::new`]).
fn register_kv_and_tenants(r: &mut Registry, t: &Telemetry) {
    r.register(
        "server_seconds_per_token",
        "The server's mean seconds per output token lately, from its inter-token latency histogram: how fast it is (cache_aware weighs a markedly slower server's cost by the ratio to the fastest)",
        t.seconds_per_token.clone(),
    );
    r.register(
        "server_cached_blocks",
        "Blocks in the server's prefix cache, as its KV events say",
        t.cached_blocks.clone(),
    );
    r.register(
            "server_kv_events",
            "KV-event stream counts since start, by what: batches applied, malformed messages dropped, gaps, replays, replay failures, publisher restarts, stores over budget, orphan blocks, unknown removals",
            t.kv_events.clone(),
        );
    r.register(
            "tenant_requests",
            "Generation requests per tenant since start, by outcome: admitted within its budgets (refunds taken off), or refused over budget (429)",
            t.tenant_requests.clone(),
        );
    r.register(
        "tenant_in_flight",
        "Each tenant's requests holding slots now (counted with the wait queue on)",
        t.tenant_in_flight.clone(),
    );
    r.register(
            "tenant_tokens",
            "Tokens charged to each tenant since start (prompt and completion, settled from the answers' usage)",
            t.tenant_tokens.clone(),
        );
}

/// How far back the fleet's live figures (and the dashboard's sparklines) reach.
pub const FLEET_WINDOW_SECONDS: usize = 600;

type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

pub struct Telemetry {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    ttfb: Family<RouteLabels, Histogram>,
    duration: Family<RouteLabels, Histogram>,
    /// Each route's histogram, taken from the family on first use: a request then observes it
    /// without hashing its labels or taking the family's lock.
    ttfb_by_route: [std::sync::OnceLock<Histogram>; ROUTES.len()],
    duration_by_route: [std::sync::OnceLock<Histogram>; ROUTES.len()],
    pub retries: Family<ReasonLabels, Counter>,
    pub failovers: Counter,
    pub transitions: Family<TransitionLabels, Counter>,
    pub scrape_errors: Family<ServerLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub refusals: Family<ReasonLabels, Counter>,
    pub panic_routed: Counter,
    /// Requests to a fleet with prefill/decode servers, by the way they were served.
    pub disaggregated: Family<PathLabels, Counter>,
    in_flight: Family<ServerLabels, Gauge>,
    healthy: Family<ServerLabels, Gauge>,
    draining: Family<ServerLabels, Gauge>,
    scrape_age: Family<ServerLabels, FGauge>,
    running: Family<ServerLabels, FGauge>,
    waiting: Family<ServerLabels, FGauge>,
    kv_usage: Family<ServerLabels, FGauge>,
    prefix_index_bytes: Family<ServerLabels, Gauge>,
    prefix_predicted: Family<ServerLabels, FGauge>,
    prefix_actual: Family<ServerLabels, FGauge>,
    cache_exact: Family<ServerLabels, Gauge>,
    cached_blocks: Family<ServerLabels, Gauge>,
    seconds_per_token: Family<ServerLabels, FGauge>,
    kv_events: Family<KvEventLabels, Gauge>,
    tenant_requests: Family<TenantLabels, Gauge>,
    tenant_tokens: Family<TenantLabels, Gauge>,
    tenant_in_flight: Family<TenantNameLabels, Gauge>,
    /// Client requests, errors, retries and time to first token over the last minutes.
    pub live: parking_lot::Mutex<Window>,
    pub started: std::time::Instant,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mvllm");
        let latency = || Histogram::new(exponential_buckets(0.0005, 2.0, 20));
        let t = Telemetry {
            requests: Family::default(),
            ttfb: Family::new_with_constructor(latency),
            duration: Family::new_with_constructor(latency),
            ttfb_by_route: Default::default(),
            duration_by_route: Default::default(),
            retries: Family::default(),
            failovers: Counter::default(),
            transitions: Family::default(),
            scrape_errors: Family::default(),
            reloads: Family::default(),
            decisions: Family::default(),
            refusals: Family::default(),
            panic_routed: Counter::default(),
            disaggregated: Family::default(),
            in_flight: Family::default(),
            healthy: Family::default(),
            draining: Family::default(),
            scrape_age: Family::default(),
            running: Family::default(),
            waiting: Family::default(),
            kv_usage: Family::default(),
            prefix_index_bytes: Family::default(),
            prefix_predicted: Family::default(),
            prefix_actual: Family::default(),
            cache_exact: Family::default(),
            cached_blocks: Family::default(),
            seconds_per_token: Family::default(),
            kv_events: Family::default(),
            tenant_requests: Family::default(),
            tenant_tokens: Family::default(),
            tenant_in_flight: Family::default(),
            live: parking_lot::Mutex::new(Window::new(FLEET_WINDOW_SECONDS)),
            started: std::time::Instant::now(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("requests", "Requests answered, by route, model, server (\"none\" when the router answered itself) and HTTP status", t.requests.clone());
        r.register(
            "request_ttfb_seconds",
            "Seconds from receiving a request to sending its response headers",
            t.ttfb.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Seconds from receiving a request to the end of its response (streams included)",
            t.duration.clone(),
        );
        r.register(
            "retries",
            "Attempts retried on another server, by reason",
            t.retries.clone(),
        );
        r.register(
            "failovers",
            "Requests answered by a server other than the first one tried",
            t.failovers.clone(),
        );
        r.register(
            "server_health_transitions",
            "Health changes of a server, by new state",
            t.transitions.clone(),
        );
        r.register(
            "server_scrape_errors",
            "Failed or unreadable /metrics scrapes of a server",
            t.scrape_errors.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads, by result (success, failure)",
            t.reloads.clone(),
        );
        r.register(
            "policy_decisions",
            "Servers chosen by the routing policy",
            t.decisions.clone(),
        );
        r.register(
            "panic_routed",
            "Attempts sent to an ejected server because every server was out",
            t.panic_routed.clone(),
        );
        r.register(
            "disaggregated_requests",
            "Generation requests to a fleet with prefill/decode servers, by path: two_legs, or why they went to a decode server alone (short_prompt, n_above_1, no_prefill_server, no_decode_server, prefill_failed, no_kv_transfer_params) or got the prefill server's 4xx (prefill_refused)",
            t.disaggregated.clone(),
        );
        r.register(
            "client_refusals",
            "Requests refused before routing: missing_key, wrong_key, rate_limited, too_many_in_flight",
            t.refusals.clone(),
        );
        r.register(
            "server_in_flight",
            "Requests the router has in flight to a server (streams until their end)",
            t.in_flight.clone(),
        );
        r.register(
            "server_healthy",
            "1 when the server is healthy and takes traffic",
            t.healthy.clone(),
        );
        r.register(
            "server_draining",
            "1 when the server is draining (no new requests)",
            t.draining.clone(),
        );
        r.register(
            "server_metrics_age_seconds",
            "Seconds since the server's /metrics was last read successfully",
            t.scrape_age.clone(),
        );
        r.register("server_running_requests", "The server's vllm:num_requests_running (summed over engines), from the last fresh scrape", t.running.clone());
        r.register("server_waiting_requests", "The server's vllm:num_requests_waiting (summed over engines), from the last fresh scrape", t.waiting.clone());
        r.register(
            "server_kv_cache_usage",
            "The server's KV-cache usage (0..1, mean over engines), from the last fresh scrape",
            t.kv_usage.clone(),
        );
        r.register(
            "prefix_index_bytes",
            "Memory the prefix index takes for a server (cache_aware)",
            t.prefix_index_bytes.clone(),
        );
        r.register(
            "prefix_predicted_hit_rate",
            "Share of prompt tokens the prefix index predicted cached on a server, over its last calibration window",
            t.prefix_predicted.clone(),
        );
        r.register(
            "server_prefix_cache_hit_rate",
            "Share of prompt tokens the server itself reports as prefix-cache hits, over the same window",
            t.prefix_actual.clone(),
        );
        r.register(
            "server_cache_exact",
            "1 when the router knows the server's prefix cache exactly from its KV events, 0 when it approximates it",
            t.cache_exact.clone(),
        );
        register_kv_and_tenants(r, &t);
        Telemetry { registry, ..t }
    }

    fn render_kv(&self, s: &crate::fleet::server::Server, l: &ServerLabels) {
        let kv = &s.kv;
        self.cache_exact
            .get_or_create(l)
            .set(i64::from(kv.is_exact()));
        self.cached_blocks
            .get_or_create(l)
            .set(kv.cached_blocks() as i64);
        let c = &kv.counters;
        for (what, v) in [
            ("batches", &c.batches),
            ("malformed", &c.malformed),
            ("gaps", &c.gaps),
            ("replays", &c.replays),
            ("replay_failures", &c.replay_failures),
            ("restarts", &c.restarts),
            ("over_budget", &c.over_budget),
            ("orphans", &c.orphans),
            ("unknown_removed", &c.unknown_removed),
        ] {
            self.kv_events
                .get_or_create(&KvEventLabels {
                    server: l.server.clone(),
                    what,
                })
                .set(v.load(Ordering::Relaxed) as i64);
        }
    }

    /// Refreshes the per-tenant gauges from `status` (bounded: tenants come from the config;
    /// any other name is the default tenant).
    pub fn set_tenants(&self, status: &[crate::admission::tenants::TenantStatus]) {
        self.tenant_requests.clear();
        self.tenant_tokens.clear();
        self.tenant_in_flight.clear();
        for t in status {
            for (outcome, n) in [("admitted", t.admitted), ("over_budget", t.over_budget)] {
                let l = TenantLabels {
                    tenant: t.name.clone(),
                    outcome,
                };
                self.tenant_requests.get_or_create(&l).set(n as i64);
            }
            let l = TenantLabels {
                tenant: t.name.clone(),
                outcome: "charged",
            };
            self.tenant_tokens.get_or_create(&l).set(t.tokens as i64);
            let l = TenantNameLabels {
                tenant: t.name.clone(),
            };
            self.tenant_in_flight
                .get_or_create(&l)
                .set(t.in_flight as i64);
        }
    }

    /// The exposition text, with per-server gauges refreshed from `fleet`.
    pub fn render(&self, fleet: &Fleet) -> String {
        for f in [&self.in_flight, &self.healthy, &self.draining] {
            f.clear();
        }
        for f in [
            &self.scrape_age,
            &self.running,
            &self.waiting,
            &self.kv_usage,
            &self.prefix_predicted,
            &self.prefix_actual,
            &self.seconds_per_token,
        ] {
            f.clear();
        }
        self.prefix_index_bytes.clear();
        self.cache_exact.clear();
        self.cached_blocks.clear();
        self.kv_events.clear();
        let max_age = fleet.metrics_max_age();
        let policy = fleet.policy();
        for s in fleet.servers().iter() {
            let l = ServerLabels {
                server: s.url().to_string(),
            };
            self.in_flight.get_or_create(&l).set(s.in_flight() as i64);
            self.healthy
                .get_or_create(&l)
                .set(i64::from(s.is_healthy()));
            self.draining
                .get_or_create(&l)
                .set(i64::from(s.draining.load(Ordering::Relaxed)));
            let (at, pace) = {
                let scrape = s.scrape.lock();
                (scrape.at, scrape.pace.seconds_per_token())
            };
            if let Some(at) = at {
                self.scrape_age
                    .get_or_create(&l)
                    .set(at.elapsed().as_secs_f64());
            }
            if let Some(pace) = pace {
                self.seconds_per_token.get_or_create(&l).set(pace);
            }
            if let Some(m) = s.fresh_metrics(max_age) {
                self.running.get_or_create(&l).set(m.running);
                self.waiting.get_or_create(&l).set(m.waiting);
                self.kv_usage.get_or_create(&l).set(m.kv_usage);
            }
            if s.config().kv_events.is_some() {
                self.render_kv(s, &l);
            }
            let Some(prefix) = policy.report(s.id()) else {
                continue;
            };
            self.prefix_index_bytes
                .get_or_create(&l)
                .set(prefix.bytes as i64);
            if let (Some(p), Some(a)) = (prefix.predicted_hit_rate, prefix.actual_hit_rate) {
                self.prefix_predicted.get_or_create(&l).set(p);
                self.prefix_actual.get_or_create(&l).set(a);
            }
        }
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl FleetObserver for Telemetry {
    /// A server changed health: count it and log it.
    fn server_transition(&self, server: &Server, t: Transition) {
        let to = match t {
            Transition::None => return,
            Transition::BecameHealthy => "healthy",
            Transition::BecameUnhealthy => "unhealthy",
        };
        self.transitions
            .get_or_create(&TransitionLabels {
                server: server.url().to_string(),
                to,
            })
            .inc();
        if t == Transition::BecameUnhealthy {
            let why = server.health.lock().last_error.clone().unwrap_or_default();
            tracing::warn!(server = server.url(), reason = %why, "server unhealthy");
        } else {
            tracing::info!(server = server.url(), "server healthy");
        }
    }

    fn scrape_failed(&self, server: &Server) {
        self.scrape_errors
            .get_or_create(&ServerLabels {
                server: server.url().to_string(),
            })
            .inc();
    }
}

impl Telemetry {
    /// Time to first byte, for requests to `route` (one of [`ROUTES`]).
    pub fn ttfb(&self, route: &'static str) -> &Histogram {
        Self::cached(&self.ttfb_by_route, &self.ttfb, route)
    }

    /// Time to the response's end, for requests to `route`.
    pub fn duration(&self, route: &'static str) -> &Histogram {
        Self::cached(&self.duration_by_route, &self.duration, route)
    }

    fn cached<'a>(
        cache: &'a [std::sync::OnceLock<Histogram>; ROUTES.len()],
        family: &Family<RouteLabels, Histogram>,
        route: &'static str,
    ) -> &'a Histogram {
        let i = ROUTES
            .iter()
            .position(|r| *r == route)
            .unwrap_or(ROUTES.len() - 1);
        cache[i].get_or_init(|| {
            family
                .get_or_create(&RouteLabels { route: ROUTES[i] })
                .clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_bounded() {
        assert_eq!(route_label("/v1/chat/completions"), "chat_completions");
        assert_eq!(route_label("/v1/responses/resp_123/cancel"), "responses");
        assert_eq!(route_label("/v1/audio/transcriptions"), "audio");
        assert_eq!(route_label("/v1/some/random/thing"), "other_v1");
        assert_eq!(route_label("/etc/passwd"), "other");
        for path in [
            "/v1/chat/completions",
            "/tokenize",
            "/v1/x",
            "/score",
            "/v1/audio/x",
        ] {
            assert!(ROUTES.contains(&route_label(path)), "{path}");
        }
    }

    #[test]
    fn a_routes_cached_histogram_is_the_familys_series() {
        let t = Telemetry::new();
        t.ttfb("chat_completions").observe(0.5);
        t.ttfb("chat_completions").observe(0.25);
        t.duration("other").observe(1.0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &t.registry).unwrap();
        assert!(
            text.contains("mvllm_request_ttfb_seconds_count{route=\"chat_completions\"} 2"),
            "{text}"
        );
        assert!(text.contains("mvllm_request_duration_seconds_count{route=\"other\"} 1"));
    }
}
