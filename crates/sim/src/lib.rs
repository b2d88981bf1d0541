//! `mvllm-sim`: a vLLM server without a GPU.
//!
//! Every test, demo and benchmark of mvllm runs against this: it speaks vLLM's HTTP API
//! (routes, JSON and SSE shapes, errors, `/metrics`), schedules requests as vLLM's V1 engine does
//! on a simulated clock ([`engine`]), and fails on demand ([`faults`]). [`spawn`] starts one
//! simulated server in-process and returns a [`SimHandle`].

pub mod config;
pub mod engine;
pub mod faults;
pub mod metrics;
pub mod output_words;
pub mod server;
pub mod tokenizer;

pub use config::SimConfig;
pub use faults::Faults;
pub use server::{SimHandle, spawn};
