//! The servers' prefix caches between contenders: emptied before each, so that none finds the
//! previous one's conversations cached; and, for `oracle-warm`, filled with every shared prefix
//! on every server first.
//!
//! Why the warm oracle: on servers of one speed it is the floor a router can hope to reach. Each
//! conversation stays on one server (client-side affinity) and no server ever prefills a system
//! prompt or document cold, so what is left of its time to first token is the servers' own work:
//! the step running when a request arrives and the request's own prefill. (On servers of
//! different speeds a router does better, by keeping conversations off the slow ones.)

use crate::client::{http_client, post_timed};
use crate::load::Workload;
use crate::load::workload::{Generator, chat_body, token_body};

/// Empties every server's prefix cache (vLLM's `POST /reset_prefix_cache`), so that each
/// contender starts cold: the workload is the same seeded one for all, and a contender must not
/// find the previous one's conversations cached.
pub async fn reset(urls: &[String]) -> Result<(), String> {
    let client = http_client();
    for u in urls {
        let req = hyper::Request::post(format!("{u}/reset_prefix_cache"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .map_err(|e| e.to_string())?;
        let status = client
            .request(req)
            .await
            .map_err(|e| format!("{u}/reset_prefix_cache: {e}"))?
            .status();
        if !status.is_success() {
            return Err(format!("{u}/reset_prefix_cache answered {status}"));
        }
    }
    Ok(())
}

/// Prefills every shared prefix of workload `w` (seeded by `seed`, as the run will draw it) on
/// every server: one request of one output token each, straight to the server, in the form the
/// run sends (chat messages, or their token ids with `as_tokens`). Returns how many were sent.
pub async fn warm(
    urls: &[String],
    w: Workload,
    seed: u64,
    model: &str,
    as_tokens: bool,
) -> Result<usize, String> {
    let client = http_client();
    let openings = Generator::new(w, seed).shared_openings();
    let route = if as_tokens {
        "/v1/completions"
    } else {
        "/v1/chat/completions"
    };
    let build = if as_tokens { token_body } else { chat_body };
    let mut sent = 0;
    for u in urls {
        for s in &openings {
            let (user, max_tokens) = &s.turns[0];
            let body = build(model, s.system.as_deref(), &[], user, *max_tokens, false);
            let t = post_timed(&client, &format!("{u}{route}"), body, false).await?;
            if t.status != 200 {
                return Err(format!("warming {u}{route}: HTTP {}", t.status));
            }
            sent += 1;
        }
    }
    Ok(sent)
}
