//! Servers that are one server under two names (`localhost`, `127.1`, `::ffff:127.0.0.1` and
//! `127.0.0.1` with the same port), and servers that are the router itself.
//!
//! Why warn: an alias gets twice the traffic its capacity says, and its health is counted twice;
//! a config listing the router sends requests round in a loop (refused with 508 at run time, see
//! `proxy::headers::has_passed`). Both are mistakes worth telling at start, not errors: a name
//! may resolve differently tomorrow, so only literal addresses and `localhost` are compared.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::ServerConfig;

/// `scheme://host:port/path` with the host in one canonical form where it is an address.
fn canonical(url: &str) -> Option<(String, Option<IpAddr>, u16, String)> {
    let uri: hyper::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let ip = canonical_ip(host);
    let host = ip.map_or_else(|| host.to_ascii_lowercase(), |ip| ip.to_string());
    Some((
        format!(
            "{scheme}://{host}:{port}{}",
            uri.path().trim_end_matches('/')
        ),
        ip,
        port,
        host,
    ))
}

/// An address written any of the ways a resolver accepts: `localhost`, IPv4 shorthand
/// (`127.1`, `2130706433`), IPv4-mapped IPv6.
fn canonical_ip(host: &str) -> Option<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        });
    }
    // inet_aton's forms: a, a.b (b 24 bits), a.b.c (c 16 bits).
    let parts: Vec<u32> = host
        .split('.')
        .map(|p| p.parse::<u32>().ok())
        .collect::<Option<_>>()?;
    let value = match parts.as_slice() {
        [a] => *a,
        [a, b] if *a < 256 && *b < 1 << 24 => a << 24 | b,
        [a, b, c] if *a < 256 && *b < 256 && *c < 1 << 16 => a << 24 | b << 16 | c,
        _ => return None,
    };
    Some(IpAddr::V4(Ipv4Addr::from(value)))
}

/// Pairs of configured URLs that name the same server.
pub fn aliases(servers: &[ServerConfig]) -> Vec<(String, String)> {
    let keys: Vec<_> = servers.iter().map(|s| canonical(&s.url)).collect();
    let mut out = Vec::new();
    for i in 0..servers.len() {
        for j in i + 1..servers.len() {
            if let (Some(a), Some(b)) = (&keys[i], &keys[j])
                && a.0 == b.0
            {
                out.push((servers[i].url.clone(), servers[j].url.clone()));
            }
        }
    }
    out
}

/// Configured URLs that are this router's own listening address.
pub fn is_self(url: &str, listening: SocketAddr) -> bool {
    let Some((_, Some(ip), port, _)) = canonical(url) else {
        return false;
    };
    port == listening.port()
        && (ip == listening.ip()
            || listening.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(url: &str) -> ServerConfig {
        ServerConfig {
            url: url.into(),
            max_concurrent_requests: 1,
            api_key: None,
            models: None,
            role: Default::default(),
            kv_events: None,
        }
    }

    #[test]
    fn one_server_under_several_names_is_found() {
        let list: Vec<_> = [
            "http://127.0.0.1:8000",
            "http://localhost:8000",
            "http://127.1:8000",
            "http://[::ffff:127.0.0.1]:8000",
            "http://127.0.0.1:8001",
            "http://gpu-a:8000",
        ]
        .map(server)
        .into();
        let pairs = aliases(&list);
        assert_eq!(pairs.len(), 6, "{pairs:?}"); // 4 names of one server: 6 pairs
        assert!(
            pairs
                .iter()
                .all(|(a, b)| !a.ends_with("8001") && !b.ends_with("8001"))
        );
    }

    #[test]
    fn the_router_itself_is_recognised() {
        let me: SocketAddr = "0.0.0.0:8888".parse().unwrap();
        assert!(is_self("http://localhost:8888", me));
        assert!(is_self("http://127.0.0.1:8888", me));
        assert!(!is_self("http://127.0.0.1:8000", me));
        assert!(!is_self("http://gpu-a:8888", me));
        let me: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert!(is_self("http://127.1:9000", me));
    }
}
