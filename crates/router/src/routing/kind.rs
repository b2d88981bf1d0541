//! The routing policies a config can name, and what each needs of a request.

/// The policies a config can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// The Python mvllm's rule, exactly: score = (running + 0.5 * waiting) / capacity from the
    /// server's metrics; a random server among those scoring below 0.5, else a random one among
    /// the lowest.
    Mvllm,
    /// Each eligible server in turn.
    RoundRobin,
    /// The lowest router in-flight count relative to capacity (ties take turns).
    LeastLoad,
    /// The default: the least outstanding work relative to capacity. Outstanding work is the
    /// router's exact in-flight count plus the load the server carries from elsewhere (other
    /// routers, direct clients): its running + waiting at the last scrape minus what this router
    /// had in flight then. So a stale scrape never hides what the router just sent, traffic from
    /// other clients still counts, consecutive requests spread between scrapes, and a nearly full
    /// KV cache (preemptions ahead) and a server that just answered 429/503 are avoided. A request still waiting for its first byte
    /// counts twice: a new request's time to first token depends on the prefills queued ahead of
    /// it, so arrivals spread over servers instead of herding onto the one that was idlest.
    Adaptive,
    /// Where the request gets its first token soonest: `adaptive`'s load plus the prefill the
    /// server would still have to do (the prompt minus what it is believed to have cached, and
    /// the uncached prefill already queued there), in request-equivalents relative to capacity.
    /// Among servers within one request of the best, the same choice on every router replica
    /// (rendezvous hashing of the prompt's prefix, or of the session key). See
    /// [`cache_aware`]. The default: it beat `adaptive` and the peers' cache-aware routers on
    /// every prefix-sharing workload, and matched `adaptive` where prompts share nothing
    /// (README, "Cache-aware routing").
    #[default]
    CacheAware,
    /// A uniformly random server.
    Random,
    /// Power of two choices: two random servers, the one with the lower `adaptive` score.
    PowerOfTwo,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 7] = [
        Self::Adaptive,
        Self::CacheAware,
        Self::Mvllm,
        Self::RoundRobin,
        Self::LeastLoad,
        Self::Random,
        Self::PowerOfTwo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Mvllm => "mvllm",
            Self::RoundRobin => "round_robin",
            Self::LeastLoad => "least_load",
            Self::Adaptive => "adaptive",
            Self::CacheAware => "cache_aware",
            Self::Random => "random",
            Self::PowerOfTwo => "power_of_two",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        if s == "p2c" {
            return Some(Self::PowerOfTwo);
        }
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether the policy looks at where prefixes are cached (the router then keeps an index).
    pub fn uses_prefixes(self) -> bool {
        self == Self::CacheAware
    }
}
