//! The response body on its way back to the client.
//!
//! Why a wrapper: it is pulled by the client's connection, so a slow client slows the upstream
//! read (backpressure: nothing is buffered beyond hyper's own buffers); it holds the server's
//! in-flight count until the end of the stream, an error or the client's disconnect (dropping it
//! drops the upstream connection, and vLLM aborts the request); it cuts a stream that stays
//! silent longer than `stream_idle_timeout`; and when a server dies mid-stream it ends an SSE
//! stream with an error event in vLLM's format instead of a silent truncation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::errors::ProxyError;
use super::usage::Tail;
use crate::admission::affinity::{Affinity, SCAN_LIMIT, find_response_id};
use crate::admission::tenants::Charge;
use crate::config::Settings;
use crate::fleet::InFlight;
use crate::routing::prefix_index::Prediction;
use crate::routing::{Ended, Policy};

/// Everything logged once per request when its response ends.
pub struct RequestLog {
    pub route: &'static str,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Told when the server fails mid-response and so becomes unhealthy.
    pub fleet: Arc<crate::fleet::Fleet>,
    pub id: String,
    pub model: Option<String>,
    pub server: std::sync::Arc<str>,
    pub status: u16,
    pub started: Instant,
    pub ttfb: Duration,
    pub retries: u32,
    /// The request's tenant, when tenants matter (see [`crate::admission::tenants`]).
    pub tenant: Option<Arc<crate::admission::tenants::Tenant>>,
    /// The request's trace span (with tracing on), ended with the body.
    pub span: Option<crate::otel::RequestSpan>,
}

/// What the policy predicted for a request, the response's end (where the server reports what
/// it had cached), and the policy to tell.
/// What a response's end tells the policy: the prediction made for it, the body's tail (where
/// usage is, when the request asked for it), and the data frames counted (a stream's events,
/// about one token each: the answer's length when usage does not say).
struct CacheHitTap {
    prediction: Prediction,
    tail: Option<Box<Tail>>,
    frames: u32,
    policy: Arc<Box<dyn Policy>>,
}

pub struct ProxyBody {
    inner: Incoming,
    guard: Option<InFlight>,
    settings: Arc<Settings>,
    /// `stream_idle_timeout`'s timer. It is not pushed back on every chunk (that cost a timer
    /// reset and a waker registration per token): it fires at its deadline, and is then moved
    /// to `idle_timeout` after the last data if data came since.
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    last_data: Instant,
    /// The waker the timer holds: while the body is polled by the same task and the timer has
    /// not fired, polling the timer again would change nothing.
    idle_waker: Option<std::task::Waker>,
    sse: bool,
    ended: bool,
    log: RequestLog,
    outcome: &'static str,
    /// For `POST /v1/responses`: the body's first bytes, until the response id is found.
    tap: Option<(Vec<u8>, Arc<Affinity>)>,
    /// The last two bytes sent, to end a half-sent SSE event before an error event.
    tail: [u8; 2],
    /// With a prefix index: what it predicted, and the body's end, where the server reports
    /// the cached tokens it really had.
    cache_hits: Option<CacheHitTap>,
    /// With tenant budgets: the request's charge, settled from the usage at the body's end.
    charge: Option<(Charge, Box<Tail>)>,
}

impl ProxyBody {
    pub fn new(
        inner: Incoming,
        guard: InFlight,
        settings: Arc<Settings>,
        sse: bool,
        log: RequestLog,
    ) -> Self {
        let idle_timeout = settings.stream_idle_timeout;
        ProxyBody {
            inner,
            guard: Some(guard),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            last_data: Instant::now(),
            idle_waker: None,
            settings,
            sse,
            ended: false,
            log,
            outcome: "aborted by client",
            tap: None,
            tail: *b"\n\n",
            cache_hits: None,
            charge: None,
        }
    }

    /// Settles `charge` from the usage the answer ends with (kept as estimated without one).
    pub fn settle_charge(mut self, charge: Charge) -> Self {
        self.charge = Some((charge, Box::default()));
        self
    }

    /// Tells `policy` the cached tokens the response reports, beside what it predicted.
    /// `reports_usage`: the body ends with `usage` (else only its length is measured).
    pub fn measure_cache_hits(
        mut self,
        prediction: Prediction,
        policy: Arc<Box<dyn Policy>>,
        reports_usage: bool,
    ) -> Self {
        self.cache_hits = Some(CacheHitTap {
            prediction,
            tail: reports_usage.then(Box::default),
            frames: 0,
            policy,
        });
        self
    }

    /// Records the response id found at the start of this body in `affinity`.
    pub fn remember_response_id(mut self, affinity: Arc<Affinity>) -> Self {
        self.tap = Some((Vec::new(), affinity));
        self
    }

    fn scan(&mut self, data: &[u8]) {
        let Some((seen, affinity)) = &mut self.tap else {
            return;
        };
        seen.extend_from_slice(&data[..data.len().min(SCAN_LIMIT - seen.len().min(SCAN_LIMIT))]);
        if let Some(id) = find_response_id(seen) {
            affinity.remember(id, self.log.server.to_string());
            self.tap = None;
        } else if seen.len() >= SCAN_LIMIT {
            self.tap = None;
        }
    }

    fn finish(&mut self) {
        self.ended = true;
        self.outcome = "completed";
        if let Some((charge, tail)) = self.charge.take()
            && let Some(spent) = tail.spent()
        {
            charge.settle(spent);
        }
        if let Some(tap) = self.cache_hits.take()
            && let Some(guard) = &self.guard
        {
            let usage = tap.tail.as_ref().and_then(|t| t.usage());
            // Without usage, a stream's events less its first (the role) and last ([DONE]).
            let completion = usage
                .and_then(|u| u.completion_tokens)
                .unwrap_or(if self.sse {
                    tap.frames.saturating_sub(2) as u64
                } else {
                    0
                });
            tap.policy.ended(
                guard.server().id(),
                &Ended {
                    prediction: tap.prediction,
                    usage: usage.map(|u| (u.prompt_tokens as f64, u.cached_tokens as f64)),
                    completion_tokens: completion as f64,
                },
            );
        }
        self.guard = None;
    }

    /// The server failed mid-response: count it, and for SSE queue an error event.
    fn fail(&mut self, why: String, error: ProxyError) -> Option<Bytes> {
        self.outcome = "failed mid-stream";
        self.log.telemetry.live.lock().record_error();
        if let Some(guard) = self.guard.take() {
            let server = guard.server().clone();
            server.live.lock().record_error();
            let t = server.record_failure(why.clone(), &self.settings);
            self.log.fleet.note_transition(&server, t);
        }
        tracing::warn!(id = %self.log.id, server = %self.log.server, reason = %why, "upstream failed mid-response");
        self.ended = true;
        // An event ends with a blank line: end the one the server left half-sent, so the error
        // event is not glued to it.
        let close = match self.tail {
            [b'\n', b'\n'] => "",
            [_, b'\n'] => "\n",
            _ => "\n\n",
        };
        self.sse
            .then(|| Bytes::from(format!("{close}data: {}\n\ndata: [DONE]\n\n", error.body())))
    }

    fn remember_tail(&mut self, data: &[u8]) {
        match data {
            [] => {}
            [b] => self.tail = [self.tail[1], *b],
            [.., a, b] => self.tail = [*a, *b],
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(guard) = this.guard.as_mut()
                        && guard.first_byte()
                        && this.sse
                    {
                        // The first event of a stream carries the first token.
                        let ttft = this.log.started.elapsed();
                        guard.server().live.lock().record_ttft(ttft);
                        this.log.telemetry.live.lock().record_ttft(ttft);
                    }
                    this.scan(data);
                    this.remember_tail(data);
                    if let Some((_, tail)) = &mut this.charge {
                        tail.push(data);
                    }
                    if let Some(tap) = &mut this.cache_hits {
                        tap.frames += 1;
                        if let Some(tail) = &mut tap.tail {
                            tail.push(data);
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    // Hyper stops polling once a Content-Length is satisfied: the end is now.
                    this.finish();
                } else {
                    this.last_data = Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let why = format!("stream broke: {e}");
                match this.fail(
                    why,
                    ProxyError::BadGateway("the server's response stopped before its end".into()),
                ) {
                    Some(event) => Poll::Ready(Some(Ok(Frame::data(event)))),
                    None => Poll::Ready(Some(Err(Box::new(e)))),
                }
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let registered = this
                    .idle_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()));
                if registered && !this.idle.is_elapsed() {
                    return Poll::Pending;
                }
                loop {
                    if this.idle.as_mut().poll(cx).is_pending() {
                        this.idle_waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    let due = this.last_data + this.idle_timeout;
                    if Instant::now() >= due {
                        break;
                    }
                    this.idle.as_mut().reset(due);
                }
                let why = format!("no data for {:?}", this.idle_timeout);
                match this.fail(why.clone(), ProxyError::Timeout) {
                    Some(event) => Poll::Ready(Some(Ok(Frame::data(event)))),
                    None => Poll::Ready(Some(Err(why.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let l = &self.log;
        l.telemetry
            .duration(l.route)
            .observe(l.started.elapsed().as_secs_f64());
        tracing::info!(
            target: "mvllm::access",
            id = %l.id,
            model = l.model.as_deref().unwrap_or("-"),
            server = %l.server,
            status = l.status,
            ttfb_ms = %format_args!("{:.3}", l.ttfb.as_secs_f64() * 1e3),
            duration_ms = %format_args!("{:.3}", l.started.elapsed().as_secs_f64() * 1e3),
            retries = l.retries,
            tenant = l.tenant.as_ref().map_or("-", |t| t.name.as_str()),
            outcome = self.outcome,
            "request"
        );
        if let Some(span) = self.log.span.take() {
            let l = &self.log;
            span.finish(crate::otel::Finished {
                status: l.status,
                model: l.model.as_deref(),
                server: Some(&l.server),
                attempts: l.retries + 1,
                ttfb: Some(l.ttfb),
                outcome: self.outcome,
            });
        }
    }
}
