//! Name resolution with hickory: the resolver DNS discovery asks, and the one the upstream
//! client connects through when `[config] dns_server` names a server to ask.
//!
//! Why its own module: both the fleet (discovery) and the HTTP client (`upstream`) resolve
//! names, and the client sits below the fleet; here it depends on neither.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

/// Why a name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot read the system's resolver configuration: {0}")]
    SystemConfig(String),
    #[error("cannot resolve {host}: no answer from the name server")]
    NoAnswer { host: String },
}

/// A resolver asking `dns_server`, or the system's configured name servers.
pub fn resolver(dns_server: Option<SocketAddr>) -> Result<TokioResolver, ResolveError> {
    let mut builder = match dns_server {
        Some(addr) => {
            let mut config = ResolverConfig::new();
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        }
        None => {
            TokioResolver::builder_tokio().map_err(|e| ResolveError::SystemConfig(e.to_string()))?
        }
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    Ok(builder.build())
}

/// The name's addresses: `Ok(empty)` when it does not exist or has none (an answer), `Err`
/// when no answer came (the caller keeps what it knew).
pub async fn lookup(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
    match resolver.lookup_ip(host).await {
        Ok(found) => Ok(found.iter().collect()),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
        Err(_) => Err(ResolveError::NoAnswer {
            host: host.to_string(),
        }),
    }
}
