//! The optional bounded wait in the router when every eligible server is at capacity.
//!
//! Why: without it (the seed's behaviour, and the default) a request beyond the fleet's capacity
//! goes to the least loaded server anyway and waits in vLLM's own queue, where it holds KV-cache
//! blocks, can be preempted, and cannot move to a server that frees up first. With
//! `queue_size > 0` it waits here instead, first come first served, for the first slot on any
//! server that can take it, up to `queue_timeout`; past `queue_size` waiters, or after the
//! time-out, it gets 503 with `Retry-After` at once instead of unbounded latency.
//!
//! Fairness: a request that arrives while others wait joins the back of the line rather than
//! taking a slot that frees up (no barging). Each freed slot wakes the head of the line.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::oneshot;

#[derive(Default)]
pub struct WaitQueue {
    waiters: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    /// The line's length, readable without the lock: every request's end asks whether anyone
    /// waits, and with the queue off (or empty) that must cost one atomic load. A wake-up missed
    /// in the instant a waiter joins is caught by the waiter's own periodic look.
    waiting: AtomicUsize,
    next_ticket: AtomicU64,
}

/// A place in the line; leaving it (dropped on time-out or disconnect) gives up the place.
pub struct Ticket<'a> {
    queue: &'a WaitQueue,
    id: u64,
    pub woken: oneshot::Receiver<()>,
    /// The holder got its slot: leaving passes nothing on.
    used: bool,
}

impl Ticket<'_> {
    pub fn used(mut self) {
        self.used = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut w = self.queue.waiters.lock();
        if let Some(i) = w.iter().position(|(id, _)| *id == self.id) {
            w.remove(i);
            self.queue.waiting.store(w.len(), Ordering::Relaxed);
        } else if !self.used {
            // Woken but leaving without using the slot: pass the wake-up on.
            drop(w);
            self.queue.wake_one();
        }
    }
}

impl std::fmt::Debug for WaitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitQueue")
            .field("waiting", &self.len())
            .finish()
    }
}

impl WaitQueue {
    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins the back of the line, or `None` when `max` are already waiting.
    pub fn join(&self, max: usize) -> Option<Ticket<'_>> {
        self.enter(max, false)
    }

    /// Goes back to the front (woken, but the slot was taken by the time it looked).
    pub fn rejoin_front(&self) -> Ticket<'_> {
        self.enter(usize::MAX, true).expect("no bound at the front")
    }

    fn enter(&self, max: usize, front: bool) -> Option<Ticket<'_>> {
        let mut w = self.waiters.lock();
        if w.len() >= max {
            return None;
        }
        let id = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if front {
            w.push_front((id, tx));
        } else {
            w.push_back((id, tx));
        }
        self.waiting.store(w.len(), Ordering::Relaxed);
        Some(Ticket {
            queue: self,
            id,
            woken: rx,
            used: false,
        })
    }

    /// A slot freed up: the head of the line may look again.
    pub fn wake_one(&self) {
        if self.is_empty() {
            return;
        }
        let mut w = self.waiters.lock();
        while let Some((_, tx)) = w.pop_front() {
            if tx.send(()).is_ok() {
                break;
            }
        }
        self.waiting.store(w.len(), Ordering::Relaxed);
    }
}

impl crate::fleet::slots::SlotObserver for WaitQueue {
    fn slot_freed(&self) {
        self.wake_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_come_first_served_bounded_and_leaving_passes_the_turn_on() {
        let q = WaitQueue::default();
        let a = q.join(2).unwrap();
        let mut b = q.join(2).unwrap();
        assert!(q.join(2).is_none(), "bounded");
        q.wake_one();
        let mut a = a;
        assert!(
            a.woken.try_recv().is_ok(),
            "the first in line is woken first"
        );
        assert!(b.woken.try_recv().is_err());
        // `a` was woken and leaves without using the slot: `b` gets the turn.
        drop(a);
        assert!(b.woken.try_recv().is_ok());
        b.used();
        assert!(q.is_empty());
        // A used ticket passes nothing on.
        let mut d = q.join(2).unwrap();
        let e = q.join(2).unwrap();
        q.wake_one();
        assert!(d.woken.try_recv().is_ok());
        d.used();
        assert_eq!(q.len(), 1, "e still waits");
        drop(e);
        // A waiter that gives up (time-out) just leaves the line.
        let c = q.join(1).unwrap();
        drop(c);
        assert!(q.is_empty());
    }
}
