//! Accepting client connections, with explicit limits, and draining them on shutdown.
//!
//! Why not `axum::serve`: it offers no limits, and a router facing many clients needs them:
//! - `max_connections`: past it, new connections wait in the kernel's backlog instead of each
//!   costing memory here;
//! - `header_read_timeout`: a client must send a request's headers within this time, and an
//!   idle keep-alive connection is closed after it (slowloris clients and forgotten connections
//!   cost nothing for long);
//! - `max_header_bytes`: a larger request head is refused (431); at most 100 headers;
//! - every connection gets `TCP_NODELAY` (with Nagle's algorithm each small SSE chunk after the
//!   first would wait for the client's delayed ACK, ~40 ms).
//!
//! With `tls_cert_file` and `tls_key_file` the listener speaks TLS (rustls); the handshake must
//! finish within `header_read_timeout` and runs on the connection's own task, so a slow one holds
//! up no one else.
//!
//! HTTP/1.1 only: the OpenAI API is HTTP/1.1 (HTTP/2 arrives over TLS from a proxy in front),
//! and detecting HTTP/2 prior knowledge would wait for a silent client's first bytes without any
//! timeout. On shutdown the listener closes at once, idle connections are closed, and busy ones
//! finish their responses.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Connection limits, from the config's `[config]` keys of the same names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

pub type ServeTask = tokio::task::JoinHandle<std::io::Result<()>>;

pub fn serve(
    listener: TcpListener,
    app: axum::Router,
    stop: CancellationToken,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> ServeTask {
    tokio::spawn(async move {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(100);
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let graceful = GracefulShutdown::new();
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (tcp, _peer) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: wait a little rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY on a connection: {e}");
            }
            let service = hyper::service::service_fn({
                let app = app.clone();
                move |req: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(req.map(axum::body::Body::new))
                }
            });
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let tls = tls.clone();
            let handshake_timeout = limits.header_read_timeout;
            tokio::spawn(async move {
                let ended = match tls {
                    None => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(tcp), service))
                            .await
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                watcher
                                    .watch(builder.serve_connection(TokioIo::new(stream), service))
                                    .await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!("TLS handshake failed: {e}");
                                Ok(())
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake not finished in time");
                                Ok(())
                            }
                        }
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!("connection ended: {e}");
                }
                drop(permit);
            });
        }
        drop(listener);
        graceful.shutdown().await;
        Ok(())
    })
}
