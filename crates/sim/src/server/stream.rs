//! Server-sent events for streamed generations, framed as vLLM frames them.
//!
//! Chat: the first chunk carries `delta.role` (with empty content), each later chunk the text
//! written since the previous one, the last choice chunk the `finish_reason`; then, with
//! `stream_options.include_usage`, a chunk with `"choices":[]` and the usage; then `[DONE]`.
//! Completions: the same without the role chunk, with `choices[].text`.
//!
//! Chunks are written from a prefix serialised once per request, so a token costs one small
//! allocation. A client that reads slowly gets several tokens merged into one chunk, never an
//! unbounded queue. With the `die_after_chunks` fault the body fails after that many content
//! chunks, and hyper drops the connection without the final empty chunk: a truncated stream.

use std::io;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::stream;
use serde_json::json;

use super::generation::{Generation, Kind, LoadGuard, UsageIn, finish_str, usage};
use crate::engine::Submission;

struct StreamState {
    g: Generation,
    sub: Submission,
    /// Tokens already sent.
    sent: usize,
    content_chunks: usize,
    die_after: Option<usize>,
    prefix: String,
    done: bool,
    _load: LoadGuard,
}

pub(crate) fn sse_response(
    g: Generation,
    sub: Submission,
    die_after: Option<usize>,
    load: LoadGuard,
) -> Response {
    let object = match g.kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    };
    // Everything up to the choices array, shared by every chunk of this request.
    let head =
        json!({"id": g.id, "object": object, "created": g.created, "model": g.model}).to_string();
    let prefix = format!("data: {},\"choices\":[", &head[..head.len() - 1]);
    let state = StreamState {
        g,
        sub,
        sent: 0,
        content_chunks: 0,
        die_after,
        prefix,
        done: false,
        _load: load,
    };
    let body = stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let item = st.next_bytes().await;
        Some((item, st))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

impl StreamState {
    async fn next_bytes(&mut self) -> io::Result<Bytes> {
        let progress = self.sub.outbox.wait_past(self.sent).await;
        let mut out = String::with_capacity(256);
        if self.sent == 0 && self.g.kind == Kind::Chat && progress.emitted > 0 {
            out.push_str(&self.prefix);
            out.push_str("{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"prompt_token_ids\":null,\"prompt_text\":null}\n\n");
        }
        if progress.emitted > self.sent {
            if self.die_after.is_some_and(|n| self.content_chunks >= n) {
                self.done = true;
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "simulated crash mid-stream",
                ));
            }
            let text = self.g.text(self.sent..progress.emitted);
            self.sent = progress.emitted;
            self.content_chunks += 1;
            let last = progress.finished && self.sent == self.g.words.len();
            self.push_content(&mut out, &text, last);
        }
        if progress.finished && self.sent == self.g.words.len() {
            if self.g.include_usage {
                out.push_str(&self.prefix);
                out.push_str("],\"usage\":");
                out.push_str(
                    &usage(&self.g, self.sent, progress.cached_tokens, UsageIn::Stream).to_string(),
                );
                self.push_fingerprint(&mut out);
            }
            out.push_str("data: [DONE]\n\n");
            self.done = true;
        }
        Ok(Bytes::from(out))
    }

    fn push_content(&self, out: &mut String, text: &str, last: bool) {
        let text = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
        out.push_str(&self.prefix);
        match self.g.kind {
            Kind::Chat => {
                out.push_str("{\"index\":0,\"delta\":{\"content\":");
                out.push_str(&text);
                out.push_str("},\"logprobs\":null,");
            }
            Kind::Completion => {
                out.push_str("{\"index\":0,\"text\":");
                out.push_str(&text);
                out.push_str(",\"logprobs\":null,");
            }
        }
        if last {
            out.push_str("\"finish_reason\":\"");
            out.push_str(finish_str(self.g.finish));
            out.push_str("\",\"stop_reason\":null,");
        } else if self.g.kind == Kind::Chat {
            out.push_str("\"finish_reason\":null,");
        } else {
            out.push_str("\"finish_reason\":null,\"stop_reason\":null,");
        }
        if self.g.kind == Kind::Completion {
            out.push_str("\"prompt_token_ids\":null,");
        }
        out.push_str("\"token_ids\":null}]");
        if last && !self.g.include_usage {
            self.push_fingerprint(out);
        } else {
            out.push_str("}\n\n");
        }
    }

    /// Ends a chunk with `system_fingerprint`, as vLLM ends a stream's last chunk.
    fn push_fingerprint(&self, out: &mut String) {
        out.push_str(",\"system_fingerprint\":");
        out.push_str(&serde_json::to_string(&*self.g.fingerprint).unwrap_or_default());
        out.push_str("}\n\n");
    }
}
