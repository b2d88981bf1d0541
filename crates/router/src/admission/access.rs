//! Client access: API keys, and per-key rate and concurrency limits.
//!
//! Why in the router: an open router hands anyone free GPU time, and vLLM's own `--api-key` is
//! one shared secret with no limits. Keys come from `[auth]` in the config, a key file, and
//! `MVLLM_API_KEYS`; with none configured the router is open (the seed's behaviour) and says so
//! at start. A client sends its key as `Authorization: Bearer <key>` (OpenAI's clients) or
//! `x-api-key: <key>` (Anthropic's); the key is never forwarded to a server, never logged (logs
//! name the key, not its value), and compared in constant time: the router keeps only SHA-256
//! digests and compares the presented key's digest with every one, so timing tells nothing about
//! a key's content or length. `/health`, `/livez` and `/readyz` stay open; `/metrics` is open
//! unless `protect_metrics`; the admin API has its own token.
//!
//! Limits answer 429 with `Retry-After`, in OpenAI's error format: a token bucket per key
//! (`requests_per_second` with `burst`) and a cap on its requests in flight (`max_concurrent`;
//! a stream counts until it ends). A reload keeps the buckets and counts of keys that stay.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use subtle::ConstantTimeEq;

use crate::config::auth::digest;
use crate::config::{ApiKey, AuthSettings};
use crate::error::ApiError;

type Limiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    governor::middleware::NoOpMiddleware,
>;

/// One key's identity and live state.
pub struct KeyState {
    digest: [u8; 32],
    pub name: String,
    limiter: Option<Arc<Limiter>>,
    max_concurrent: Option<usize>,
    in_flight: Arc<AtomicUsize>,
    /// The limits it was built with, to tell on reload whether the bucket can be kept.
    limits: (f64, u32),
}

/// The keys in force (none: the router is open).
#[derive(Default)]
pub struct Access {
    keys: Vec<KeyState>,
    protect_metrics: bool,
}

fn limiter(rate: f64, burst: u32) -> Option<Limiter> {
    if rate <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let quota = Quota::with_period(period)?.allow_burst(std::num::NonZeroU32::new(burst.max(1))?);
    Some(RateLimiter::direct(quota))
}

/// Why a request was turned away.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    MissingKey,
    WrongKey,
    RateLimited { name: String, retry_after: Duration },
    TooManyInFlight { name: String, limit: usize },
}

impl Refusal {
    pub fn into_response(self) -> Response {
        let e = match &self {
            Refusal::MissingKey => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            ),
            Refusal::WrongKey => {
                ApiError::new(StatusCode::UNAUTHORIZED, "Incorrect API key provided.")
            }
            Refusal::RateLimited { name, retry_after } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Rate limit reached for key `{name}`: retry in {:.1} s.",
                    retry_after.as_secs_f64()
                ),
            )
            .retry_after(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            Refusal::TooManyInFlight { name, limit } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("Key `{name}` already has {limit} requests in flight, its limit."),
            ),
        };
        e.into_response()
    }
}

/// Counts a request against its key's `max_concurrent` until dropped.
pub struct KeyGuard(Arc<AtomicUsize>);

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Access {
    /// Builds the keys of `settings`, keeping the buckets and in-flight counts of keys in
    /// `previous` (a reload) whose limits did not change.
    pub fn new(settings: &AuthSettings, previous: Option<&Access>) -> Access {
        let keys = settings
            .keys
            .iter()
            .map(|k: &ApiKey| {
                let digest = k.digest();
                let rate = k
                    .requests_per_second
                    .unwrap_or(settings.requests_per_second);
                let burst = k
                    .burst
                    .or(settings.burst)
                    .unwrap_or(rate.ceil().max(1.0) as u32);
                let max_concurrent = k
                    .max_concurrent
                    .or(settings.max_concurrent)
                    .filter(|&m| m > 0);
                let old = previous.and_then(|p| p.keys.iter().find(|s| s.digest == digest));
                let in_flight =
                    old.map_or_else(|| Arc::new(AtomicUsize::new(0)), |s| s.in_flight.clone());
                let limiter = match old {
                    Some(o) if o.limits == (rate, burst) => o.limiter.clone(),
                    _ => limiter(rate, burst).map(Arc::new),
                };
                KeyState {
                    digest,
                    name: k.name.clone(),
                    limiter,
                    max_concurrent,
                    in_flight,
                    limits: (rate, burst),
                }
            })
            .collect();
        Access {
            keys,
            protect_metrics: settings.protect_metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn protects_metrics(&self) -> bool {
        self.protect_metrics && self.enabled()
    }

    /// The key a request presents, if any.
    fn presented(headers: &HeaderMap) -> Option<&str> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        bearer
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .filter(|k| !k.is_empty())
    }

    /// Checks a request's key and limits; on success the guard counts it in flight.
    /// Whether the request carries a valid key (no limits counted): for views that show more
    /// to clients than to strangers.
    pub fn knows(&self, headers: &HeaderMap) -> bool {
        !self.enabled() || self.identify(headers).is_ok()
    }

    /// The index of the key presented. Every digest is compared, whichever matches, so timing
    /// does not depend on which.
    fn identify(&self, headers: &HeaderMap) -> Result<usize, Refusal> {
        let given = Self::presented(headers).ok_or(Refusal::MissingKey)?;
        let d = digest(given);
        let mut found = None;
        for (i, k) in self.keys.iter().enumerate() {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(i);
            }
        }
        found.ok_or(Refusal::WrongKey)
    }

    pub fn admit(&self, headers: &HeaderMap) -> Result<Option<(KeyGuard, &str)>, Refusal> {
        if !self.enabled() {
            return Ok(None);
        }
        let key = &self.keys[self.identify(headers)?];
        if let Some(max) = key.max_concurrent {
            let now = key.in_flight.fetch_add(1, Ordering::Relaxed);
            if now >= max {
                key.in_flight.fetch_sub(1, Ordering::Relaxed);
                return Err(Refusal::TooManyInFlight {
                    name: key.name.clone(),
                    limit: max,
                });
            }
        } else {
            key.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        let guard = KeyGuard(key.in_flight.clone());
        if let Some(limiter) = &key.limiter
            && let Err(not_until) = limiter.check()
        {
            let retry_after = not_until.wait_time_from(DefaultClock::default().now());
            return Err(Refusal::RateLimited {
                name: key.name.clone(),
                retry_after,
            });
        }
        Ok(Some((guard, key.name.as_str())))
    }
}
