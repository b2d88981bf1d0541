//! What a `bench routing` cell's clients do besides the workload: think between turns, and other
//! clients sending the servers work the router never sees.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::completion_body;
use crate::client::{http_client, stream_post};

/// The prompt length of an "other client" request.
pub const OTHER_CLIENT_TOKENS: usize = 1500;

/// What a cell's clients do besides the workload.
#[derive(Debug, Clone, Copy)]
pub(super) struct Traffic {
    pub(super) think_time: f64,
    /// Requests per second to each server from other clients (0: none).
    pub(super) other_clients: f64,
}

/// Sends unrelated prompts straight to every server at `rate` per second each (Poisson), until
/// the returned handle is dropped.
pub(super) fn other_clients(
    urls: &[String],
    rate: f64,
    seed: u64,
) -> Option<tokio::task::JoinHandle<()>> {
    if rate <= 0.0 {
        return None;
    }
    let urls = urls.to_vec();
    Some(tokio::spawn(async move {
        let client = http_client();
        let mut rng = StdRng::seed_from_u64(seed);
        let rate = rate * urls.len() as f64;
        loop {
            let wait = -(1.0 - rng.random::<f64>()).ln() / rate;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            let url = format!("{}/v1/completions", urls[rng.random_range(0..urls.len())]);
            let body = completion_body(OTHER_CLIENT_TOKENS, 1, rng.random());
            let client = client.clone();
            tokio::spawn(async move {
                let _ = stream_post(&client, &url, body).await;
            });
        }
    }))
}
