//! Sleeping to a modelled instant with tokio's millisecond timer.
//!
//! Why: tokio rounds every timer up to the next millisecond tick, so a plain `sleep_until`
//! makes each simulated step up to 1 ms late, on average 0.5 ms: 8% of a 6.5 ms decode step.
//! Aiming half a millisecond early makes the error unbiased (within ±0.5 ms), and because the
//! engine dates each step from the previous step's planned end, the errors never accumulate.

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
