//! The memory all buffered request bodies share (`max_buffered_body_bytes`).
//!
//! Why one budget: each body is bounded by `max_body_bytes`, but thousands of clients sending
//! large bodies at once would still take the router's memory; past the budget a request is
//! refused (503 with `Retry-After`) instead of buffered.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The memory all buffered request bodies share.
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
}

impl BodyBudget {
    pub fn new(limit: usize) -> Self {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Holds `n` bytes of the budget until the permit is dropped; `None` when they are not free
    /// (or `n` is beyond any budget).
    pub fn reserve(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(n).ok()?;
        self.bytes.clone().try_acquire_many_owned(n).ok()
    }
}
