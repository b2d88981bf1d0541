//! A TLS terminator on 127.0.0.1 in front of a plain-TCP backend, as an ingress or a proxy in
//! front of a server would be: tests reach `https://` servers and routers through it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_rustls::rustls::ServerConfig;

/// Accepts TLS with `config` on a free port and relays each connection to `backend`; returns
/// the port. Runs until the test's runtime ends.
pub async fn terminator(config: ServerConfig, backend: SocketAddr) -> u16 {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await
                    && let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    port
}
