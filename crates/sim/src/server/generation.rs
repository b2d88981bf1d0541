//! One generation request, read: its kind, prompt, the output the simulated model will write
//! and how it ends; what counts it in `/load`; and the usage and finish reason as vLLM writes
//! them. Shared by the JSON answer ([`super::generate`]) and the stream ([`super::stream`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::kv_lease::KvParams;
use super::state::Sim;
use crate::engine::SeqSpec;
use crate::metrics::FinishReason;
use crate::output_words::OutputWords;

/// A chat or a text completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// Everything needed to answer one generation request.
pub(crate) struct Generation {
    pub kind: Kind,
    /// The request's id (`X-Request-Id`, or made up), which KV transfers are keyed by.
    pub request_id: String,
    pub id: String,
    pub model: String,
    pub created: u64,
    pub stream: bool,
    pub include_usage: bool,
    pub spec: SeqSpec,
    /// Index into `output` of each output token.
    pub words: Vec<u8>,
    /// The words the answer is written in.
    pub output: Arc<OutputWords>,
    pub finish: FinishReason,
    pub kv: KvParams,
}

impl Generation {
    pub fn prompt_tokens(&self) -> usize {
        self.spec.prompt_len
    }

    pub fn text(&self, range: std::ops::Range<usize>) -> String {
        self.words[range]
            .iter()
            .map(|&w| self.output.piece(w as usize))
            .collect()
    }
}

/// Counts a generation request in `/load` for as long as it is handled (streams included).
pub(crate) struct LoadGuard(Arc<Sim>);

impl LoadGuard {
    pub fn new(sim: &Arc<Sim>) -> Self {
        sim.server_load.fetch_add(1, Ordering::Relaxed);
        LoadGuard(sim.clone())
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.server_load.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

pub(crate) fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        _ => "stop",
    }
}
