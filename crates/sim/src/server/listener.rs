//! The listening socket's life: bound at once, listening only after the start-up delay and while
//! not `down`; going down stops listening (connections are refused, the port kept) and cuts
//! in-flight requests, as a crashed vLLM process would.
//!
//! Why by hand instead of `axum::serve`: a vLLM server that is loading weights or restarting has
//! its port bound but not listening, so clients see "connection refused"; reproducing that needs
//! control of `listen()`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::state::Sim;

/// A socket bound to `addr` (reusable at once after a restart) but not listening.
pub fn bind_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// The port: bound only (refusing connections) or listening.
pub enum Port {
    Bound(TcpSocket),
    Listening(TcpListener),
}

impl Port {
    /// Listens at once unless the server must start late or down, so that a caller of
    /// [`crate::spawn`] can connect as soon as it returns.
    pub fn open(socket: TcpSocket, cfg: &crate::SimConfig) -> std::io::Result<Port> {
        if cfg.startup_delay.is_zero() && !cfg.faults.down {
            Ok(Port::Listening(socket.listen(1024)?))
        } else {
            Ok(Port::Bound(socket))
        }
    }
}

pub async fn serve(
    sim: Arc<Sim>,
    addr: SocketAddr,
    mut port: Port,
    app: Router,
    shutdown: CancellationToken,
) {
    if matches!(port, Port::Bound(_)) {
        tokio::select! {
            _ = tokio::time::sleep(sim.cfg.startup_delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
    let mut faults = sim.faults.subscribe();
    loop {
        let listener = match port {
            Port::Listening(l) => l,
            Port::Bound(socket) => {
                while faults.borrow_and_update().down {
                    tokio::select! {
                        r = faults.changed() => if r.is_err() { return },
                        _ = shutdown.cancelled() => return,
                    }
                }
                match socket.listen(1024) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!("simulated server {addr} cannot listen: {e}"),
                }
            }
        };
        let incarnation = shutdown.child_token();
        tracing::debug!("simulated server {addr} is up");
        let stopped =
            accept_until_down(&listener, &app, &mut faults, &shutdown, &incarnation).await;
        drop(listener);
        incarnation.cancel();
        if stopped {
            return;
        }
        // Hold the port while down, so that connecting is refused rather than reaching another
        // process, and come back with an empty prefix cache, as a restarted server.
        port = match bind_socket(addr) {
            Ok(s) => Port::Bound(s),
            Err(e) => return tracing::error!("simulated server {addr} cannot rebind: {e}"),
        };
        for e in &sim.engines {
            e.reset_prefix_cache();
        }
        tracing::debug!("simulated server {addr} is down");
    }
}

/// Accepts connections until the `down` fault is set (returns false) or shutdown (true).
async fn accept_until_down(
    listener: &TcpListener,
    app: &Router,
    faults: &mut tokio::sync::watch::Receiver<crate::Faults>,
    shutdown: &CancellationToken,
    incarnation: &CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return true,
            r = faults.changed() => {
                if r.is_err() {
                    return true;
                }
                if faults.borrow_and_update().down {
                    return false;
                }
            }
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, app.clone(), incarnation.clone()));
            }
        }
    }
}

/// Marks the connection carrying a control request that takes the server down: it is allowed to
/// finish that response (sent with `Connection: close`) instead of being cut.
#[derive(Clone, Default)]
pub struct SpareOnDown(pub Arc<AtomicBool>);

/// Serves one connection until it ends or the server goes down, which drops it mid-request as a
/// crashed process would (the client sees the connection reset, streams stop short).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    incarnation: CancellationToken,
) {
    let spare = SpareOnDown::default();
    let marker = spare.clone();
    let service =
        hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(marker.clone());
            app.clone().oneshot(req)
        });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = incarnation.cancelled() => {}
    }
    if spare.0.load(Ordering::Relaxed) {
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}
