//! The subscribing end's two conversations with a publisher: the live stream (SUB) and a replay
//! of what was missed (DEALER to the publisher's ROUTER), each message checked for shape.
//!
//! What to do with a gap, a silence or a bad message is the caller's business (the router
//! turns the server's cache state to approximate); this module only says which happened.

use std::io;
use std::time::Duration;

use bytes::Bytes;

use crate::zmtp::{Connection, Limits, SocketType};

/// One message of the live stream.
#[derive(Debug)]
pub enum Message {
    /// `[topic, seq, payload]`, the payload not yet decoded.
    Batch { seq: u64, payload: Bytes },
    /// Not of that shape: counted and dropped by the caller.
    Malformed(String),
}

/// The live stream from one publisher.
pub struct Subscription {
    conn: Connection,
}

impl Subscription {
    /// Connects to the PUB socket at `endpoint` and subscribes to `topic` (empty: everything).
    pub async fn connect(endpoint: &str, topic: &str, limits: Limits) -> io::Result<Self> {
        let mut conn = Connection::connect(endpoint, SocketType::Sub, limits).await?;
        conn.subscribe(topic.as_bytes()).await?;
        Ok(Subscription { conn })
    }

    /// The next message; an error means the connection is gone (or sent something no ZMTP
    /// peer would) and must be made again.
    pub async fn next(&mut self) -> io::Result<Message> {
        let frames = self.conn.recv().await?;
        Ok(parse(frames))
    }
}

fn parse(mut frames: Vec<Bytes>) -> Message {
    if frames.len() != 3 {
        return Message::Malformed(format!(
            "{} frames, not [topic, seq, payload]",
            frames.len()
        ));
    }
    let payload = frames.pop().unwrap_or_default();
    let seq = frames.pop().unwrap_or_default();
    match <[u8; 8]>::try_from(seq.as_ref()) {
        Ok(b) => Message::Batch {
            seq: u64::from_be_bytes(b),
            payload,
        },
        Err(_) => Message::Malformed(format!("a {}-byte sequence number, not 8", seq.len())),
    }
}

/// Why a replay gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("replay from {endpoint}: {source}")]
    Io { endpoint: String, source: io::Error },
    #[error("replay from {0} did not finish in time")]
    Timeout(String),
    #[error("replay from {endpoint}: {what}")]
    Malformed { endpoint: String, what: String },
}

/// Asks the replay socket at `endpoint` for every kept batch from `start` on; at most
/// `max_batches` are taken (the rest of the answer is dropped with the connection).
pub async fn replay(
    endpoint: &str,
    start: u64,
    limits: Limits,
    timeout: Duration,
    max_batches: usize,
) -> Result<Vec<(u64, Bytes)>, ReplayError> {
    let io_err = |source| ReplayError::Io {
        endpoint: endpoint.to_string(),
        source,
    };
    let work = async {
        let mut conn = Connection::connect(endpoint, SocketType::Dealer, limits)
            .await
            .map_err(io_err)?;
        // A DEALER speaking to a ROUTER as a REQ would: an empty delimiter, then the request.
        conn.send(&[b"", &start.to_be_bytes()])
            .await
            .map_err(io_err)?;
        let mut out = Vec::new();
        loop {
            let frames = conn.recv().await.map_err(io_err)?;
            let Some((seq, payload)) =
                replay_reply(frames).map_err(|what| ReplayError::Malformed {
                    endpoint: endpoint.to_string(),
                    what,
                })?
            else {
                return Ok(out);
            };
            if out.len() < max_batches {
                out.push((seq, payload));
            } else {
                return Ok(out);
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ReplayError::Timeout(endpoint.to_string()))?
}

/// One reply of a replay: a batch, or `None` for the end marker (sequence number -1).
///
/// vLLM 0.32 answers `["", topic, seq, payload]` and ends with `["", "", -1, ""]`
/// (`ZmqEventPublisher._service_replay`); releases before it sent no topic: `["", seq,
/// payload]` and `["", -1, ""]`. Both are read.
fn replay_reply(frames: Vec<Bytes>) -> Result<Option<(u64, Bytes)>, String> {
    let (empty, seq, payload) = match <[Bytes; 4]>::try_from(frames) {
        Ok([empty, _topic, seq, payload]) => (empty, seq, payload),
        Err(frames) => match <[Bytes; 3]>::try_from(frames) {
            Ok([empty, seq, payload]) => (empty, seq, payload),
            Err(f) => return Err(format!("{} frames, not 3 or 4", f.len())),
        },
    };
    if !empty.is_empty() {
        return Err("no empty delimiter".into());
    }
    let seq = <[u8; 8]>::try_from(seq.as_ref())
        .map_err(|_| "a sequence number of other than 8 bytes".to_string())?;
    match i64::from_be_bytes(seq) {
        -1 => Ok(None),
        seq => Ok(Some((seq as u64, payload))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_replies_of_vllm_0_32_and_of_older_releases_are_read() {
        let f = |v: &[&[u8]]| replay_reply(v.iter().map(|b| Bytes::copy_from_slice(b)).collect());
        let seven = 7u64.to_be_bytes();
        let end = (-1i64).to_be_bytes();
        // vLLM 0.32: with the topic.
        assert_eq!(
            f(&[b"", b"kv-events", &seven, b"p"]).unwrap(),
            Some((7, Bytes::from_static(b"p")))
        );
        assert_eq!(f(&[b"", b"", &end, b""]).unwrap(), None);
        // Before: without.
        assert_eq!(
            f(&[b"", &seven, b"p"]).unwrap(),
            Some((7, Bytes::from_static(b"p")))
        );
        assert_eq!(f(&[b"", &end, b""]).unwrap(), None);
        assert!(f(&[b"x", &seven, b"p"]).is_err());
        assert!(f(&[b"", b"t", b"short", b"p"]).is_err());
        assert!(f(&[b"", b"p"]).is_err());
    }

    #[test]
    fn shapes_other_than_topic_seq_payload_are_malformed() {
        let f = |v: &[&[u8]]| parse(v.iter().map(|b| Bytes::copy_from_slice(b)).collect());
        assert!(matches!(
            f(&[b"t", &7u64.to_be_bytes(), b"p"]),
            Message::Batch { seq: 7, .. }
        ));
        assert!(matches!(f(&[b"t", b"123", b"p"]), Message::Malformed(_)));
        assert!(matches!(f(&[b"only"]), Message::Malformed(_)));
    }
}
