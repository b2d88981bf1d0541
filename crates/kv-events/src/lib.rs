//! vLLM's KV-cache events: what a server stored in and evicted from its prefix cache, published
//! over ZeroMQ so that a router can know, not guess, which server holds a prompt's blocks.
//!
//! One crate for both ends of the protocol, because both must agree to the byte: the simulator
//! publishes ([`publisher`], on the `zeromq` crate), the router subscribes ([`subscriber`], on a
//! small ZMTP reader with message-size limits, [`zmtp`]), and both speak [`wire`], the msgpack
//! layout of vLLM's `KVEventBatch` (`vllm/distributed/kv_events.py`).

pub mod publisher;
pub mod subscriber;
pub mod wire;
pub mod zmtp;

pub use publisher::{Publisher, PublisherConfig};
pub use subscriber::{Message, ReplayError, Subscription, replay};
pub use wire::{Batch, DecodeError, Event, Removed, Stored, decode, encode};
pub use zmtp::Limits;
