//! What a request's path is, decided on its normalised form: the router's admin API, one of
//! vLLM's management routes, a generation route, or anything else.
//!
//! Why normalise: servers (Starlette) match on the percent-decoded path, so `/%73leep`,
//! `//sleep` and `/sleep/` must be refused like `/sleep`, and `/Admin/reload` like
//! `/admin/reload`. The form compared is decoded, lower-cased, with empty and `.` segments
//! dropped, `..` applied and no trailing slash. Refusing a little more than the server would
//! match is safe; forwarding a little more is not.

use std::borrow::Cow;

/// vLLM's routes that change or inspect a server's state rather than serve a request. Clients
/// get 403 for these unless `allow_management_routes` lists them; the admin API reaches them
/// (`/admin/upstream/...`).
pub const MANAGEMENT_ROUTES: &[&str] = &[
    "/sleep",
    "/wake_up",
    "/is_sleeping",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/reset_prefix_cache",
    "/reset_mm_cache",
    "/reset_encoder_cache",
    "/collective_rpc",
    "/start_profile",
    "/stop_profile",
    "/scale_elastic_ep",
    "/is_scaling_elastic_ep",
    "/pause",
    "/resume",
    "/is_paused",
    "/update_weights",
    "/init_weight_transfer",
    "/get_world_size",
    "/server_info",
];

/// Routes whose body is a JSON object a server generates from (or pools, scores, tokenizes):
/// a body for one of these that is not a JSON object is the client's error, answered here.
pub const GENERATION_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/embeddings",
    "/pooling",
    "/classify",
    "/score",
    "/v1/score",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/tokenize",
    "/detokenize",
    "/invocations",
];

/// What the router does with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathClass {
    /// Under `/admin`: the router's own, never forwarded.
    Admin,
    /// One of [`MANAGEMENT_ROUTES`] (the normalised path, for the allow list).
    Management,
    Generation,
    Other,
}

pub fn classify(path: &str) -> (PathClass, Cow<'_, str>) {
    // Most paths are already in normal form: compare them as they are, without allocating.
    let plain = path.len() > 1
        && !path.ends_with('/')
        && !path.contains("//")
        && !path.contains("/.")
        && !path
            .bytes()
            .any(|b| matches!(b, b'%' | b'\\' | b'A'..=b'Z'));
    let norm: Cow<'_, str> = if plain {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normalize(path))
    };
    let class = if norm == "/admin" || norm.starts_with("/admin/") {
        PathClass::Admin
    } else if MANAGEMENT_ROUTES.contains(&norm.as_ref()) {
        PathClass::Management
    } else if GENERATION_ROUTES.contains(&norm.as_ref()) {
        PathClass::Generation
    } else {
        PathClass::Other
    };
    (class, norm)
}

/// The path as compared: percent-decoded (repeatedly, so `%2561` cannot hide `a`), lower-case,
/// without empty or `.` segments, `..` applied, no trailing slash.
pub fn normalize(path: &str) -> String {
    let mut decoded: Cow<str> = Cow::Borrowed(path);
    for _ in 0..4 {
        let next = percent_decode(&decoded);
        if next == decoded {
            break;
        }
        decoded = Cow::Owned(next);
    }
    let lower = decoded.to_ascii_lowercase();
    let mut segments: Vec<&str> = Vec::new();
    for seg in lower.split(['/', '\\']) {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(lower.len());
    for s in segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// `%XX` escapes decoded (invalid ones kept as they are).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disguised_admin_and_management_paths_are_recognised() {
        for p in [
            "/admin/reload",
            "//admin/reload",
            "/Admin/reload",
            "/%61dmin/reload",
            "/%2561dmin/reload",
            "/v1/../admin/reload",
            "/./admin//servers/",
        ] {
            assert_eq!(classify(p).0, PathClass::Admin, "{p}");
        }
        for p in [
            "/sleep",
            "/SLEEP",
            "//sleep/",
            "/%73leep",
            "/v1/load_lora_adapter",
            "/v1//unload_lora_adapter",
            "/collective_rpc",
        ] {
            assert_eq!(classify(p).0, PathClass::Management, "{p}");
        }
        assert_eq!(classify("/v1/chat/completions").0, PathClass::Generation);
        assert_eq!(classify("/v1/models/x").0, PathClass::Other);
        assert_eq!(classify("/administrator").0, PathClass::Other);
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("/a%2"), "/a%2");
    }
}
