//! Where the dashboard's figures come from: the router in this process, or one elsewhere
//! through its status API (`GET /admin/status`, drains through `POST /admin/servers/drain`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use mvllm_router::state::AppState;
use mvllm_router::status::{self, FleetStatus};
use mvllm_router::upstream;

pub enum Source {
    Local(Arc<AppState>),
    Remote {
        base: String,
        token: Option<String>,
        /// The router's own client (hyper over rustls): `https://` routers work as `http://` ones.
        client: Box<upstream::Client>,
    },
}

/// How long one call to a remote router may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

impl Source {
    /// A router elsewhere, by its base URL (`http://host:8888`, `https://...` behind a TLS
    /// terminator, or its `admin_listen` address); `ca_file` adds a private CA to the public
    /// roots.
    pub fn remote(
        base: &str,
        token: Option<String>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Source, String> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("`{base}` is not an http:// or https:// URL"));
        }
        if base.parse::<hyper::Uri>().is_err() {
            return Err(format!("`{base}` is not a valid URL"));
        }
        if let Some(path) = ca_file {
            mvllm_router::tls::client_config(Some(path)).map_err(|e| format!("--ca-file: {e}"))?;
        }
        Ok(Source::Remote {
            base,
            token,
            client: Box::new(upstream::client(CALL_TIMEOUT, ca_file, None)),
        })
    }

    /// How often figures are worth reading again.
    pub fn refresh(&self) -> Duration {
        match self {
            Source::Local(_) => Duration::from_millis(250),
            Source::Remote { .. } => Duration::from_secs(1),
        }
    }

    pub async fn status(&self) -> Result<FleetStatus, String> {
        match self {
            Source::Local(app) => {
                let mut s = status::snapshot(&app.fleet, &app.telemetry);
                s.tenants = app.admission.tenants.load().status();
                Ok(s)
            }
            Source::Remote {
                base,
                token,
                client,
            } => {
                let (code, body) =
                    call(client, Method::GET, base, "/admin/status", token, None).await?;
                if code == StatusCode::UNAUTHORIZED {
                    return Err(format!("{base} wants an admin token: pass --admin-token"));
                }
                if !code.is_success() {
                    return Err(format!("{base}/admin/status answered {code}"));
                }
                serde_json::from_slice::<FleetStatus>(&body)
                    .map_err(|e| format!("{base}/admin/status: unreadable answer: {e}"))
            }
        }
    }

    /// Drains or undrains a server; the answer is a line for the footer.
    pub async fn set_draining(&self, url: &str, drain: bool) -> Result<String, String> {
        let verb = if drain { "draining" } else { "undrained" };
        match self {
            Source::Local(app) => app
                .fleet
                .set_draining(url, drain)
                .map(|n| format!("{verb} {url} ({n} in flight)"))
                .map_err(|e| e.to_string()),
            Source::Remote {
                base,
                token,
                client,
            } => {
                let path = if drain { "drain" } else { "undrain" };
                let body = serde_json::json!({ "url": url }).to_string();
                let (code, _) = call(
                    client,
                    Method::POST,
                    base,
                    &format!("/admin/servers/{path}"),
                    token,
                    Some(body),
                )
                .await?;
                if code.is_success() {
                    Ok(format!("{verb} {url}"))
                } else {
                    Err(format!("{path} {url}: {code}"))
                }
            }
        }
    }
}

/// One call to the remote router: its status and body, or why it failed in a few words
/// ("connection refused", "TLS certificate not trusted", "no answer within 3 s").
async fn call(
    client: &upstream::Client,
    method: Method,
    base: &str,
    path: &str,
    token: &Option<String>,
    json: Option<String>,
) -> Result<(StatusCode, Bytes), String> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if json.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .map_err(|e| format!("{base}{path}: {e}"))?;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{base}: {}", upstream::describe(&e)))?;
        let code = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{base}: {}", upstream::describe(&e)))?
            .to_bytes();
        Ok((code, body))
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{base}: no answer within {} s", CALL_TIMEOUT.as_secs()))?
}
