//! Tenants and their budgets: tokens per minute (prompt and completion) and requests per minute.
//!
//! Why tokens: a GPU spends its time on tokens, not requests; one tenant's 30,000-token prompts
//! cost the fleet a hundred times another's chat turns. A request is charged an estimate before
//! it is routed (its prompt as the router reads it, plus `max_tokens`, or
//! [`DEFAULT_COMPLETION_ESTIMATE`] when it sets none), and the charge is settled from the
//! answer's `usage` when it ends, streamed or not. A request the router refuses, or that no
//! server answers, is refunded; one the client leaves mid-answer keeps its estimate.
//!
//! A budget is a bucket that refills at its rate per minute and holds 10 seconds' worth (at
//! least one request's estimate can always pass a full bucket): over five minutes a tenant gets
//! its budget times five plus at most a sixth of a minute's, 3.3% over. Over budget, a request
//! gets 429 with `Retry-After` saying when the bucket holds enough again.
//!
//! Who is a tenant: each `[auth]` key belongs to one (`tenant`, default: the key's name); keys of
//! one tenant share its buckets. Behind a trusted gateway (`tenant_header`, off by default) the
//! header names it. A request with neither, or naming a tenant no key has, is the default tenant,
//! which has the `[auth]` defaults. A reload keeps the buckets of tenants that stay.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::{AuthSettings, Priority};

use super::shares::{Activity, Held};

/// The tenant of requests that name none the router knows.
pub const DEFAULT_TENANT: &str = "default";
/// The answer length charged up front when a request sets no `max_tokens`.
pub const DEFAULT_COMPLETION_ESTIMATE: u64 = 256;
/// A bucket holds this many seconds of its rate.
const BURST_SECONDS: f64 = 10.0;

/// A token bucket: `level` units now, `per_second` refill, at most `capacity`.
#[derive(Debug)]
struct Bucket {
    level: f64,
    capacity: f64,
    per_second: f64,
    at: Instant,
}

impl Bucket {
    fn per_minute(per_minute: u64, now: Instant) -> Option<Bucket> {
        (per_minute > 0).then(|| {
            let per_second = per_minute as f64 / 60.0;
            let capacity = (per_second * BURST_SECONDS).max(1.0);
            Bucket {
                level: capacity,
                capacity,
                per_second,
                at: now,
            }
        })
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + secs * self.per_second).min(self.capacity);
        self.at = now;
    }

    /// How long until `n` can be taken: zero if now. A charge above the capacity waits for a
    /// full bucket (and may take it below zero).
    fn wait_for(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        let need = n.min(self.capacity);
        if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / self.per_second)
        }
    }

    fn take(&mut self, n: f64) {
        self.level -= n;
    }
}

/// Counters of one tenant, for `/metrics` and `/admin/status`.
#[derive(Debug, Default)]
pub struct TenantCounts {
    pub admitted: AtomicU64,
    pub over_budget: AtomicU64,
    /// Tokens charged, settled from usage where the answer reported it.
    pub tokens: AtomicU64,
}

/// One tenant: its budgets and what it has spent.
#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    /// Its requests' class (a request may lower its own).
    pub priority: Priority,
    /// Its share of the fleet within its class, against other tenants with work queued.
    pub weight: f64,
    pub tokens_per_minute: u64,
    pub requests_per_minute: u64,
    tokens: Mutex<Option<Bucket>>,
    requests: Mutex<Option<Bucket>>,
    pub counts: TenantCounts,
    /// Its requests holding slots now (see [`super::shares`]); kept across reloads.
    pub activity: Arc<Activity>,
}

impl Tenant {
    fn new(name: &str, tokens_per_minute: u64, requests_per_minute: u64) -> Tenant {
        let now = Instant::now();
        Tenant {
            name: name.to_string(),
            priority: Priority::Standard,
            weight: 1.0,
            tokens_per_minute,
            requests_per_minute,
            tokens: Mutex::new(Bucket::per_minute(tokens_per_minute, now)),
            requests: Mutex::new(Bucket::per_minute(requests_per_minute, now)),
            counts: TenantCounts::default(),
            activity: Arc::default(),
        }
    }

    /// Whether it has any budget to keep.
    pub fn limited(&self) -> bool {
        self.tokens_per_minute > 0 || self.requests_per_minute > 0
    }

    /// Charges one request of `estimate` tokens, or says how long until the budgets allow it.
    pub fn charge(self: &Arc<Self>, estimate: u64) -> Result<Charge, OverBudget> {
        let now = Instant::now();
        let mut requests = self.requests.lock();
        let mut tokens = self.tokens.lock();
        let wait_requests = requests
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait_for(1.0, now));
        let wait_tokens = tokens
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait_for(estimate as f64, now));
        if !wait_requests.is_zero() || !wait_tokens.is_zero() {
            self.counts.over_budget.fetch_add(1, Ordering::Relaxed);
            return Err(if wait_tokens >= wait_requests {
                OverBudget {
                    tenant: self.name.clone(),
                    what: "tokens",
                    per_minute: self.tokens_per_minute,
                    retry_after: wait_tokens,
                }
            } else {
                OverBudget {
                    tenant: self.name.clone(),
                    what: "requests",
                    per_minute: self.requests_per_minute,
                    retry_after: wait_requests,
                }
            });
        }
        if let Some(b) = requests.as_mut() {
            b.take(1.0);
        }
        if let Some(b) = tokens.as_mut() {
            b.take(estimate as f64);
        }
        self.counts.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(Charge {
            tenant: self.clone(),
            estimate,
            kept: false,
            held: None,
        })
    }

    /// Moves the token bucket by `delta` tokens (positive: spent more than charged).
    fn adjust(&self, delta: f64) {
        if let Some(b) = self.tokens.lock().as_mut() {
            b.refill(Instant::now());
            b.level = (b.level - delta).min(b.capacity);
        }
    }

    fn give_back_request(&self) {
        if let Some(b) = self.requests.lock().as_mut() {
            b.level = (b.level + 1.0).min(b.capacity);
        }
    }

    /// Takes the buckets of `old` (the same tenant before a reload) where its rates are
    /// unchanged, and its counts.
    fn keep_state_of(&self, old: &Tenant) {
        if old.tokens_per_minute == self.tokens_per_minute {
            std::mem::swap(&mut *self.tokens.lock(), &mut *old.tokens.lock());
        }
        if old.requests_per_minute == self.requests_per_minute {
            std::mem::swap(&mut *self.requests.lock(), &mut *old.requests.lock());
        }
        for (mine, theirs) in [
            (&self.counts.admitted, &old.counts.admitted),
            (&self.counts.over_budget, &old.counts.over_budget),
            (&self.counts.tokens, &old.counts.tokens),
        ] {
            mine.store(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// A request refused for its tenant's budget.
#[derive(Debug, Clone, PartialEq)]
pub struct OverBudget {
    pub tenant: String,
    /// `tokens` or `requests`.
    pub what: &'static str,
    pub per_minute: u64,
    pub retry_after: Duration,
}

/// One request's charge to its tenant: refunded if dropped before it is kept (the router
/// refused it, or no server answered), settled from usage once its answer ends. It also holds
/// the request's count in its tenant's slots until then.
#[derive(Debug)]
pub struct Charge {
    tenant: Arc<Tenant>,
    estimate: u64,
    kept: bool,
    held: Option<Held>,
}

impl Charge {
    /// The request took a slot: counted in its tenant's share until its answer ends.
    pub fn hold(&mut self, held: Held) {
        self.held = Some(held);
    }

    pub fn activity(&self) -> &Arc<Activity> {
        &self.tenant.activity
    }

    pub fn weight(&self) -> f64 {
        self.tenant.weight
    }

    /// A server is answering: the GPU time is spent, whatever happens next.
    pub fn keep(&mut self) {
        if !self.kept {
            self.kept = true;
            self.tenant
                .counts
                .tokens
                .fetch_add(self.estimate, Ordering::Relaxed);
        }
    }

    /// The answer ended and reported `actual` tokens (prompt and completion): the budget is
    /// moved by the difference from the estimate.
    pub fn settle(mut self, actual: u64) {
        self.keep();
        let delta = actual as f64 - self.estimate as f64;
        self.tenant.adjust(delta);
        let counts = &self.tenant.counts.tokens;
        if actual >= self.estimate {
            counts.fetch_add(actual - self.estimate, Ordering::Relaxed);
        } else {
            counts.fetch_sub(self.estimate - actual, Ordering::Relaxed);
        }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant.name
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if !self.kept {
            self.tenant.adjust(-(self.estimate as f64));
            self.tenant.give_back_request();
            self.tenant.counts.admitted.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A request's charge until an answer takes it (an attempt that fails leaves it for the next;
/// one never taken is refunded when the request ends).
#[derive(Debug, Default)]
pub struct ChargeSlot(Mutex<Option<Charge>>);

impl ChargeSlot {
    pub fn new(charge: Option<Charge>) -> Self {
        ChargeSlot(Mutex::new(charge))
    }

    pub fn take(&self) -> Option<Charge> {
        self.0.lock().take()
    }

    /// What `f` makes of the charge, if the request has one.
    pub fn with<R>(&self, f: impl FnOnce(&mut Charge) -> R) -> Option<R> {
        self.0.lock().as_mut().map(f)
    }
}

/// A request's tenant, as the access check found it (a request extension).
#[derive(Debug, Clone)]
pub struct TenantOf(pub Arc<Tenant>);

/// Every tenant the config names, and the default one.
#[derive(Debug, Default)]
pub struct Tenants {
    by_name: HashMap<String, Arc<Tenant>>,
    /// Each key's tenant, by key name.
    of_key: HashMap<String, Arc<Tenant>>,
    default: Option<Arc<Tenant>>,
    header: Option<axum::http::HeaderName>,
    /// Some tenant has a budget (read per request: one load when none has).
    limited: bool,
    /// Tenants matter to a request: some budget, class or weight is set, or the header is
    /// trusted.
    active: bool,
}

impl Tenants {
    /// The tenants `auth` names, keeping the buckets of those in `previous` (a reload).
    pub fn new(auth: &AuthSettings, previous: Option<&Tenants>) -> Tenants {
        let mut by_name: HashMap<String, Arc<Tenant>> = HashMap::new();
        let mut of_key = HashMap::new();
        // A tenant that stays keeps its activity: its requests in flight still hold slots.
        let staying = |mut t: Tenant| {
            if let Some(old) = previous.and_then(|p| p.by_name.get(&t.name)) {
                t.activity = old.activity.clone();
            }
            Arc::new(t)
        };
        for k in &auth.keys {
            let name = k.tenant();
            let tenant = by_name
                .entry(name.to_string())
                .or_insert_with(|| {
                    let mut t = Tenant::new(
                        name,
                        k.tokens_per_minute.unwrap_or(auth.tokens_per_minute),
                        k.requests_per_minute.unwrap_or(auth.requests_per_minute),
                    );
                    t.priority = k.priority.unwrap_or_default();
                    t.weight = k.weight.unwrap_or(1.0);
                    staying(t)
                })
                .clone();
            of_key.insert(k.name.clone(), tenant);
        }
        let default = by_name
            .entry(DEFAULT_TENANT.to_string())
            .or_insert_with(|| {
                staying(Tenant::new(
                    DEFAULT_TENANT,
                    auth.tokens_per_minute,
                    auth.requests_per_minute,
                ))
            })
            .clone();
        if let Some(previous) = previous {
            for (name, t) in &by_name {
                if let Some(old) = previous.by_name.get(name) {
                    t.keep_state_of(old);
                }
            }
        }
        let limited = by_name.values().any(|t| t.limited());
        Tenants {
            limited,
            active: limited
                || auth.tenant_header.is_some()
                || by_name
                    .values()
                    .any(|t| t.priority != Priority::Standard || t.weight != 1.0),
            by_name,
            of_key,
            default: Some(default),
            header: auth
                .tenant_header
                .as_deref()
                .and_then(|h| axum::http::HeaderName::from_bytes(h.as_bytes()).ok()),
        }
    }

    /// Whether any tenant has a budget: if none does, requests are not charged at all.
    pub fn any_limited(&self) -> bool {
        self.limited
    }

    /// Whether a request's tenant is worth finding: it has a budget, a class or a weight.
    pub fn active(&self) -> bool {
        self.active
    }

    /// The tenant of a request: the trusted header's, else its key's, else the default.
    pub fn of(&self, key: Option<&str>, headers: &HeaderMap) -> Option<&Arc<Tenant>> {
        let named = self
            .header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
            .and_then(|n| self.by_name.get(n.trim()));
        named
            .or_else(|| key.and_then(|k| self.of_key.get(k)))
            .or(self.default.as_ref())
    }

    /// Every tenant, by name.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.by_name.values()
    }
}

/// One tenant: its budgets (0: none) and what it has been given.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TenantStatus {
    pub name: String,
    /// `critical`, `standard` or `batch`.
    pub priority: String,
    pub weight: f64,
    pub tokens_per_minute: u64,
    pub requests_per_minute: u64,
    /// Requests let through (not counting those refunded: refused later, or unanswered).
    pub admitted: u64,
    pub over_budget: u64,
    /// Tokens charged, settled from the answers' usage where reported.
    pub tokens: u64,
    /// Its requests holding slots now.
    #[serde(default)]
    pub in_flight: u64,
}

impl Tenants {
    /// Every tenant, by name; empty when tenants do not matter (no budget, class or weight).
    pub fn status(&self) -> Vec<TenantStatus> {
        use std::sync::atomic::Ordering::Relaxed;
        let tenants = self;
        if !tenants.active() {
            return Vec::new();
        }
        let mut out: Vec<TenantStatus> = tenants
            .all()
            .map(|t| TenantStatus {
                name: t.name.clone(),
                priority: t.priority.name().to_string(),
                weight: t.weight,
                tokens_per_minute: t.tokens_per_minute,
                requests_per_minute: t.requests_per_minute,
                admitted: t.counts.admitted.load(Relaxed),
                over_budget: t.counts.over_budget.load(Relaxed),
                tokens: t.counts.tokens.load(Relaxed),
                in_flight: t.activity.in_flight() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;

    fn auth(keys: Vec<ApiKey>, tokens_per_minute: u64) -> AuthSettings {
        AuthSettings {
            keys,
            tokens_per_minute,
            ..AuthSettings::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_budget_refills_at_its_rate_and_says_when() {
        // 6,000 a minute: 100 a second, a bucket of 1,000.
        let tenants = Tenants::new(&auth(vec![], 6_000), None);
        let t = tenants.of(None, &HeaderMap::new()).unwrap().clone();
        let mut first = t.charge(800).unwrap();
        first.keep();
        let refused = t.charge(800).unwrap_err();
        assert_eq!(refused.what, "tokens");
        assert_eq!(refused.retry_after, Duration::from_secs(6));
        tokio::time::advance(Duration::from_secs(6)).await;
        t.charge(800).unwrap().keep();
        // The first answer used 100 tokens, not 800: 700 come back.
        first.settle(100);
        t.charge(700).unwrap().keep();
        assert_eq!(t.counts.tokens.load(Ordering::Relaxed), 100 + 800 + 700);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_or_unanswered_request_is_refunded() {
        let tenants = Tenants::new(&auth(vec![], 6_000), None);
        let t = tenants.of(None, &HeaderMap::new()).unwrap().clone();
        drop(t.charge(1_000).unwrap());
        t.charge(1_000).unwrap().keep();
        assert!(t.charge(1).is_err());
        assert_eq!(t.counts.admitted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_share_their_tenants_budget_and_a_reload_keeps_it() {
        let mut a = ApiKey::new("a1", "sk-0123456789abcdef");
        a.tenant = Some("team-a".into());
        a.requests_per_minute = Some(6);
        let mut b = ApiKey::new("a2", "sk-abcdef0123456789");
        b.tenant = Some("team-a".into());
        let config = AuthSettings {
            keys: vec![a, b],
            tenant_header: Some("x-tenant-id".into()),
            ..AuthSettings::default()
        };
        let tenants = Tenants::new(&config, None);
        let none = HeaderMap::new();
        let t = tenants.of(Some("a2"), &none).unwrap().clone();
        assert_eq!(t.name, "team-a");
        // 6 a minute: a bucket of one.
        t.charge(10).unwrap().keep();
        let refused = tenants
            .of(Some("a1"), &none)
            .unwrap()
            .charge(10)
            .unwrap_err();
        assert_eq!((refused.what, refused.per_minute), ("requests", 6));
        // The trusted header names a known tenant; an unknown name is the default tenant.
        let mut h = HeaderMap::new();
        h.insert("x-tenant-id", "team-a".parse().unwrap());
        assert_eq!(tenants.of(None, &h).unwrap().name, "team-a");
        h.insert("x-tenant-id", "nobody".parse().unwrap());
        assert_eq!(tenants.of(None, &h).unwrap().name, DEFAULT_TENANT);
        // A reload keeps the empty bucket, and each staying tenant's activity.
        let reloaded = Tenants::new(&config, Some(&tenants));
        assert!(reloaded.of(Some("a1"), &none).unwrap().charge(10).is_err());
        for name in ["team-a", DEFAULT_TENANT] {
            let (old, new) = (&tenants.by_name[name], &reloaded.by_name[name]);
            assert!(Arc::ptr_eq(&old.activity, &new.activity), "{name}");
        }
    }
}
