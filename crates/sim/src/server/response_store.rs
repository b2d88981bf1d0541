//! The `/v1/responses` results a simulated server keeps (the last [`KEEP`]).

use std::collections::VecDeque;

use serde_json::Value;

/// How many responses are kept.
pub(crate) const KEEP: usize = 1024;

#[derive(Default)]
pub struct Store {
    pub(crate) items: VecDeque<(String, Value)>,
}
