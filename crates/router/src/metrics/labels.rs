//! The label sets of the router's metrics, and the bounded `route` label of a request path.
//!
//! Why a leaf of its own: the fleet's servers keep handles to their counters
//! ([`super::server_counters`]), and the metrics registry ([`crate::telemetry`]) renders the
//! whole fleet; with the label types here, both import this file and neither imports the other.

use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub model: String,
    pub server: std::sync::Arc<str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvEventLabels {
    pub server: String,
    /// `batches`, `malformed`, `gaps`, `replays`, `replay_failures`, `restarts`,
    /// `over_budget`, `orphans`, `unknown_removed`.
    pub what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub server: String,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
    pub outcome: &'static str,
}

/// One tenant (bounded as [`TenantLabels`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantNameLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub policy: &'static str,
    pub server: std::sync::Arc<str>,
}

/// The `route` label of a request path: one of a fixed list, whatever the client sent.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat_completions",
        "/v1/completions" => "completions",
        "/v1/embeddings" => "embeddings",
        "/tokenize" | "/detokenize" => "tokenize",
        "/invocations" => "invocations",
        p if p.starts_with("/v1/responses") => "responses",
        p if p.starts_with("/v1/audio/") => "audio",
        p if p.starts_with("/v1/messages") => "messages",
        "/rerank" | "/v1/rerank" | "/v2/rerank" | "/score" | "/v1/score" | "/pooling"
        | "/classify" => "pooling",
        p if p.starts_with("/v1/") => "other_v1",
        _ => "other",
    }
}

/// A request path's `route` label: one of a fixed list, never the raw path.
/// Every value of the `route` label.
pub const ROUTES: [&str; 11] = [
    "chat_completions",
    "completions",
    "embeddings",
    "tokenize",
    "invocations",
    "responses",
    "audio",
    "messages",
    "pooling",
    "other_v1",
    "other",
];
