//! DNS discovery against a real DNS server on 127.0.0.1 (the test's own): a `dns` entry becomes
//! one server per address, addresses that appear join after a health check, addresses that
//! vanish leave while their in-flight requests finish, and a name server that stops answering
//! changes nothing. Simulated servers listen on 127.0.0.2 and 127.0.0.3, on one port.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use mvllm_router::Config;
use mvllm_router::fleet::events::EventKind;
use mvllm_sim::SimConfig;
use mvllm_testkit::dns::TestDns;

const NAME: &str = "vllm-headless.ns.svc.cluster.local";

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Simulated servers on 127.0.0.2, 127.0.0.3, ... all on the same port, as a headless
/// Service's pods are.
async fn sims_on_one_port(n: u8, cfg: SimConfig) -> Vec<mvllm_sim::SimHandle> {
    let mut out: Vec<mvllm_sim::SimHandle> = Vec::new();
    let mut port = 0;
    for i in 0..n {
        let s = sim(SimConfig {
            addr: SocketAddr::new(ip(2 + i), port),
            seed: u64::from(i),
            ..cfg.clone()
        })
        .await;
        port = s.addr().port();
        out.push(s);
    }
    out
}

async fn router_from(text: &str) -> mvllm_router::RouterHandle {
    let config = Config::parse(text, "servers.toml").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    mvllm_router::start(&config, listener).await.unwrap()
}

fn urls(r: &mvllm_router::RouterHandle) -> Vec<String> {
    r.fleet
        .servers()
        .iter()
        .map(|s| s.url().to_string())
        .collect()
}

#[tokio::test]
async fn a_dns_name_becomes_one_server_per_address_and_follows_its_answers() {
    let s = sims_on_one_port(2, SimConfig::default()).await;
    let port = s[0].addr().port();
    let dns = TestDns::start().await;
    dns.set(NAME, &[ip(2)]);
    let r = router_from(&format!(
        "[servers]\nservers = [{{ dns = \"{NAME}:{port}\", max_concurrent_requests = 8 }}]\n\
         [config]\ndns_server = \"{}\"\ndns_refresh_interval = 0.1\nhealth_check_interval = 0.1\n\
         health_check_timeout = 0.5\nmetrics_interval = 0.1\n",
        dns.addr()
    ))
    .await;
    let first = format!("http://127.0.0.2:{port}");
    let second = format!("http://127.0.0.3:{port}");
    assert_eq!(
        urls(&r),
        std::slice::from_ref(&first),
        "resolved before serving"
    );
    let url = format!("{}/v1/chat/completions", r.url());
    assert_eq!(post(&url, &chat("hi", 2, false)).await.status(), 200);

    // A second address appears: it joins, and takes traffic once healthy.
    dns.set(NAME, &[ip(2), ip(3)]);
    eventually(
        Duration::from_secs(5),
        "the second server joins and serves",
        || async {
            post(&url, &chat("more", 1, false)).await;
            r.fleet
                .servers()
                .iter()
                .any(|s| s.url() == second && s.stats.requests.load(Ordering::Relaxed) > 0)
        },
    )
    .await;

    // A name server that stops answering changes nothing.
    dns.set_silent(true);
    let dns_events = |text: &'static str| {
        let r = &r;
        move || {
            let found = r
                .fleet
                .events
                .recent(100)
                .iter()
                .any(|e| e.kind == EventKind::Dns && e.message.contains(text));
            async move { found }
        }
    };
    eventually(
        Duration::from_secs(15),
        "a lookup without answer",
        dns_events("no answer"),
    )
    .await;
    assert_eq!(urls(&r).len(), 2, "a DNS outage keeps the last answer");
    dns.set_silent(false);
    eventually(
        Duration::from_secs(5),
        "resolving again",
        dns_events("resolves again"),
    )
    .await;
    assert_eq!(urls(&r).len(), 2);

    // The first address vanishes during a stream: the stream completes, nothing new goes there.
    let gone = r.fleet.servers()[0].clone();
    assert_eq!(gone.url(), first);
    let mut stream = None;
    for i in 0..8 {
        let resp = post(&url, &chat(&format!("stream {i}"), 60, true)).await;
        if gone.in_flight() > 0 {
            stream = Some(resp);
            break;
        }
        drop(resp);
    }
    let stream = stream.expect("a stream on the first server");
    dns.set(NAME, &[ip(3)]);
    eventually(
        Duration::from_secs(5),
        "the first server leaves",
        || async { urls(&r) == [second.clone()] },
    )
    .await;
    let before = gone.stats.requests.load(Ordering::Relaxed);
    for i in 0..4 {
        assert_eq!(
            post(&url, &chat(&format!("after {i}"), 1, false))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        gone.stats.requests.load(Ordering::Relaxed),
        before,
        "nothing new to a leaver"
    );
    let mut body = Vec::new();
    let mut chunks = stream.bytes_stream();
    while let Some(c) = chunks.next().await {
        body.extend_from_slice(&c.expect("the stream is not cut"));
    }
    assert!(
        String::from_utf8(body)
            .unwrap()
            .ends_with("data: [DONE]\n\n")
    );

    // The name stops existing: an answer, so its servers leave.
    dns.set(NAME, &[]);
    eventually(Duration::from_secs(5), "no server left", || async {
        urls(&r).is_empty()
    })
    .await;
}

#[tokio::test]
async fn server_host_names_resolve_through_dns_server_and_a_reload_adds_a_dns_entry() {
    let s = sims_on_one_port(1, SimConfig::instant()).await;
    let port = s[0].addr().port();
    let dns = TestDns::start().await;
    dns.set("gpu-a.test", &[ip(2)]);
    let r = router_from(&format!(
        "[servers]\nservers = [{{ url = \"http://gpu-a.test:{port}\" }}]\n\
         [config]\ndns_server = \"{}\"\nhealth_check_interval = 0.1\nhealth_check_timeout = 0.5\n",
        dns.addr()
    ))
    .await;
    let url = format!("{}/v1/chat/completions", r.url());
    assert_eq!(post(&url, &chat("hi", 2, false)).await.status(), 200);
    assert_eq!(
        r.fleet.servers()[0].stats.requests.load(Ordering::Relaxed),
        1,
        "reached at the address the name server gave"
    );

    dns.set("pool.test", &[ip(2)]);
    let mut config = r.fleet.current_config();
    config.dns = Config::parse(
        &format!("[servers]\nservers = [{{ dns = \"pool.test:{port}\" }}]\n"),
        "t.toml",
    )
    .unwrap()
    .dns;
    r.fleet.apply(&config);
    eventually(
        Duration::from_secs(5),
        "the dns entry's server joins",
        || async { urls(&r).contains(&format!("http://127.0.0.2:{port}")) },
    )
    .await;
}
