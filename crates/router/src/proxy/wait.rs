//! The wait for a free slot when the queue is on (`queue_size > 0`), and the headroom kept free
//! for tenants under their share (see [`crate::admission::shares`]).
//!
//! Why its own file: who may take which free slot is policy the forwarding path only asks
//! about. The line itself (classes, fair shares, shedding) is [`crate::admission::wait_queue`];
//! this is the request's side of it: when to join, when a slot is its to take, when to give up.

use std::sync::Arc;

use tokio::time::Instant;

use super::errors::ProxyError;
use crate::admission::shares::{self, Activity, Claimant};
use crate::admission::tenants::ChargeSlot;
use crate::admission::wait_queue::{Place, Wake};
use crate::config::Priority;
use crate::fleet::{FleetView, Server};
use crate::state::AppState;

/// A request's tenant and its place in line (worked out once), when headroom is in play.
struct Who {
    activity: Arc<Activity>,
    weight: f64,
    place: Place,
}

/// Waits, if it must, for a slot on a server that `could_serve` the request: `Ok(true)` when it
/// waited (or took headroom) and must take a server with a free slot, `Ok(false)` when no wait
/// was needed. From then on the slot counts in the request's tenant's share until its answer
/// ends.
pub(super) async fn for_slot(
    app: &AppState,
    view: &mut Arc<FleetView>,
    could_serve: &(dyn Fn(&Server) -> bool + Sync),
    place: &(dyn Fn() -> Place + Sync),
    charge: &ChargeSlot,
) -> Result<bool, ProxyError> {
    let settings = &view.settings;
    let who = if settings.queue_size > 0 && settings.share_headroom > 0.0 {
        charge.with(|c| Who {
            activity: c.activity().clone(),
            weight: c.weight(),
            place: place(),
        })
    } else {
        None
    };
    let taken = wait(app, view, could_serve, place, who.as_ref()).await?;
    if let Some(who) = &who {
        let held = app.admission.shares.hold(&who.activity, who.place.priority);
        charge.with(|c| c.hold(held));
    }
    Ok(taken)
}

/// The free slots on servers that could serve the request.
fn free_slots(view: &FleetView, could_serve: &(dyn Fn(&Server) -> bool + Sync)) -> usize {
    view.servers
        .iter()
        .filter(|s| could_serve(s) && s.takes_requests())
        .map(|s| (s.capacity() as usize).saturating_sub(s.in_flight()))
        .sum()
}

/// The free slots held back from this request (`None`: headroom is not in play for it).
fn held_back(
    app: &AppState,
    view: &FleetView,
    could_serve: &(dyn Fn(&Server) -> bool + Sync),
    who: Option<&Who>,
) -> Option<usize> {
    let who = who?;
    let slots = view
        .servers
        .iter()
        .filter(|s| could_serve(s) && s.takes_requests())
        .map(|s| s.capacity() as usize)
        .sum();
    shares::held_back(view.settings.share_headroom, slots, || {
        let claimant = Claimant {
            tenant: &who.activity,
            weight: who.weight,
            class: who.place.priority,
        };
        let tenants = app.admission.tenants.load();
        let all = tenants.all().map(|t| Claimant {
            tenant: &t.activity,
            weight: t.weight,
            class: t.priority,
        });
        app.admission.shares.may_use_headroom(all, claimant, slots)
    })
}

async fn wait(
    app: &AppState,
    view: &mut Arc<FleetView>,
    could_serve: &(dyn Fn(&Server) -> bool + Sync),
    place: &(dyn Fn() -> Place + Sync),
    who: Option<&Who>,
) -> Result<bool, ProxyError> {
    let settings = view.settings.clone();
    let queue = &app.admission.wait_queue;
    let free = |v: &FleetView| {
        v.servers
            .iter()
            .any(|s| could_serve(s) && s.has_free_slot())
    };
    if settings.queue_size == 0 {
        return Ok(false);
    }
    let held = held_back(app, view, could_serve, who);
    // Room for this request: a free slot, beyond the headroom held back from it and the slots
    // other waiters were told to take.
    let room = |v: &FleetView, held: Option<usize>, others: usize| match held {
        None | Some(0) => free(v),
        Some(n) => free_slots(v, could_serve) > n + others,
    };
    if queue.is_empty() && room(view, held, queue.turns_given()) {
        return Ok(false);
    }
    // Under its share while others are held back: it takes a free slot without waiting behind
    // them (unless its own tenant already waits in its class: first come first served).
    if let (Some(0), Some(who)) = (held, who)
        && free_slots(view, could_serve) > queue.turns_given()
        && !queue.waits(&who.place.tenant, who.place.priority)
    {
        return Ok(true);
    }
    // Nothing healthy could ever serve it: do not wait for nothing.
    if !view
        .servers
        .iter()
        .any(|s| could_serve(s) && s.takes_requests())
    {
        return Ok(false);
    }
    // Lower classes give up sooner: batch waits half of `queue_timeout`, critical twice it.
    let place = who.map_or_else(place, |w| w.place.clone());
    let patience = match place.priority {
        Priority::Critical => 2.0,
        Priority::Standard => 1.0,
        Priority::Batch => 0.5,
    };
    let deadline = Instant::now() + settings.queue_timeout.mul_f64(patience);
    let mut ticket = queue
        .join(settings.queue_size, place)
        .ok_or(ProxyError::Overloaded("the wait queue is full"))?;
    loop {
        // Woken when a slot frees up; a periodic look catches servers that joined or recovered.
        let look = (Instant::now() + std::time::Duration::from_millis(100)).min(deadline);
        let told = ticket.wait(look).await;
        if told == Some(Wake::Shed) {
            return Err(ProxyError::Shed(ticket.place().priority.name()));
        }
        // Nothing was decided from the view yet: a request leaving the line routes on the
        // fleet as it is then (servers may have joined while it waited).
        *view = app.fleet.view();
        let held = held_back(app, view, could_serve, who);
        // A slot is taken in turn: when woken, or on a look when this request is next in line
        // and a slot is free beyond those about to be taken by waiters already woken (and
        // beyond the headroom held back from it).
        let turn = told == Some(Wake::Turn)
            || (free_slots(view, could_serve) > queue.turns_given() + held.unwrap_or(0)
                && ticket.claim_if_next());
        let others = queue
            .turns_given()
            .saturating_sub(usize::from(ticket.told() == Some(Wake::Turn)));
        if turn && room(view, held, others) {
            ticket.used();
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Err(ProxyError::Overloaded(
                "no slot freed up within queue_timeout",
            ));
        }
        if ticket.told() == Some(Wake::Turn) {
            // Woken, but the slot was not one this request can use: keep this request's place
            // at the front. A slot taken by someone else passes the turn on; one held back as
            // headroom stays free, and nobody else in line is woken for it.
            let pass_on = !free(view);
            ticket = queue.rejoin_front(ticket, pass_on);
        }
    }
}
