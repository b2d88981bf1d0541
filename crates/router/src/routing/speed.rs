//! How much slower than the fleet's fastest server each server is, for `cache_aware`'s cost.
//!
//! Why: a server's capacity (`max_concurrent_requests`) says nothing of its speed, and a server
//! on an older GPU takes longer over every prefill and every token, so a conversation started
//! there is slower at every turn. Each server's seconds per output token is learned from its
//! own `/metrics` (`fleet::pace`); here it becomes a ratio to the fastest, coarse enough that
//! router replicas, whose figures differ by a few percent, weigh servers alike.

use super::candidate::Candidate;

/// A server's seconds per output token over the fastest server's is rounded to a multiple of
/// this: replicas whose figures differ by a few percent then weigh servers alike.
pub const SLOWNESS_STEP: f64 = 0.5;
/// A server less than this many times slower than the fastest counts as fast as it: a busier
/// server's tokens come slower, from a bigger batch and from the prefills run beside its
/// decodes, and its load already counts that. Measured: with servers within 1.25x counted
/// alike, on a fleet of one speed at 40% load the servers prefilling system prompts in the
/// first seconds read as 1.5x slower, new conversations avoided them and took their system
/// prompts cold elsewhere, and p99 time to first token went from 17-20 to 27-31 ms
/// (`mvllm bench routing --workload chat-sessions --fleet homogeneous --load 0.4`). Hardware
/// differs by more: 1.5-3x between GPU generations; the benchmarks' half-speed servers, 2x.
pub const SAME_SPEED_WITHIN: f64 = 1.5;
/// The most a server's slowness weighs (a figure far beyond it says more about a stalled server
/// than about its speed; health checks deal with that).
pub const MAX_SLOWNESS: f64 = 4.0;

/// The fastest candidate's seconds per output token, when any is known.
pub fn fastest(candidates: &[Candidate]) -> Option<f64> {
    candidates
        .iter()
        .filter_map(|c| c.seconds_per_token)
        .filter(|t| *t > 0.0)
        .reduce(f64::min)
}

/// How many times longer `c` takes over the same work than the fastest server, in steps of
/// [`SLOWNESS_STEP`] (1 when either is unknown). A prefill takes that many times longer there,
/// so `cache_aware` multiplies the prefill part of its cost by it (the load part needs no such
/// weight: a slow server's requests stay in flight longer, so its load shows its speed). On a
/// lightly loaded fleet of mixed speeds, new conversations thus start on the fast servers, which
/// then serve every later turn faster too, and the slow ones take their share as load grows.
pub fn slowness(c: &Candidate, fastest: Option<f64>) -> f64 {
    match (c.seconds_per_token, fastest) {
        (Some(t), Some(f)) if t / f >= SAME_SPEED_WITHIN => {
            ((t / f / SLOWNESS_STEP).round() * SLOWNESS_STEP).clamp(1.0, MAX_SLOWNESS)
        }
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pace: Option<f64>) -> Candidate {
        Candidate {
            seconds_per_token: pace,
            ..Candidate::default()
        }
    }

    #[test]
    fn slowness_is_the_ratio_to_the_fastest_in_half_steps_from_1_to_4() {
        let fleet = [
            at(Some(0.010)),
            at(Some(0.0121)),
            at(Some(0.0149)),
            at(Some(0.0151)),
            at(Some(0.0205)),
            at(None),
            at(Some(0.09)),
        ];
        let f = fastest(&fleet);
        assert_eq!(f, Some(0.010));
        let s: Vec<f64> = fleet.iter().map(|c| slowness(c, f)).collect();
        assert_eq!(s, [1.0, 1.0, 1.0, 1.5, 2.0, 1.0, 4.0]);
        assert_eq!(fastest(&[at(None)]), None);
        assert_eq!(slowness(&at(Some(0.02)), None), 1.0);
    }
}
