//! The one pooled HTTP client the router uses to talk to servers, for proxied requests and its
//! own probes alike: keep-alive connections are reused, so a request costs no new handshake.
//! `http://` servers are plain TCP; `https://` ones go over rustls (see [`crate::tls`]).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type Client = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub fn client(connect_timeout: Duration, ca_file: Option<&Path>) -> Client {
    let mut connector = HttpConnector::new();
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
