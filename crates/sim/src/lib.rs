//! `mvllm-sim`: a vLLM server without a GPU.

pub mod engine;
pub mod tokenizer;
