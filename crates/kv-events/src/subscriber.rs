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
            let malformed = |what: String| ReplayError::Malformed {
                endpoint: endpoint.to_string(),
                what,
            };
            // ["", seq, payload]
            let [empty, seq, payload] = <[Bytes; 3]>::try_from(frames)
                .map_err(|f| malformed(format!("{} frames, not 3", f.len())))?;
            if !empty.is_empty() {
                return Err(malformed("no empty delimiter".into()));
            }
            let seq = <[u8; 8]>::try_from(seq.as_ref())
                .map_err(|_| malformed("a sequence number of other than 8 bytes".into()))?;
            let seq = i64::from_be_bytes(seq);
            if seq == -1 {
                return Ok(out);
            }
            if out.len() < max_batches {
                out.push((seq as u64, payload));
            } else {
                return Ok(out);
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ReplayError::Timeout(endpoint.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

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
