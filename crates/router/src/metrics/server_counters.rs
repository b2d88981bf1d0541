//! A server's own handles to its per-request counters, taken from the metric families once.
//!
//! Counting a request through a `prometheus-client` family builds its label set (a `String` for
//! the model), hashes it with SipHash and takes the family's lock, and that was done twice a
//! request (`mvllm_requests_total`, `mvllm_policy_decisions_total`). A family's counter is an
//! `Arc` to one atomic: the server keeps the handle it got the first time and increments it
//! directly after a short, uncontended search of its few label combinations.
//!
//! The families are never cleared, so a kept handle always counts into what `/metrics` shows.
//! A server sees few combinations (routes x served models x statuses); past [`MAX_KEPT`] the
//! family is used directly, so a client sending many odd statuses' worth of traffic cannot grow
//! the cache.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::labels::{DecisionLabels, RequestLabels};

/// Most label combinations a server keeps handles for.
const MAX_KEPT: usize = 128;

/// Counters kept by their key.
type Kept<K> = Mutex<Vec<(K, Counter)>>;

/// A request's labels besides the server: route, status, model.
type RequestKey = (&'static str, u16, Box<str>);

#[derive(Default)]
pub struct ServerCounters {
    requests: Kept<RequestKey>,
    /// By policy.
    decisions: Kept<&'static str>,
}

impl std::fmt::Debug for ServerCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCounters")
            .field("requests", &self.requests.lock().len())
            .field("decisions", &self.decisions.lock().len())
            .finish()
    }
}

/// Increments the kept counter whose key `is`, or takes it from its family with `take` (and
/// keeps it while there is room).
fn count<K>(kept: &Kept<K>, is: impl Fn(&K) -> bool, take: impl FnOnce() -> (K, Counter)) {
    let mut kept = kept.lock();
    if let Some((_, c)) = kept.iter().find(|(k, _)| is(k)) {
        c.inc();
        return;
    }
    let (key, counter) = take();
    counter.inc();
    if kept.len() < MAX_KEPT {
        kept.push((key, counter));
    }
}

impl ServerCounters {
    /// Counts one answered request of `server` in `family` (`mvllm_requests_total`).
    pub fn count_request(
        &self,
        family: &Family<RequestLabels, Counter>,
        server: &Arc<str>,
        route: &'static str,
        model: &str,
        status: u16,
    ) {
        count(
            &self.requests,
            |(r, s, m)| *s == status && *r == route && &**m == model,
            || {
                let labels = RequestLabels {
                    route,
                    model: model.to_string(),
                    server: server.clone(),
                    status,
                };
                (
                    (route, status, model.into()),
                    family.get_or_create(&labels).clone(),
                )
            },
        );
    }

    /// Counts one decision of `policy` for `server` (`mvllm_policy_decisions_total`).
    pub fn count_decision(
        &self,
        family: &Family<DecisionLabels, Counter>,
        server: &Arc<str>,
        policy: &'static str,
    ) {
        count(
            &self.decisions,
            |p| *p == policy,
            || {
                let labels = DecisionLabels {
                    policy,
                    server: server.clone(),
                };
                (policy, family.get_or_create(&labels).clone())
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_handles_count_into_the_family() {
        let family = Family::<RequestLabels, Counter>::default();
        let server: Arc<str> = Arc::from("http://a:8000");
        let kept = ServerCounters::default();
        for _ in 0..3 {
            kept.count_request(&family, &server, "chat_completions", "m", 200);
        }
        kept.count_request(&family, &server, "chat_completions", "m", 400);
        kept.count_request(&family, &server, "completions", "m", 200);
        let get = |route, status| {
            family
                .get_or_create(&RequestLabels {
                    route,
                    model: "m".into(),
                    server: server.clone(),
                    status,
                })
                .get()
        };
        assert_eq!(get("chat_completions", 200), 3);
        assert_eq!(get("chat_completions", 400), 1);
        assert_eq!(get("completions", 200), 1);

        let decisions = Family::<DecisionLabels, Counter>::default();
        kept.count_decision(&decisions, &server, "adaptive");
        kept.count_decision(&decisions, &server, "adaptive");
        kept.count_decision(&decisions, &server, "cache_aware");
        let d = |policy| {
            decisions
                .get_or_create(&DecisionLabels {
                    policy,
                    server: server.clone(),
                })
                .get()
        };
        assert_eq!((d("adaptive"), d("cache_aware")), (2, 1));
    }

    #[test]
    fn past_the_cap_requests_are_still_counted() {
        let family = Family::<RequestLabels, Counter>::default();
        let server: Arc<str> = Arc::from("http://a:8000");
        let kept = ServerCounters::default();
        for status in 0..(MAX_KEPT as u16 + 10) {
            kept.count_request(&family, &server, "other", "none", status);
            kept.count_request(&family, &server, "other", "none", status);
        }
        assert_eq!(kept.requests.lock().len(), MAX_KEPT);
        let last = family
            .get_or_create(&RequestLabels {
                route: "other",
                model: "none".into(),
                server: server.clone(),
                status: MAX_KEPT as u16 + 9,
            })
            .get();
        assert_eq!(last, 2);
    }
}
