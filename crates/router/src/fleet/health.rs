//! A server's health as a state machine with hysteresis.
//!
//! Why: the Python mvllm computed a success rate over the process's whole life, so a server that
//! was down for 11 checks needed 44 good ones (22 minutes) to return. Here a server leaves after
//! `health_check_consecutive_failures` failed checks or `failure_threshold` failed requests in a
//! row (or when the recent window's success rate or response time is out of bounds) and returns
//! after `recovery_successes` good checks in a row: seconds, not minutes. A 4xx answer to a
//! client's request is the client's fault and never counts.
//!
//! Outlier ejection (as Envoy's): a server ejected for failing real requests stays out for an
//! ejection time that doubles with each ejection in a row (`outlier_ejection_time`, default 5 s, then 10 s, 20 s ... up to 5 min), even
//! if its `/health` answers, because a broken engine can still answer `/health`. After that it
//! comes back half-open: one request at a time (see [`Health::is_probing`]); a success closes it
//! (and resets the backoff), a failure ejects it again at once.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use crate::config::Settings;

/// A change of state a caller should act on (log it, rediscover models).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    BecameHealthy,
    BecameUnhealthy,
}

#[derive(Debug, Clone, Default)]
pub struct Health {
    /// `None` until the first check answered.
    pub healthy: Option<bool>,
    pub consecutive_check_failures: u32,
    pub consecutive_check_successes: u32,
    pub consecutive_request_failures: u32,
    /// Recent checks: (succeeded, seconds).
    window: VecDeque<(bool, f64)>,
    pub total_checks: u64,
    pub last_check: Option<SystemTime>,
    pub last_response_time: Option<f64>,
    /// Why the server is (or last was) unhealthy: "refused", "time-out", "HTTP 503", ...
    pub last_error: Option<String>,
    /// When the server last became unhealthy (for auto-recovery without active checks).
    pub unhealthy_since: Option<tokio::time::Instant>,
    pub transitions: u64,
    /// Ejections for failed requests in a row (reset by a successful probe).
    pub ejections: u32,
    /// Until when an ejected server stays out whatever its health checks say.
    pub ejected_until: Option<tokio::time::Instant>,
    /// Back from an ejection: one request at a time until one succeeds.
    pub probing: bool,
}

/// The longest ejection, however many in a row (the first is `outlier_ejection_time`).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

impl Health {
    /// Starts healthy (used when active checks are off: passive ejection only).
    pub fn assumed_healthy() -> Self {
        Health {
            healthy: Some(true),
            ..Default::default()
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy == Some(true)
    }

    /// Half-open: back after an ejection, taking one request at a time.
    pub fn is_probing(&self) -> bool {
        self.probing && self.is_healthy()
    }

    /// Still serving its ejection time at `now`.
    fn still_ejected(&self, now: tokio::time::Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// Ejects the server for failing requests: out for the backoff, half-open after.
    fn eject(&mut self, why: String, base: Duration) -> Transition {
        self.ejections = self.ejections.saturating_add(1);
        let factor = 1u32 << (self.ejections - 1).min(16);
        let time = base.saturating_mul(factor).min(MAX_EJECTION.max(base));
        self.ejected_until = Some(tokio::time::Instant::now() + time);
        self.probing = false;
        self.last_error = Some(why);
        self.set(false)
    }

    /// Success rate over the recent window (1.0 with no checks yet).
    pub fn success_rate(&self) -> f64 {
        if self.window.is_empty() {
            return 1.0;
        }
        self.window.iter().filter(|(ok, _)| *ok).count() as f64 / self.window.len() as f64
    }

    /// Mean response time of the recent window's checks, in seconds.
    pub fn avg_response_time(&self) -> f64 {
        if self.window.is_empty() {
            return 0.0;
        }
        self.window.iter().map(|(_, t)| t).sum::<f64>() / self.window.len() as f64
    }

    /// Records an active check: `Ok(seconds)` or `Err(why)`.
    pub fn record_check(&mut self, result: Result<f64, String>, s: &Settings) -> Transition {
        self.total_checks += 1;
        self.last_check = Some(SystemTime::now());
        let ok = result.is_ok();
        let rt = *result
            .as_ref()
            .unwrap_or(&s.health_check_timeout.as_secs_f64());
        self.last_response_time = Some(rt);
        self.window.push_back((ok, rt));
        while self.window.len() > s.health_check_window_size {
            self.window.pop_front();
        }
        match result {
            Ok(_) => {
                self.consecutive_check_failures = 0;
                self.consecutive_check_successes += 1;
            }
            Err(why) => {
                self.consecutive_check_successes = 0;
                self.consecutive_check_failures += 1;
                self.last_error = Some(why);
            }
        }
        match self.healthy {
            None => self.set(ok),
            Some(true) => {
                let window_full = self.window.len() >= s.health_check_window_size;
                let failing = self.consecutive_check_failures
                    >= s.health_check_consecutive_failures
                    || (window_full && self.success_rate() < s.health_check_min_success_rate)
                    || (window_full
                        && self.avg_response_time()
                            > s.health_check_max_response_time.as_secs_f64());
                if failing {
                    if self.last_error.is_none() {
                        self.last_error = Some("slow or unreliable health checks".into());
                    }
                    self.set(false)
                } else {
                    Transition::None
                }
            }
            Some(false)
                if self.consecutive_check_successes >= s.recovery_successes
                    && !self.still_ejected(tokio::time::Instant::now()) =>
            {
                self.readmit()
            }
            Some(false) => Transition::None,
        }
    }

    /// Records a request that failed in a way that is the server's fault (connection error,
    /// time-out, 5xx).
    pub fn record_request_failure(&mut self, why: String, s: &Settings) -> Transition {
        self.consecutive_request_failures += 1;
        if self.is_probing()
            || (self.is_healthy() && self.consecutive_request_failures >= s.failure_threshold)
        {
            return self.eject(why, s.outlier_ejection_time);
        }
        Transition::None
    }

    pub fn record_request_success(&mut self) {
        self.consecutive_request_failures = 0;
        if self.probing {
            self.probing = false;
            self.ejections = 0;
            self.ejected_until = None;
        }
    }

    /// Back in rotation: half-open if it was ejected for failing requests.
    fn readmit(&mut self) -> Transition {
        self.probing = self.ejections > 0;
        self.set(true)
    }

    /// Without active checks, an ejected server is tried again after `auto_recovery_threshold`.
    pub fn auto_recover(&mut self, now: tokio::time::Instant, after: Duration) -> Transition {
        match self.unhealthy_since {
            Some(t)
                if self.healthy == Some(false)
                    && now.duration_since(t) >= after
                    && !self.still_ejected(now) =>
            {
                self.readmit()
            }
            _ => Transition::None,
        }
    }

    fn set(&mut self, healthy: bool) -> Transition {
        let was = self.healthy;
        self.healthy = Some(healthy);
        if was == Some(healthy) {
            return Transition::None;
        }
        self.transitions += 1;
        if healthy {
            self.window.clear();
            self.consecutive_check_failures = 0;
            self.consecutive_request_failures = 0;
            self.unhealthy_since = None;
            Transition::BecameHealthy
        } else {
            self.consecutive_check_successes = 0;
            self.unhealthy_since = Some(tokio::time::Instant::now());
            Transition::BecameUnhealthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::default()
    }

    #[test]
    fn first_check_decides_then_hysteresis_both_ways() {
        let s = settings();
        let mut h = Health::default();
        assert_eq!(h.record_check(Ok(0.01), &s), Transition::BecameHealthy);
        assert_eq!(h.record_check(Err("refused".into()), &s), Transition::None);
        assert_eq!(h.record_check(Err("refused".into()), &s), Transition::None);
        assert_eq!(
            h.record_check(Err("refused".into()), &s),
            Transition::BecameUnhealthy,
            "3 in a row"
        );
        for _ in 0..8 {
            h.record_check(Err("refused".into()), &s);
        }
        assert_eq!(h.record_check(Ok(0.01), &s), Transition::None);
        assert_eq!(
            h.record_check(Ok(0.01), &s),
            Transition::BecameHealthy,
            "2 good checks bring it back, however long it was down"
        );
        assert_eq!(h.success_rate(), 1.0, "the window restarts on recovery");
    }

    #[test]
    fn a_down_server_at_start_is_unhealthy_at_once() {
        let mut h = Health::default();
        assert_eq!(
            h.record_check(Err("refused".into()), &settings()),
            Transition::BecameUnhealthy
        );
        assert_eq!(h.last_error.as_deref(), Some("refused"));
    }

    #[test]
    fn request_failures_eject_after_threshold_and_successes_reset() {
        let s = settings();
        let mut h = Health::assumed_healthy();
        assert_eq!(
            h.record_request_failure("HTTP 502".into(), &s),
            Transition::None
        );
        h.record_request_success();
        assert_eq!(
            h.record_request_failure("HTTP 502".into(), &s),
            Transition::None
        );
        assert_eq!(
            h.record_request_failure("time-out".into(), &s),
            Transition::BecameUnhealthy
        );
    }

    #[test]
    fn a_flapping_server_leaves_on_its_window_success_rate() {
        let s = settings();
        let mut h = Health::default();
        h.record_check(Ok(0.01), &s);
        let mut t = Transition::None;
        for i in 0..10 {
            let r = if i % 3 == 0 {
                Err("refused".into())
            } else {
                Ok(0.01)
            };
            t = h.record_check(r, &s);
            if t != Transition::None {
                break;
            }
        }
        assert_eq!(t, Transition::BecameUnhealthy);
    }

    #[test]
    fn auto_recovery_without_active_checks() {
        let s = settings();
        let mut h = Health::assumed_healthy();
        h.record_request_failure("x".into(), &s);
        h.record_request_failure("x".into(), &s);
        let since = h.unhealthy_since.unwrap();
        assert_eq!(
            h.auto_recover(since + Duration::from_secs(10), s.auto_recovery_threshold),
            Transition::None
        );
        assert_eq!(
            h.auto_recover(since + Duration::from_secs(60), s.auto_recovery_threshold),
            Transition::BecameHealthy
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_server_waits_out_a_doubling_backoff_then_probes_half_open() {
        let s = settings();
        let mut h = Health::default();
        h.record_check(Ok(0.01), &s);
        h.record_request_failure("HTTP 500".into(), &s);
        assert_eq!(
            h.record_request_failure("HTTP 500".into(), &s),
            Transition::BecameUnhealthy
        );
        // Its /health still answers, but it stays out for the first ejection time.
        for _ in 0..3 {
            assert_eq!(h.record_check(Ok(0.01), &s), Transition::None);
        }
        tokio::time::advance(s.outlier_ejection_time).await;
        assert_eq!(h.record_check(Ok(0.01), &s), Transition::BecameHealthy);
        assert!(h.is_probing(), "back half-open");
        // One failure while probing ejects it again, for twice as long.
        assert_eq!(
            h.record_request_failure("HTTP 500".into(), &s),
            Transition::BecameUnhealthy
        );
        tokio::time::advance(s.outlier_ejection_time).await;
        assert_eq!(
            h.record_check(Ok(0.01), &s),
            Transition::None,
            "10 s this time"
        );
        tokio::time::advance(s.outlier_ejection_time).await;
        assert_eq!(h.record_check(Ok(0.01), &s), Transition::BecameHealthy);
        // A success closes it and forgets the backoff.
        h.record_request_success();
        assert!(!h.is_probing() && h.ejections == 0);
        // Failed health checks alone are not an ejection: no backoff, no probing.
        for _ in 0..3 {
            h.record_check(Err("refused".into()), &s);
        }
        assert!(!h.is_healthy());
        h.record_check(Ok(0.01), &s);
        assert_eq!(h.record_check(Ok(0.01), &s), Transition::BecameHealthy);
        assert!(!h.is_probing());
    }
}
