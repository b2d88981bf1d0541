//! Where the dashboard's figures come from: the router in this process, or one elsewhere
//! through its status API (`GET /admin/status`, drains through `POST /admin/servers/drain`).

use std::sync::Arc;
use std::time::Duration;

use mvllm_router::state::AppState;
use mvllm_router::status::{self, FleetStatus};

pub enum Source {
    Local(Arc<AppState>),
    Remote {
        base: String,
        token: Option<String>,
        client: reqwest::Client,
    },
}

impl Source {
    /// A router elsewhere, by its base URL (`http://host:8888`, or its `admin_listen` address).
    pub fn remote(base: &str, token: Option<String>) -> Result<Source, String> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("`{base}` is not an http:// or https:// URL"));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Source::Remote {
            base,
            token,
            client,
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
            Source::Local(app) => Ok(status::snapshot(&app.fleet, &app.telemetry)),
            Source::Remote {
                base,
                token,
                client,
            } => {
                let mut req = client.get(format!("{base}/admin/status"));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.map_err(|e| format!("{base}: {e}"))?;
                let code = resp.status();
                if code == reqwest::StatusCode::UNAUTHORIZED {
                    return Err(format!("{base} wants an admin token: pass --admin-token"));
                }
                if !code.is_success() {
                    return Err(format!("{base}/admin/status answered {code}"));
                }
                resp.json::<FleetStatus>()
                    .await
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
                .map(|n| format!("{verb} {url} ({n} in flight)")),
            Source::Remote {
                base,
                token,
                client,
            } => {
                let path = if drain { "drain" } else { "undrain" };
                let mut req = client
                    .post(format!("{base}/admin/servers/{path}"))
                    .json(&serde_json::json!({ "url": url }));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.map_err(|e| e.to_string())?;
                if resp.status().is_success() {
                    Ok(format!("{verb} {url}"))
                } else {
                    Err(format!("{path} {url}: {}", resp.status()))
                }
            }
        }
    }
}
