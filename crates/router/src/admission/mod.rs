//! Admission: what guards a request before and around routing. Client keys and their limits
//! (`access`), the wait for a free slot (`wait_queue`), the budget retries may spend
//! (`retry_budget`), the memory buffered bodies may take (`body_budget`), tenants and their token
//! and request budgets (`tenants`), the headroom kept for tenants under their share (`shares`),
//! and which server holds a stored response (`affinity`).
//!
//! Why a room of its own: this state is about requests, not servers. It is owned by the app's
//! state alone; the fleet knows nothing of it and tells it that a slot freed up through its
//! [`crate::fleet::slots::SlotObserver`] hook.

pub mod access;
pub mod affinity;
pub mod body_budget;
pub mod retry_budget;
pub mod shares;
pub mod tenants;
pub mod wait_queue;

use std::sync::Arc;

/// The admission state of one router.
pub struct Admission {
    /// Client API keys and limits in force (rebuilt on reload, keeping live state).
    pub access: Arc<arc_swap::ArcSwap<access::Access>>,
    /// Requests waiting for a free slot when every eligible server is full (`queue_size`).
    pub wait_queue: Arc<wait_queue::WaitQueue>,
    /// Retries may add only a share of the recent requests.
    pub retry_budget: retry_budget::RetryBudget,
    /// The memory request bodies may take together (`max_buffered_body_bytes`).
    pub body_budget: body_budget::BodyBudget,
    /// Which server holds each stored response.
    pub affinity: Arc<affinity::Affinity>,
    /// Tenants and their budgets (rebuilt on reload, keeping the buckets of tenants that stay).
    pub tenants: Arc<arc_swap::ArcSwap<tenants::Tenants>>,
    /// Which tenants and classes hold slots now: the headroom kept for those under their share.
    pub shares: Arc<shares::Shares>,
}

impl Admission {
    pub fn new(settings: &crate::config::Settings) -> Admission {
        Admission {
            access: Arc::new(arc_swap::ArcSwap::from_pointee(access::Access::new(
                &settings.auth,
                None,
            ))),
            wait_queue: Arc::default(),
            retry_budget: Default::default(),
            body_budget: body_budget::BodyBudget::new(settings.max_buffered_body_bytes),
            affinity: Default::default(),
            tenants: Arc::new(arc_swap::ArcSwap::from_pointee(tenants::Tenants::new(
                &settings.auth,
                None,
            ))),
            shares: Arc::default(),
        }
    }
}
