//! How fast a server generates: its mean seconds per output token, from the inter-token
//! latency histogram in its own `/metrics`, smoothed over scrapes.
//!
//! Why: the router's load figures count requests relative to each server's configured capacity,
//! which says nothing of its speed. A server on an older GPU with the same
//! `max_concurrent_requests` takes twice as long over every prefill and every token, so a
//! conversation started there is slower at every turn. `cache_aware` weighs the prefill on
//! each server by how much slower than the fleet's fastest it is (the routing module `speed`).
//!
//! The first figure is the server's mean over its life so far (its histogram's totals at the
//! first scrape), so a router that starts beside servers that have been serving knows their
//! speeds at once. The estimate moves only when the server generated enough tokens between two
//! scrapes to say something: an idle server keeps its last figure (idling makes it neither
//! faster nor slower), and counters that went back (a restart) are skipped rather than read as
//! a negative pace.

use super::prom::ServerMetrics;

/// Output tokens between two scrapes below which their mean says too little to count.
pub const MIN_TOKENS: f64 = 32.0;
/// Weight of the newest interval in the smoothed figure.
pub const SMOOTHING: f64 = 0.3;

/// A server's smoothed seconds per output token.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pace {
    seconds_per_token: Option<f64>,
}

impl Pace {
    /// Takes in what the server generated between two successive scrapes.
    pub fn observe(&mut self, before: &ServerMetrics, now: &ServerMetrics) {
        let tokens = now.inter_tokens - before.inter_tokens;
        let seconds = now.inter_token_seconds - before.inter_token_seconds;
        if !(tokens >= MIN_TOKENS && seconds > 0.0) {
            return;
        }
        let mean = seconds / tokens;
        if !mean.is_finite() {
            return;
        }
        self.seconds_per_token = Some(match self.seconds_per_token {
            Some(p) => p + SMOOTHING * (mean - p),
            None => mean,
        });
    }

    /// Takes in the first scrape of a server: the mean over its life so far, a first estimate
    /// until intervals between scrapes say more.
    pub fn start(&mut self, first: &ServerMetrics) {
        if self.seconds_per_token.is_none() {
            self.observe(&ServerMetrics::default(), first);
        }
    }

    /// `None` until the server has generated enough to tell.
    pub fn seconds_per_token(&self) -> Option<f64> {
        self.seconds_per_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tokens: f64, seconds: f64) -> ServerMetrics {
        ServerMetrics {
            inter_tokens: tokens,
            inter_token_seconds: seconds,
            ..Default::default()
        }
    }

    #[test]
    fn starts_from_its_life_so_far_then_learns_only_from_busy_intervals() {
        let mut p = Pace::default();
        p.start(&at(10.0, 1.0));
        assert_eq!(p.seconds_per_token(), None, "10 tokens say too little");
        p.start(&at(100.0, 1.0));
        assert_eq!(p.seconds_per_token(), Some(0.01), "its life so far");
        p.start(&at(100.0, 5.0));
        assert_eq!(p.seconds_per_token(), Some(0.01), "a first figure only");
        p.observe(&at(100.0, 1.0), &at(200.0, 3.0));
        let smoothed = 0.01 + SMOOTHING * (0.02 - 0.01);
        assert!((p.seconds_per_token().unwrap() - smoothed).abs() < 1e-12);
        p.observe(&at(200.0, 3.0), &at(200.0, 3.0));
        p.observe(&at(200.0, 3.0), &at(50.0, 0.4));
        assert!((p.seconds_per_token().unwrap() - smoothed).abs() < 1e-12);
    }
}
