//! The config file: the Python mvllm's `servers.toml` unchanged, plus our keys.
//!
//! Why strict: mvllm silently ignored unknown keys, so `max_concurent_requests = 8` quietly
//! became 3. Here an unknown key, a bad URL, a capacity below 1 or a duplicate server refuses to
//! start with `file:line:column: what is wrong` (and a did-you-mean for a typo). Every key is
//! documented in `servers.example.toml` and the README.

pub mod aliases;
pub mod auth;
mod raw;
mod settings;

use std::fmt;
use std::path::Path;
use std::time::Duration;

pub use auth::{ApiKey, AuthSettings};
use raw::{RawFile, RawSettings};
use settings::settings;
use toml::Spanned;

use crate::routing::PolicyKind;

/// One upstream vLLM server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `http(s)://host:port` plus an optional base path, without a trailing slash.
    pub url: String,
    pub max_concurrent_requests: u32,
    /// Sent as `Authorization: Bearer` to this server.
    pub api_key: Option<String>,
    /// Models this server serves, instead of discovering them from its `/v1/models`.
    pub models: Option<Vec<String>>,
    /// Its part in prefill/decode disaggregation (see [`crate::proxy::disaggregated`]).
    pub role: ServerRole,
    /// Where it publishes its KV events (vLLM's `--kv-events-config`): with it, the router
    /// knows what the server caches instead of guessing (see [`crate::fleet::kv_state`]).
    pub kv_events: Option<KvEventsSource>,
}

/// A server's KV-event publisher, as `kv_events = "tcp://host:port"` (and optionally
/// `kv_events_replay`, `kv_events_topic`) in its `[[servers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEventsSource {
    /// The PUB socket to subscribe to.
    pub endpoint: String,
    /// The ROUTER socket that replays missed batches (`None`: gaps cannot be filled).
    pub replay: Option<String>,
    /// Only messages with this topic (vLLM's `topic`; empty: all).
    pub topic: String,
}

/// What a server does for a request, when the fleet disaggregates prefill from decode. A fleet
/// where some server is `prefill` or `decode` disaggregates; one of `both` only (the default)
/// does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerRole {
    /// Anything: whole requests, prefill legs, decode legs (vLLM `kv_both`, or no connector).
    #[default]
    Both,
    /// Prefill legs (vLLM `kv_producer`); whole requests only when no other server serves the
    /// model.
    Prefill,
    /// Decode legs, and whole requests that skip the prefill leg (vLLM `kv_consumer`).
    Decode,
}

impl ServerRole {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "both" => Some(Self::Both),
            "prefill" => Some(Self::Prefill),
            "decode" => Some(Self::Decode),
            _ => None,
        }
    }

    /// Takes prefill legs.
    pub fn prefills(self) -> bool {
        self != Self::Decode
    }

    /// Takes decode legs and whole requests.
    pub fn decodes(self) -> bool {
        self != Self::Prefill
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Both => "both",
            Self::Prefill => "prefill",
            Self::Decode => "decode",
        }
    }
}

/// `[config]`, validated, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub health_check_interval: Duration,
    pub config_reload_interval: Duration,
    pub request_timeout: Duration,
    pub health_check_timeout: Duration,
    pub max_retries: u32,
    pub failure_threshold: u32,
    pub auto_recovery_threshold: Duration,
    pub enable_active_health_check: bool,
    pub health_check_max_response_time: Duration,
    pub health_check_min_success_rate: f64,
    pub health_check_window_size: usize,
    pub health_check_consecutive_failures: u32,
    pub routing_policy: PolicyKind,
    pub metrics_interval: Duration,
    pub metrics_timeout: Duration,
    pub models_refresh_interval: Duration,
    pub recovery_successes: u32,
    pub connect_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub max_body_bytes: usize,
    pub timeout_retries: u32,
    /// How long in-flight requests may take to finish after SIGTERM before the router exits.
    pub shutdown_grace_period: Duration,
    /// Bearer token the admin API requires; `None` leaves it open (see `admin_listen`).
    pub admin_token: Option<String>,
    /// Serve the admin API on this address only (for example 127.0.0.1:8889) instead of the
    /// main listener. Takes effect at start.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Client API keys and their limits (`[auth]`); no keys: the router is open.
    pub auth: AuthSettings,
    /// Retries may add at most this share of the last 10 s of requests...
    pub retry_budget_ratio: f64,
    /// ...plus this many per second.
    pub retry_budget_min_per_second: f64,
    /// How long a server ejected for failing requests stays out the first time (doubling with
    /// each ejection in a row); then it is probed with one request at a time.
    pub outlier_ejection_time: Duration,
    /// Client connections open at once; more wait in the kernel's backlog (needs a restart).
    pub max_connections: usize,
    /// Time a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open (needs a restart).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers); larger ones get 431 (needs a restart).
    pub max_header_bytes: usize,
    /// Requests that may wait in the router when every eligible server is at capacity
    /// (0: no wait, the seed's behaviour: the least loaded server gets it anyway).
    pub queue_size: usize,
    /// Longest wait in that queue before 503.
    pub queue_timeout: Duration,
    /// Prefill/decode disaggregation: a request whose prompt, less what its decode server is
    /// believed to hold cached, is shorter than this many tokens skips the prefill leg (the
    /// decode server computes a short prefill faster than a transfer round trip).
    pub prefill_leg_min_tokens: u32,
    /// Extra CA certificates (PEM) trusted for `https://` servers, besides the web PKI roots
    /// (needs a restart).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Serve clients over TLS with this certificate chain and key (PEM; needs a restart).
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// The longest a whole answer may take, streamed or not (vLLM's router: 30 min). Unlike
    /// `request_timeout`, reaching it is not the server's fault: it is not retried and does not
    /// count against the server.
    pub generation_timeout: Duration,
    /// Time a client has to send a whole request body.
    pub body_read_timeout: Duration,
    /// Slowest a request body may arrive, after its first second (bytes per second).
    pub body_min_bytes_per_second: u64,
    /// Memory all request bodies being read or forwarded may take together; beyond it a new
    /// body gets 503 with Retry-After.
    pub max_buffered_body_bytes: usize,
    /// vLLM's management routes clients may call through the router (all are refused by
    /// default; the admin API reaches them on one server or all).
    pub allow_management_routes: Vec<String>,
    /// Most models the router takes from one server's `/v1/models` (more are ignored, with a
    /// warning).
    pub max_models_per_server: usize,
    /// Memory the prefix index may take across all servers (`cache_aware`), in bytes.
    pub prefix_index_bytes: usize,
    /// Request header naming a conversation, for session affinity (besides `prompt_cache_key`
    /// and `user` in the body).
    pub session_header: String,
    /// Origins a browser may call the router from (CORS): `["*"]` (any, the Python mvllm's
    /// behaviour and the default), a list of exact origins, or `[]` for no CORS headers.
    pub cors_allow_origins: Vec<String>,
    /// How often `dns` server entries are resolved again.
    pub dns_refresh_interval: Duration,
    /// A server's KV events count as silent (its cache state approximate) after this long
    /// without one while it was sent requests; after a loss, events must flow this long before
    /// the state is exact again.
    pub kv_events_silent_after: Duration,
    /// Per model, a directory holding its tokenizer (`[models."NAME"] tokenizer = "..."`):
    /// requests for it are tokenized and matched exactly against KV events.
    pub tokenizers: Vec<(String, std::path::PathBuf)>,
    /// A DNS server to ask instead of the system's resolver (`/etc/resolv.conf`), for `dns`
    /// entries and server host names alike.
    pub dns_server: Option<std::net::SocketAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            health_check_interval: Duration::from_secs(5),
            config_reload_interval: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            health_check_timeout: Duration::from_secs(5),
            max_retries: 3,
            failure_threshold: 2,
            auto_recovery_threshold: Duration::from_secs(60),
            enable_active_health_check: true,
            health_check_max_response_time: Duration::from_secs(10),
            health_check_min_success_rate: 0.8,
            health_check_window_size: 10,
            health_check_consecutive_failures: 3,
            routing_policy: PolicyKind::default(),
            metrics_interval: Duration::from_secs(1),
            metrics_timeout: Duration::from_secs(1),
            models_refresh_interval: Duration::from_secs(30),
            recovery_successes: 2,
            connect_timeout: Duration::from_secs(3),
            stream_idle_timeout: Duration::from_secs(300),
            max_body_bytes: 32 * 1024 * 1024,
            timeout_retries: 1,
            shutdown_grace_period: Duration::from_secs(30),
            admin_token: None,
            admin_listen: None,
            auth: AuthSettings::default(),
            retry_budget_ratio: 0.2,
            retry_budget_min_per_second: 10.0,
            outlier_ejection_time: Duration::from_secs(5),
            max_connections: 16384,
            header_read_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            queue_size: 0,
            queue_timeout: Duration::from_secs(30),
            prefill_leg_min_tokens: 256,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            generation_timeout: Duration::from_secs(1800),
            body_read_timeout: Duration::from_secs(60),
            body_min_bytes_per_second: 4096,
            max_buffered_body_bytes: 512 * 1024 * 1024,
            allow_management_routes: Vec::new(),
            max_models_per_server: 4096,
            prefix_index_bytes: 64 * 1024 * 1024,
            session_header: "x-session-id".into(),
            cors_allow_origins: vec!["*".into()],
            dns_refresh_interval: Duration::from_secs(10),
            kv_events_silent_after: Duration::from_secs(10),
            tokenizers: Vec::new(),
            dns_server: None,
        }
    }
}

impl Settings {
    /// Client keys protect the router but the admin API on the same port would be open to
    /// anyone: a config that says "keep strangers out" must not let them change the fleet.
    pub fn insecure_admin(&self) -> Option<&'static str> {
        (!self.auth.keys.is_empty() && self.admin_token.is_none() && self.admin_listen.is_none())
            .then_some(
                "[auth] keys are set but the admin API on the main port has no admin_token: set admin_token, or admin_listen to a private address",
            )
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub servers: Vec<ServerConfig>,
    /// Entries naming a DNS name: one server per address it resolves to, re-resolved every
    /// `dns_refresh_interval` (see [`crate::fleet::dns`]).
    pub dns: Vec<DnsServers>,
    pub settings: Settings,
}

/// `{ dns = "name:port", ... }`: the servers behind a DNS name (a Kubernetes headless Service,
/// a Compose service, a Consul name), each with the entry's capacity, key and models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsServers {
    /// `http` or `https`.
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub max_concurrent_requests: u32,
    pub api_key: Option<String>,
    pub models: Option<Vec<String>>,
    pub role: ServerRole,
}

impl DnsServers {
    /// The name as written, `scheme://host:port`, for logs and events.
    pub fn name(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.port)
    }

    /// The server at one of the name's addresses.
    pub fn server_at(&self, ip: std::net::IpAddr) -> ServerConfig {
        ServerConfig {
            url: format!(
                "{}://{}",
                self.scheme,
                std::net::SocketAddr::new(ip, self.port)
            ),
            max_concurrent_requests: self.max_concurrent_requests,
            api_key: self.api_key.clone(),
            models: self.models.clone(),
            role: self.role,
            kv_events: None,
        }
    }
}

/// A server entry's `kv_events` keys, checked: TCP endpoints with the server's own address.
fn kv_events_source(
    s: &raw::RawServer,
    is_dns: bool,
    at: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
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

/// Reads `dns = "..."`: `host:port`, optionally with `http://` or `https://` (default http).
fn parse_dns_name(text: &str) -> Result<(String, String, u16), String> {
    let t = text.trim();
    let (scheme, rest) = if let Some(r) = t.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = t.strip_prefix("http://") {
        ("http", r)
    } else {
        ("http", t)
    };
    let rest = rest.trim_end_matches('/');
    let bad = || {
        format!(
            "dns `{text}` must be host:port, e.g. \"vllm-headless.default.svc.cluster.local:8000\""
        )
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !host_ok || port == 0 {
        return Err(bad());
    }
    Ok((scheme.into(), host.to_ascii_lowercase(), port))
}

/// Why a config file was refused, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the error is not about one place (an unreadable file).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = line_col(text, span.start);
            ConfigError {
                file: file.to_string(),
                line,
                column,
                message,
            }
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            at(span, explain(e.message()))
        })?;
        let mut servers: Vec<ServerConfig> = Vec::with_capacity(raw.servers.len());
        let mut dns: Vec<DnsServers> = Vec::new();
        for s in raw.servers {
            let span = s.span();
            let s = s.into_inner();
            let kv_events = kv_events_source(&s, s.dns.is_some(), &at)?;
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
                        "a server has either `url` (one server) or `dns` (one per address), not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(at(
                        span,
                        "a server needs `url = \"http://host:port\"` (or `dns = \"name:port\"`)"
                            .into(),
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
        let mut settings = settings(raw.config, file, &at)?;
        settings.auth = auth::auth_settings(raw.auth, file, &at)?;
        settings.tokenizers = tokenizer_dirs(raw.models, file, &at)?;
        if let Some(why) = settings.insecure_admin() {
            return Err(ConfigError {
                file: file.to_string(),
                line: 0,
                column: 0,
                message: why.into(),
            });
        }
        Ok(Config {
            servers,
            dns,
            settings,
        })
    }
}

/// `[models."NAME"] tokenizer = "DIR"`: each directory must hold a `tokenizer.json`.
fn tokenizer_dirs(
    models: std::collections::BTreeMap<String, raw::RawModel>,
    file: &str,
    at: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<Vec<(String, std::path::PathBuf)>, ConfigError> {
    let mut out = Vec::new();
    for (name, m) in models {
        let Some(dir) = m.tokenizer else { continue };
        let path = resolve_path(file, dir.get_ref());
        if !path.join("tokenizer.json").is_file() {
            return Err(at(
                dir.span(),
                format!(
                    "model `{name}`: no tokenizer.json in `{}` (give the model's directory)",
                    path.display()
                ),
            ));
        }
        out.push((name, path));
    }
    Ok(out)
}

/// A path from the config, relative to the config file's directory.
pub(crate) fn resolve_path(config_file: &str, path: &str) -> std::path::PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    Path::new(config_file)
        .parent()
        .map_or_else(|| p.to_path_buf(), |dir| dir.join(p))
}

/// Checks an upstream URL and drops a trailing slash.
pub(crate) fn normalize_url(url: &str) -> Result<String, String> {
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| format!("server url `{url}` must start with http:// or https://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains(['?', '#', ' ', '@']) {
        return Err(format!("server url `{url}` has no valid host[:port]"));
    }
    if trimmed.contains(['?', '#']) {
        return Err(format!(
            "server url `{url}` must not have a query or fragment"
        ));
    }
    trimmed
        .parse::<hyper::Uri>()
        .map_err(|e| format!("server url `{url}` is not a valid URL: {e}"))?;
    Ok(trimmed.to_string())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The closest of `names` to `word`, as ` (did you mean `x`?)`, when one is close.
pub fn did_you_mean(word: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| (strsim::jaro_winkler(word, n), n))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(String::new(), |(_, n)| format!(" (did you mean `{n}`?)"))
}

/// Rewords serde's unknown-field message with a did-you-mean.
fn explain(message: &str) -> String {
    let names: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if message.starts_with("unknown field")
        && let Some((unknown, expected)) = names.split_first()
    {
        return format!(
            "unknown key `{unknown}`{}; expected one of: {}",
            did_you_mean(unknown, expected),
            expected.join(", ")
        );
    }
    message.trim().to_string()
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
