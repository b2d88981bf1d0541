//! TLS both ways, over real sockets: an `https://` server behind a TLS terminator is reached
//! when its CA is trusted (`tls_ca_file`) and refused when not; the router's own listener speaks
//! TLS with `tls_cert_file`/`tls_key_file`.

mod common;

use std::sync::Arc;

use common::*;
use mvllm_router::config::{ServerConfig, Settings};
use mvllm_sim::SimConfig;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    cert_der: rustls_pki_types::CertificateDer<'static>,
}

/// A self-signed certificate for 127.0.0.1 (its own CA), written as PEM files.
fn pki() -> Pki {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let cert_der = certified.cert.der().clone();
    Pki {
        _dir: dir,
        cert,
        key,
        cert_der,
    }
}

/// A TLS terminator on 127.0.0.1 in front of `backend` (plain TCP); returns its port.
async fn tls_terminator(pki: &Pki, backend: std::net::SocketAddr) -> u16 {
    let config = mvllm_router::tls::server_config(&pki.cert, &pki.key).unwrap();
    mvllm_testkit::tls::terminator(config, backend).await
}

#[tokio::test]
async fn https_servers_are_reached_when_their_ca_is_trusted_and_refused_when_not() {
    let pki = pki();
    let s = sim(SimConfig::instant()).await;
    let port = tls_terminator(&pki, s.addr()).await;
    let server = ServerConfig {
        url: format!("https://127.0.0.1:{port}"),
        ..server_of(&s)
    };
    let trusting = router(
        vec![server.clone()],
        Settings {
            tls_ca_file: Some(pki.cert.clone()),
            ..fast_settings()
        },
    )
    .await;
    let resp = post(
        &format!("{}/v1/chat/completions", trusting.url()),
        &chat("over tls", 4, true),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("[DONE]"));

    // Without the CA the certificate is not trusted: the server is never healthy, nothing is
    // sent to it.
    let server = ServerConfig {
        models: Some(vec![MODEL.into()]),
        ..server
    };
    let doubting = router(vec![server], fast_settings()).await;
    let health = doubting.fleet.servers()[0].health.lock().clone();
    assert!(!doubting.fleet.servers()[0].is_healthy());
    let why = health.last_error.unwrap_or_default().to_lowercase();
    assert!(why.contains("tls certificate not trusted"), "{why}");
    let resp = post(
        &format!("{}/v1/chat/completions", doubting.url()),
        &chat("over tls", 4, false),
    )
    .await;
    assert_eq!(resp.status(), 503);
}

#[tokio::test]
async fn the_router_serves_clients_over_tls() {
    let pki = pki();
    let s = sim(SimConfig::instant()).await;
    let r = router(
        vec![server_of(&s)],
        Settings {
            tls_cert_file: Some(pki.cert.clone()),
            tls_key_file: Some(pki.key.clone()),
            ..fast_settings()
        },
    )
    .await;
    assert!(r.url().starts_with("https://"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.cert_der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    plain
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    // The key file must parse as PEM.
    assert!(rustls_pki_types::PrivateKeyDer::from_pem_file(&pki.key).is_ok());
}

#[test]
fn tls_files_are_checked_when_the_config_loads() {
    let pki = pki();
    let text = format!("[config]\ntls_cert_file = \"{}\"\n", pki.cert.display());
    let err = mvllm_router::Config::parse(&text, "s.toml").unwrap_err();
    assert!(err.message.contains("go together"), "{err}");
    let err =
        mvllm_router::Config::parse("[config]\ntls_ca_file = \"/nonexistent.pem\"\n", "s.toml")
            .unwrap_err();
    assert_eq!(err.line, 2);
    assert!(err.message.contains("cannot read"), "{err}");
    let ok = format!(
        "[config]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_ca_file = \"{}\"\n",
        pki.cert.display(),
        pki.key.display(),
        pki.cert.display()
    );
    mvllm_router::Config::parse(&ok, "s.toml").unwrap();
}
