//! Live figures over the last seconds and minutes: requests, errors, retries and time to first
//! token, in one-second buckets.
//!
//! Why not the Prometheus histograms: those are cumulative since start, and an operator at the
//! dashboard wants "now" (requests/s over the last 10 s, p95 time to first token over the last
//! minute) and a short history for sparklines. Each bucket holds a log-scale histogram of time
//! to first token (8 steps per doubling, so a percentile is within ~4.4% of the truth); a record
//! is a few adds under an uncontended lock, and buckets older than the window are reused.
//!
//! Reading must not hold the lock long (the request path records under it): sparkline points
//! of finished steps never change, so they are computed once and kept.

use std::time::Duration;

use tokio::time::Instant;

/// Steps per doubling of the latency histogram.
const STEPS_PER_DOUBLING: f64 = 8.0;
/// The histogram covers 100 us .. 100 us * 2^20 (~105 s); outside values go to the end buckets.
const HIST_MIN_SECONDS: f64 = 1e-4;
const HIST_BUCKETS: usize = 20 * 8;

#[derive(Clone)]
struct Bucket {
    /// Seconds since the window's origin; identifies which second the bucket holds.
    second: u64,
    requests: u32,
    errors: u32,
    retries: u32,
    ttft_count: u32,
    /// Sparse: latency buckets are allocated on the first sample of the second.
    ttft: Option<Box<[u32; HIST_BUCKETS]>>,
}

impl Bucket {
    fn empty(second: u64) -> Self {
        Bucket {
            second,
            requests: 0,
            errors: 0,
            retries: 0,
            ttft_count: 0,
            ttft: None,
        }
    }
}

/// What a span of the window adds up to.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub retries: u64,
    pub ttft_samples: u64,
    pub ttft_p50: Option<f64>,
    pub ttft_p95: Option<f64>,
    pub ttft_p99: Option<f64>,
}

impl Summary {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1.0)
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// A sparkline point: requests/s and median time to first token over one step.
pub type Point = (f64, Option<f64>);

/// A ring of one-second buckets covering the last `len` seconds.
pub struct Window {
    origin: Instant,
    buckets: Vec<Bucket>,
    /// Points of finished steps, by (step length, index of the step's last second).
    finished_points: std::collections::HashMap<(usize, u64), Point>,
}

impl Window {
    pub fn new(seconds: usize) -> Self {
        Window {
            origin: Instant::now(),
            buckets: vec![Bucket::empty(u64::MAX); seconds.max(2)],
            finished_points: std::collections::HashMap::new(),
        }
    }

    fn now_second(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    fn current(&mut self) -> &mut Bucket {
        let second = self.now_second();
        let len = self.buckets.len() as u64;
        let b = &mut self.buckets[(second % len) as usize];
        if b.second != second {
            *b = Bucket::empty(second);
        }
        b
    }

    pub fn record_request(&mut self, error: bool) {
        let b = self.current();
        b.requests += 1;
        b.errors += u32::from(error);
    }

    pub fn record_error(&mut self) {
        self.current().errors += 1;
    }

    pub fn record_retry(&mut self) {
        self.current().retries += 1;
    }

    pub fn record_ttft(&mut self, ttft: Duration) {
        let b = self.current();
        b.ttft_count += 1;
        b.ttft.get_or_insert_with(|| Box::new([0; HIST_BUCKETS]))[hist_index(ttft)] += 1;
    }

    /// The buckets of the last `seconds` complete-or-current seconds, oldest first; `None` for a
    /// second with nothing recorded.
    fn last(&self, seconds: usize) -> impl Iterator<Item = Option<&Bucket>> {
        let now = self.now_second();
        let len = self.buckets.len() as u64;
        let n = (seconds as u64).min(len);
        (0..n).rev().map(move |back| {
            let second = now.checked_sub(back)?;
            let b = &self.buckets[(second % len) as usize];
            (b.second == second).then_some(b)
        })
    }

    /// Totals and percentiles over the last `seconds` (the current second included, so a rate
    /// over 10 s covers 9 to 10 s: close enough for a live view, and never zero right after a
    /// burst).
    pub fn summary(&self, seconds: usize) -> Summary {
        let mut s = Summary {
            seconds: seconds.min(self.buckets.len()) as f64,
            ..Summary::default()
        };
        let mut hist = [0u64; HIST_BUCKETS];
        for b in self.last(seconds).flatten() {
            s.requests += u64::from(b.requests);
            s.errors += u64::from(b.errors);
            s.retries += u64::from(b.retries);
            s.ttft_samples += u64::from(b.ttft_count);
            if let Some(h) = &b.ttft {
                for (total, n) in hist.iter_mut().zip(h.iter()) {
                    *total += u64::from(*n);
                }
            }
        }
        s.ttft_p50 = percentile(&hist, s.ttft_samples, 0.50);
        s.ttft_p95 = percentile(&hist, s.ttft_samples, 0.95);
        s.ttft_p99 = percentile(&hist, s.ttft_samples, 0.99);
        s
    }

    /// Per-`step`-second points over the last `seconds`, oldest first: requests/s and median time
    /// to first token (None where there was none), for sparklines. Steps are aligned on
    /// multiples of `step` seconds; only the current one is computed each time.
    pub fn series(&mut self, seconds: usize, step: usize) -> Vec<Point> {
        let step = step.max(1);
        let now = self.now_second();
        let len = self.buckets.len() as u64;
        let current = now / step as u64;
        let steps = (seconds.min(self.buckets.len()) / step) as u64;
        let first = current.saturating_sub(steps.saturating_sub(1));
        self.finished_points
            .retain(|&(s, i), _| s != step || i + steps >= current);
        let mut points = Vec::with_capacity(steps as usize);
        // Steps from before the window began are empty: padding them keeps the newest point at
        // the right of a sparkline from the first second on.
        for _ in (current + 1)..steps {
            points.push((0.0, None));
        }
        for i in first..=current {
            if let Some(p) = self.finished_points.get(&(step, i)) {
                points.push(*p);
                continue;
            }
            let seconds_of_step = (i * step as u64..(i + 1) * step as u64).map(|sec| {
                let b = &self.buckets[(sec % len) as usize];
                (b.second == sec).then_some(b)
            });
            let chunk: Vec<Option<&Bucket>> = seconds_of_step.collect();
            let p = Self::point(&chunk);
            if i < current {
                self.finished_points.insert((step, i), p);
            }
            points.push(p);
        }
        points
    }

    fn point(chunk: &[Option<&Bucket>]) -> Point {
        let mut hist = [0u64; HIST_BUCKETS];
        let (mut requests, mut samples) = (0u64, 0u64);
        for b in chunk.iter().flatten() {
            requests += u64::from(b.requests);
            samples += u64::from(b.ttft_count);
            if let Some(h) = &b.ttft {
                for (total, n) in hist.iter_mut().zip(h.iter()) {
                    *total += u64::from(*n);
                }
            }
        }
        (
            requests as f64 / chunk.len() as f64,
            percentile(&hist, samples, 0.5),
        )
    }
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("seconds", &self.buckets.len())
            .finish_non_exhaustive()
    }
}

fn hist_index(d: Duration) -> usize {
    let s = d.as_secs_f64();
    if s <= HIST_MIN_SECONDS {
        return 0;
    }
    let i = ((s / HIST_MIN_SECONDS).log2() * STEPS_PER_DOUBLING) as usize;
    i.min(HIST_BUCKETS - 1)
}

/// The geometric middle of histogram bucket `i`, in seconds.
fn bucket_value(i: usize) -> f64 {
    HIST_MIN_SECONDS * ((i as f64 + 0.5) / STEPS_PER_DOUBLING).exp2()
}

fn percentile(hist: &[u64; HIST_BUCKETS], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_value(i));
        }
    }
    Some(bucket_value(HIST_BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a / b - 1.0).abs() < 0.045
    }

    #[tokio::test(start_paused = true)]
    async fn rates_and_percentiles_cover_the_last_seconds_only() {
        let mut w = Window::new(60);
        for i in 1..=100u64 {
            w.record_request(i % 10 == 0);
            w.record_ttft(Duration::from_millis(i));
        }
        w.record_retry();
        let s = w.summary(10);
        assert_eq!(
            (s.requests, s.errors, s.retries, s.ttft_samples),
            (100, 10, 1, 100)
        );
        assert!(close(s.ttft_p50.unwrap(), 0.050), "{s:?}");
        assert!(close(s.ttft_p95.unwrap(), 0.095), "{s:?}");
        assert!(close(s.ttft_p99.unwrap(), 0.099), "{s:?}");
        assert!((s.error_rate() - 0.1).abs() < 1e-9);
        assert!((s.requests_per_second() - 10.0).abs() < 1e-9);

        tokio::time::advance(Duration::from_secs(15)).await;
        w.record_request(false);
        let s = w.summary(10);
        assert_eq!((s.requests, s.ttft_samples, s.ttft_p50), (1, 0, None));
        // The 60-second view still sees the burst.
        assert_eq!(w.summary(60).requests, 101);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            w.summary(60).requests,
            0,
            "a whole window later, nothing is left"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn series_has_one_point_per_step_oldest_first_and_keeps_finished_steps() {
        let mut w = Window::new(300);
        w.record_request(false);
        w.record_ttft(Duration::from_millis(200));
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..4 {
            w.record_request(false);
        }
        assert_eq!(
            w.series(60, 5).len(),
            12,
            "always one point per step, padded at first"
        );
        let points = w.series(10, 5);
        assert_eq!(points.len(), 2);
        assert!((points[0].0 - 0.2).abs() < 1e-9, "{points:?}");
        assert!(close(points[0].1.unwrap(), 0.2), "{points:?}");
        assert!(
            (points[1].0 - 0.8).abs() < 1e-9 && points[1].1.is_none(),
            "{points:?}"
        );
        // A finished step is remembered, the current one is recomputed.
        assert_eq!(w.finished_points.len(), 1);
        w.record_request(false);
        let again = w.series(10, 5);
        assert_eq!(again[0], points[0]);
        assert!((again[1].0 - 1.0).abs() < 1e-9, "{again:?}");
        // Long after, old points are dropped and the window is empty.
        tokio::time::advance(Duration::from_secs(400)).await;
        let late = w.series(10, 5);
        assert!(late.iter().all(|p| p.0 == 0.0), "{late:?}");
        assert!(w.finished_points.len() <= 2);
    }

    #[test]
    fn extreme_latencies_land_in_the_end_buckets() {
        assert_eq!(hist_index(Duration::ZERO), 0);
        assert_eq!(hist_index(Duration::from_secs(10_000)), HIST_BUCKETS - 1);
    }
}
