//! `[auth]`: the API keys clients must present, and their limits.
//!
//! ```toml
//! [auth]
//! keys = ["sk-team-a-0123456789abcdef", { key = "sk-team-b-...", name = "team-b", requests_per_second = 5, burst = 10, max_concurrent = 4 }]
//! keys_file = "api-keys.txt"   # one key per line, or "name key"; '#' starts a comment
//! requests_per_second = 0      # default limit per key (0: none)
//! burst = 10                   # default bucket size (default: the rate, at least 1)
//! max_concurrent = 0           # default requests in flight per key (0: none)
//! tokens_per_minute = 0        # default token budget per tenant (0: none)
//! requests_per_minute = 0      # default request budget per tenant (0: none)
//! tenant_header = "x-tenant-id" # behind a trusted gateway only: the tenant a request names
//! protect_metrics = false      # also require a key for /metrics
//! ```
//!
//! A key belongs to a tenant (`tenant = "..."`, default: the key's name); keys of one tenant
//! share its budgets, which are the tenant's first key's `tokens_per_minute` and
//! `requests_per_minute` (else the `[auth]` defaults). See [`crate::admission::tenants`].
//!
//! Keys also come from the environment, `MVLLM_API_KEYS=key1,key2`. A key is at least 16
//! characters without spaces. Key values never appear in `Debug` output or logs.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::error::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub keys: Option<Vec<Spanned<RawKey>>>,
    pub keys_file: Option<Spanned<String>>,
    pub requests_per_second: Option<Spanned<f64>>,
    pub burst: Option<Spanned<i64>>,
    pub max_concurrent: Option<Spanned<i64>>,
    pub tokens_per_minute: Option<Spanned<i64>>,
    pub requests_per_minute: Option<Spanned<i64>>,
    pub tenant_header: Option<Spanned<String>>,
    pub protect_metrics: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum RawKey {
    Plain(String),
    Full(RawKeyTable),
}

impl std::fmt::Debug for RawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawKey(<redacted>)")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyTable {
    pub key: String,
    pub name: Option<String>,
    pub requests_per_second: Option<f64>,
    pub burst: Option<i64>,
    pub max_concurrent: Option<i64>,
    pub tenant: Option<String>,
    pub tokens_per_minute: Option<i64>,
    pub requests_per_minute: Option<i64>,
    pub priority: Option<String>,
    pub weight: Option<f64>,
}

/// A request's class when the fleet is full: higher classes leave the router's wait queue
/// first, lower ones are shed first and time out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    Critical = 0,
    #[default]
    Standard = 1,
    Batch = 2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Standard, Priority::Batch];

    pub fn parse(s: &str) -> Option<Priority> {
        match s.trim().to_ascii_lowercase().as_str() {
            "critical" => Some(Priority::Critical),
            "standard" => Some(Priority::Standard),
            "batch" => Some(Priority::Batch),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Standard => "standard",
            Priority::Batch => "batch",
        }
    }
}

/// One client key and its own limits (`None`: the `[auth]` defaults).
#[derive(Clone, PartialEq)]
pub struct ApiKey {
    pub name: String,
    secret: String,
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub max_concurrent: Option<usize>,
    /// The tenant the key belongs to (`None`: its name).
    pub tenant: Option<String>,
    pub tokens_per_minute: Option<u64>,
    pub requests_per_minute: Option<u64>,
    /// Its requests' class (`None`: standard); a request may lower it, never raise it.
    pub priority: Option<Priority>,
    /// Its tenant's share within a class (`None`: 1).
    pub weight: Option<f64>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("requests_per_second", &self.requests_per_second)
            .field("burst", &self.burst)
            .field("max_concurrent", &self.max_concurrent)
            .field("tenant", &self.tenant)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("priority", &self.priority)
            .field("weight", &self.weight)
            .finish()
    }
}

impl ApiKey {
    pub fn new(name: impl Into<String>, secret: impl Into<String>) -> ApiKey {
        ApiKey {
            name: name.into(),
            secret: secret.into(),
            requests_per_second: None,
            burst: None,
            max_concurrent: None,
            tenant: None,
            tokens_per_minute: None,
            requests_per_minute: None,
            priority: None,
            weight: None,
        }
    }

    /// The tenant the key belongs to.
    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(&self.name)
    }

    pub fn digest(&self) -> [u8; 32] {
        digest(&self.secret)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthSettings {
    pub keys: Vec<ApiKey>,
    /// Default rate per key; 0 means no rate limit.
    pub requests_per_second: f64,
    pub burst: Option<u32>,
    pub max_concurrent: Option<usize>,
    pub protect_metrics: bool,
    pub keys_file: Option<PathBuf>,
    /// Default token budget per tenant, prompt and completion (0: none).
    pub tokens_per_minute: u64,
    /// Default request budget per tenant (0: none).
    pub requests_per_minute: u64,
    /// The header naming a request's tenant, trusted as the client says it (behind a gateway
    /// that sets it); `None` (the default): tenants come from keys only.
    pub tenant_header: Option<String>,
}

const MIN_KEY_LEN: usize = 16;

fn check_key(key: &str) -> Result<(), String> {
    if key.len() < MIN_KEY_LEN {
        return Err(format!(
            "API keys must be at least {MIN_KEY_LEN} characters"
        ));
    }
    if key.chars().any(char::is_whitespace) {
        return Err("API keys cannot contain spaces".into());
    }
    Ok(())
}

/// Builds `[auth]` from the file's section, the key file (relative to the config file) and
/// `MVLLM_API_KEYS`.
pub fn auth_settings(
    raw: RawAuth,
    config_file: &str,
    at: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<AuthSettings, ConfigError> {
    let mut out = AuthSettings {
        protect_metrics: raw.protect_metrics.unwrap_or(false),
        ..AuthSettings::default()
    };
    let non_negative_int = |v: &Spanned<i64>, name: &str| -> Result<u64, ConfigError> {
        u64::try_from(*v.get_ref()).map_err(|_| {
            at(
                v.span(),
                format!("{name} must be an integer >= 0, got {}", v.get_ref()),
            )
        })
    };
    if let Some(r) = &raw.requests_per_second {
        if !(r.get_ref().is_finite() && *r.get_ref() >= 0.0) {
            return Err(at(
                r.span(),
                format!("requests_per_second must be >= 0, got {}", r.get_ref()),
            ));
        }
        out.requests_per_second = *r.get_ref();
    }
    if let Some(b) = &raw.burst {
        out.burst = Some(non_negative_int(b, "burst")?.clamp(1, u64::from(u32::MAX)) as u32);
    }
    if let Some(m) = &raw.max_concurrent {
        out.max_concurrent =
            Some(non_negative_int(m, "max_concurrent")? as usize).filter(|&n| n > 0);
    }
    if let Some(t) = &raw.tokens_per_minute {
        out.tokens_per_minute = non_negative_int(t, "tokens_per_minute")?;
    }
    if let Some(r) = &raw.requests_per_minute {
        out.requests_per_minute = non_negative_int(r, "requests_per_minute")?;
    }
    if let Some(h) = &raw.tenant_header {
        let name = h.get_ref().trim().to_ascii_lowercase();
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
            return Err(at(
                h.span(),
                format!("tenant_header `{}` is not a header name", h.get_ref()),
            ));
        }
        out.tenant_header = Some(name);
    }
    for (i, k) in raw.keys.into_iter().flatten().enumerate() {
        let span = k.span();
        let key = match k.into_inner() {
            RawKey::Plain(secret) => ApiKey::new(format!("key-{}", i + 1), secret),
            RawKey::Full(t) => full_key(t, i, &span, at)?,
        };
        check_key(&key.secret).map_err(|m| at(span.clone(), m))?;
        out.keys.push(key);
    }
    if let Some(f) = raw.keys_file {
        let path = super::values::resolve_path(config_file, f.get_ref());
        let text = std::fs::read_to_string(&path).map_err(|e| {
            at(
                f.span(),
                format!("cannot read keys_file {}: {e}", path.display()),
            )
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (name, secret) = match (words.next(), words.next(), words.next()) {
                (Some(secret), None, _) => (format!("file-{}", n + 1), secret),
                (Some(name), Some(secret), None) => (name.to_string(), secret),
                _ => {
                    return Err(at(
                        f.span(),
                        format!("{}:{}: expected `key` or `name key`", path.display(), n + 1),
                    ));
                }
            };
            check_key(secret)
                .map_err(|m| at(f.span(), format!("{}:{}: {m}", path.display(), n + 1)))?;
            out.keys.push(ApiKey::new(name, secret));
        }
        out.keys_file = Some(path);
    }
    if let Ok(env) = std::env::var("MVLLM_API_KEYS") {
        for (i, secret) in env
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            check_key(secret).map_err(|m| ConfigError {
                file: "MVLLM_API_KEYS".into(),
                line: 0,
                column: 0,
                message: format!("key {}: {m}", i + 1),
            })?;
            out.keys.push(ApiKey::new(format!("env-{}", i + 1), secret));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for k in &out.keys {
        if !seen.insert(k.digest()) {
            return Err(ConfigError {
                file: config_file.into(),
                line: 0,
                column: 0,
                message: format!("API key `{}` is listed twice", k.name),
            });
        }
    }
    Ok(out)
}

/// A key written as a table, checked: `span` points at it, `i` numbers it in default names.
fn full_key(
    t: RawKeyTable,
    i: usize,
    span: &std::ops::Range<usize>,
    at: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<ApiKey, ConfigError> {
    let span = span.clone();
    let rate = match t.requests_per_second {
        Some(r) if !(r.is_finite() && r >= 0.0) => {
            return Err(at(
                span,
                format!("requests_per_second must be >= 0, got {r}"),
            ));
        }
        r => r,
    };
    let count = |v: Option<i64>, name: &str| -> Result<Option<u64>, ConfigError> {
        v.map(|v| {
            u64::try_from(v).map_err(|_| at(span.clone(), format!("{name} must be >= 0, got {v}")))
        })
        .transpose()
    };
    Ok(ApiKey {
        name: t.name.unwrap_or_else(|| format!("key-{}", i + 1)),
        secret: t.key,
        requests_per_second: rate,
        burst: count(t.burst, "burst")?.map(|b| b.clamp(1, u64::from(u32::MAX)) as u32),
        max_concurrent: count(t.max_concurrent, "max_concurrent")?.map(|m| m as usize),
        tenant: match t.tenant {
            Some(n) if n.trim().is_empty() => {
                return Err(at(span, "a key's tenant must be a non-empty name".into()));
            }
            n => n,
        },
        tokens_per_minute: count(t.tokens_per_minute, "tokens_per_minute")?,
        requests_per_minute: count(t.requests_per_minute, "requests_per_minute")?,
        priority: t
            .priority
            .as_deref()
            .map(|p| {
                Priority::parse(p).ok_or_else(|| {
                    at(
                        span.clone(),
                        format!(
                            "priority `{p}` is not one of \"critical\", \"standard\", \"batch\"{}",
                            super::error::did_you_mean(p, &["critical", "standard", "batch"])
                        ),
                    )
                })
            })
            .transpose()?,
        weight: match t.weight {
            Some(w) if !(w.is_finite() && w > 0.0 && w <= 1e6) => {
                return Err(at(span, format!("weight must be > 0, got {w}")));
            }
            w => w,
        },
    })
}

/// The SHA-256 digest of a key: all the router keeps of one, and what it compares.
pub fn digest(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}
