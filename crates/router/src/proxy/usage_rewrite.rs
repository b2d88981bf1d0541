//! Writes one number over every `"cached_tokens": N` of a response body as it streams.
//!
//! Why: after a disaggregated prefill, the decode server counts the KV it received as cached
//! (vLLM counts external hits in `num_cached_tokens`), so its usage would tell the client that
//! nearly the whole prompt was cached. The client should read what a single server would have
//! reported: the prefill server's own prefix-cache hit. The field appears in `usage` only (a
//! JSON string cannot hold the pattern: its quotes would be escaped), once in a JSON answer,
//! in the last chunk of a stream (or every chunk, with `continuous_usage_stats`). A match split
//! across frames is held back until the next frame shows where it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

const KEY: &[u8] = b"\"cached_tokens\":";

pub struct CachedTokens<B> {
    inner: B,
    value: Vec<u8>,
    /// Bytes held back: the start of a match whose end has not come yet.
    held: BytesMut,
    done: bool,
}

impl<B> CachedTokens<B> {
    pub fn new(inner: B, value: u64) -> Self {
        CachedTokens {
            inner,
            value: value.to_string().into_bytes(),
            held: BytesMut::new(),
            done: false,
        }
    }
}

/// Rewrites `data` (after anything held): returns what can go out now and keeps in `held` a
/// tail that may be the start of a match. `end`: no more data will come.
fn rewrite(held: &mut BytesMut, data: &[u8], value: &[u8], end: bool) -> Bytes {
    held.extend_from_slice(data);
    let buf = held.split().freeze();
    let mut out = BytesMut::with_capacity(buf.len());
    let mut from = 0;
    let mut at = 0;
    while let Some(pos) = memchr::memmem::find(&buf[at..], KEY).map(|p| p + at) {
        let mut i = pos + KEY.len();
        while i < buf.len() && matches!(buf[i], b' ' | b'\t' | b'\r' | b'\n') {
            i += 1;
        }
        let digits = i;
        while i < buf.len() && buf[i].is_ascii_digit() {
            i += 1;
        }
        if i == buf.len() && !end {
            // The number may go on in the next frame.
            out.extend_from_slice(&buf[from..pos]);
            held.extend_from_slice(&buf[pos..]);
            return out.freeze();
        }
        if i > digits {
            out.extend_from_slice(&buf[from..digits]);
            out.extend_from_slice(value);
            from = i;
        }
        at = i.max(pos + 1);
    }
    // A tail that could be the key's beginning waits for the next frame.
    let keep = if end {
        0
    } else {
        (1..KEY.len())
            .rev()
            .find(|&n| buf.len() - from >= n && buf.ends_with(&KEY[..n]))
            .unwrap_or(0)
    };
    out.extend_from_slice(&buf[from..buf.len() - keep]);
    held.extend_from_slice(&buf[buf.len() - keep..]);
    out.freeze()
}

impl<B> Body for CachedTokens<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            return match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = rewrite(&mut this.held, &data, &this.value, false);
                        if out.is_empty() {
                            continue;
                        }
                        Poll::Ready(Some(Ok(Frame::data(out))))
                    }
                    Err(other) => Poll::Ready(Some(Ok(other))),
                },
                Poll::Ready(None) => {
                    this.done = true;
                    let rest = rewrite(&mut this.held, &[], &this.value, true);
                    if rest.is_empty() {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Ok(Frame::data(rest))))
                    }
                }
                other => other,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text through the rewrite, cut into frames at every split point given.
    fn through(text: &str, cuts: &[usize], value: u64) -> String {
        let mut held = BytesMut::new();
        let v = value.to_string().into_bytes();
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain([text.len()].iter()) {
            out.extend_from_slice(&rewrite(&mut held, &text.as_bytes()[prev..c], &v, false));
            prev = c;
        }
        out.extend_from_slice(&rewrite(&mut held, &[], &v, true));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_count_is_replaced_wherever_the_frames_are_cut() {
        let text = r#"{"usage":{"prompt_tokens":900,"prompt_tokens_details":{"cached_tokens": 899}},"x":"\"cached_tokens\":5"}"#;
        let want = r#"{"usage":{"prompt_tokens":900,"prompt_tokens_details":{"cached_tokens": 64}},"x":"\"cached_tokens\":5"}"#;
        assert_eq!(through(text, &[], 64), want);
        for a in 0..text.len() {
            for b in a..text.len() {
                assert_eq!(through(text, &[a, b], 64), want, "cut at {a} and {b}");
            }
        }
    }

    #[test]
    fn sse_chunks_pass_at_once_and_each_usage_is_rewritten() {
        let mut held = BytesMut::new();
        let chunk = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        assert_eq!(&rewrite(&mut held, chunk, b"0", false)[..], &chunk[..]);
        assert!(held.is_empty(), "nothing held at an event's end");
        let usage = b"data: {\"usage\":{\"prompt_tokens_details\":{\"cached_tokens\":1023}}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            &rewrite(&mut held, usage, b"0", false)[..],
            b"data: {\"usage\":{\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\ndata: [DONE]\n\n"
        );
        // No number after the key (null): left as it is.
        let null = br#"{"cached_tokens":null}"#;
        assert_eq!(&rewrite(&mut held, null, b"7", true)[..], &null[..]);
    }
}
