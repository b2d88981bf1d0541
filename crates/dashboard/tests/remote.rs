//! `mvllm top`'s source of figures for a router elsewhere: over http and https (the router's own
//! client, rustls), with errors in a few words.

use mvllm_dashboard::Source;
use mvllm_router::Config;
use mvllm_router::config::{ServerConfig, Settings};
use mvllm_sim::SimConfig;

async fn router() -> (mvllm_sim::SimHandle, mvllm_router::RouterHandle) {
    let sim = mvllm_sim::spawn(SimConfig::instant()).await.unwrap();
    let servers = vec![ServerConfig {
        url: sim.url(),
        max_concurrent_requests: 4,
        api_key: None,
        models: None,
        role: Default::default(),
        kv_events: None,
    }];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let settings = Settings::default();
    let router = mvllm_router::start(
        &Config {
            servers,
            settings,
            ..Default::default()
        },
        listener,
    )
    .await
    .unwrap();
    (sim, router)
}

/// A TLS terminator on 127.0.0.1 (a self-signed certificate, written to `dir`) in front of
/// `backend`, as an ingress would be; returns its port and the certificate's file.
async fn tls_in_front(
    dir: &tempfile::TempDir,
    backend: std::net::SocketAddr,
) -> (u16, std::path::PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let config = mvllm_router::tls::server_config(&cert, &key).unwrap();
    let port = mvllm_testkit::tls::terminator(config, backend).await;
    (port, cert)
}

#[tokio::test]
async fn a_router_behind_https_is_read_when_its_ca_is_trusted() {
    let (_sim, router) = router().await;
    let dir = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = router.url().trim_start_matches("http://").parse().unwrap();
    let (port, cert) = tls_in_front(&dir, addr).await;
    let url = format!("https://127.0.0.1:{port}");

    let trusting = Source::remote(&url, None, Some(&cert)).unwrap();
    let status = trusting.status().await.expect("status over https");
    assert_eq!(status.servers.len(), 1);

    let public_roots_only = Source::remote(&url, None, None).unwrap();
    let e = public_roots_only.status().await.unwrap_err();
    assert!(e.contains("TLS certificate not trusted"), "{e}");
}

#[tokio::test]
async fn a_router_that_is_not_there_is_refused_in_plain_words() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let e = Source::remote(&url, None, None)
        .unwrap()
        .status()
        .await
        .unwrap_err();
    assert_eq!(e, format!("{url}: connection refused"));
    assert!(Source::remote("ftp://x", None, None).is_err());
}
