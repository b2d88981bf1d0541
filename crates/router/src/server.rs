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

/// Longest request method accepted (the longest standard one has 7 letters).
const MAX_METHOD_LEN: usize = 32;

/// hyper bounds its read buffer, not the head itself: one header can be larger than
/// `max_header_bytes` if it fits the buffer. So the head is measured here, as sent (request
/// line and `name: value\r\n` lines), and a larger one refused with 431 before any routing.
fn refuse_head<B>(req: &hyper::Request<B>, max: usize) -> Option<axum::response::Response> {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    if req.method().as_str().len() > MAX_METHOD_LEN {
        return Some(
            crate::error::ApiError::new(StatusCode::BAD_REQUEST, "unknown request method")
                .into_response(),
        );
    }
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + 8);
    let line = req.method().as_str().len() + target + 12;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    (line + headers > max).then(|| {
        crate::error::ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request head is larger than {max} bytes"),
        )
        .into_response()
    })
}

/// Serves `app` on `listener`. With `forward_directly`, requests for paths that are not the
/// router's own ([`crate::app::is_own_path`]) skip `app`'s routing and go straight to
/// [`crate::app::forward_directly`] (the same handling, without axum's per-request layers).
pub fn serve(
    listener: TcpListener,
    app: axum::Router,
    forward_directly: Option<Arc<crate::state::AppState>>,
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
            let max_head = limits.max_header_bytes;
            let service = hyper::service::service_fn({
                let app = app.clone();
                let direct = forward_directly.clone();
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let refused = refuse_head(&req, max_head);
                    let app = app.clone();
                    let direct = direct
                        .as_ref()
                        .filter(|_| !crate::app::is_own_path(req.uri().path()))
                        .cloned();
                    async move {
                        let req = req.map(axum::body::Body::new);
                        match (refused, direct) {
                            (Some(answer), _) => Ok(answer),
                            // Boxed: hyper keeps room for this future in every connection
                            // for the connection's life, and inline it is kilobytes (held
                            // streams measured 5 KiB more each).
                            (None, Some(state)) => {
                                Ok(Box::pin(crate::app::forward_directly(state, req)).await)
                            }
                            (None, None) => app.oneshot(req).await,
                        }
                    }
                }
            });
            let builder = builder.clone();
            let watcher = graceful.watcher();
            // Plain and TLS connections run as different tasks: a task is as large as its
            // future, and one future for both would give every plain connection room for a
            // TLS session it never has.
            match tls.clone() {
                None => {
                    let connection =
                        watcher.watch(builder.serve_connection(TokioIo::new(tcp), service));
                    tokio::spawn(async move {
                        log_end(connection.await);
                        drop(permit);
                    });
                }
                Some(acceptor) => {
                    let handshake_timeout = limits.header_read_timeout;
                    tokio::spawn(async move {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => log_end(
                                watcher
                                    .watch(builder.serve_connection(TokioIo::new(stream), service))
                                    .await,
                            ),
                            Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!("TLS handshake not finished in time"),
                        }
                        drop(permit);
                    });
                }
            }
        }
        drop(listener);
        graceful.shutdown().await;
        Ok(())
    })
}

fn log_end(ended: Result<(), hyper::Error>) {
    if let Err(e) = ended {
        tracing::debug!("connection ended: {e}");
    }
}
