//! Sleeping to a modelled instant with tokio's millisecond timer.
//!
//! Why: tokio rounds every timer up to the next millisecond tick, so a plain `sleep_until`
//! makes each simulated step up to 1 ms late, on average 0.5 ms: 8% of a 6.5 ms decode step.
//! Aiming half a millisecond early makes the error unbiased (within ±0.5 ms), and because the
//! engine dates each step from the previous step's planned end, the errors never accumulate.
//!
//! The one wait whose error nothing absorbs is the first step after the engine was idle (it is
//! the time to first token of a lone request), so that one is finished with a short spin.

use std::time::Duration;

use tokio::time::Instant;

const HALF_TICK: Duration = Duration::from_micros(500);

/// Sleeps until about `deadline`: within half a millisecond either side.
pub async fn sleep_until_nearest(deadline: Instant) {
    let aim = deadline.checked_sub(HALF_TICK).unwrap_or(deadline);
    if aim > Instant::now() {
        tokio::time::sleep_until(aim).await;
    }
}

/// Sleeps until `deadline` precisely: the timer gets within a millisecond and a yield loop on
/// the real clock does the rest. Costs up to ~1.5 ms of CPU, so it is only for waits that happen
/// when the engine goes from idle to busy.
pub async fn sleep_until_precise(deadline: Instant) {
    let coarse = deadline
        .checked_sub(Duration::from_micros(1500))
        .unwrap_or(deadline);
    if coarse > Instant::now() {
        tokio::time::sleep_until(coarse).await;
    }
    let now = Instant::now();
    if deadline > now {
        let real_end = std::time::Instant::now() + (deadline - now);
        while std::time::Instant::now() < real_end {
            tokio::task::yield_now().await;
        }
    }
    // Under tokio's paused clock (tests) time stood still during the spin: let the timer jump.
    if Instant::now() < deadline {
        sleep_until_nearest(deadline).await;
    }
}
