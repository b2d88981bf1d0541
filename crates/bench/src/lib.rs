//! `mvllm-bench`: measuring, never asserting. A real OpenAI-API client that records time to first
//! token and inter-token latency per request ([`client`]), summaries ([`stats`]), and suites
//! that produce the figures quoted in the README ([`sim_suite`], [`routing_suite`],
//! [`overhead_suite`]).

pub mod client;
pub mod disagg_suite;
pub mod hyper_floor;
pub mod load;
pub mod overhead_suite;
pub mod peer_routers;
pub mod pinning;
pub mod plot;
pub mod process;
pub mod proxies;
pub mod routing_suite;
pub mod sim_suite;
pub mod soak;
pub mod stats;
pub mod stream_hold;
pub mod tenants_peer;
pub mod tenants_suite;
pub mod tokenize_suite;
