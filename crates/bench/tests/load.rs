//! The load generator against a real router in front of simulated servers: every request is
//! counted, chat sessions send their history back (so the servers' prefix caches hit), and the
//! servers' shares and cache counters are read from their own endpoints.

use mvllm_bench::load::{self, Arrivals, Workload};
use mvllm_router::Config;
use mvllm_router::config::ServerConfig;
use mvllm_sim::SimConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_sessions_through_the_router_hit_the_prefix_cache_and_every_request_counts() {
    let sims = [
        mvllm_sim::spawn(SimConfig::instant()).await.unwrap(),
        mvllm_sim::spawn(SimConfig::instant()).await.unwrap(),
    ];
    let servers = sims
        .iter()
        .map(|s| ServerConfig {
            url: s.url(),
            max_concurrent_requests: 16,
            api_key: None,
            models: None,
            role: Default::default(),
            kv_events: None,
        })
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = mvllm_router::start(
        &Config {
            servers,
            ..Default::default()
        },
        listener,
    )
    .await
    .unwrap();
    let report = load::run(chat_sessions(router.url())).await.unwrap();
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests >= 8, "{report}");
    assert_eq!(
        report["ok"].as_u64(),
        Some(requests),
        "{}",
        report["errors"]
    );
    // The router answered them all, and says which server took each.
    let shared: f64 = report["server_shares"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["requests"].as_f64().unwrap())
        .sum();
    assert_eq!(shared, requests as f64);
    // Later turns resend the conversation: the servers' prefix caches must have hit.
    let hit_rate = report["prefix_cache"]["hit_rate"].as_f64().unwrap();
    assert!(hit_rate > 0.3, "prefix cache hit rate {hit_rate}");
    assert!(report["ttft_s"]["p50"].as_f64().unwrap() > 0.0);
    assert!(report["itl_s"]["n"].as_u64().unwrap() > 0);
    let text = load::render(&report);
    assert!(text.contains("prefix cache hit rate"), "{text}");

    // The oracle of client-side affinity: straight to the servers, each conversation on one.
    let urls: Vec<String> = sims.iter().map(|s| s.url()).collect();
    let pinned = load::run(load::Options {
        pin_to: urls.clone(),
        servers: urls.clone(),
        ..chat_sessions(urls[0].clone())
    })
    .await
    .unwrap();
    assert_eq!(pinned["ok"], pinned["requests"], "{pinned}");
    let pinned_hits = pinned["prefix_cache"]["hit_rate"].as_f64().unwrap();
    assert!(
        pinned_hits > 0.3,
        "every server's counters read: {pinned_hits}"
    );
}

/// A second of chat sessions from four users against `url`.
fn chat_sessions(url: String) -> load::Options {
    load::Options {
        url,
        workload: Workload::ChatSessions,
        arrivals: Arrivals::Concurrency(4),
        duration: 1.0,
        stream: true,
        model: None,
        think_time: 0.01,
        seed: 3,
        progress: false,
        replicas: Vec::new(),
        pin_to: Vec::new(),
        servers: Vec::new(),
        api_key: None,
        as_tokens: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_with_api_keys_is_loaded_with_api_key() {
    use mvllm_router::config::{ApiKey, AuthSettings, Settings};
    let sim = mvllm_sim::spawn(SimConfig::instant()).await.unwrap();
    let key = "sk-bench-0123456789abcdef";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = mvllm_router::start(
        &Config {
            servers: vec![ServerConfig {
                url: sim.url(),
                max_concurrent_requests: 16,
                api_key: None,
                models: None,
                role: Default::default(),
                kv_events: None,
            }],
            settings: Settings {
                admin_token: Some("bench-admin-token-0123456789".into()),
                auth: AuthSettings {
                    keys: vec![ApiKey::new("bench", key)],
                    ..AuthSettings::default()
                },
                ..Settings::default()
            },
            ..Default::default()
        },
        listener,
    )
    .await
    .unwrap();
    let refused = load::run(chat_sessions(router.url())).await;
    assert!(
        refused.is_err(),
        "without the key even the model list is refused"
    );
    let report = load::run(load::Options {
        api_key: Some(key.into()),
        as_tokens: false,
        ..chat_sessions(router.url())
    })
    .await
    .unwrap();
    assert!(report["requests"].as_u64().unwrap() > 0);
    assert_eq!(report["ok"], report["requests"], "{report}");
}

/// `oracle-warm`'s warm-up: after it, the first turn of a new conversation finds its whole
/// system prompt cached on every server; after a reset, on none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_caches_every_shared_prefix_on_every_server_and_a_reset_empties_them() {
    use mvllm_bench::client::{http_client, post_timed};
    use mvllm_bench::load::workload::{Generator, chat_body};
    use mvllm_bench::routing_suite::caches;
    let sims = [
        mvllm_sim::spawn(SimConfig::instant()).await.unwrap(),
        mvllm_sim::spawn(SimConfig::instant()).await.unwrap(),
    ];
    let urls: Vec<String> = sims.iter().map(|s| s.url()).collect();
    let client = http_client();
    let model = load::first_model(&client, &urls[0]).await.unwrap();
    let session = Generator::new(Workload::ChatSessions, 3).next_session();
    let system = session.system.as_deref().unwrap();
    let system_words = system.split_whitespace().count() as f64;
    // Prefix-cache hits on each server when it gets the session's first turn.
    let first_turn_hits = || async {
        let mut hits = Vec::new();
        for u in &urls {
            let read = || async {
                load::fleet::FleetCounters::read_servers(&client, std::slice::from_ref(u))
                    .await
                    .prefix[u]
                    .0
            };
            let before = read().await;
            let body = chat_body(&model, Some(system), &[], &session.turns[0].0, 1, false);
            let t = post_timed(&client, &format!("{u}/v1/chat/completions"), body, false)
                .await
                .unwrap();
            assert_eq!(t.status, 200);
            hits.push(read().await - before);
        }
        hits
    };

    caches::reset(&urls).await.unwrap();
    assert_eq!(
        first_turn_hits().await,
        [0.0, 0.0],
        "a reset leaves nothing"
    );

    caches::reset(&urls).await.unwrap();
    let sent = caches::warm(&urls, Workload::ChatSessions, 3, &model, false)
        .await
        .unwrap();
    assert_eq!(sent, 2 * 4, "four system prompts on each of two servers");
    for hits in first_turn_hits().await {
        assert!(
            hits >= system_words - 16.0,
            "{hits} tokens hit; the system prompt is {system_words}"
        );
    }
}
