//! The optional bounded wait in the router when every eligible server is at capacity, by class
//! and fair between tenants.
//!
//! Why: without it (the seed's behaviour, and the default) a request beyond the fleet's capacity
//! goes to the least loaded server anyway and waits in vLLM's own queue, where it holds KV-cache
//! blocks, can be preempted, and cannot move to a server that frees up first. With
//! `queue_size > 0` it waits here instead for the first slot on any server that can take it; past
//! `queue_size` waiters, or after its time-out, it gets an answer at once instead of unbounded
//! latency.
//!
//! Who goes first when a slot frees up:
//! - the highest class waiting (`critical`, then `standard`, then `batch`);
//! - within a class, the tenant furthest behind its share: each tenant's served work (estimated
//!   tokens divided by its weight) is its virtual time, and the lowest goes next (weighted fair
//!   queuing). A tenant that was idle starts at the class's current virtual time, so idleness
//!   banks no credit: its share went to the others meanwhile;
//! - within a tenant, first come first served; a request that arrives while others wait joins the
//!   line rather than taking a slot that frees up (no barging).
//!
//! A full line takes a higher-class request by shedding the newest of its lowest-class waiters
//! (told so: 429 with `Retry-After`); a request of the lowest class waiting finds it full. No
//! waiter is ever dropped silently: each leaves served, shed, or timed out, and says which.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::config::Priority;

/// What a waiter is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A slot freed up: look again.
    Turn,
    /// A higher class needed the place: leave with 429.
    Shed,
}

/// Who a waiter is: its class, its tenant and share, what its request will cost.
#[derive(Debug, Clone)]
pub struct Place {
    pub priority: Priority,
    pub tenant: Arc<str>,
    pub weight: f64,
    /// Estimated tokens.
    pub cost: f64,
}

impl Default for Place {
    fn default() -> Self {
        Place {
            priority: Priority::Standard,
            tenant: Arc::from(""),
            weight: 1.0,
            cost: 1.0,
        }
    }
}

struct Waiter {
    id: u64,
    place: Place,
    /// Put back at the front of its tenant's line (woken, but the slot was gone).
    front: bool,
    tx: oneshot::Sender<Wake>,
}

/// The waiters by class, then by tenant, each tenant's first come first; and each tenant's
/// virtual time by class. Picking the next waiter costs a look at each tenant of the top class,
/// not at every waiter.
#[derive(Default)]
struct Line {
    classes: [HashMap<Arc<str>, VecDeque<Waiter>>; 3],
    len: usize,
    /// Each tenant's virtual time, by class.
    served: [HashMap<Arc<str>, f64>; 3],
    /// Each class's virtual time: where the last request served started.
    clock: [f64; 3],
}

impl Line {
    /// The class and tenant whose first waiter goes next (see the module doc).
    fn next(&self) -> Option<(usize, Arc<str>)> {
        let class = (0..3).find(|&c| !self.classes[c].is_empty())?;
        let served = &self.served[class];
        self.classes[class]
            .iter()
            .filter_map(|(tenant, q)| q.front().map(|w| (tenant, w)))
            .min_by(|(ta, a), (tb, b)| {
                let va = served.get(*ta).copied().unwrap_or(0.0);
                let vb = served.get(*tb).copied().unwrap_or(0.0);
                va.total_cmp(&vb)
                    .then(b.front.cmp(&a.front))
                    .then(a.id.cmp(&b.id))
            })
            .map(|(tenant, _)| (class, tenant.clone()))
    }

    fn pop_next(&mut self) -> Option<Waiter> {
        let (class, tenant) = self.next()?;
        self.take(class, &tenant, |q| q.pop_front())
    }

    /// Takes a waiter out of `tenant`'s line in `class`, dropping the line once empty.
    fn take(
        &mut self,
        class: usize,
        tenant: &Arc<str>,
        how: impl FnOnce(&mut VecDeque<Waiter>) -> Option<Waiter>,
    ) -> Option<Waiter> {
        let lines = &mut self.classes[class];
        let q = lines.get_mut(tenant)?;
        let w = how(q);
        if q.is_empty() {
            lines.remove(tenant);
        }
        if w.is_some() {
            self.len -= 1;
        }
        w
    }

    fn push(&mut self, w: Waiter) {
        let q = self.classes[w.place.priority as usize]
            .entry(w.place.tenant.clone())
            .or_default();
        if w.front {
            q.push_front(w);
        } else {
            q.push_back(w);
        }
        self.len += 1;
    }

    /// Takes out the waiter with ticket `id` (it gave up), if it is still in line.
    fn remove(&mut self, id: u64, place: &Place) -> bool {
        self.take(place.priority as usize, &place.tenant, |q| {
            let i = q.iter().position(|w| w.id == id)?;
            q.remove(i)
        })
        .is_some()
    }

    /// The newest waiter of the lowest class below `priority`, to make room for a higher one.
    fn newest_below(&mut self, priority: Priority) -> Option<Waiter> {
        let class = (priority as usize + 1..3)
            .rev()
            .find(|&c| !self.classes[c].is_empty())?;
        let tenant = self.classes[class]
            .iter()
            .filter_map(|(t, q)| q.back().map(|w| (t, w.id)))
            .max_by_key(|(_, id)| *id)
            .map(|(t, _)| t.clone())?;
        self.take(class, &tenant, |q| q.pop_back())
    }

    /// Charges `place`'s tenant for being served (`sign` -1 takes a charge back).
    fn charge(&mut self, place: &Place, sign: f64) {
        let class = place.priority as usize;
        let v = self.served[class]
            .entry(place.tenant.clone())
            .or_insert(0.0);
        if sign > 0.0 {
            self.clock[class] = *v;
        }
        *v += sign * place.cost / place.weight.max(1e-9);
    }

    /// A tenant with nothing waiting in its class starts at the class's clock.
    fn catch_up(&mut self, place: &Place) {
        let class = place.priority as usize;
        if !self.classes[class].contains_key(&place.tenant) {
            let clock = self.clock[class];
            let v = self.served[class]
                .entry(place.tenant.clone())
                .or_insert(0.0);
            *v = v.max(clock);
        }
    }
}

#[derive(Default)]
pub struct WaitQueue {
    line: Mutex<Line>,
    /// The line's length, readable without the lock: every request's end asks whether anyone
    /// waits, and with the queue off (or empty) that must cost one atomic load. A wake-up missed
    /// in the instant a waiter joins is caught by the waiter's own periodic look.
    waiting: AtomicUsize,
    /// Waiters told it is their turn that have not yet taken their slot or left: the slots
    /// they are about to take are not free for a look.
    turns: AtomicUsize,
    next_ticket: AtomicU64,
}

/// A place in the line; leaving it (dropped on time-out or disconnect) gives up the place.
pub struct Ticket<'a> {
    queue: &'a WaitQueue,
    id: u64,
    place: Place,
    woken: oneshot::Receiver<Wake>,
    /// What the holder was told, once it was.
    told: Option<Wake>,
    /// The holder got its slot: leaving passes nothing on.
    used: bool,
}

impl Ticket<'_> {
    pub fn used(mut self) {
        self.used = true;
    }

    /// Notes that this waiter was given a turn it has not taken yet.
    fn got_turn(&mut self) {
        if self.told == Some(Wake::Turn) {
            self.queue.turns.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until told (its turn, or shed), or `until`: `None` when nothing came by then.
    pub async fn wait(&mut self, until: tokio::time::Instant) -> Option<Wake> {
        if self.told.is_none() {
            self.told = tokio::time::timeout_at(until, &mut self.woken)
                .await
                .ok()
                .and_then(Result::ok);
            self.got_turn();
        }
        self.told
    }

    /// Takes the turn if this waiter is next in line (a periodic look that finds a slot free
    /// without having been woken: a wake-up was missed, or a server joined). A waiter that is
    /// not next leaves the slot to the one that is: looks do not jump the line.
    pub fn claim_if_next(&mut self) -> bool {
        if self.told.is_some() {
            return self.told == Some(Wake::Turn);
        }
        let mut line = self.queue.line.lock();
        let Some((class, tenant)) = line.next() else {
            return false;
        };
        let mine = line.classes[class]
            .get(&tenant)
            .and_then(|q| q.front())
            .is_some_and(|w| w.id == self.id);
        if !mine {
            return false;
        }
        if let Some(w) = line.pop_next() {
            line.charge(&w.place, 1.0);
        }
        self.queue.waiting.store(line.len, Ordering::Relaxed);
        self.told = Some(Wake::Turn);
        self.got_turn();
        true
    }

    /// What the holder was told, as last seen (without looking again).
    pub fn told(&self) -> Option<Wake> {
        self.told
    }

    /// What the holder has been told so far, without waiting.
    pub fn try_wake(&mut self) -> Option<Wake> {
        if self.told.is_none() {
            self.told = self.woken.try_recv().ok();
            self.got_turn();
        }
        self.told
    }

    pub fn place(&self) -> &Place {
        &self.place
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let queue = self.queue;
        if self.told == Some(Wake::Turn) {
            queue.turns.fetch_sub(1, Ordering::Relaxed);
        }
        let mut line = queue.line.lock();
        if line.remove(self.id, &self.place) {
            queue.waiting.store(line.len, Ordering::Relaxed);
        } else {
            drop(line);
            if !self.used && self.try_wake() == Some(Wake::Turn) {
                // Woken but leaving without using the slot: pass the wake-up on.
                queue.wake_one();
            }
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

    /// Waiters given a turn that have not yet taken their slot.
    pub fn turns_given(&self) -> usize {
        self.turns.load(Ordering::Relaxed)
    }

    /// Joins the line, or `None` when `max` are already waiting and none of them is of a lower
    /// class than `place` (the newest of the lowest class is shed to make room).
    pub fn join(&self, max: usize, place: Place) -> Option<Ticket<'_>> {
        self.enter(max, place, false)
    }

    /// Goes back to the front of its tenant's line (woken, but the slot was not one it could
    /// take by the time it looked); its tenant's charge for the turn is taken back. With
    /// `pass_on`, the turn goes to the next in line (the slot was taken by someone else);
    /// without, nobody is woken (the slot is held back for others, see `admission::shares`).
    pub fn rejoin_front<'a>(&'a self, mut ticket: Ticket<'a>, pass_on: bool) -> Ticket<'a> {
        let place = ticket.place.clone();
        if !pass_on {
            ticket.used = true;
        }
        drop(ticket);
        self.line.lock().charge(&place, -1.0);
        self.enter(usize::MAX, place, true)
            .expect("no bound at the front")
    }

    /// Whether `tenant` has a request waiting in `class`.
    pub fn waits(&self, tenant: &Arc<str>, class: Priority) -> bool {
        !self.is_empty() && self.line.lock().classes[class as usize].contains_key(tenant)
    }

    fn enter(&self, max: usize, place: Place, front: bool) -> Option<Ticket<'_>> {
        let mut line = self.line.lock();
        if line.len >= max {
            let shed = line.newest_below(place.priority)?;
            let _ = shed.tx.send(Wake::Shed);
        }
        if !front {
            line.catch_up(&place);
        }
        let id = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        line.push(Waiter {
            id,
            place: place.clone(),
            front,
            tx,
        });
        self.waiting.store(line.len, Ordering::Relaxed);
        Some(Ticket {
            queue: self,
            id,
            place,
            woken: rx,
            told: None,
            used: false,
        })
    }

    /// A slot freed up: the waiter next in turn may look again.
    pub fn wake_one(&self) {
        if self.is_empty() {
            return;
        }
        let mut line = self.line.lock();
        while let Some(w) = line.pop_next() {
            if w.tx.send(Wake::Turn).is_ok() {
                line.charge(&w.place, 1.0);
                break;
            }
        }
        self.waiting.store(line.len, Ordering::Relaxed);
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

    fn place(priority: Priority, tenant: &str, weight: f64, cost: f64) -> Place {
        Place {
            priority,
            tenant: Arc::from(tenant),
            weight,
            cost,
        }
    }

    #[tokio::test]
    async fn first_come_first_served_bounded_and_leaving_passes_the_turn_on() {
        let q = WaitQueue::default();
        let a = q.join(2, Place::default()).unwrap();
        let mut b = q.join(2, Place::default()).unwrap();
        assert!(q.join(2, Place::default()).is_none(), "bounded");
        q.wake_one();
        let mut a = a;
        assert_eq!(
            a.try_wake(),
            Some(Wake::Turn),
            "the first in line is woken first"
        );
        assert!(b.try_wake().is_none());
        // `a` was woken and leaves without using the slot: `b` gets the turn.
        drop(a);
        assert_eq!(b.try_wake(), Some(Wake::Turn));
        b.used();
        assert!(q.is_empty());
        // A used ticket passes nothing on.
        let mut d = q.join(2, Place::default()).unwrap();
        let e = q.join(2, Place::default()).unwrap();
        q.wake_one();
        assert_eq!(d.try_wake(), Some(Wake::Turn));
        d.used();
        assert_eq!(q.len(), 1, "e still waits");
        drop(e);
        // A waiter that gives up (time-out) just leaves the line.
        let c = q.join(1, Place::default()).unwrap();
        drop(c);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn higher_classes_leave_first_and_a_full_line_sheds_the_newest_lowest() {
        let q = WaitQueue::default();
        let batch1 = q.join(3, place(Priority::Batch, "b", 1.0, 1.0)).unwrap();
        let mut batch2 = q.join(3, place(Priority::Batch, "b", 1.0, 1.0)).unwrap();
        let standard = q.join(3, place(Priority::Standard, "s", 1.0, 1.0)).unwrap();
        // Full: a critical request sheds the newest batch waiter; another batch finds it full.
        let critical = q.join(3, place(Priority::Critical, "c", 1.0, 1.0)).unwrap();
        assert_eq!(batch2.try_wake(), Some(Wake::Shed));
        assert!(q.join(3, place(Priority::Batch, "b", 1.0, 1.0)).is_none());
        assert_eq!(q.len(), 3);
        let mut waiting = vec![
            ("critical", critical),
            ("standard", standard),
            ("batch", batch1),
        ];
        let mut order = Vec::new();
        for _ in 0..3 {
            q.wake_one();
            let i = waiting
                .iter_mut()
                .position(|(_, t)| t.try_wake() == Some(Wake::Turn))
                .expect("someone is woken");
            let (name, ticket) = waiting.remove(i);
            ticket.used();
            order.push(name);
        }
        assert_eq!(order, ["critical", "standard", "batch"]);
        drop(batch2);
        assert!(q.is_empty(), "a shed waiter passes no turn on");
    }

    #[tokio::test]
    async fn within_a_class_tenants_share_by_weight_and_estimated_tokens() {
        let q = WaitQueue::default();
        // Tenant a (weight 3) and b (weight 1) each queue 40 requests of 100 tokens; a third
        // tenant's requests cost 400 tokens each.
        let mut tickets = Vec::new();
        for _ in 0..40 {
            tickets.push((
                "a",
                q.join(1000, place(Priority::Standard, "a", 3.0, 100.0))
                    .unwrap(),
            ));
            tickets.push((
                "b",
                q.join(1000, place(Priority::Standard, "b", 1.0, 100.0))
                    .unwrap(),
            ));
            tickets.push((
                "c",
                q.join(1000, place(Priority::Standard, "c", 1.0, 400.0))
                    .unwrap(),
            ));
        }
        for _ in 0..40 {
            q.wake_one();
        }
        let mut served = HashMap::new();
        for (name, t) in tickets.iter_mut() {
            if t.try_wake() == Some(Wake::Turn) {
                *served.entry(*name).or_insert(0) += 1;
            }
        }
        // Shares of tokens 3 : 1 : 1, so requests 3 : 1 : 1/4.
        let (a, b, c) = (
            served["a"],
            served["b"],
            served.get("c").copied().unwrap_or(0),
        );
        assert_eq!(a + b + c, 40);
        assert!((27..=29).contains(&a), "{served:?}");
        assert!((8..=10).contains(&b), "{served:?}");
        assert!((2..=3).contains(&c), "{served:?}");
    }

    #[tokio::test]
    async fn an_idle_tenant_banks_no_credit() {
        let q = WaitQueue::default();
        // a is served alone for a while...
        for _ in 0..10 {
            let mut t = q
                .join(100, place(Priority::Standard, "a", 1.0, 1.0))
                .unwrap();
            q.wake_one();
            assert_eq!(t.try_wake(), Some(Wake::Turn));
            t.used();
        }
        // ...then b arrives: they alternate, b does not get ten turns in a row.
        let mut a: Vec<_> = (0..4)
            .map(|_| {
                q.join(100, place(Priority::Standard, "a", 1.0, 1.0))
                    .unwrap()
            })
            .collect();
        let mut b: Vec<_> = (0..4)
            .map(|_| {
                q.join(100, place(Priority::Standard, "b", 1.0, 1.0))
                    .unwrap()
            })
            .collect();
        for _ in 0..4 {
            q.wake_one();
        }
        let turns = |ts: &mut Vec<Ticket<'_>>| {
            ts.iter_mut()
                .filter_map(|t| t.try_wake())
                .filter(|w| *w == Wake::Turn)
                .count()
        };
        let (a_served, b_served) = (turns(&mut a), turns(&mut b));
        assert_eq!((a_served, b_served), (2, 2), "they alternate");
    }
}
