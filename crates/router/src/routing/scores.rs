//! The load scores the load-based policies rank candidates by, and the pick among the lowest.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use super::candidate::Candidate;

/// Expected load after adding one request, relative to capacity (see [`PolicyKind::Adaptive`]).
pub fn adaptive_score(c: &Candidate) -> f64 {
    let (external, kv) = match c.scraped {
        Some(s) => (
            (s.running + s.waiting - s.in_flight_then).max(0.0),
            s.kv_usage,
        ),
        None => (0.0, 0.0),
    };
    let kv_penalty = if kv > 0.95 { 1.0 } else { 0.0 };
    let overload_penalty = if c.overloaded { 1.0 } else { 0.0 };
    (c.in_flight + c.awaiting_first_byte + external + 1.0) / c.capacity
        + kv_penalty
        + overload_penalty
}

/// The seed's score; a server without fresh metrics is scored on the router's in-flight count.
pub fn seed_score(c: &Candidate) -> f64 {
    let (running, waiting) = c
        .scraped
        .map_or((c.in_flight, 0.0), |s| (s.running, s.waiting));
    (running + 0.5 * waiting) / c.capacity
}

/// The seed's rule, with its random choices: among those below 0.5, else among the lowest.
pub(crate) fn seed_rule<R: Rng + ?Sized>(candidates: &[Candidate], rng: &mut R) -> usize {
    let scores: Vec<f64> = candidates.iter().map(seed_score).collect();
    let light: Vec<usize> = (0..candidates.len()).filter(|&i| scores[i] < 0.5).collect();
    let pool = if light.is_empty() {
        let best = scores.iter().copied().fold(f64::INFINITY, f64::min);
        (0..candidates.len())
            .filter(|&i| scores[i] <= best + 1e-12)
            .collect()
    } else {
        light
    };
    pool[rng.random_range(0..pool.len())]
}

/// One of the candidates with the lowest score: among ties, the first at or after the rotating
/// `cursor`, so that equally loaded servers take turns (as round robin would) instead of being
/// drawn at random, which lets short-term imbalances build up.
pub(crate) fn lowest(
    candidates: &[Candidate],
    cursor: &AtomicUsize,
    score: impl Fn(&Candidate) -> f64,
) -> usize {
    let scores: Vec<f64> = candidates.iter().map(score).collect();
    let best = scores.iter().copied().fold(f64::INFINITY, f64::min);
    let n = candidates.len();
    let start = cursor.fetch_add(1, Ordering::Relaxed) % n;
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| scores[i] <= best + 1e-12)
        .unwrap_or(0)
}
