//! The fleet: every server's state, and the background loops that keep it current (active
//! health checks, `/metrics` scrapes, model discovery, DNS, KV events), each over all servers
//! in parallel.
//!
//! A request reads the fleet once: [`Fleet::view`] is one atomic load of a [`FleetView`]
//! (servers, settings, policy, tokenizers), kept for the request's life.
//!
//! This file only names the rooms; none of them imports it.

pub mod check;
pub mod dns;
pub mod events;
pub mod health;
pub mod kv_state;
pub mod kv_subscriber;
pub mod limit;
pub mod loops;
pub mod membership;
pub mod observer;
pub mod pace;
pub mod probe;
pub mod probe_error;
pub mod probing;
pub mod prom;
pub mod server;
pub mod slots;
pub mod state;
pub mod view;
pub mod window;

pub use membership::{MembershipError, ReloadSummary};
pub use server::{InFlight, Models, ProbeKind, Server};
pub use state::Fleet;
pub use view::{FleetView, Tokenizers};
