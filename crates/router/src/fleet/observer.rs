//! What the fleet tells whoever watches it: health changes and failed scrapes.
//!
//! Why a trait: the fleet is state and the loops that keep it current; counting and logging
//! what happens to it is the router's metrics' business. The fleet calls an observer it was
//! given (the router's [`crate::telemetry::Telemetry`]), so it depends on no metrics code and
//! the metrics depend on the fleet, one way.

use super::health::Transition;
use super::server::Server;

pub trait FleetObserver: Send + Sync {
    /// A server became healthy or unhealthy (`Transition::None` is never passed).
    fn server_transition(&self, server: &Server, t: Transition);
    /// A scrape of the server's `/metrics` failed.
    fn scrape_failed(&self, server: &Server);
}

/// Watches nothing: a fleet on its own (tests, tools).
pub struct Unobserved;

impl FleetObserver for Unobserved {
    fn server_transition(&self, _: &Server, _: Transition) {}
    fn scrape_failed(&self, _: &Server) {}
}
