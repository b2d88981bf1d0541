//! Whether another attempt may be made, and what counts as a failure in the live figures.

use axum::http::StatusCode;

use crate::config::Settings;
use crate::metrics::labels::ReasonLabels;
use crate::state::AppState;

/// An answer that counts as an error in the live figures: the server's or the router's failure,
/// or too busy to answer. Other 4xx are the client's and do not count.
pub(crate) fn is_failure(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// Asks the retry budget for one more attempt; a refusal is counted.
pub(crate) fn retry_allowed(app: &AppState, s: &Settings) -> bool {
    let ok = app
        .admission
        .retry_budget
        .try_retry(s.retry_budget_ratio, s.retry_budget_min_per_second);
    if !ok {
        app.telemetry
            .retries
            .get_or_create(&ReasonLabels {
                reason: "budget_exhausted",
            })
            .inc();
    }
    ok
}
