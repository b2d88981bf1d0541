//! What `mvllm bench routing` compares: a policy, two replicas of one, a policy with KV events,
//! the oracle of client-side affinity, or a peer router; and which run by default.

use mvllm_router::routing::PolicyKind;

use super::Options;

/// One thing `bench routing` compares.
#[derive(Debug, Clone, PartialEq)]
pub enum Contender {
    Policy(PolicyKind),
    /// Two mvllm replicas with this policy; the client alternates between them.
    Replicas(PolicyKind),
    /// This policy with every server's KV events subscribed (`POLICY-exact`).
    Exact(PolicyKind),
    /// No router: each conversation (or document) pinned to a server by the client.
    Oracle,
    /// The oracle with every shared prefix prefilled on every server before the run
    /// (`oracle-warm`): the floor on servers of one speed.
    WarmOracle,
    Peer(crate::peer_routers::Peer),
}

impl Contender {
    pub fn parse(s: &str) -> Result<Contender, String> {
        match s {
            "oracle" => return Ok(Contender::Oracle),
            "oracle-warm" => return Ok(Contender::WarmOracle),
            _ => {}
        }
        if let Some(p) = crate::peer_routers::Peer::ALL
            .iter()
            .find(|p| p.name() == s)
        {
            return Ok(Contender::Peer(*p));
        }
        if let Some(p) = s.strip_suffix("-x2").and_then(PolicyKind::parse) {
            return Ok(Contender::Replicas(p));
        }
        if let Some(p) = s.strip_suffix("-exact").and_then(PolicyKind::parse) {
            return Ok(Contender::Exact(p));
        }
        PolicyKind::parse(s).map(Contender::Policy).ok_or_else(|| {
            format!(
                "unknown contender `{s}`: a policy, POLICY-x2, POLICY-exact, oracle, oracle-warm, vllm-router or sglang-router"
            )
        })
    }

    pub fn name(&self) -> String {
        match self {
            Contender::Policy(p) => p.name().into(),
            Contender::Replicas(p) => format!("{}-x2", p.name()),
            Contender::Exact(p) => format!("{}-exact", p.name()),
            Contender::Oracle => "oracle".into(),
            Contender::WarmOracle => "oracle-warm".into(),
            Contender::Peer(p) => p.name().into(),
        }
    }
}

/// What runs by default with a workload: the classic policies, the cache-aware one alone and on
/// two replicas, the oracle, and the peers' cache-aware routers.
const WORKLOAD_CONTENDERS: &[&str] = &[
    "round_robin",
    "adaptive",
    "cache_aware",
    "cache_aware-x2",
    "oracle",
    "vllm-router",
    "sglang-router",
];

/// The contenders `opts` asks for, each with its router wait queue size.
pub fn contenders(opts: &Options) -> Result<Vec<(Contender, usize)>, String> {
    let contenders: Vec<(Contender, usize)> = match (&opts.contenders, opts.queue) {
        (_, Some(q)) => vec![
            (Contender::Policy(PolicyKind::Adaptive), 0),
            (Contender::Policy(PolicyKind::Adaptive), q),
        ],
        (Some(names), None) => names
            .iter()
            .map(|n| Contender::parse(n).map(|c| (c, 0)))
            .collect::<Result<_, _>>()?,
        (None, None) if opts.workload.is_some() => WORKLOAD_CONTENDERS
            .iter()
            .map(|n| Contender::parse(n).map(|c| (c, 0)))
            .collect::<Result<_, _>>()?,
        (None, None) => [
            PolicyKind::RoundRobin,
            PolicyKind::Mvllm,
            PolicyKind::LeastLoad,
            PolicyKind::Adaptive,
            PolicyKind::CacheAware,
        ]
        .map(|p| (Contender::Policy(p), 0))
        .to_vec(),
    };
    if opts.workload.is_none()
        && contenders
            .iter()
            .any(|(c, _)| !matches!(c, Contender::Policy(_)))
    {
        return Err("replicas, the oracle and peer routers need --workload".into());
    }
    Ok(contenders)
}
