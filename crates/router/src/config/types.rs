//! What a config is once validated: servers, DNS entries and `[config]` settings.

use std::time::Duration;

use super::auth::AuthSettings;
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
    /// Write each request's class into vLLM's own `priority` field (critical -1, batch 1) when
    /// the client set none: for servers started with `--scheduling-policy priority` (others
    /// refuse a priority other than 0).
    pub set_vllm_priority: bool,
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
    /// With the queue on and tenants contending: the share of the slots that could serve a
    /// request held free for tenants under their share and the highest active class (see
    /// `admission::shares`; 0: none held).
    pub share_headroom: f64,
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
            set_vllm_priority: false,
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
            share_headroom: 0.125,
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
