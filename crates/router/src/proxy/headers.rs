//! Which headers cross the router. Hop-by-hop headers (RFC 9110 7.6.1, and any named in
//! `Connection`) stay on their hop; `Host` becomes the server's; everything else passes.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The header names the `Connection` header lists (hop-by-hop too).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop headers, including those the `Connection` header lists. Looks first:
/// most answers carry none, and a removal by name costs a hash and a probe each.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let listed = connection_listed(headers);
    for name in HOP_BY_HOP.iter().chain(listed.iter()) {
        headers.remove(name);
    }
}

/// The headers a server gets: the client's, in one pass, without hop-by-hop ones (standard or
/// `Connection`-listed), `Host` (the server's own is set from its URL) and `Content-Length`
/// (set from the body sent). Cheaper than a clone followed by ten removals by name.
pub fn forwardable(client: &HeaderMap) -> HeaderMap {
    let listed = if client.contains_key(header::CONNECTION) {
        connection_listed(client)
    } else {
        Vec::new()
    };
    let mut out = HeaderMap::with_capacity(client.len() + 2);
    for (name, value) in client {
        if HOP_BY_HOP.contains(name)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || listed.contains(name)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Adds this router to `Via` (RFC 9110 7.6.3), keeping earlier hops. `via` is `1.1 <token>`,
/// made once (formatting it per request cost ~800 instructions).
pub fn add_via(headers: &mut HeaderMap, via: &HeaderValue) {
    headers.append(header::VIA, via.clone());
}

/// Whether a request already passed through the router whose `Via` token is `token`.
pub fn has_passed(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|hop| hop.split_whitespace().nth(1) == Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_marks_the_hop_and_recognises_it() {
        let mut h = HeaderMap::new();
        h.insert(header::VIA, "1.0 fred, 1.1 p.example.net".parse().unwrap());
        assert!(!has_passed(&h, "mvllm-1"));
        add_via(&mut h, &HeaderValue::from_static("1.1 mvllm-1"));
        assert!(has_passed(&h, "mvllm-1"));
        assert!(!has_passed(&h, "mvllm-12"));
    }

    #[test]
    fn removes_standard_and_listed_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("x-request-id", "abc".parse().unwrap());
        h.insert(header::HOST, "client.example".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        h.append("x-multi", "1".parse().unwrap());
        h.append("x-multi", "2".parse().unwrap());
        let forwarded = forwardable(&h);
        assert_eq!(
            forwarded.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x-request-id", "x-multi"]
        );
        assert_eq!(
            forwarded.get_all("x-multi").iter().count(),
            2,
            "repeated headers kept"
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 5);
        assert_eq!(h["x-request-id"], "abc");
        let mut clean = forwarded.clone();
        strip_hop_by_hop(&mut clean);
        assert_eq!(clean, forwarded, "nothing to strip, nothing changed");
    }
}
