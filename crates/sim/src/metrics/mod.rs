//! vLLM's `/metrics`: the figures each engine keeps ([`figures`]), and ([`exposition`]) the
//! text vLLM writes them as.
//!
//! Why written by hand: the point is to reproduce vLLM's exact text (Python prometheus_client's
//! layout and number format, `engine` and `model_name` labels, the families without them),
//! including the older names (`--legacy-metrics`) that routers must still read. Each engine
//! keeps one [`EngineMetrics`], updated once per step under a lock that is never held across an
//! await.

mod exposition;
mod figures;
mod text;

pub use exposition::Exposition;
pub use figures::*;
pub use text::fmt_value;
