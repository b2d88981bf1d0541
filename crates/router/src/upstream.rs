//! The one pooled HTTP client the router uses to talk to servers, for proxied requests and its
//! own probes alike: keep-alive connections are reused, so a request costs no new handshake.
//! `http://` servers are plain TCP; `https://` ones go over rustls (see [`crate::tls`]).
//!
//! Names are resolved by the system resolver (getaddrinfo), or by `[config] dns_server` when
//! set, behind a thin wrapper whose error is a type of our own, so that "the name does not
//! resolve" is told apart from "nothing listens there" by type ([`describe`]), never by
//! searching an error's text.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;

pub type Client =
    hyper_util::client::legacy::Client<HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>;

/// `dns_server`: a name server to ask instead of the system's resolver.
pub fn client(
    connect_timeout: Duration,
    ca_file: Option<&Path>,
    dns_server: Option<std::net::SocketAddr>,
) -> Client {
    let resolver = match dns_server.map(|a| crate::resolver::resolver(Some(a))) {
        None => Resolver::System(GaiResolver::new()),
        Some(Ok(r)) => Resolver::Dns(std::sync::Arc::new(r)),
        Some(Err(e)) => {
            tracing::error!("dns_server: {e}; using the system resolver");
            Resolver::System(GaiResolver::new())
        }
    };
    let mut connector = HttpConnector::new_with_resolver(resolver);
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.enforce_http(false);
    // The file was checked when the config was loaded; if it went bad since, say so and trust
    // the public roots only.
    let tls = crate::tls::client_config(ca_file).unwrap_or_else(|e| {
        tracing::error!("tls_ca_file: {e}; trusting the public roots only");
        crate::tls::client_config(None).expect("the public roots load")
    });
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(https)
}

/// The system resolver or a given name server, with a typed error.
#[derive(Clone)]
pub enum Resolver {
    System(GaiResolver),
    Dns(std::sync::Arc<hickory_resolver::TokioResolver>),
}

/// A server's host name did not resolve.
#[derive(Debug)]
pub struct NameNotResolved {
    pub host: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for NameNotResolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot resolve {}", self.host)
    }
}

impl std::error::Error for NameNotResolved {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

type Addrs = std::vec::IntoIter<std::net::SocketAddr>;

impl tower::Service<Name> for Resolver {
    type Response = Addrs;
    type Error = NameNotResolved;
    type Future = Pin<Box<dyn Future<Output = Result<Addrs, NameNotResolved>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Resolver::System(gai) => gai.poll_ready(cx).map_err(|e| NameNotResolved {
                host: String::new(),
                source: Some(Box::new(e)),
            }),
            Resolver::Dns(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_string();
        match self {
            Resolver::System(gai) => {
                let lookup = gai.call(name);
                Box::pin(async move {
                    match lookup.await {
                        Ok(addrs) => Ok(addrs.collect::<Vec<_>>().into_iter()),
                        Err(e) => Err(NameNotResolved {
                            host,
                            source: Some(Box::new(e)),
                        }),
                    }
                })
            }
            Resolver::Dns(r) => {
                let r = r.clone();
                Box::pin(async move {
                    match crate::resolver::lookup(&r, &host).await {
                        Ok(ips) if !ips.is_empty() => Ok(ips
                            .into_iter()
                            .map(|ip| std::net::SocketAddr::new(ip, 0))
                            .collect::<Vec<_>>()
                            .into_iter()),
                        _ => Err(NameNotResolved { host, source: None }),
                    }
                })
            }
        }
    }
}

/// Why an upstream call failed, in a few words for `/health`, logs and clients: classified by
/// the error's type and `io::ErrorKind` along its source chain, with no OS error text (which
/// would leak details and differs between systems).
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut closed_early = false;
    while let Some(s) = source {
        if let Some(n) = s.downcast_ref::<NameNotResolved>() {
            return n.to_string();
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            // hyper-rustls wraps a TLS failure in an io::Error inside another io::Error.
            if let Some(inner) = io.get_ref()
                && (inner.downcast_ref::<rustls::Error>().is_some()
                    || inner.downcast_ref::<std::io::Error>().is_some())
            {
                source = Some(inner);
                continue;
            }
            return match io.kind() {
                ConnectionRefused => "connection refused",
                TimedOut => "connect time-out",
                ConnectionReset => "connection reset by the server",
                ConnectionAborted | BrokenPipe | UnexpectedEof => "connection closed by the server",
                NotConnected | NetworkUnreachable | HostUnreachable => "network unreachable",
                AddrNotAvailable => "address not available",
                PermissionDenied => "connection not permitted",
                _ => "connection error",
            }
            .into();
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                closed_early = true;
            } else if h.is_parse() {
                return "invalid HTTP from the server".into();
            }
        }
        if let Some(rustls) = s.downcast_ref::<rustls::Error>() {
            return match rustls {
                rustls::Error::InvalidCertificate(_) => "TLS certificate not trusted",
                _ => "TLS error",
            }
            .into();
        }
        source = s.source();
    }
    if closed_early {
        "connection closed before the answer".into()
    } else {
        "connection error".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_type_not_text() {
        let dns = NameNotResolved {
            host: "gpu-a.internal".into(),
            source: Some(Box::new(std::io::Error::other(
                "failed to lookup address information",
            ))),
        };
        assert_eq!(describe(&dns), "cannot resolve gpu-a.internal");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(describe(&refused), "connection refused");
        // The OS's words never show, whatever they are.
        let reset = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "Connection reset by peer (os error 104)",
        );
        assert_eq!(describe(&reset), "connection reset by the server");
        // As hyper-rustls reports an unknown issuer: io::Error(Other, io::Error(InvalidData, ...)).
        let untrusted = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert_eq!(describe(&untrusted), "TLS certificate not trusted");
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = client(Duration::from_secs(2), None, None);
        let req = hyper::Request::get(format!("http://127.0.0.1:{port}/health"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let e = c.request(req).await.unwrap_err();
        assert_eq!(describe(&e), "connection refused");
    }
}
