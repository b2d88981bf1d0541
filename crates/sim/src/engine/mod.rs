//! The simulated GPU engine: a pure scheduler ([`scheduler`]) over a KV block pool ([`blocks`]),
//! a cost model that says how long a step takes ([`cost`]), and the async loop that runs steps
//! on the clock and delivers tokens ([`runner`]).

pub mod blocks;
pub mod clock;
pub mod cost;
pub mod runner;
pub mod scheduler;

pub use cost::Profile;
pub use runner::{EngineHandle, Outbox, Progress, Submission};
pub use scheduler::{SchedulerConfig, SeqSpec};
