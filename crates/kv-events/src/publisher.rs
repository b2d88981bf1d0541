//! The publishing end, as vLLM's `ZmqEventPublisher`: a PUB socket sends each batch as
//! `[topic, 8-byte big-endian sequence number, msgpack batch]`, the last `buffer_steps` batches
//! are kept, and a ROUTER socket answers a replay request (`[identity, "", start seq]`) with every
//! kept batch from `start` on, as `[identity, "", seq, payload]`, then `[identity, "", -1, ""]`.
//!
//! Publishing never blocks the engine: batches go through a bounded queue to one task that owns
//! the sockets (vLLM: a thread); a full queue drops the batch and counts it, which a subscriber
//! sees as a gap in the sequence. Dropping the [`Publisher`] stops the task and closes the
//! sockets, as a server that dies.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::wire::{Batch, Event, encode};

/// Where and how to publish (vLLM's `--kv-events-config`).
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// `tcp://host:port` to bind; port 0 picks a free one; `*` is every address.
    pub endpoint: String,
    pub replay_endpoint: Option<String>,
    pub topic: String,
    /// Batches kept for replay (vLLM: 10,000).
    pub buffer_steps: usize,
    /// Batches waiting to be sent (vLLM's `max_queue_size`: 100,000).
    pub max_queue_size: usize,
    pub data_parallel_rank: i64,
}

impl PublisherConfig {
    pub fn new(endpoint: impl Into<String>) -> Self {
        PublisherConfig {
            endpoint: endpoint.into(),
            replay_endpoint: None,
            topic: "kv-events".into(),
            buffer_steps: 10_000,
            max_queue_size: 100_000,
            data_parallel_rank: 0,
        }
    }
}

/// Could not bind a socket.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the KV-event {which} socket at {endpoint}: {source}")]
pub struct BindError {
    which: &'static str,
    endpoint: String,
    source: zeromq::ZmqError,
}

/// A running publisher; events go out while it lives.
pub struct Publisher {
    tx: mpsc::Sender<Batch>,
    /// The PUB socket's address, port resolved.
    pub endpoint: String,
    /// The ROUTER socket's address, port resolved.
    pub replay_endpoint: Option<String>,
    stats: Arc<Stats>,
    rank: i64,
}

/// What the publisher has done, for tests and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub published: AtomicU64,
    pub dropped: AtomicU64,
    pub replays: AtomicU64,
}

/// `*` binds every address, as with vLLM.
fn bind_address(endpoint: &str) -> String {
    endpoint.replacen("tcp://*:", "tcp://0.0.0.0:", 1)
}

impl Publisher {
    pub async fn bind(cfg: PublisherConfig) -> Result<Publisher, BindError> {
        let mut pub_socket = zeromq::PubSocket::new();
        let bound = pub_socket
            .bind(&bind_address(&cfg.endpoint))
            .await
            .map_err(|source| BindError {
                which: "PUB",
                endpoint: cfg.endpoint.clone(),
                source,
            })?;
        let mut replay = None;
        let mut replay_endpoint = None;
        if let Some(r) = &cfg.replay_endpoint {
            let mut router = zeromq::RouterSocket::new();
            let at = router
                .bind(&bind_address(r))
                .await
                .map_err(|source| BindError {
                    which: "ROUTER (replay)",
                    endpoint: r.clone(),
                    source,
                })?;
            replay_endpoint = Some(at.to_string());
            replay = Some(router);
        }
        let (tx, rx) = mpsc::channel(cfg.max_queue_size.max(1));
        let stats = Arc::new(Stats::default());
        let task = Task {
            pub_socket,
            replay,
            topic: Bytes::from(cfg.topic.clone().into_bytes()),
            buffer: VecDeque::with_capacity(cfg.buffer_steps.min(1024)),
            buffer_steps: cfg.buffer_steps,
            next_seq: 0,
            stats: stats.clone(),
        };
        tokio::spawn(task.run(rx));
        Ok(Publisher {
            tx,
            endpoint: bound.to_string(),
            replay_endpoint,
            stats,
            rank: cfg.data_parallel_rank,
        })
    }

    /// Queues one batch of `events` (nothing when empty), stamped now with this engine's rank.
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let batch = Batch {
            ts,
            events,
            data_parallel_rank: Some(self.rank),
        };
        if self.tx.try_send(batch).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

struct Task {
    pub_socket: zeromq::PubSocket,
    replay: Option<zeromq::RouterSocket>,
    topic: Bytes,
    buffer: VecDeque<(u64, Bytes)>,
    buffer_steps: usize,
    next_seq: u64,
    stats: Arc<Stats>,
}

/// vLLM's end-of-replay marker: sequence number -1.
const END_SEQ: [u8; 8] = (-1i64).to_be_bytes();

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Batch>) {
        loop {
            let request = async {
                match self.replay.as_mut() {
                    Some(r) => r.recv().await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(b) => self.send(b).await,
                    None => return,
                },
                Some(req) = request => self.serve_replay(req).await,
            }
        }
    }

    async fn send(&mut self, batch: Batch) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let payload = Bytes::from(encode(&batch));
        let frames = vec![
            self.topic.clone(),
            Bytes::copy_from_slice(&seq.to_be_bytes()),
            payload.clone(),
        ];
        if let Ok(msg) = ZmqMessage::try_from(frames) {
            // No subscriber yet is not an error for PUB: the batch is kept for replay.
            let _ = self.pub_socket.send(msg).await;
        }
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        if self.buffer_steps > 0 {
            if self.buffer.len() == self.buffer_steps {
                self.buffer.pop_front();
            }
            self.buffer.push_back((seq, payload));
        }
    }

    async fn serve_replay(&mut self, req: ZmqMessage) {
        let frames = req.into_vec();
        // [identity, "", start]: anything else is ignored, as by vLLM.
        let [identity, _, start] = frames.as_slice() else {
            return;
        };
        let Ok(start) = <[u8; 8]>::try_from(start.as_ref()) else {
            return;
        };
        let start = u64::from_be_bytes(start);
        self.stats.replays.fetch_add(1, Ordering::Relaxed);
        let Some(router) = self.replay.as_mut() else {
            return;
        };
        // As vLLM 0.32 answers: `["", topic, seq, payload]`, then `["", "", -1, ""]`.
        for (seq, payload) in self.buffer.iter().filter(|(s, _)| *s >= start) {
            let frames = vec![
                identity.clone(),
                Bytes::new(),
                self.topic.clone(),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                payload.clone(),
            ];
            if let Ok(m) = ZmqMessage::try_from(frames)
                && router.send(m).await.is_err()
            {
                return;
            }
        }
        let end = vec![
            identity.clone(),
            Bytes::new(),
            Bytes::new(),
            Bytes::copy_from_slice(&END_SEQ),
            Bytes::new(),
        ];
        if let Ok(m) = ZmqMessage::try_from(end) {
            let _ = router.send(m).await;
        }
    }
}
