//! The hook through which a server says that a request on it ended, so a slot may have freed
//! up: admission's wait queue listens (see [`crate::admission::wait_queue`]).
//!
//! Why a trait: the fleet is below admission; it calls a listener it was given and knows
//! nothing of queues, as it tells the metrics about health through
//! [`super::observer::FleetObserver`].

/// Told when a request on some server ended. Called once per request, on the hot path: a
/// listener with nobody waiting must cost next to nothing.
pub trait SlotObserver: Send + Sync + std::fmt::Debug {
    fn slot_freed(&self);
}

/// Nobody waits for slots (tools, tests, `check-config`).
#[derive(Debug)]
pub struct NobodyWaits;

impl SlotObserver for NobodyWaits {
    fn slot_freed(&self) {}
}
