//! Whether a server's configured capacity is its real limit, learned from its own `/metrics`.
//!
//! Why: `max_concurrent_requests` may be the server's `--max-num-seqs` (then a request beyond
//! it waits in the server's queue for a running one to end, tens of milliseconds), or far below
//! what the server runs at once (the default is 3; then one more request only joins a batch).
//! `cache_aware` charges a request beyond capacity a slot's wait only where the server has shown
//! that it queues within its capacity: requests waiting (`vllm:num_requests_waiting`) while it
//! ran no more than its capacity. Running more than its capacity shows the opposite. The
//! finding is kept between scrapes, so the charge applies from the moment a full server takes
//! one more request, not only after the next scrape has seen it wait.

use super::prom::ServerMetrics;

/// What the scrapes so far say about a server's capacity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapacityLimit {
    real: bool,
}

impl CapacityLimit {
    /// Takes in a scrape of a server configured with `capacity`.
    pub fn observe(&mut self, m: &ServerMetrics, capacity: f64) {
        if m.running > capacity {
            self.real = false;
        } else if m.waiting > 0.0 {
            self.real = true;
        }
    }

    /// The server was last seen queueing requests while running no more than its capacity.
    pub fn is_real(&self) -> bool {
        self.real
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(running: f64, waiting: f64) -> ServerMetrics {
        ServerMetrics {
            running,
            waiting,
            ..ServerMetrics::default()
        }
    }

    #[test]
    fn queueing_within_capacity_makes_it_real_until_the_server_runs_more() {
        let mut l = CapacityLimit::default();
        assert!(!l.is_real(), "nothing known");
        l.observe(&scrape(24.0, 0.0), 24.0);
        assert!(!l.is_real(), "full, but no one waits");
        l.observe(&scrape(24.0, 3.0), 24.0);
        assert!(l.is_real(), "full, and requests wait");
        l.observe(&scrape(5.0, 0.0), 24.0);
        assert!(l.is_real(), "kept while it is light");
        l.observe(&scrape(40.0, 0.0), 24.0);
        assert!(!l.is_real(), "it ran more than its capacity");
        // A capacity set below what the server runs: requests wait only beyond its own limit.
        l.observe(&scrape(256.0, 10.0), 3.0);
        assert!(!l.is_real());
    }
}
