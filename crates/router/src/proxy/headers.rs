//! Which headers cross the router. Hop-by-hop headers (RFC 9110 7.6.1, and any named in
//! `Connection`) stay on their hop; `Host` becomes the server's; everything else passes.

use axum::http::{HeaderMap, HeaderName, header};

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

/// Removes hop-by-hop headers, including those the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(listed.iter()) {
        headers.remove(name);
    }
}

/// Adds this router to `Via` (RFC 9110 7.6.3), keeping earlier hops.
pub fn add_via(headers: &mut HeaderMap, token: &str) {
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("1.1 {token}")) {
        headers.append(header::VIA, v);
    }
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
        add_via(&mut h, "mvllm-1");
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
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-request-id"], "abc");
    }
}
