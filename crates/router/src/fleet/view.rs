//! One consistent picture of the fleet: its servers, the settings, the routing policy and the
//! models' tokenizers, as one value.
//!
//! Why: a request reads the server list, several settings and the policy along its path; read
//! one by one, a reload landing in between could give it the old servers with the new retry
//! rules, or the new policy with the old servers. The fleet swaps a whole [`FleetView`] at once
//! (one `ArcSwap`), a request takes it once and passes it down, and so sees one configuration
//! from its first byte to its last (pingora keeps backends and health under one snapshot for
//! the same reason).

use std::sync::Arc;
use std::time::Duration;

use super::server::Server;
use crate::config::Settings;
use crate::routing::Policy;
use mvllm_tokenizer::ModelTokenizer;

/// Each model's tokenizer, by name, with the directory it came from.
pub type Tokenizers = Vec<(String, std::path::PathBuf, Arc<ModelTokenizer>)>;

/// The fleet as one request sees it. The servers are shared (their health and load are live);
/// which servers there are, the settings and the policy are fixed for the view's life.
pub struct FleetView {
    pub servers: Vec<Arc<Server>>,
    pub settings: Arc<Settings>,
    /// The routing policy in force, with its state about each server.
    pub policy: Arc<Box<dyn Policy>>,
    /// Chooses decode servers for disaggregated requests: by load alone (`adaptive`).
    pub decode_policy: Arc<Box<dyn Policy>>,
    /// Each configured model's tokenizer (`[models."NAME"] tokenizer`), loaded.
    pub tokenizers: Arc<Tokenizers>,
    /// Some server has the role `prefill` or `decode`: requests may take two legs.
    pub split_roles: bool,
}

impl FleetView {
    /// `model`'s tokenizer, if one is configured and loaded.
    pub fn tokenizer(&self, model: &str) -> Option<&Arc<ModelTokenizer>> {
        self.tokenizers
            .iter()
            .find(|(m, _, _)| m == model)
            .map(|(_, _, t)| t)
    }

    /// How old a scrape may be and still steer routing.
    pub fn metrics_max_age(&self) -> Duration {
        let s = &self.settings;
        (s.metrics_interval * 3).max(s.metrics_timeout + s.metrics_interval)
    }

    /// Every model some server serves (healthy or not), sorted.
    pub fn all_models(&self) -> Vec<String> {
        let mut all: Vec<String> = self.servers.iter().flat_map(|s| s.model_ids()).collect();
        all.sort();
        all.dedup();
        all
    }
}
