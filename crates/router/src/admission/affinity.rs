//! Which server holds which stored response (`/v1/responses/{id}`).
//!
//! Why: vLLM keeps a Responses-API result on the server that created it, so `GET
//! /v1/responses/{id}` and `POST /v1/responses/{id}/cancel` must go back there. The id is read
//! from the start of the creating response's body (it is the first field vLLM writes), without
//! buffering the body. The map is bounded: the oldest entries are forgotten first.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

const CAPACITY: usize = 65_536;
/// Look no further than this into a response body for its id.
pub const SCAN_LIMIT: usize = 4096;

#[derive(Default)]
pub struct Affinity {
    inner: Mutex<(HashMap<String, String>, VecDeque<String>)>,
}

impl Affinity {
    pub fn remember(&self, response_id: String, server_url: String) {
        let mut g = self.inner.lock();
        let (map, order) = &mut *g;
        if map.insert(response_id.clone(), server_url).is_none() {
            order.push_back(response_id);
            while order.len() > CAPACITY {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }

    /// The server holding a stored response.
    pub fn server_for_id(&self, id: &str) -> Option<String> {
        self.inner.lock().0.get(id).cloned()
    }

    /// The server holding the response a path refers to, for `/v1/responses/{id}[/...]`.
    pub fn server_for_path(&self, path: &str) -> Option<String> {
        let id = response_id_in_path(path)?;
        self.inner.lock().0.get(id).cloned()
    }
}

/// `resp_x` in `/v1/responses/resp_x` or `/v1/responses/resp_x/cancel`.
pub fn response_id_in_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/responses/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

/// Finds `"id":"resp_..."` (optionally with spaces) in the first bytes of a body.
pub fn find_response_id(prefix: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(prefix)
        .unwrap_or_else(|e| std::str::from_utf8(&prefix[..e.valid_up_to()]).unwrap_or(""));
    let at = text.find("\"id\"")?;
    let after = text[at + 4..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    let end = after.find('"')?;
    let id = &after[..end];
    id.starts_with("resp").then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ids_in_paths_and_bodies() {
        assert_eq!(
            response_id_in_path("/v1/responses/resp_1/cancel"),
            Some("resp_1")
        );
        assert_eq!(response_id_in_path("/v1/responses/resp_1"), Some("resp_1"));
        assert_eq!(response_id_in_path("/v1/responses"), None);
        assert_eq!(
            find_response_id(br#"{"id": "resp_abc","object":"response"}"#).as_deref(),
            Some("resp_abc")
        );
        // A streamed response names its id in its first event.
        assert_eq!(
            find_response_id(br#"data: {"type":"response.created","response":{"id":"resp_9""#)
                .as_deref(),
            Some("resp_9")
        );
        assert_eq!(find_response_id(br#"{"id":"chatcmpl-1"}"#), None);
    }

    #[test]
    fn remembers_and_forgets_the_oldest() {
        let a = Affinity::default();
        for i in 0..(CAPACITY + 1) {
            a.remember(format!("resp_{i}"), "http://s".into());
        }
        assert_eq!(a.server_for_path("/v1/responses/resp_0"), None);
        assert_eq!(
            a.server_for_path(&format!("/v1/responses/resp_{CAPACITY}"))
                .as_deref(),
            Some("http://s")
        );
    }
}
