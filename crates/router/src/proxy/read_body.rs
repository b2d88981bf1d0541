//! Reading a client's request body, within limits of size, time and memory.
//!
//! Why: a body is buffered whole (it is inspected, and re-sent on a retry), so without limits a
//! client could hold a connection open forever by sending headers and no body, or take gigabytes
//! by opening many connections that each send almost `max_body_bytes`. So:
//! - a declared `Content-Length` over `max_body_bytes` is refused before a byte is read (and so
//!   before hyper answers `100 Continue`);
//! - the whole body must arrive within `body_read_timeout`, and, after its first second, at no
//!   less than `body_min_bytes_per_second` (408 otherwise);
//! - all bodies held at once share `max_buffered_body_bytes`: a body that would go past it gets
//!   503 with Retry-After. The memory is held until the request has been handed to a server.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::errors::ProxyError;
use crate::admission::body_budget::BodyBudget;
use crate::config::Settings;

/// How long a body may take before the minimum rate applies.
const RATE_GRACE: Duration = Duration::from_secs(1);

/// `n` more bytes of the shared budget, or 503 when they are not free.
fn reserve(budget: &BodyBudget, n: usize) -> Result<OwnedSemaphorePermit, ProxyError> {
    budget.reserve(n).ok_or(ProxyError::Overloaded(
        "request bodies held in memory are at max_buffered_body_bytes",
    ))
}

/// A body read whole, and the share of the memory budget it holds (released when dropped).
pub struct ReadBody {
    pub bytes: Bytes,
    _held: OwnedSemaphorePermit,
}

pub async fn read(
    body: Body,
    headers: &HeaderMap,
    settings: &Settings,
    budget: &BodyBudget,
) -> Result<ReadBody, ProxyError> {
    let max = settings.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ProxyError::TooLarge(max));
    }
    let mut held = reserve(budget, declared.unwrap_or(0) as usize)?;
    let mut reserved = declared.unwrap_or(0) as usize;
    let started = Instant::now();
    let deadline = started + settings.body_read_timeout;
    let min_rate = settings.body_min_bytes_per_second as f64;
    let mut buf = BytesMut::with_capacity(reserved);
    let mut body = body;
    loop {
        // Wake at least every second to check the rate while nothing arrives.
        let look = (Instant::now() + Duration::from_secs(1)).min(deadline);
        match tokio::time::timeout_at(look, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    if buf.len() + data.len() > max {
                        return Err(ProxyError::TooLarge(max));
                    }
                    if buf.len() + data.len() > reserved {
                        let more = buf.len() + data.len() - reserved;
                        held.merge(reserve(budget, more)?);
                        reserved += more;
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) => {
                tracing::debug!("reading a request body failed: {e}");
                return Err(ProxyError::BadRequest(
                    "could not read the request body: the connection broke".into(),
                ));
            }
            Ok(None) => break,
            // Nothing for a second: only the checks below.
            Err(_) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ProxyError::BodyTimeout(format!(
                "the request body did not arrive within body_read_timeout ({:?})",
                settings.body_read_timeout
            )));
        }
        let elapsed = now.duration_since(started);
        if elapsed > RATE_GRACE {
            let expected = min_rate * (elapsed - RATE_GRACE).as_secs_f64();
            if (buf.len() as f64) < expected {
                return Err(ProxyError::BodyTimeout(format!(
                    "the request body arrives slower than body_min_bytes_per_second ({min_rate} bytes/s)"
                )));
            }
        }
    }
    Ok(ReadBody {
        bytes: buf.freeze(),
        _held: held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_is_shared_and_given_back() {
        let budget = BodyBudget::new(10_000);
        let settings = Settings {
            max_body_bytes: 8_000,
            ..Settings::default()
        };
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "6000".parse().unwrap());
        let first = read(Body::from(vec![b'x'; 6000]), &h, &settings, &budget)
            .await
            .unwrap();
        assert_eq!(first.bytes.len(), 6000);
        assert_eq!(budget.available(), 4000);
        let second = read(Body::from(vec![b'x'; 6000]), &h, &settings, &budget).await;
        assert!(matches!(second, Err(ProxyError::Overloaded(_))));
        // Without a declared length the budget is taken as bytes arrive.
        let third = read(
            Body::from(vec![b'x'; 6000]),
            &HeaderMap::new(),
            &settings,
            &budget,
        )
        .await;
        assert!(matches!(third, Err(ProxyError::Overloaded(_))));
        drop(first);
        assert_eq!(budget.available(), 10_000);
        h.insert(header::CONTENT_LENGTH, "9000".parse().unwrap());
        let too_big = read(Body::empty(), &h, &settings, &budget).await;
        assert!(matches!(too_big, Err(ProxyError::TooLarge(8000))));
    }
}
