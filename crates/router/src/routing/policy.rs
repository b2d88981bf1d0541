//! The `Policy` trait: what the dispatch path asks of a routing policy, and tells it.
//!
//! Why a trait with hooks rather than a function: a policy that learns where prefixes are
//! cached needs the request (its prompt's fingerprint), servers it can tell apart across
//! reloads and replicas (a stable id, the hash of the URL), state of its own per server that a
//! reload keeps for servers that stay and drops for those removed, and to hear when a request
//! was routed, when it ended (with what the server reported), and when a server restarted or
//! went down. The dispatch path calls these hooks; a policy that needs none of them (all the
//! classic ones) implements `pick` alone. Everything here is free of I/O and tested with crafted
//! candidates (pingora's `BackendSelection` takes the request's key the same way).

use rand::RngCore;

use super::candidate::Candidate;
use super::fingerprint::Fingerprint;
use super::kind::PolicyKind;
use super::prefix_index::Prediction;

/// A server's stable id: the hash of its URL, the same on every router replica.
pub type ServerId = u64;

/// What a policy sees of the request, built once from it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteRequest<'a> {
    /// The prompt's prefix fingerprint (`None`: no prompt, or a policy that does not use it).
    pub prompt: Option<&'a Fingerprint>,
    /// The prompt's estimated length in tokens (0 when unknown).
    pub prompt_tokens: f64,
    /// The key every replica hashes alike for this request's session or prefix.
    pub affinity: Option<u64>,
    /// Tokens up to the block the affinity key comes from: a server holding that much of the
    /// prompt holds this conversation (or document), not only a preamble shared by everyone.
    pub anchor_tokens: f64,
}

/// A routed request's end, with what its server reported about the prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ended {
    /// What the policy predicted for it when it was routed.
    pub prediction: Prediction,
    /// The server's own count of the prompt's tokens, and of those served from its cache
    /// (`None`: the response did not report usage).
    pub usage: Option<(f64, f64)>,
    /// The answer's length in tokens (from usage, or a stream's events; 0 when unknown).
    pub completion_tokens: f64,
}

/// Something that happened to a server, that a policy's state about it may depend on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServerChange {
    /// Its counters went back: it restarted, with nothing cached.
    Restarted,
    /// It went out of rotation (its cache is not worth trusting when it comes back).
    Down,
    /// A scrape: its KV cache's size in tokens (0: not reported), and its prefix-cache counters.
    Scraped {
        kv_cache_tokens: usize,
        prefix_hits: f64,
        prefix_queries: f64,
    },
}

/// What a policy holds about one server, for metrics, `/load-stats` and the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrefixReport {
    pub blocks: usize,
    pub bytes: usize,
    /// Over the last calibration window: the share of prompt tokens predicted cached, and the
    /// share the server reported cached.
    pub predicted_hit_rate: Option<f64>,
    pub actual_hit_rate: Option<f64>,
    /// Times the index was found far off what the server reported, and forgotten.
    pub resets: u64,
}

pub trait Policy: Send + Sync {
    fn kind(&self) -> PolicyKind;

    /// Whether it looks at the request's prompt (the dispatch path then fingerprints it).
    fn uses_prompt(&self) -> bool {
        false
    }

    /// Fills in what only the policy knows of each candidate for this request (`cache_aware`:
    /// how much of the prompt each is believed to hold). Called before [`Policy::pick`].
    fn assess(&self, _request: &RouteRequest<'_>, _candidates: &mut [Candidate]) {}

    /// Index into `candidates` of the chosen server, `None` only when there are none.
    fn pick(
        &self,
        request: &RouteRequest<'_>,
        candidates: &[Candidate],
        rng: &mut dyn RngCore,
    ) -> Option<usize>;

    /// The request was sent to `to` (one of the candidates, as assessed).
    fn routed(&self, _request: &RouteRequest<'_>, _to: &Candidate) {}

    /// A request routed to `server` ended, and the server reported on its prompt.
    fn ended(&self, _server: ServerId, _ended: &Ended) {}

    /// Something happened to `server`.
    fn server_changed(&self, _server: ServerId, _change: ServerChange) {}

    /// The fleet is now `servers`: state about others is dropped, about these kept.
    /// `prefix_index_bytes`: the memory all per-server prefix state may take.
    fn fleet_changed(&self, _servers: &[ServerId], _prefix_index_bytes: usize) {}

    /// What the policy holds about `server`, if it keeps anything.
    fn report(&self, _server: ServerId) -> Option<PrefixReport> {
        None
    }
}
