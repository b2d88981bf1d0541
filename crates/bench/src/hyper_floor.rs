//! A bare proxy on the router's own HTTP stack: what a router built on hyper costs at the least.
//!
//! Why: mvllm's cost per request and per held stream is part its own work (parsing the body,
//! choosing a server, counting) and part hyper's (parsing and writing HTTP/1, the upstream
//! client's per-connection task and channel, its buffers). This proxy does only the part every
//! router must: it reads the request's body (a router reads the model from it), sends it to the
//! next upstream in turn over `mvllm_router::upstream::client` (the router's pooled client), and
//! streams the answer back, on a hyper HTTP/1 server set up as the router's (`TCP_NODELAY`, at
//! most 100 headers). No routing, no metrics, no limits. Measured beside mvllm
//! (`mvllm bench overhead --proxy 'hyper-floor=mvllm bench hyper-floor --port {port}
//! --upstream {backend}'`, or the peers kit), the difference is mvllm's own cost, and the floor
//! is the least any change inside mvllm can reach without replacing hyper.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Serves on `listener` until the process ends, forwarding to `upstreams` (base URLs) in turn.
pub async fn serve(listener: TcpListener, upstreams: Vec<String>) -> Result<(), String> {
    if upstreams.is_empty() {
        return Err("hyper-floor needs at least one --upstream URL".into());
    }
    let upstreams: Arc<[String]> = upstreams
        .into_iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    let client = mvllm_router::upstream::client(Duration::from_secs(5), None, None);
    let next = Arc::new(AtomicUsize::new(0));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).max_headers(100);
    loop {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (client, upstreams, next) = (client.clone(), upstreams.clone(), next.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let base = upstreams[next.fetch_add(1, Ordering::Relaxed) % upstreams.len()].clone();
            forward(client.clone(), base, req)
        });
        let connection = builder.serve_connection(TokioIo::new(tcp), service);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

async fn forward(
    client: mvllm_router::upstream::Client,
    base: String,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Error> {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{base}{path}").parse::<Uri>()?;
    // The client writes the upstream's own Host.
    parts.headers.remove(hyper::header::HOST);
    Ok(client
        .request(Request::from_parts(parts, Full::new(body)))
        .await?)
}
