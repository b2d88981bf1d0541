//! Recent events worth an operator's eye (health changes, reloads, retries, drains), newest
//! last, for the dashboard and the status API.
//!
//! Bounded: the log keeps the last [`CAPACITY`] events, and an event that repeats the previous
//! one within [`COALESCE`] (a retry storm, say) bumps its count instead of taking a new line.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub const CAPACITY: usize = 200;
const COALESCE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Healthy,
    Unhealthy,
    Retry,
    Reload,
    ReloadFailed,
    Drain,
    Undrain,
    Added,
    Removed,
    /// A `dns` entry's lookup failed (its last answer is kept) or resolves again.
    Dns,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub kind: EventKind,
    pub server: Option<String>,
    pub message: String,
    /// How many times it happened in a row (coalesced).
    pub count: u64,
}

#[derive(Default)]
pub struct EventLog {
    events: Mutex<VecDeque<Event>>,
}

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventLog {
    pub fn push(&self, kind: EventKind, server: Option<&str>, message: impl Into<String>) {
        let message = message.into();
        let now = epoch_seconds(SystemTime::now());
        let mut events = self.events.lock();
        if let Some(last) = events.back_mut()
            && last.kind == kind
            && last.server.as_deref() == server
            && last.message == message
            && now - last.at < COALESCE.as_secs_f64()
        {
            last.count += 1;
            last.at = now;
            return;
        }
        if events.len() == CAPACITY {
            events.pop_front();
        }
        events.push_back(Event {
            at: now,
            kind,
            server: server.map(str::to_string),
            message,
            count: 1,
        });
    }

    /// The last `n` events, oldest first.
    pub fn recent(&self, n: usize) -> Vec<Event> {
        let events = self.events.lock();
        events
            .iter()
            .skip(events.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_coalesce_and_the_log_is_bounded() {
        let log = EventLog::default();
        for _ in 0..5 {
            log.push(EventKind::Retry, Some("http://a"), "HTTP 503");
        }
        log.push(EventKind::Retry, Some("http://b"), "HTTP 503");
        let recent = log.recent(10);
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].count, 5);
        assert_eq!(recent[1].server.as_deref(), Some("http://b"));
        for i in 0..CAPACITY + 10 {
            log.push(EventKind::Reload, None, format!("reload {i}"));
        }
        let all = log.recent(usize::MAX);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(
            all.last().unwrap().message,
            format!("reload {}", CAPACITY + 9)
        );
    }
}
