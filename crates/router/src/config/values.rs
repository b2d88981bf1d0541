//! Checks of single values a config names: server URLs, DNS names, paths relative to the file.

use std::path::Path;

/// A path from the config, relative to the config file's directory.
pub(crate) fn resolve_path(config_file: &str, path: &str) -> std::path::PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    Path::new(config_file)
        .parent()
        .map_or_else(|| p.to_path_buf(), |dir| dir.join(p))
}

/// Checks an upstream URL and drops a trailing slash.
pub(crate) fn normalize_url(url: &str) -> Result<String, String> {
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| format!("server url `{url}` must start with http:// or https://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains(['?', '#', ' ', '@']) {
        return Err(format!("server url `{url}` has no valid host[:port]"));
    }
    if trimmed.contains(['?', '#']) {
        return Err(format!(
            "server url `{url}` must not have a query or fragment"
        ));
    }
    trimmed
        .parse::<hyper::Uri>()
        .map_err(|e| format!("server url `{url}` is not a valid URL: {e}"))?;
    Ok(trimmed.to_string())
}

/// Reads `dns = "..."`: `host:port`, optionally with `http://` or `https://` (default http).
pub(crate) fn parse_dns_name(text: &str) -> Result<(String, String, u16), String> {
    let t = text.trim();
    let (scheme, rest) = if let Some(r) = t.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = t.strip_prefix("http://") {
        ("http", r)
    } else {
        ("http", t)
    };
    let rest = rest.trim_end_matches('/');
    let bad = || {
        format!(
            "dns `{text}` must be host:port, e.g. \"vllm-headless.default.svc.cluster.local:8000\""
        )
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !host_ok || port == 0 {
        return Err(bad());
    }
    Ok((scheme.into(), host.to_ascii_lowercase(), port))
}
