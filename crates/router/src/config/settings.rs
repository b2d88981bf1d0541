//! `[config]` validated into [`Settings`], a section at a time: each function takes its keys
//! out of the raw table and checks them, pointing at the line of a bad value.

use std::time::Duration;

use toml::Spanned;

use super::auth::AuthSettings;
use super::error::{ConfigError, did_you_mean};
use super::raw::RawSettings;
use super::types::Settings;
use super::values::resolve_path;
use crate::routing::PolicyKind;

type At<'a> = &'a dyn Fn(std::ops::Range<usize>, String) -> ConfigError;

/// A number of seconds, at least `min`.
fn secs(
    at: At<'_>,
    v: Option<Spanned<f64>>,
    name: &str,
    default: Duration,
    min: f64,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) if v.get_ref().is_finite() && *v.get_ref() >= min && *v.get_ref() < 1e9 => {
            Ok(Duration::from_secs_f64(*v.get_ref()))
        }
        Some(v) => Err(at(
            v.span(),
            format!(
                "{name} must be a number of seconds >= {min}, got {}",
                v.get_ref()
            ),
        )),
    }
}

/// An integer, at least `min`.
fn int(
    at: At<'_>,
    v: Option<Spanned<i64>>,
    name: &str,
    default: u32,
    min: i64,
) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) if *v.get_ref() >= min && *v.get_ref() <= i64::from(u32::MAX) => {
            Ok(*v.get_ref() as u32)
        }
        Some(v) => Err(at(
            v.span(),
            format!("{name} must be an integer >= {min}, got {}", v.get_ref()),
        )),
    }
}

/// A number that `ok` accepts; the error says it must be `want`.
fn number(
    at: At<'_>,
    v: Option<Spanned<f64>>,
    name: &str,
    default: f64,
    ok: impl Fn(f64) -> bool,
    want: &str,
) -> Result<f64, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) if ok(*v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err(at(
            v.span(),
            format!("{name} must be {want}, got {}", v.get_ref()),
        )),
    }
}

pub(super) fn settings(
    mut r: RawSettings,
    file: &str,
    at: At<'_>,
) -> Result<Settings, ConfigError> {
    match (&r.tls_cert_file, &r.tls_key_file) {
        (Some(c), Some(k)) => {
            crate::tls::server_config(
                &resolve_path(file, c.get_ref()),
                &resolve_path(file, k.get_ref()),
            )
            .map_err(|m| at(c.span(), m.to_string()))?;
        }
        (Some(f), None) | (None, Some(f)) => {
            return Err(at(
                f.span(),
                "tls_cert_file and tls_key_file go together".into(),
            ));
        }
        (None, None) => {}
    }
    let d = Settings::default();
    let routing_policy = match r.routing_policy.take() {
        None => d.routing_policy,
        Some(p) => PolicyKind::parse(p.get_ref()).ok_or_else(|| {
            let names = PolicyKind::ALL.map(PolicyKind::name);
            at(
                p.span(),
                format!(
                    "unknown routing_policy `{}`{}; one of: {}",
                    p.get_ref(),
                    did_you_mean(p.get_ref(), &names),
                    names.join(", ")
                ),
            )
        })?,
    };
    let min_success_rate = number(
        at,
        r.health_check_min_success_rate.take(),
        "health_check_min_success_rate",
        d.health_check_min_success_rate,
        |v| (0.0..=1.0).contains(&v),
        "within 0..1",
    )?;
    let max_body = match r.max_body_bytes.take() {
        None => d.max_body_bytes,
        Some(v) if *v.get_ref() >= 1024 => *v.get_ref() as usize,
        Some(v) => {
            return Err(at(
                v.span(),
                format!("max_body_bytes must be at least 1024, got {}", v.get_ref()),
            ));
        }
    };
    let s = Settings {
        routing_policy,
        health_check_min_success_rate: min_success_rate,
        max_body_bytes: max_body,
        ..d
    };
    let s = fleet_section(&mut r, at, s)?;
    let s = routing_section(&mut r, at, s)?;
    let s = requests_section(&mut r, at, s)?;
    listener_section(&mut r, file, at, s)
}

/// How the router watches its servers: health checks and ejection, scrapes, discovery, DNS, KV events, the routing policy's memory.
fn fleet_section(r: &mut RawSettings, at: At<'_>, s: Settings) -> Result<Settings, ConfigError> {
    let d = Settings::default();
    Ok(Settings {
        health_check_interval: secs(
            at,
            r.health_check_interval.take(),
            "health_check_interval",
            d.health_check_interval,
            0.05,
        )?,
        health_check_timeout: secs(
            at,
            r.health_check_timeout.take(),
            "health_check_timeout",
            d.health_check_timeout,
            0.01,
        )?,
        failure_threshold: int(
            at,
            r.failure_threshold.take(),
            "failure_threshold",
            d.failure_threshold,
            1,
        )?,
        auto_recovery_threshold: secs(
            at,
            r.auto_recovery_threshold.take(),
            "auto_recovery_threshold",
            d.auto_recovery_threshold,
            0.05,
        )?,
        enable_active_health_check: r
            .enable_active_health_check
            .unwrap_or(d.enable_active_health_check),
        health_check_max_response_time: secs(
            at,
            r.health_check_max_response_time.take(),
            "health_check_max_response_time",
            d.health_check_max_response_time,
            0.001,
        )?,
        health_check_window_size: int(
            at,
            r.health_check_window_size.take(),
            "health_check_window_size",
            d.health_check_window_size as u32,
            1,
        )? as usize,
        health_check_consecutive_failures: int(
            at,
            r.health_check_consecutive_failures.take(),
            "health_check_consecutive_failures",
            d.health_check_consecutive_failures,
            1,
        )?,
        metrics_interval: secs(
            at,
            r.metrics_interval.take(),
            "metrics_interval",
            d.metrics_interval,
            0.05,
        )?,
        metrics_timeout: secs(
            at,
            r.metrics_timeout.take(),
            "metrics_timeout",
            d.metrics_timeout,
            0.01,
        )?,
        models_refresh_interval: secs(
            at,
            r.models_refresh_interval.take(),
            "models_refresh_interval",
            d.models_refresh_interval,
            0.05,
        )?,
        recovery_successes: int(
            at,
            r.recovery_successes.take(),
            "recovery_successes",
            d.recovery_successes,
            1,
        )?,
        outlier_ejection_time: secs(
            at,
            r.outlier_ejection_time.take(),
            "outlier_ejection_time",
            d.outlier_ejection_time,
            0.0,
        )?,
        dns_refresh_interval: secs(
            at,
            r.dns_refresh_interval.take(),
            "dns_refresh_interval",
            d.dns_refresh_interval,
            0.05,
        )?,
        dns_server: match r.dns_server.take() {
            None => None,
            Some(v) => Some(
                v.get_ref()
                    .parse::<std::net::SocketAddr>()
                    .or_else(|_| {
                        v.get_ref()
                            .parse::<std::net::IpAddr>()
                            .map(|ip| std::net::SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| {
                        at(
                            v.span(),
                            format!(
                                "dns_server `{}` must be an IP address with an optional port, e.g. \"10.96.0.10\" or \"127.0.0.1:5353\"",
                                v.get_ref()
                            ),
                        )
                    })?,
            ),
        },
        config_reload_interval: secs(
            at,
            r.config_reload_interval.take(),
            "config_reload_interval",
            d.config_reload_interval,
            0.05,
        )?,
        ..s
    })
}

/// What routing keeps: the prefix indexes' memory, servers' model lists, how long KV events
/// may fall silent, the models' tokenizers (read from `[models]` later).
fn routing_section(r: &mut RawSettings, at: At<'_>, s: Settings) -> Result<Settings, ConfigError> {
    let d = Settings::default();
    Ok(Settings {
        max_models_per_server: int(
            at,
            r.max_models_per_server.take(),
            "max_models_per_server",
            d.max_models_per_server as u32,
            1,
        )? as usize,
        prefix_index_bytes: match r.prefix_index_bytes.take() {
            None => d.prefix_index_bytes,
            Some(v) if (0..=1 << 40).contains(v.get_ref()) => *v.get_ref() as usize,
            Some(v) => {
                return Err(at(
                    v.span(),
                    format!(
                        "prefix_index_bytes must be within 0..=1 TiB, got {}",
                        v.get_ref()
                    ),
                ));
            }
        },
        kv_events_silent_after: secs(
            at,
            r.kv_events_silent_after.take(),
            "kv_events_silent_after",
            d.kv_events_silent_after,
            0.05,
        )?,
        tokenizers: Vec::new(),
        ..s
    })
}

/// What happens to one request: time-outs, retries and their budget, the wait queue, bodies, sessions.
fn requests_section(r: &mut RawSettings, at: At<'_>, s: Settings) -> Result<Settings, ConfigError> {
    let max_body = s.max_body_bytes;
    let d = Settings::default();
    Ok(Settings {
        request_timeout: secs(
            at,
            r.request_timeout.take(),
            "request_timeout",
            d.request_timeout,
            0.01,
        )?,
        max_retries: int(at, r.max_retries.take(), "max_retries", d.max_retries, 0)?,
        set_vllm_priority: r.set_vllm_priority.unwrap_or(d.set_vllm_priority),
        connect_timeout: secs(
            at,
            r.connect_timeout.take(),
            "connect_timeout",
            d.connect_timeout,
            0.01,
        )?,
        stream_idle_timeout: secs(
            at,
            r.stream_idle_timeout.take(),
            "stream_idle_timeout",
            d.stream_idle_timeout,
            0.01,
        )?,
        timeout_retries: int(
            at,
            r.timeout_retries.take(),
            "timeout_retries",
            d.timeout_retries,
            0,
        )?,
        shutdown_grace_period: secs(
            at,
            r.shutdown_grace_period.take(),
            "shutdown_grace_period",
            d.shutdown_grace_period,
            0.0,
        )?,
        queue_size: int(at, r.queue_size.take(), "queue_size", 0, 0)? as usize,
        prefill_leg_min_tokens: int(
            at,
            r.prefill_leg_min_tokens.take(),
            "prefill_leg_min_tokens",
            d.prefill_leg_min_tokens,
            0,
        )?,
        queue_timeout: secs(
            at,
            r.queue_timeout.take(),
            "queue_timeout",
            d.queue_timeout,
            0.0,
        )?,
        share_headroom: number(
            at,
            r.share_headroom.take(),
            "share_headroom",
            d.share_headroom,
            |v| (0.0..=0.5).contains(&v),
            "within 0..0.5 (a share of the slots)",
        )?,
        retry_budget_ratio: number(
            at,
            r.retry_budget_ratio.take(),
            "retry_budget_ratio",
            d.retry_budget_ratio,
            |v| v.is_finite() && v >= 0.0,
            ">= 0",
        )?,
        retry_budget_min_per_second: number(
            at,
            r.retry_budget_min_per_second.take(),
            "retry_budget_min_per_second",
            d.retry_budget_min_per_second,
            |v| v.is_finite() && v >= 0.0,
            ">= 0",
        )?,
        generation_timeout: secs(
            at,
            r.generation_timeout.take(),
            "generation_timeout",
            d.generation_timeout,
            1.0,
        )?,
        body_read_timeout: secs(
            at,
            r.body_read_timeout.take(),
            "body_read_timeout",
            d.body_read_timeout,
            0.1,
        )?,
        body_min_bytes_per_second: u64::from(int(
            at,
            r.body_min_bytes_per_second.take(),
            "body_min_bytes_per_second",
            d.body_min_bytes_per_second as u32,
            0,
        )?),
        max_buffered_body_bytes: match r.max_buffered_body_bytes.take() {
            None => d.max_buffered_body_bytes.max(max_body),
            Some(v) if *v.get_ref() >= max_body as i64 => *v.get_ref() as usize,
            Some(v) => {
                return Err(at(
                    v.span(),
                    format!(
                        "max_buffered_body_bytes must be at least max_body_bytes ({max_body}), got {}",
                        v.get_ref()
                    ),
                ));
            }
        },
        session_header: match r.session_header.take() {
            None => d.session_header,
            Some(h) => {
                let name = h.get_ref().trim().to_ascii_lowercase();
                if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(at(
                        h.span(),
                        format!("session_header `{}` is not a header name", h.get_ref()),
                    ));
                }
                name
            }
        },
        ..s
    })
}

/// Who may connect and how: connections, headers, TLS, the admin API, management routes, CORS.
fn listener_section(
    r: &mut RawSettings,
    file: &str,
    at: At<'_>,
    s: Settings,
) -> Result<Settings, ConfigError> {
    let d = Settings::default();
    Ok(Settings {
        admin_token: match r.admin_token.take() {
            None => None,
            Some(t) if t.get_ref().len() >= 16 => Some(t.into_inner()),
            Some(t) => {
                return Err(at(
                    t.span(),
                    "admin_token must be at least 16 characters".into(),
                ));
            }
        },
        admin_listen: match r.admin_listen.take() {
            None => None,
            Some(a) => Some(a.get_ref().parse().map_err(|_| {
                at(
                    a.span(),
                    format!(
                        "admin_listen must be an address such as 127.0.0.1:8889, got `{}`",
                        a.get_ref()
                    ),
                )
            })?),
        },
        auth: AuthSettings::default(),
        max_connections: int(
            at,
            r.max_connections.take(),
            "max_connections",
            d.max_connections as u32,
            1,
        )? as usize,
        header_read_timeout: secs(
            at,
            r.header_read_timeout.take(),
            "header_read_timeout",
            d.header_read_timeout,
            0.1,
        )?,
        max_header_bytes: int(
            at,
            r.max_header_bytes.take(),
            "max_header_bytes",
            d.max_header_bytes as u32,
            8192,
        )? as usize,
        tls_ca_file: match &r.tls_ca_file {
            None => None,
            Some(f) => {
                let path = resolve_path(file, f.get_ref());
                crate::tls::client_config(Some(&path)).map_err(|m| at(f.span(), m.to_string()))?;
                Some(path)
            }
        },
        tls_cert_file: r
            .tls_cert_file
            .as_ref()
            .map(|f| resolve_path(file, f.get_ref())),
        tls_key_file: r
            .tls_key_file
            .as_ref()
            .map(|f| resolve_path(file, f.get_ref())),
        allow_management_routes: match r.allow_management_routes.take() {
            None => Vec::new(),
            Some(list) => {
                let mut out = Vec::new();
                for p in list.get_ref() {
                    let known = crate::paths::MANAGEMENT_ROUTES;
                    let norm = crate::paths::normalize(p);
                    if !known.contains(&norm.as_str()) {
                        return Err(at(
                            list.span(),
                            format!(
                                "allow_management_routes: `{p}` is not one of vLLM's management routes{}; one of: {}",
                                did_you_mean(&norm, known),
                                known.join(", ")
                            ),
                        ));
                    }
                    out.push(norm);
                }
                out
            }
        },
        cors_allow_origins: match r.cors_allow_origins.take() {
            None => d.cors_allow_origins,
            Some(list) => {
                for o in list.get_ref() {
                    let origin_like = o == "*"
                        || ((o.starts_with("http://") || o.starts_with("https://"))
                            && !o.ends_with('/')
                            && axum::http::HeaderValue::from_str(o).is_ok());
                    if !origin_like {
                        return Err(at(
                            list.span(),
                            format!(
                                "cors_allow_origins: `{o}` is not an origin: use \"*\" or scheme://host[:port] with no path, e.g. \"https://app.example.com\""
                            ),
                        ));
                    }
                }
                list.into_inner()
            }
        },
        ..s
    })
}
