//! A retry budget: retries may add at most `retry_budget_ratio` of the requests of the last 10
//! seconds, plus `retry_budget_min_per_second` (so a quiet router can still retry).
//!
//! Why (as in Linkerd and Envoy): per-request retry limits are not enough when the whole fleet
//! fails: every request then retries `max_retries` times and a struggling fleet gets several
//! times its normal load at the worst moment. With a budget, once retries would exceed the share,
//! the request gets the error it had instead of another attempt.

use parking_lot::Mutex;
use tokio::time::Instant;

const SECONDS: usize = 10;

#[derive(Clone, Copy, Default)]
struct Second {
    at: u64,
    requests: u32,
    retries: u32,
}

pub struct RetryBudget {
    origin: Instant,
    seconds: Mutex<[Second; SECONDS]>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            origin: Instant::now(),
            seconds: Mutex::new(
                [Second {
                    at: u64::MAX,
                    ..Second::default()
                }; SECONDS],
            ),
        }
    }
}

impl RetryBudget {
    fn slot<'a>(&self, seconds: &'a mut [Second; SECONDS]) -> &'a mut Second {
        let now = self.origin.elapsed().as_secs();
        let s = &mut seconds[(now % SECONDS as u64) as usize];
        if s.at != now {
            *s = Second {
                at: now,
                ..Second::default()
            };
        }
        s
    }

    /// A request arrived (its first attempt).
    pub fn record_request(&self) {
        let mut seconds = self.seconds.lock();
        self.slot(&mut seconds).requests += 1;
    }

    /// Asks to retry; `true` (and counted) while within the budget.
    pub fn try_retry(&self, ratio: f64, min_per_second: f64) -> bool {
        let mut seconds = self.seconds.lock();
        let now = self.origin.elapsed().as_secs();
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in seconds
            .iter()
            .filter(|s| s.at != u64::MAX && now - s.at < SECONDS as u64)
        {
            requests += u64::from(s.requests);
            retries += u64::from(s.retries);
        }
        let allowed = ratio * requests as f64 + min_per_second * SECONDS as f64;
        if (retries as f64) < allowed {
            self.slot(&mut seconds).retries += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_recent_requests_plus_a_floor() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.record_request();
        }
        // 20% of 100 plus 1/s over 10 s: 30 retries, then no more.
        let granted = (0..100).filter(|_| b.try_retry(0.2, 1.0)).count();
        assert_eq!(granted, 30);
        // Ten seconds later the window has moved on: only the floor is left.
        tokio::time::advance(Duration::from_secs(10)).await;
        let granted = (0..100).filter(|_| b.try_retry(0.2, 1.0)).count();
        assert_eq!(granted, 10);
        // Ratio 0 and floor 0: no retries at all.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!RetryBudget::default().try_retry(0.0, 0.0));
    }
}
