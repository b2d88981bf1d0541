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
    /// The engine's KV block size: the prompt tokens a request newly caches come in whole blocks.
    pub block_size: usize,
    /// `system_fingerprint`: vLLM's version and a hash of the server's configuration.
    pub fingerprint: Arc<str>,
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

/// Where a usage object is written: vLLM 0.32 drops its `null` fields in a stream's usage chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UsageIn {
    Answer,
    Stream,
}

/// `usage` as vLLM 0.32 writes it (with `--enable-prompt-tokens-details`). A chat's
/// `created_cache_tokens` counts the prompt tokens this request newly put in the prefix cache
/// (whole blocks not already cached); a completion's is `null`.
pub(crate) fn usage(g: &Generation, completion: usize, cached: usize, place: UsageIn) -> Value {
    let prompt = g.prompt_tokens();
    let created = match g.kind {
        Kind::Chat => {
            let full_blocks = prompt / g.block_size.max(1) * g.block_size.max(1);
            json!(full_blocks.saturating_sub(cached))
        }
        Kind::Completion => Value::Null,
    };
    let mut details = serde_json::Map::new();
    details.insert("cached_tokens".into(), json!(cached));
    details.insert("created_cache_tokens".into(), created);
    details.insert("multimodal_tokens".into(), Value::Null);
    let mut usage = json!({
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    });
    if place == UsageIn::Stream {
        details.retain(|_, v| !v.is_null());
        usage["prompt_tokens_details"] = Value::Object(details);
    } else {
        usage["prompt_tokens_details"] = Value::Object(details);
        usage["completion_tokens_details"] = Value::Null;
    }
    usage
}

pub(crate) fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        _ => "stop",
    }
}
