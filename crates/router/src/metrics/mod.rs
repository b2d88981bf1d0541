//! What the router's metrics are made of, below everything that counts: label sets, and each
//! server's handles to its own counters. A leaf: it imports nothing of the crate.

pub mod labels;
pub mod server_counters;
