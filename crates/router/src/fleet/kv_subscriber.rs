//! One task per server with `kv_events`: subscribes to its publisher, feeds the server's exact
//! index, and says when the index can be trusted ([`KvState`]).
//!
//! The protocol's failure cases, and what each does:
//! - first connection: a replay from sequence 0 fills in what the server cached before the
//!   router came (all vLLM kept, 10,000 steps by default); without a replay socket, or when
//!   the replay fails, the state is approximate until events have flowed for
//!   `kv_events_silent_after`;
//! - a gap in the sequence: the missed batches are replayed; if they cannot be, approximate
//!   (as above, until events have flowed again for that long);
//! - the sequence going back: the server restarted (its cache is empty, its sequence starts
//!   over): the index is emptied and refilled by a replay from 0;
//! - the connection lost, or no event for `kv_events_silent_after` while the router sent the
//!   server requests: approximate, and reconnect with backoff;
//! - a malformed message: counted and dropped; a message over the size limit: the connection
//!   is dropped and made again.
//!
//! The task ends when the server leaves the fleet, its `kv_events` changes, or on shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use mvllm_kv_events::{Limits, Message, Subscription};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Fleet;
use super::kv_state::KvState;
use super::server::Server;
use crate::config::KvEventsSource;

/// Batches one replay may bring (vLLM keeps 10,000).
const MAX_REPLAY: usize = 20_000;
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests sent to a server that must make it store blocks ([`KvState::expected_stores`]),
/// with no event since, that make its publisher count as silent.
const SILENT_REQUESTS: u64 = 4;

/// Starts a subscriber for every server that has `kv_events` and none running; checks every
/// second (new servers, reloads).
pub fn spawn(fleet: Arc<Fleet>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            for server in fleet.servers().iter() {
                let Some(source) = server.config().kv_events.clone() else {
                    continue;
                };
                if !server.kv.claim_subscriber() {
                    continue;
                }
                let (fleet, server, shutdown) = (fleet.clone(), server.clone(), shutdown.clone());
                tokio::spawn(async move {
                    Subscriber::new(&fleet, &server, source)
                        .run(&shutdown)
                        .await;
                    server.kv.release_subscriber();
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

struct Subscriber<'a> {
    fleet: &'a Fleet,
    server: &'a Arc<Server>,
    kv: &'a KvState,
    source: KvEventsSource,
    limits: Limits,
    /// The last sequence number applied, and a hash of its payload (to tell, after a
    /// reconnection, the same publisher from a restarted one).
    last: Option<u64>,
    last_payload: u64,
    /// Live messages up to this number were already applied from a replay.
    replayed_to: Option<u64>,
    /// Approximate until then (events must flow this long after a loss), if set.
    recovering_until: Option<Instant>,
    /// When the last loss was (a batch must have come since for the state to be exact).
    lost_at: Instant,
    /// When the stream was last known live (a batch, or a complete replay), and the server's
    /// expected stores then.
    last_batch_at: Instant,
    expected_at_last_batch: u64,
}

impl<'a> Subscriber<'a> {
    fn new(fleet: &'a Fleet, server: &'a Arc<Server>, source: KvEventsSource) -> Self {
        Subscriber {
            fleet,
            server,
            kv: &server.kv,
            source,
            limits: Limits::default(),
            last: None,
            last_payload: 0,
            replayed_to: None,
            recovering_until: None,
            lost_at: Instant::now(),
            last_batch_at: Instant::now(),
            expected_at_last_batch: 0,
        }
    }

    /// The server is still in the fleet with the same `kv_events`.
    fn wanted(&self) -> bool {
        self.fleet
            .servers()
            .iter()
            .any(|s| Arc::ptr_eq(s, self.server))
            && self.server.config().kv_events.as_ref() == Some(&self.source)
    }

    fn silent_after(&self) -> Duration {
        self.fleet.settings().kv_events_silent_after
    }

    async fn run(mut self, shutdown: &CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while self.wanted() && !shutdown.is_cancelled() {
            let connect =
                Subscription::connect(&self.source.endpoint, &self.source.topic, self.limits);
            let sub = tokio::select! {
                s = connect => s,
                _ = shutdown.cancelled() => break,
            };
            let mut sub = match sub {
                Ok(s) => s,
                Err(e) => {
                    self.kv.set_approximate(format!(
                        "cannot subscribe to {}: {e}",
                        self.source.endpoint
                    ));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            match self.last {
                None => self.catch_up(0, "after connecting").await,
                Some(last) => self.reconnected(last).await,
            }
            self.listen(&mut sub, shutdown).await;
        }
        if !self.wanted() {
            self.kv.index.lock().clear();
            self.kv.set_approximate("no KV events configured");
        }
    }

    /// Live messages until the connection is lost, the server is no longer wanted, or shutdown.
    async fn listen(&mut self, sub: &mut Subscription, shutdown: &CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                m = sub.next() => match m {
                    Ok(Message::Batch { seq, payload }) => self.on_batch(seq, payload).await,
                    Ok(Message::Malformed(why)) => {
                        self.kv.counters.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(server = %self.server.url(), %why, "malformed KV-event message dropped");
                    }
                    Err(e) => {
                        self.kv.set_approximate(format!("KV-event connection lost: {e}"));
                        return;
                    }
                },
                _ = tick.tick() => {
                    if !self.wanted() {
                        return;
                    }
                    self.check_silence();
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }

    fn check_silence(&mut self) {
        let now = Instant::now();
        if let Some(t) = self.recovering_until
            && now >= t
            && self.last_batch_at > self.lost_at
        {
            self.recovering_until = None;
            self.kv.set_exact();
        }
        let expected = self.kv.expected_stores.load(Ordering::Relaxed);
        let since = expected.saturating_sub(self.expected_at_last_batch);
        if self.kv.is_exact()
            && since >= SILENT_REQUESTS
            && now.duration_since(self.last_batch_at) >= self.silent_after()
        {
            self.kv.set_approximate(format!(
                "publisher silent: {since} requests and no KV event in {:?}",
                self.silent_after()
            ));
            // Exact again once batches come and have flowed that long.
            self.lost_at = now;
            self.recovering_until = Some(now + self.silent_after());
        }
    }

    async fn on_batch(&mut self, seq: u64, payload: Bytes) {
        if self.replayed_to.is_some_and(|r| seq <= r) {
            return; // already applied from the replay
        }
        self.replayed_to = None;
        match self.last {
            Some(l) if seq <= l => {
                // The sequence went back: a new publisher (the server restarted).
                self.restarted(l).await;
                if self.last.is_some_and(|l| seq <= l) {
                    return;
                }
            }
            Some(l) if seq > l + 1 => {
                self.kv.counters.gaps.fetch_add(1, Ordering::Relaxed);
                self.catch_up(l + 1, "to fill a gap").await;
                if self.last.is_some_and(|l| seq <= l) {
                    return;
                }
            }
            _ => {}
        }
        self.apply(seq, &payload);
        if self.recovering_until.is_none() {
            self.kv.set_exact();
        }
    }

    /// Connected again after losing the stream: the same publisher still has the last batch
    /// applied (then what followed is replayed), or it is a new one (the server restarted: the
    /// index starts over from its sequence 0).
    async fn reconnected(&mut self, last: u64) {
        let Some(batches) = self.fetch(last, "after reconnecting").await else {
            return;
        };
        let same = batches
            .first()
            .is_some_and(|(s, p)| *s == last && xxhash_rust::xxh3::xxh3_64(p) == self.last_payload);
        if same {
            for (seq, payload) in batches.into_iter().skip(1) {
                self.apply(seq, &payload);
            }
            self.replayed_to = self.last;
            self.recovering_until = None;
            self.live_now();
            self.kv.set_exact();
        } else if batches.first().is_some_and(|(s, _)| *s > last) {
            self.kv
                .counters
                .replay_failures
                .fetch_add(1, Ordering::Relaxed);
            self.recover(format!("replay no longer holds batch {last}"));
        } else {
            self.restarted(last).await;
        }
    }

    async fn restarted(&mut self, last: u64) {
        self.kv.counters.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::info!(server = %self.server.url(), last, "KV-event publisher restarted: cache emptied");
        self.kv.index.lock().clear();
        self.last = None;
        self.replayed_to = None;
        self.catch_up(0, "after a restart").await;
    }

    fn apply(&mut self, seq: u64, payload: &[u8]) {
        self.last = Some(seq);
        self.last_payload = xxhash_rust::xxh3::xxh3_64(payload);
        self.live_now();
        let c = &self.kv.counters;
        match mvllm_kv_events::decode(payload) {
            Ok(batch) => {
                let a = self.kv.index.lock().apply(&batch);
                c.batches.fetch_add(1, Ordering::Relaxed);
                c.orphans.fetch_add(a.orphans as u64, Ordering::Relaxed);
                c.unknown_removed
                    .fetch_add(a.unknown_removed as u64, Ordering::Relaxed);
                c.over_budget
                    .fetch_add(a.over_budget as u64, Ordering::Relaxed);
            }
            Err(e) => {
                c.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(server = %self.server.url(), seq, error = %e, "malformed KV-event batch dropped");
            }
        }
    }

    /// Applies every kept batch from `from` on. When that cannot be done (no replay socket, it
    /// failed, or it no longer has `from`), the state turns approximate until events have flowed
    /// for `kv_events_silent_after`.
    async fn catch_up(&mut self, from: u64, why: &str) {
        let Some(batches) = self.fetch(from, why).await else {
            return;
        };
        // The publisher kept batches from `from` on (or there were none yet), else history is
        // missing.
        let complete = batches.first().is_none_or(|(s, _)| *s == from);
        for (seq, payload) in batches {
            if self.last.is_none_or(|l| seq > l) {
                self.apply(seq, &payload);
            }
        }
        self.replayed_to = self.last;
        if complete {
            self.recovering_until = None;
            self.live_now();
            self.kv.set_exact();
        } else {
            self.kv
                .counters
                .replay_failures
                .fetch_add(1, Ordering::Relaxed);
            self.recover(format!("replay {why} no longer holds batch {from}"));
        }
    }

    /// Every batch the publisher kept from `from` on; `None` when there is no replay socket or
    /// the replay failed (the state then turns approximate, saying `why`).
    async fn fetch(&mut self, from: u64, why: &str) -> Option<Vec<(u64, Bytes)>> {
        let Some(replay) = self.source.replay.clone() else {
            self.recover(format!("no replay socket {why}"));
            return None;
        };
        self.kv.counters.replays.fetch_add(1, Ordering::Relaxed);
        match mvllm_kv_events::replay(&replay, from, self.limits, REPLAY_TIMEOUT, MAX_REPLAY).await
        {
            Ok(b) => Some(b),
            Err(e) => {
                self.kv
                    .counters
                    .replay_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.recover(format!("replay {why} failed: {e}"));
                None
            }
        }
    }

    /// The stream is known live now: silence is measured from here.
    fn live_now(&mut self) {
        self.last_batch_at = Instant::now();
        self.expected_at_last_batch = self.kv.expected_stores.load(Ordering::Relaxed);
    }

    fn recover(&mut self, why: String) {
        self.kv.set_approximate(why);
        self.lost_at = Instant::now();
        self.recovering_until = Some(self.lost_at + self.silent_after());
    }
}
