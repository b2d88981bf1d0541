//! A streaming OpenAI-API client that times every token.
//!
//! Why hyper directly: the load generator must never be the bottleneck, so it keeps a pooled
//! HTTP/1 client, scans SSE bytes without parsing JSON, and records only arrival times.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

/// A pooled HTTP/1 client that may send an API key with every request.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    bearer: Option<hyper::header::HeaderValue>,
    /// Further headers sent with every request (a peer router's priority header).
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
}

impl HttpClient {
    /// Sends `Authorization: Bearer <key>` with every request (an endpoint with `[auth]` keys).
    pub fn with_api_key(mut self, key: &str) -> Result<HttpClient, String> {
        let value = hyper::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| "the API key must be printable ASCII".to_string())?;
        self.bearer = Some(value);
        Ok(self)
    }

    /// Sends `name: value` with every request.
    pub fn with_header(mut self, name: &'static str, value: &str) -> Result<HttpClient, String> {
        let value = hyper::header::HeaderValue::from_str(value)
            .map_err(|_| format!("{name}: the value must be printable ASCII"))?;
        self.headers
            .push((hyper::header::HeaderName::from_static(name), value));
        Ok(self)
    }

    pub fn request(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        if let Some(b) = &self.bearer {
            req.headers_mut()
                .insert(hyper::header::AUTHORIZATION, b.clone());
        }
        for (name, value) in &self.headers {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        self.inner.request(req)
    }
}

pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    HttpClient {
        inner: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
        bearer: None,
        headers: Vec::new(),
    }
}

/// What one streamed request measured.
#[derive(Debug, Clone, Default)]
pub struct StreamTiming {
    pub status: u16,
    /// Seconds from sending to the first content chunk.
    pub ttft: f64,
    /// Seconds between consecutive content chunks.
    pub gaps: Vec<f64>,
    /// Seconds from sending to the end of the stream.
    pub e2e: f64,
    pub chunks: usize,
    /// The stream ended with `data: [DONE]` (or a non-streamed answer was complete).
    pub done: bool,
    /// The generated text, when asked for (multi-turn workloads send it back).
    pub text: String,
    /// The error message of a non-2xx answer, or of an error event in a stream.
    pub error: Option<String>,
    /// `usage.completion_tokens`, when the answer carried it (a streamed answer does with
    /// `stream_options.include_usage`); tokens may be several per chunk.
    pub usage_tokens: Option<u64>,
}

impl StreamTiming {
    /// Time per output token after the first: (e2e - ttft) / (tokens - 1).
    pub fn tpot(&self, tokens: usize) -> f64 {
        if tokens < 2 {
            f64::NAN
        } else {
            (self.e2e - self.ttft) / (tokens - 1) as f64
        }
    }
}

/// Splits an SSE byte stream into events as bytes arrive, across chunk boundaries.
#[derive(Default)]
pub struct SseScanner {
    buf: Vec<u8>,
}

/// What an event was, as far as timing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseEvent {
    /// A chunk carrying generated text.
    Content,
    /// Role chunk, usage chunk, comment, anything else.
    Other,
    Done,
}

impl SseScanner {
    /// Feeds bytes; calls `on_event` for each complete event.
    pub fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(SseEvent)) {
        self.feed_raw(bytes, |e, _| on_event(e));
    }

    /// Like [`feed`](Self::feed), with each event's bytes.
    pub fn feed_raw(&mut self, bytes: &[u8], mut on_event: impl FnMut(SseEvent, &[u8])) {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = find(&self.buf[start..], b"\n\n") {
            let event = &self.buf[start..start + pos];
            on_event(classify(event), event);
            start += pos + 2;
        }
        self.buf.drain(..start);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn classify(event: &[u8]) -> SseEvent {
    if event == b"data: [DONE]" {
        SseEvent::Done
    } else if find(event, b"\"role\"").is_some() || find(event, b"\"choices\":[]").is_some() {
        SseEvent::Other
    } else if find(event, b"\"content\":").is_some() || find(event, b"\"text\":").is_some() {
        SseEvent::Content
    } else {
        SseEvent::Other
    }
}

/// POSTs `body` as JSON to `url` and times the streamed answer.
pub async fn stream_post(
    client: &HttpClient,
    url: &str,
    body: String,
) -> Result<StreamTiming, String> {
    post_timed(client, url, body, false).await
}

/// The text an SSE event carries (`delta.content` of a chat chunk, `text` of a completion).
fn event_text(event: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(event.strip_prefix(b"data: ")?).ok()?;
    let choice = json.get("choices")?.get(0)?;
    choice
        .get("delta")
        .and_then(|d| d.get("content"))
        .or_else(|| choice.get("text"))?
        .as_str()
        .map(str::to_string)
}

/// POSTs `body` as JSON to `url` and times the answer, streamed (SSE: time to first token and
/// the gaps between tokens) or not (one JSON document: its `usage.completion_tokens`). With
/// `capture_text`, the generated text is kept.
pub async fn post_timed(
    client: &HttpClient,
    url: &str,
    body: String,
    capture_text: bool,
) -> Result<StreamTiming, String> {
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let mut timing = StreamTiming {
        status: resp.status().as_u16(),
        ..Default::default()
    };
    let sse = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = resp.into_body();
    if !sse || timing.status != 200 {
        let bytes = body
            .collect()
            .await
            .map_err(|e| format!("body broke: {e}"))?
            .to_bytes();
        timing.e2e = (Instant::now() - t0).as_secs_f64();
        timing.ttft = timing.e2e;
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if timing.status == 200 {
            timing.done = true;
            timing.usage_tokens = json["usage"]["completion_tokens"].as_u64();
            timing.chunks = timing.usage_tokens.unwrap_or(0) as usize;
            if capture_text {
                let choice = &json["choices"][0];
                timing.text = choice["message"]["content"]
                    .as_str()
                    .or(choice["text"].as_str())
                    .unwrap_or_default()
                    .to_string();
            }
        } else {
            timing.error = Some(json["error"]["message"].as_str().map_or_else(
                || String::from_utf8_lossy(&bytes).into_owned(),
                str::to_string,
            ));
        }
        return Ok(timing);
    }
    let mut scanner = SseScanner::default();
    let mut last: Option<Instant> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("stream broke: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = Instant::now();
        scanner.feed_raw(data, |ev, raw| match ev {
            SseEvent::Content => {
                match last {
                    None => timing.ttft = (now - t0).as_secs_f64(),
                    Some(prev) => timing.gaps.push((now - prev).as_secs_f64()),
                }
                last = Some(now);
                timing.chunks += 1;
                if capture_text && let Some(t) = event_text(raw) {
                    timing.text.push_str(&t);
                }
            }
            SseEvent::Done => timing.done = true,
            SseEvent::Other => {
                if find(raw, b"\"error\"").is_some() {
                    timing.error = Some(String::from_utf8_lossy(raw).into_owned());
                } else if find(raw, b"\"usage\":{").is_some() {
                    timing.usage_tokens = raw
                        .strip_prefix(b"data: ")
                        .and_then(|j| serde_json::from_slice::<serde_json::Value>(j).ok())
                        .and_then(|v| v["usage"]["completion_tokens"].as_u64());
                }
            }
        });
    }
    timing.e2e = (Instant::now() - t0).as_secs_f64();
    Ok(timing)
}

/// GETs `url` and returns the body as text.
pub async fn get_text(client: &HttpClient, url: &str) -> Result<String, String> {
    let req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_splits_events_across_chunks() {
        let mut s = SseScanner::default();
        let mut seen = Vec::new();
        s.feed(b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"con", |e| seen.push(e));
        assert_eq!(seen, vec![SseEvent::Other]);
        s.feed(
            b"tent\":\" a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{}}\n\ndata: [DONE]\n\n",
            |e| seen.push(e),
        );
        assert_eq!(
            seen,
            vec![
                SseEvent::Other,
                SseEvent::Content,
                SseEvent::Other,
                SseEvent::Done
            ]
        );
    }
}

#[cfg(test)]
mod scanner_tests {
    use super::*;

    #[test]
    fn the_scanner_finds_events_across_any_split_and_survives_garbage() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\" hi\"}}]}\n\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut s = SseScanner::default();
            let mut seen = Vec::new();
            for piece in stream.chunks(cut) {
                s.feed_raw(piece, |e, raw| seen.push((e, event_text(raw))));
            }
            assert_eq!(seen.len(), 3, "split every {cut} bytes");
            assert_eq!(seen[1], (SseEvent::Content, Some(" hi".to_string())));
            assert_eq!(seen[2].0, SseEvent::Done);
        }
        // Seeded garbage: no panic, and never more events than separators.
        let mut x: u64 = 7;
        let mut s = SseScanner::default();
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let bytes = x.to_le_bytes();
            let piece = [bytes[0] % 4 + b'\n' - 1, bytes[1], b'\n', bytes[2]];
            s.feed_raw(&piece[..usize::from(bytes[3] % 4) + 1], |_, raw| {
                let _ = event_text(raw);
            });
        }
    }
}
