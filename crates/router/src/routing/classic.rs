//! The classic policies: round robin, least load, `adaptive`, the seed's rule (`mvllm`),
//! random and power of two choices. They look at load alone, keep no state about servers (a
//! rotating cursor for ties is all), and so need none of [`Policy`]'s hooks.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{Rng, RngCore};

use super::candidate::Candidate;
use super::kind::PolicyKind;
use super::policy::{Policy, RouteRequest};
use super::scores::{adaptive_score, lowest, seed_rule};

#[derive(Debug)]
pub struct Classic {
    kind: PolicyKind,
    cursor: AtomicUsize,
}

impl Classic {
    /// Any kind but `cache_aware` (see [`super::build`]).
    pub fn new(kind: PolicyKind) -> Self {
        Classic {
            kind,
            cursor: AtomicUsize::new(0),
        }
    }
}

impl Policy for Classic {
    fn kind(&self) -> PolicyKind {
        self.kind
    }

    fn pick(
        &self,
        _request: &RouteRequest<'_>,
        candidates: &[Candidate],
        rng: &mut dyn RngCore,
    ) -> Option<usize> {
        match candidates.len() {
            0 => None,
            1 => Some(0),
            n => Some(match self.kind {
                PolicyKind::RoundRobin => self.cursor.fetch_add(1, Ordering::Relaxed) % n,
                PolicyKind::LeastLoad => {
                    lowest(candidates, &self.cursor, |c| c.in_flight / c.capacity)
                }
                PolicyKind::Adaptive | PolicyKind::CacheAware => {
                    lowest(candidates, &self.cursor, adaptive_score)
                }
                PolicyKind::Mvllm => seed_rule(candidates, rng),
                PolicyKind::Random => rng.random_range(0..n),
                PolicyKind::PowerOfTwo => {
                    let a = rng.random_range(0..n);
                    let b = (a + rng.random_range(1..n)) % n;
                    if adaptive_score(&candidates[b]) < adaptive_score(&candidates[a]) {
                        b
                    } else {
                        a
                    }
                }
            }),
        }
    }
}
