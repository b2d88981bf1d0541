//! What a policy sees of one eligible server: a few numbers, no I/O (see [`super`]).

/// A server's own figures from its last successful scrape (summed over data-parallel engines).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scraped {
    pub running: f64,
    pub waiting: f64,
    /// 0..1, the mean over engines.
    pub kv_usage: f64,
    /// This router's in-flight count to the server when the scrape was read.
    pub in_flight_then: f64,
}

/// What a policy sees of one eligible server.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Candidate {
    /// The server's stable id (a hash of its URL): the same on every router replica.
    pub id: u64,
    pub capacity: f64,
    /// Requests this router has in flight to the server now.
    pub in_flight: f64,
    /// Of those, the ones still waiting for their first response byte (queued or prefilling).
    pub awaiting_first_byte: f64,
    /// The server answered 429 or 503 within the last moment (busy, not broken).
    pub overloaded: bool,
    /// `None` when the last scrape failed or is too old to trust.
    pub scraped: Option<Scraped>,
    /// The server's mean seconds per output token lately, from its own `/metrics` (`None`
    /// until known): how fast it is, which its capacity does not say.
    pub seconds_per_token: Option<f64>,
    /// The server was last seen queueing requests while running no more than its capacity
    /// (`fleet::limit`): one beyond its capacity waits there for a slot.
    pub capacity_is_limit: bool,
    /// Tokens of this request's prompt the server is believed to hold in its prefix cache,
    /// for its cost: a preamble shared by conversations counts as held everywhere.
    pub cached_tokens: f64,
    /// Of those, the tokens it is known or believed to hold itself (no preamble credit): the
    /// tie-break between servers of like cost.
    pub held_tokens: f64,
    /// What the server's KV events say it holds of the prompt (`None`: not known exactly; the
    /// policy's learned index decides).
    pub exact_tokens: Option<f64>,
    /// Prompt tokens not cached, of this router's requests to the server still in prefill.
    pub pending_prefill_tokens: f64,
}
