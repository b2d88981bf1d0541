//! The server entries of a config file (`[[servers]]`): each a `url` (one server) or a `dns`
//! name (one server per address), checked one by one.

use toml::Spanned;

use super::error::{ConfigError, did_you_mean};
use super::raw;
use super::types::{DnsServers, KvEventsSource, ServerConfig, ServerRole};
use super::values::{normalize_url, parse_dns_name};

type At<'a> = &'a dyn Fn(std::ops::Range<usize>, String) -> ConfigError;

/// The listed servers and DNS entries, checked; the first bad one refuses the file.
pub(crate) fn servers(
    raw_servers: Vec<Spanned<raw::RawServer>>,
    at: At<'_>,
) -> Result<(Vec<ServerConfig>, Vec<DnsServers>), ConfigError> {
    let mut servers: Vec<ServerConfig> = Vec::with_capacity(raw_servers.len());
    let mut dns: Vec<DnsServers> = Vec::new();
    for s in raw_servers {
        let span = s.span();
        let s = s.into_inner();
        let kv_events = kv_events_source(&s, s.dns.is_some(), at)?;
        let (url, dns_name) = match (&s.url, &s.dns) {
            (Some(url), None) => (
                Some(normalize_url(url.get_ref()).map_err(|m| at(url.span(), m))?),
                None,
            ),
            (None, Some(name)) => (
                None,
                Some(parse_dns_name(name.get_ref()).map_err(|m| at(name.span(), m))?),
            ),
            (Some(_), Some(_)) => {
                return Err(at(
                    span,
                    "a server has either `url` (one server) or `dns` (one per address), not both"
                        .into(),
                ));
            }
            (None, None) => {
                return Err(at(
                    span,
                    "a server needs `url = \"http://host:port\"` (or `dns = \"name:port\"`)".into(),
                ));
            }
        };
        if let Some(url) = &url
            && let Some(prev) = servers.iter().position(|p| &p.url == url)
        {
            return Err(at(
                s.url.as_ref().map_or(span.clone(), |u| u.span()),
                format!("duplicate server url `{url}` (also server #{})", prev + 1),
            ));
        }
        let capacity = match s.max_concurrent_requests {
            None => 3,
            Some(c) => match u32::try_from(*c.get_ref()) {
                Ok(v) if v >= 1 => v,
                _ => {
                    return Err(at(
                        c.span(),
                        format!(
                            "max_concurrent_requests must be an integer >= 1, got {}",
                            c.get_ref()
                        ),
                    ));
                }
            },
        };
        if let Some(models) = &s.models
            && models.iter().any(|m| m.trim().is_empty())
        {
            return Err(at(
                span,
                "`models` entries must be non-empty model names".into(),
            ));
        }
        let role = match &s.role {
            None => ServerRole::default(),
            Some(r) => ServerRole::parse(r.get_ref()).ok_or_else(|| {
                at(
                    r.span(),
                    format!(
                        "role `{}` is not one of \"prefill\", \"decode\", \"both\"{}",
                        r.get_ref(),
                        did_you_mean(r.get_ref(), &["prefill", "decode", "both"])
                    ),
                )
            })?,
        };
        match (url, dns_name) {
            (Some(url), _) => servers.push(ServerConfig {
                url,
                max_concurrent_requests: capacity,
                api_key: s.api_key,
                models: s.models,
                role,
                kv_events,
            }),
            (None, Some((scheme, host, port))) => {
                let group = DnsServers {
                    scheme,
                    host,
                    port,
                    max_concurrent_requests: capacity,
                    api_key: s.api_key,
                    models: s.models,
                    role,
                };
                if dns.iter().any(|d| d.name() == group.name()) {
                    return Err(at(span, format!("duplicate dns `{}`", group.name())));
                }
                dns.push(group);
            }
            (None, None) => unreachable!("checked above"),
        }
    }
    Ok((servers, dns))
}

/// A server entry's `kv_events` keys, checked: TCP endpoints with the server's own address.
fn kv_events_source(
    s: &raw::RawServer,
    is_dns: bool,
    at: At<'_>,
) -> Result<Option<KvEventsSource>, ConfigError> {
    let Some(endpoint) = &s.kv_events else {
        if let Some(r) = &s.kv_events_replay {
            return Err(at(r.span(), "`kv_events_replay` needs `kv_events`".into()));
        }
        return Ok(None);
    };
    if is_dns {
        return Err(at(
            endpoint.span(),
            "`kv_events` needs a `url` entry: a `dns` entry stands for several servers, each with its own publisher".into(),
        ));
    }
    let check = |e: &Spanned<String>| {
        mvllm_kv_events::zmtp::tcp_address(e.get_ref())
            .map(|_| e.get_ref().clone())
            .map_err(|why| at(e.span(), why))
    };
    Ok(Some(KvEventsSource {
        endpoint: check(endpoint)?,
        replay: s.kv_events_replay.as_ref().map(check).transpose()?,
        topic: s.kv_events_topic.clone().unwrap_or_default(),
    }))
}
