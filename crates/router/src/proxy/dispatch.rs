//! Choosing a server for a request and sending it there, again elsewhere while the retry rules
//! allow: the candidates (load, scrape, what KV events say each holds), the policy's pick, one
//! attempt, and what a failed attempt means for the next.

use std::sync::Arc;

use axum::response::Response;

use super::attempt;
use super::errors::ProxyError;
use super::meta::RequestMeta;
use super::retries::retry_allowed;
use crate::fleet::Server;
use crate::fleet::events::EventKind;
use crate::metrics::labels::ReasonLabels;
use crate::routing::RouteRequest;
use crate::routing::prefix_index::Prediction;
use crate::state::AppState;

/// Where a request's attempts may go and how the server is chosen.
pub(crate) struct Dispatch<'a> {
    /// Servers that could take the request (healthiness and retries are checked apart).
    pub could_serve: &'a (dyn Fn(&Server) -> bool + Sync),
    /// Chooses among them (the fleet's policy, or load alone for a decode leg). The fleet's
    /// policy is always the one told where prompts went (its prefix index).
    pub choose: &'a dyn crate::routing::Policy,
    /// Check the fleet policy's prefix prediction against the cached tokens the answer reports
    /// (not for a decode leg: its server reports the transferred KV as cached).
    pub predict: bool,
}

/// Sends the request to a server chosen among those `d` allows, retrying on others while the
/// retry rules allow it. `Err(None)`: no server could be tried at all.
pub(crate) async fn dispatch(
    app: &AppState,
    request: &attempt::Request<'_>,
    route: &RouteRequest<'_>,
    d: &Dispatch<'_>,
) -> Result<Response, Option<ProxyError>> {
    let fleet = &app.fleet;
    let view = request.view;
    let (settings, servers, policy) = (&view.settings, &view.servers, &view.policy);
    let max_age = view.metrics_max_age();
    let mut tried: Vec<usize> = Vec::new();
    let mut chains = crate::fleet::kv_state::PromptChains::new(
        request.meta.prompt_token_ids.as_deref(),
        request.meta.model.as_deref(),
    );
    let mut timeouts = 0;
    let mut last_error = None;
    for attempt in 0..=settings.max_retries {
        let (choices, panic) = eligible(servers, &tried, d.could_serve);
        if panic {
            app.telemetry.panic_routed.inc();
            fleet.events.push(
                EventKind::Unhealthy,
                None,
                "every server is out: trying ejected servers that still pass health checks",
            );
        }
        let mut candidates: Vec<_> = choices
            .iter()
            .map(|&i| servers[i].candidate(max_age))
            .collect();
        for (c, &i) in candidates.iter_mut().zip(&choices) {
            c.exact_tokens = chains.held_tokens(&servers[i].kv);
        }
        policy.assess(route, &mut candidates);
        let Some(choice) = d.choose.pick(route, &candidates, &mut rand::rng()) else {
            break;
        };
        let index = choices[choice];
        tried.push(index);
        let server = &servers[index];
        policy.routed(route, &candidates[choice]);
        chains.routed(&server.kv);
        let prediction = route.prompt.filter(|_| d.predict).map(|p| Prediction {
            prompt_tokens: route.prompt_tokens,
            cached_tokens: candidates[choice].cached_tokens,
            last_block: p.blocks.last().copied(),
        });
        server.counters.count_decision(
            &app.telemetry.decisions,
            server.url_shared(),
            d.choose.kind().name(),
        );
        // A retry is worth deciding on only if there is another server to retry on.
        let may_retry = attempt < settings.max_retries
            && (choices.len() > 1 || !eligible(servers, &tried, d.could_serve).0.is_empty());
        let outcome = attempt::run(app, server, request, attempt, may_retry, prediction).await;
        let cause = match outcome {
            attempt::Outcome::Done(r) => {
                if attempt > 0 && r.is_ok() {
                    app.telemetry.failovers.inc();
                }
                return r.map_err(Some);
            }
            attempt::Outcome::Retry(cause) => cause,
        };
        app.telemetry
            .retries
            .get_or_create(&ReasonLabels {
                reason: cause.label(),
            })
            .inc();
        app.telemetry.live.lock().record_retry();
        fleet.events.push(
            EventKind::Retry,
            Some(server.url()),
            format!("retried elsewhere: {}", cause.describe()),
        );
        let error = cause.error();
        if matches!(cause, attempt::RetryCause::Timeout) {
            timeouts += 1;
            if timeouts > settings.timeout_retries {
                return Err(Some(error));
            }
        }
        last_error = Some(error);
        // Status retries were charged to the budget before the answer was given up (so that a
        // refused retry returns the server's own answer); others ask now.
        if !may_retry
            || (!matches!(cause, attempt::RetryCause::Status(_)) && !retry_allowed(app, settings))
        {
            break;
        }
    }
    Err(last_error)
}

/// The answer when no server could be tried.
pub(crate) fn no_server(meta: &RequestMeta, pinned: bool) -> ProxyError {
    if pinned {
        return ProxyError::NoServerAvailable(
            "the server holding this response is unavailable".into(),
        );
    }
    ProxyError::NoServerAvailable(match &meta.model {
        Some(m) => format!("no healthy server serves `{m}`"),
        None => "no healthy server".into(),
    })
}

/// The servers a request may go to now, not yet tried: those taking requests, or, when every
/// server is out, panic routing (as Envoy's): rather than refusing everyone, the ones ejected
/// for failing requests whose health checks still pass. A server failing half its requests
/// serves half the clients; an empty fleet serves none. The flag says it came to panic routing.
pub(crate) fn eligible(
    servers: &[Arc<Server>],
    tried: &[usize],
    could_serve: &dyn Fn(&Server) -> bool,
) -> (Vec<usize>, bool) {
    let usable = |i: &usize, ok: &dyn Fn(&Server) -> bool| {
        let s = &servers[*i];
        ok(s) && !tried.contains(i) && could_serve(s)
    };
    let taking: Vec<usize> = (0..servers.len())
        .filter(|i| usable(i, &|s| s.takes_requests()))
        .collect();
    if !taking.is_empty() {
        return (taking, false);
    }
    let panic: Vec<usize> = (0..servers.len())
        .filter(|i| {
            usable(i, &|s| {
                !s.draining.load(std::sync::atomic::Ordering::Relaxed) && s.ejected_but_reachable()
            })
        })
        .collect();
    let panicking = !panic.is_empty();
    (panic, panicking)
}
