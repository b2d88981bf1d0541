//! Headroom for tenants under their share: a few free slots a flood may not take.
//!
//! Why: the wait queue decides who gets a slot once one frees up, but a light tenant (or a
//! critical request) that arrives while a flood holds every slot still waits for the next
//! request anywhere in the fleet to end. With 32 slots of one-second answers that is tens of
//! milliseconds at the median and hundreds at p99: `mvllm bench tenants` measured the light
//! tenant's p99 time to first token at 6.4x its p99 alone. So while tenants contend, a few slots
//! (`share_headroom` of those that could serve the request) are held back from the tenants at
//! or over their share and from classes below an active one; a tenant under its share, or a
//! request of the highest active class, finds one free at once and takes it without waiting in
//! line. The flood gets every other slot, and all of them once the others have gone quiet.
//!
//! A tenant's share is the slots that could serve the request, times its weight, over the
//! weights of the active tenants of its class. Active: a request of it in flight, or one that
//! took a slot within [`ACTIVE_FOR`]. One tenant alone, or every tenant under its share, holds
//! nothing back. Counts are per router: several routers in front of one fleet each keep their
//! own headroom.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Priority;

/// How long after its last request took a slot a tenant or class still counts as active: long
/// enough to span the pauses of a chat between its turns.
pub const ACTIVE_FOR: Duration = Duration::from_secs(30);

/// What a tenant or a class is doing now: its requests holding slots, and when one last took a
/// slot. Shared by a tenant's old and new selves across a reload.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since the router's [`Shares`] epoch, plus one; 0: never.
    last_started: AtomicU64,
}

impl Activity {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn active(&self, now_ms: u64) -> bool {
        let last = self.last_started.load(Ordering::Relaxed);
        self.in_flight() > 0
            || (last > 0 && now_ms.saturating_sub(last - 1) < ACTIVE_FOR.as_millis() as u64)
    }

    fn start(&self, now_ms: u64) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.last_started.store(now_ms + 1, Ordering::Relaxed);
    }

    fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Each class's activity, and the clock the activities are read on (see the module doc).
#[derive(Debug)]
pub struct Shares {
    epoch: Instant,
    classes: [Activity; 3],
}

impl Default for Shares {
    fn default() -> Self {
        Shares {
            epoch: Instant::now(),
            classes: Default::default(),
        }
    }
}

/// A tenant as the headroom sees it (and a request: its tenant, with the request's class).
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    pub tenant: &'a Arc<Activity>,
    pub weight: f64,
    pub class: Priority,
}

impl Shares {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A request took a slot: its tenant and class count it until the returned guard drops
    /// (at its answer's end).
    pub fn hold(self: &Arc<Self>, tenant: &Arc<Activity>, class: Priority) -> Held {
        let now = self.now_ms();
        tenant.start(now);
        self.classes[class as usize].start(now);
        Held {
            shares: self.clone(),
            tenant: tenant.clone(),
            class,
        }
    }

    /// Whether `who` may take one of the slots held back, out of `slots` that could serve it:
    /// no class above its own is active, and its tenant holds fewer than its share among
    /// `tenants` (every tenant, each with its own class).
    pub fn may_use_headroom<'a>(
        &self,
        tenants: impl IntoIterator<Item = Claimant<'a>>,
        who: Claimant<'_>,
        slots: usize,
    ) -> bool {
        let now = self.now_ms();
        if self.classes[..who.class as usize]
            .iter()
            .any(|c| c.active(now))
        {
            return false;
        }
        let others: f64 = tenants
            .into_iter()
            .filter(|t| {
                t.class == who.class && !Arc::ptr_eq(t.tenant, who.tenant) && t.tenant.active(now)
            })
            .map(|t| t.weight)
            .sum();
        let share = slots as f64 * who.weight / (who.weight + others).max(f64::MIN_POSITIVE);
        (who.tenant.in_flight() as f64) < share
    }
}

/// A request's hold on a slot, counted for its tenant and class until dropped.
#[derive(Debug)]
pub struct Held {
    shares: Arc<Shares>,
    tenant: Arc<Activity>,
    class: Priority,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.tenant.end();
        self.shares.classes[self.class as usize].end();
    }
}

/// The free slots held back from a request, out of `slots` that could serve it: `None` when
/// headroom is not in play (`share_headroom` 0, or a fleet of one slot: at least one slot is
/// always left to everyone), `Some(0)` when it may use them, else how many it must leave free.
pub fn held_back(fraction: f64, slots: usize, may_use: impl FnOnce() -> bool) -> Option<usize> {
    let headroom = ((slots as f64 * fraction).ceil() as usize).min(slots.saturating_sub(1));
    if headroom == 0 {
        None
    } else if may_use() {
        Some(0)
    } else {
        Some(headroom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tenants by name: their activity, class and weight.
    struct Fleet(Vec<(&'static str, Arc<Activity>, Priority, f64)>);

    impl Fleet {
        fn new(tenants: &[(&'static str, Priority, f64)]) -> Fleet {
            Fleet(
                tenants
                    .iter()
                    .map(|&(n, p, w)| (n, Arc::default(), p, w))
                    .collect(),
            )
        }

        fn all(&self) -> impl Iterator<Item = Claimant<'_>> {
            self.0.iter().map(|(_, a, class, weight)| Claimant {
                tenant: a,
                weight: *weight,
                class: *class,
            })
        }

        fn get(&self, name: &str) -> Claimant<'_> {
            self.all()
                .zip(&self.0)
                .find(|(_, t)| t.0 == name)
                .unwrap()
                .0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_over_its_share_leaves_the_headroom_to_one_under_it() {
        let shares = Arc::new(Shares::default());
        let t = Fleet::new(&[
            ("a", Priority::Standard, 1.0),
            ("b", Priority::Standard, 1.0),
        ]);
        let (a, b) = (t.get("a"), t.get("b"));
        // a alone: its share is every slot.
        let mut held: Vec<Held> = (0..31).map(|_| shares.hold(a.tenant, a.class)).collect();
        assert!(
            shares.may_use_headroom(t.all(), a, 32),
            "alone, a may take all"
        );
        // b starts: a holds 31 of its 16, b none.
        let one_of_b = shares.hold(b.tenant, b.class);
        assert!(!shares.may_use_headroom(t.all(), a, 32));
        assert!(shares.may_use_headroom(t.all(), b, 32));
        // b at its share (16) may not take more headroom either.
        held.extend((0..15).map(|_| shares.hold(b.tenant, b.class)));
        assert!(!shares.may_use_headroom(t.all(), b, 32));
        // b's requests end, and 30 s later it no longer counts: a may take all again.
        held.truncate(31);
        drop(one_of_b);
        assert_eq!(b.tenant.in_flight(), 0);
        tokio::time::advance(ACTIVE_FOR - Duration::from_millis(1)).await;
        assert!(
            !shares.may_use_headroom(t.all(), a, 32),
            "b is still active"
        );
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(shares.may_use_headroom(t.all(), a, 32));
    }

    #[tokio::test(start_paused = true)]
    async fn shares_follow_weights_and_a_higher_class_takes_the_headroom() {
        let shares = Arc::new(Shares::default());
        let t = Fleet::new(&[
            ("a", Priority::Standard, 3.0),
            ("b", Priority::Standard, 1.0),
            ("c", Priority::Critical, 1.0),
            ("d", Priority::Batch, 1.0),
        ]);
        let (a, b, c, d) = (t.get("a"), t.get("b"), t.get("c"), t.get("d"));
        let _b = shares.hold(b.tenant, b.class);
        let _a: Vec<Held> = (0..23).map(|_| shares.hold(a.tenant, a.class)).collect();
        // a's share is 3/4 of 32: 24.
        assert!(shares.may_use_headroom(t.all(), a, 32));
        let _a24 = shares.hold(a.tenant, a.class);
        assert!(!shares.may_use_headroom(t.all(), a, 32));
        // Batch while standard is active: never.
        assert!(!shares.may_use_headroom(t.all(), d, 32));
        // Critical: yes, and then standard no longer may, even b under its share.
        assert!(shares.may_use_headroom(t.all(), c, 32));
        let _c = shares.hold(c.tenant, c.class);
        assert!(!shares.may_use_headroom(t.all(), b, 32));
    }

    #[test]
    fn the_headroom_is_a_share_of_the_slots_rounded_up() {
        assert_eq!(held_back(0.125, 32, || false), Some(4));
        assert_eq!(held_back(0.125, 9, || false), Some(2));
        assert_eq!(held_back(0.125, 2, || false), Some(1));
        assert_eq!(held_back(0.125, 1, || false), None, "never every slot");
        assert_eq!(held_back(0.125, 32, || true), Some(0));
        assert_eq!(held_back(0.0, 32, || false), None);
        assert_eq!(held_back(0.125, 0, || false), None);
    }
}
