//! The config file as written: every key the Python mvllm 0.1.0 accepts, plus ours, each
//! optional, unknown keys refused. Spans are kept where validation needs a line to point at.

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    #[serde(default, deserialize_with = "servers_section")]
    pub servers: Vec<Spanned<RawServer>>,
    #[serde(default)]
    pub config: RawSettings,
    #[serde(default)]
    pub auth: super::auth::RawAuth,
    /// `[models."NAME"]`: what the router knows of a model.
    #[serde(default)]
    pub models: std::collections::BTreeMap<String, RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// A directory with the model's `tokenizer.json` (and `tokenizer_config.json`).
    pub tokenizer: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub url: Option<Spanned<String>>,
    /// `host:port` (or `http(s)://host:port`) standing for one server per address it resolves to.
    pub dns: Option<Spanned<String>>,
    pub max_concurrent_requests: Option<Spanned<i64>>,
    pub api_key: Option<String>,
    pub models: Option<Vec<String>>,
    /// `prefill`, `decode` or `both` (prefill/decode disaggregation).
    pub role: Option<Spanned<String>>,
    /// `tcp://host:port` of the server's KV-event publisher, its replay socket, its topic.
    pub kv_events: Option<Spanned<String>>,
    pub kv_events_replay: Option<Spanned<String>>,
    pub kv_events_topic: Option<String>,
}

/// `[config]`: the seed's keys first, then ours.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub health_check_interval: Option<Spanned<f64>>,
    pub config_reload_interval: Option<Spanned<f64>>,
    pub request_timeout: Option<Spanned<f64>>,
    pub health_check_timeout: Option<Spanned<f64>>,
    pub max_retries: Option<Spanned<i64>>,
    pub failure_threshold: Option<Spanned<i64>>,
    pub auto_recovery_threshold: Option<Spanned<f64>>,
    pub enable_active_health_check: Option<bool>,
    pub set_vllm_priority: Option<bool>,
    pub health_check_max_response_time: Option<Spanned<f64>>,
    pub health_check_min_success_rate: Option<Spanned<f64>>,
    pub health_check_window_size: Option<Spanned<i64>>,
    pub health_check_consecutive_failures: Option<Spanned<i64>>,
    // Ours.
    pub routing_policy: Option<Spanned<String>>,
    pub metrics_interval: Option<Spanned<f64>>,
    pub metrics_timeout: Option<Spanned<f64>>,
    pub models_refresh_interval: Option<Spanned<f64>>,
    pub recovery_successes: Option<Spanned<i64>>,
    pub connect_timeout: Option<Spanned<f64>>,
    pub stream_idle_timeout: Option<Spanned<f64>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub timeout_retries: Option<Spanned<i64>>,
    pub shutdown_grace_period: Option<Spanned<f64>>,
    pub admin_token: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub retry_budget_ratio: Option<Spanned<f64>>,
    pub retry_budget_min_per_second: Option<Spanned<f64>>,
    pub outlier_ejection_time: Option<Spanned<f64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<f64>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub queue_size: Option<Spanned<i64>>,
    pub queue_timeout: Option<Spanned<f64>>,
    pub share_headroom: Option<Spanned<f64>>,
    pub prefill_leg_min_tokens: Option<Spanned<i64>>,
    pub tls_ca_file: Option<Spanned<String>>,
    pub tls_cert_file: Option<Spanned<String>>,
    pub tls_key_file: Option<Spanned<String>>,
    pub generation_timeout: Option<Spanned<f64>>,
    pub body_read_timeout: Option<Spanned<f64>>,
    pub body_min_bytes_per_second: Option<Spanned<i64>>,
    pub max_buffered_body_bytes: Option<Spanned<i64>>,
    pub allow_management_routes: Option<Spanned<Vec<String>>>,
    pub max_models_per_server: Option<Spanned<i64>>,
    pub prefix_index_bytes: Option<Spanned<i64>>,
    pub session_header: Option<Spanned<String>>,
    pub cors_allow_origins: Option<Spanned<Vec<String>>>,
    pub dns_refresh_interval: Option<Spanned<f64>>,
    pub kv_events_silent_after: Option<Spanned<f64>>,
    pub dns_server: Option<Spanned<String>>,
}

/// `[servers]` in either form: the seed's `servers = [{...}]` inside a `[servers]` table, or an
/// array of `[[servers]]` tables.
fn servers_section<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Spanned<RawServer>>, D::Error> {
    struct ServersVisitor;
    impl<'de> Visitor<'de> for ServersVisitor {
        type Value = Vec<Spanned<RawServer>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a [servers] table with `servers = [...]`, or [[servers]] tables")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element()? {
                out.push(s);
            }
            Ok(out)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = None;
            while let Some(key) = map.next_key::<String>()? {
                if key != "servers" {
                    return Err(de::Error::unknown_field(&key, &["servers"]));
                }
                out = Some(map.next_value()?);
            }
            Ok(out.unwrap_or_default())
        }
    }
    d.deserialize_any(ServersVisitor)
}
