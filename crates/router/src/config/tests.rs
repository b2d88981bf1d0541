use super::*;
use crate::routing::PolicyKind;
use std::time::Duration;

const SEED_EXAMPLE: &str = r#"
[servers]
servers = [
  { url = "http://gpu-server-1:8081", max_concurrent_requests = 3 },
  { url = "http://gpu-server-2:8088", max_concurrent_requests = 5 },
  { url = "http://gpu-server-3:8089", max_concurrent_requests = 4 },
]

[config]
health_check_interval = 10
request_timeout = 120
max_retries = 3
"#;

#[test]
fn the_seed_example_loads_unchanged() {
    let c = Config::parse(SEED_EXAMPLE, "servers.toml").unwrap();
    assert_eq!(c.servers.len(), 3);
    assert_eq!(c.servers[1].url, "http://gpu-server-2:8088");
    assert_eq!(c.servers[1].max_concurrent_requests, 5);
    assert_eq!(c.settings.health_check_interval, Duration::from_secs(10));
    assert_eq!(c.settings.request_timeout, Duration::from_secs(120));
    assert_eq!(c.settings.max_retries, 3);
    assert_eq!(c.settings.failure_threshold, 2, "defaults fill the rest");
}

#[test]
fn every_seed_key_is_accepted() {
    let text = r#"
[servers]
servers = [{ url = "http://a:1" }]
[config]
health_check_interval = 30
config_reload_interval = 60
request_timeout = 30
health_check_timeout = 5
max_retries = 3
failure_threshold = 2
auto_recovery_threshold = 60
enable_active_health_check = true
health_check_max_response_time = 10.0
health_check_min_success_rate = 0.8
health_check_window_size = 10
health_check_consecutive_failures = 3
"#;
    let c = Config::parse(text, "f").unwrap();
    assert_eq!(
        c.servers[0].max_concurrent_requests, 3,
        "seed default capacity"
    );
    assert_eq!(c.settings.health_check_interval, Duration::from_secs(30));
}

#[test]
fn array_of_tables_and_our_keys() {
    let text = r#"
[[servers]]
url = "http://a:8000/"
api_key = "k1"
models = ["llama", "sql-lora"]

[[servers]]
url = "https://b:8000"
max_concurrent_requests = 64

[config]
routing_policy = "least_load"
metrics_interval = 0.5
"#;
    let c = Config::parse(text, "f").unwrap();
    assert_eq!(c.servers[0].url, "http://a:8000", "trailing slash dropped");
    assert_eq!(c.servers[0].api_key.as_deref(), Some("k1"));
    assert_eq!(c.servers[0].models.as_ref().unwrap().len(), 2);
    assert_eq!(c.settings.routing_policy, PolicyKind::LeastLoad);
    assert_eq!(c.settings.metrics_interval, Duration::from_millis(500));
}

#[test]
fn a_typo_is_refused_with_line_and_suggestion() {
    let text =
        "[servers]\nservers = [\n  { url = \"http://a:1\", max_concurent_requests = 8 },\n]\n";
    let e = Config::parse(text, "servers.toml").unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(
        e.message.contains("unknown key `max_concurent_requests`"),
        "{e}"
    );
    assert!(
        e.message
            .contains("did you mean `max_concurrent_requests`?"),
        "{e}"
    );
    assert!(e.to_string().starts_with("servers.toml:3:"), "{e}");

    let e = Config::parse("[config]\nhealth_chek_interval = 3\n", "f").unwrap_err();
    assert_eq!(e.line, 2);
    assert!(
        e.message.contains("did you mean `health_check_interval`?"),
        "{e}"
    );

    let e = Config::parse("[confg]\n", "f").unwrap_err();
    assert!(e.message.contains("did you mean `config`?"), "{e}");
}

#[test]
fn bad_values_are_refused_naming_the_line() {
    let cases = [
        (
            "[servers]\nservers = [{ url = \"gpu:8000\" }]\n",
            2,
            "must start with http",
        ),
        (
            "[servers]\nservers = [{ url = \"http://a:1\", max_concurrent_requests = 0 }]\n",
            2,
            ">= 1",
        ),
        (
            "[servers]\nservers = [\n{ url = \"http://a:1\" },\n{ url = \"http://a:1/\" },\n]\n",
            4,
            "duplicate server url",
        ),
        (
            "[config]\nrouting_policy = \"least-load\"\n",
            2,
            "did you mean `least_load`?",
        ),
        ("[config]\nrequest_timeout = -1\n", 2, "request_timeout"),
        (
            "[config]\nhealth_check_min_success_rate = 1.5\n",
            2,
            "within 0..1",
        ),
        (
            "[config]\nshare_headroom = 0.6\n",
            2,
            "share_headroom must be within 0..0.5",
        ),
        (
            "[config]\nretry_budget_ratio = -0.1\n",
            2,
            "retry_budget_ratio must be >= 0, got -0.1",
        ),
        ("[config]\nmax_retries = \"three\"\n", 2, "invalid type"),
        ("[servers\n", 1, ""),
    ];
    for (text, line, needle) in cases {
        let e = Config::parse(text, "f").unwrap_err();
        assert_eq!(e.line, line, "{text}: {e}");
        assert!(e.message.contains(needle), "{text}: {e}");
    }
}

#[test]
fn an_unreadable_file_is_named() {
    let e = Config::load(Path::new("/nonexistent/servers.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/servers.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn the_shipped_example_loads_and_documents_every_setting() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../servers.example.toml"
    ))
    .unwrap();
    let c = Config::parse(&text, "servers.example.toml").unwrap();
    assert_eq!(c.servers.len(), 3);
    assert_eq!(
        c.settings,
        Settings::default(),
        "the example spells out the defaults"
    );
    for key in [
        "health_check_interval",
        "config_reload_interval",
        "request_timeout",
        "health_check_timeout",
        "max_retries",
        "failure_threshold",
        "auto_recovery_threshold",
        "enable_active_health_check",
        "health_check_max_response_time",
        "health_check_min_success_rate",
        "health_check_window_size",
        "health_check_consecutive_failures",
        "routing_policy",
        "metrics_interval",
        "metrics_timeout",
        "models_refresh_interval",
        "recovery_successes",
        "connect_timeout",
        "stream_idle_timeout",
        "max_body_bytes",
        "timeout_retries",
        "retry_budget_ratio",
        "retry_budget_min_per_second",
        "outlier_ejection_time",
        "max_connections",
        "header_read_timeout",
        "max_header_bytes",
        "queue_size",
        "queue_timeout",
        "share_headroom",
        "prefill_leg_min_tokens",
        "kv_events_silent_after",
    ] {
        assert!(
            text.contains(&format!("\n{key} = ")),
            "servers.example.toml sets {key}"
        );
    }
}

#[test]
fn auth_keys_from_the_file_a_key_file_and_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.txt");
    std::fs::write(
        &keys,
        "# team keys\nsk-file-one-0123456789\nops sk-file-two-0123456789  # ops\n",
    )
    .unwrap();
    let file = dir.path().join("servers.toml");
    let text = r#"
[config]
admin_token = "admin-0123456789abcdef"

[auth]
keys = ["sk-plain-0123456789abc", { key = "sk-table-0123456789ab", name = "team-b", requests_per_second = 2.5, burst = 4, max_concurrent = 3 }]
keys_file = "keys.txt"
requests_per_second = 10
max_concurrent = 8
protect_metrics = true
"#;
    let c = Config::parse(text, &file.display().to_string()).unwrap();
    // Keys without an admin token would leave the admin API on the main port open to all.
    let open_admin = text.replace("admin_token = \"admin-0123456789abcdef\"", "");
    let e = Config::parse(&open_admin, &file.display().to_string()).unwrap_err();
    assert!(e.message.contains("admin_token"), "{e}");
    let a = &c.settings.auth;
    let names: Vec<&str> = a.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["key-1", "team-b", "file-2", "ops"]);
    assert_eq!(a.keys[1].requests_per_second, Some(2.5));
    assert_eq!(
        (a.keys[1].burst, a.keys[1].max_concurrent),
        (Some(4), Some(3))
    );
    assert_eq!(
        (a.requests_per_second, a.max_concurrent, a.protect_metrics),
        (10.0, Some(8), true)
    );
    // Key values never show in Debug output (and so in logs).
    let debug = format!("{c:?}");
    for secret in ["sk-plain", "sk-table", "sk-file-one", "sk-file-two"] {
        assert!(!debug.contains(secret), "{secret} leaked: {debug}");
    }
}

#[test]
fn auth_refuses_short_duplicate_and_unreadable_keys() {
    let err = Config::parse("[auth]\nkeys = [\"short\"]\n", "s.toml").unwrap_err();
    assert_eq!(err.line, 2, "{err}");
    assert!(err.message.contains("at least 16"), "{err}");
    let err = Config::parse(
        "[auth]\nkeys = [\"sk-same-0123456789abc\", \"sk-same-0123456789abc\"]\n",
        "s.toml",
    )
    .unwrap_err();
    assert!(err.message.contains("twice"), "{err}");
    let err = Config::parse("[auth]\nkeys_file = \"/nonexistent/keys\"\n", "s.toml").unwrap_err();
    assert!(err.message.contains("cannot read keys_file"), "{err}");
    let err = Config::parse("[auth]\nrequests_per_second = -1\n", "s.toml").unwrap_err();
    assert!(err.message.contains(">= 0"), "{err}");
    let err = Config::parse("[auth]\nkey = [\"sk-0123456789abcdefg\"]\n", "s.toml").unwrap_err();
    assert!(err.message.contains("unknown"), "{err}");
}

#[test]
fn auth_keys_name_their_tenant_and_its_budgets() {
    let c = Config::parse(
        r#"
[config]
admin_token = "admin-token-0123456789"
[auth]
tokens_per_minute = 100000
tenant_header = "X-Tenant-Id"
keys = [
  { key = "sk-team-a-0123456789", name = "a1", tenant = "team-a", tokens_per_minute = 60000, requests_per_minute = 120 },
  { key = "sk-team-b-0123456789", name = "b1" },
]
"#,
        "t.toml",
    )
    .unwrap();
    let auth = &c.settings.auth;
    assert_eq!(auth.tokens_per_minute, 100_000);
    assert_eq!(auth.tenant_header.as_deref(), Some("x-tenant-id"));
    assert_eq!(auth.keys[0].tenant(), "team-a");
    assert_eq!(auth.keys[0].tokens_per_minute, Some(60_000));
    assert_eq!(auth.keys[0].requests_per_minute, Some(120));
    assert_eq!(auth.keys[1].tenant(), "b1", "a key's own name by default");
    let err = Config::parse("[auth]\ntokens_per_minute = -5\n", "t.toml").unwrap_err();
    assert!(
        err.message
            .contains("tokens_per_minute must be an integer >= 0"),
        "{err}"
    );
    let err = Config::parse("[auth]\ntenant_header = \"bad header\"\n", "t.toml").unwrap_err();
    assert!(err.message.contains("not a header name"), "{err}");
    let err = Config::parse(
        "[auth]\nkeys = [{ key = \"sk-team-a-0123456789\", tenant = \" \" }]\n",
        "t.toml",
    )
    .unwrap_err();
    assert!(err.message.contains("non-empty"), "{err}");
}

#[test]
fn management_routes_in_the_allow_list_must_be_known() {
    let c = Config::parse(
        "[config]\nallow_management_routes = [\"/reset_prefix_cache\", \"/SLEEP/\"]\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        c.settings.allow_management_routes,
        ["/reset_prefix_cache", "/sleep"]
    );
    let e = Config::parse(
        "[config]\nallow_management_routes = [\"/v1/chat/completions\"]\n",
        "t.toml",
    )
    .unwrap_err();
    assert!(
        e.message.contains("not one of vLLM's management routes"),
        "{e}"
    );
    let e = Config::parse(
        "[config]\nmax_body_bytes = 2048\nmax_buffered_body_bytes = 1024\n",
        "t.toml",
    )
    .unwrap_err();
    assert!(e.message.contains("max_buffered_body_bytes"), "{e}");
}

#[test]
fn cors_origins_are_any_by_default_and_checked_when_listed() {
    assert_eq!(
        Config::parse("", "t.toml")
            .unwrap()
            .settings
            .cors_allow_origins,
        ["*"]
    );
    let c = Config::parse(
        "[config]\ncors_allow_origins = [\"https://app.example.com\", \"http://localhost:3000\"]\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.settings.cors_allow_origins.len(), 2);
    assert!(Config::parse("[config]\ncors_allow_origins = []\n", "t.toml").is_ok());
    let e = Config::parse(
        "[config]\ncors_allow_origins = [\"app.example.com/\"]\n",
        "t.toml",
    )
    .unwrap_err();
    assert!(
        e.message.contains("`app.example.com/` is not an origin"),
        "{e}"
    );
}

#[test]
fn server_roles_are_read_and_a_wrong_one_is_pointed_at() {
    let c = Config::parse(
        r#"[servers]
servers = [
  { url = "http://p:1", role = "prefill" },
  { url = "http://d:1", role = "decode" },
  { url = "http://b:1" },
  { dns = "decoders.local:8000", role = "decode" },
]
"#,
        "f.toml",
    )
    .unwrap();
    let roles: Vec<_> = c.servers.iter().map(|s| s.role).collect();
    assert_eq!(
        roles,
        [ServerRole::Prefill, ServerRole::Decode, ServerRole::Both]
    );
    assert_eq!(c.dns[0].role, ServerRole::Decode);
    assert_eq!(
        c.dns[0].server_at("127.0.0.1".parse().unwrap()).role,
        ServerRole::Decode
    );
    let e = Config::parse(
        "[servers]\nservers = [\n  { url = \"http://p:1\", role = \"prefil\" },\n]\n",
        "f.toml",
    )
    .unwrap_err();
    assert_eq!((e.line, e.column), (3, 32), "the value is pointed at: {e}");
    assert!(
        e.message.contains("`prefil`") && e.message.contains("did you mean `prefill`"),
        "{e}"
    );
}

#[test]
fn the_readmes_example_config_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let text = &readme[start..start + readme[start..].find("```").unwrap()];
    let c = Config::parse(text, "README.md").unwrap();
    assert_eq!(c.servers.len(), 3);
    assert!(c.servers[2].kv_events.is_some());
    assert!(
        text.lines().count() <= 22,
        "the front page's config stays short"
    );
}

#[test]
fn kv_events_and_tokenizers_are_checked_where_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    let good = format!(
        "[[servers]]\nurl = \"http://a:8000\"\nkv_events = \"tcp://a:5557\"\nkv_events_replay = \"tcp://a:5558\"\n\n[models.\"m\"]\ntokenizer = \"{}\"\n",
        dir.path().display()
    );
    let c = Config::parse(&good, "servers.toml").unwrap();
    let kv = c.servers[0].kv_events.as_ref().unwrap();
    assert_eq!(
        (kv.endpoint.as_str(), kv.replay.as_deref()),
        ("tcp://a:5557", Some("tcp://a:5558"))
    );
    assert_eq!(
        c.settings.tokenizers,
        vec![("m".to_string(), dir.path().to_path_buf())]
    );
    for (text, says) in [
        (
            "[[servers]]\nurl = \"http://a:8000\"\nkv_events = \"tcp://*:5557\"\n",
            "where vLLM binds",
        ),
        (
            "[[servers]]\nurl = \"http://a:8000\"\nkv_events = \"http://a:5557\"\n",
            "tcp://HOST:PORT",
        ),
        (
            "[[servers]]\nurl = \"http://a:8000\"\nkv_events_replay = \"tcp://a:1\"\n",
            "needs `kv_events`",
        ),
        (
            "[[servers]]\ndns = \"a:8000\"\nkv_events = \"tcp://a:1\"\n",
            "needs a `url` entry",
        ),
        (
            "[[servers]]\nurl = \"http://a:8000\"\n[models.\"m\"]\ntokenizer = \"/nonexistent\"\n",
            "no tokenizer.json",
        ),
        (
            "[[servers]]\nurl = \"http://a:8000\"\n[models.\"m\"]\ntokeniser = \"/x\"\n",
            "tokeniser",
        ),
    ] {
        let e = Config::parse(text, "servers.toml").unwrap_err();
        assert!(e.to_string().contains(says), "{text}: {e}");
        assert!(e.line > 0, "{e}");
    }
}
