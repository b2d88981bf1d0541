//! What the operator chose to see (selection, sort, help) and what each key does; no I/O, so
//! it is tested without a terminal.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use mvllm_router::status::{FleetStatus, ServerState, ServerStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// As in the config file.
    #[default]
    Config,
    /// Busiest first.
    Load,
    /// Slowest time to first token (p95) first.
    Latency,
    /// Most errors first.
    Errors,
    /// Unhealthy, then draining, then healthy.
    Health,
}

impl Sort {
    pub fn next(self) -> Sort {
        match self {
            Sort::Config => Sort::Load,
            Sort::Load => Sort::Latency,
            Sort::Latency => Sort::Errors,
            Sort::Errors => Sort::Health,
            Sort::Health => Sort::Config,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::Config => "config order",
            Sort::Load => "load",
            Sort::Latency => "TTFT p95",
            Sort::Errors => "errors",
            Sort::Health => "health",
        }
    }
}

/// What a key asks the dashboard to do beyond changing the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// Drain (true) or undrain (false) the server with this URL.
    SetDraining(String, bool),
}

#[derive(Debug, Clone, Default)]
pub struct ViewState {
    /// The selected server, by URL, so that it stays selected when the order changes.
    pub selected: Option<String>,
    pub sort: Sort,
    pub help: bool,
    pub color: bool,
    pub show_models: bool,
    /// Where the router listens, for the title (the in-process dashboard knows it).
    pub address: String,
    /// A one-line answer to the last action ("draining ...", or an error), shown in the footer.
    pub flash: Option<String>,
}

impl ViewState {
    pub fn new(address: impl Into<String>, color: bool, show_models: bool) -> Self {
        ViewState {
            address: address.into(),
            color,
            show_models,
            ..ViewState::default()
        }
    }

    /// The servers in display order.
    pub fn ordered<'a>(&self, status: &'a FleetStatus) -> Vec<&'a ServerStatus> {
        let mut servers: Vec<&ServerStatus> = status.servers.iter().collect();
        let desc = |a: f64, b: f64| b.total_cmp(&a);
        match self.sort {
            Sort::Config => {}
            Sort::Load => servers.sort_by(|a, b| desc(a.utilisation(), b.utilisation())),
            Sort::Latency => {
                servers.sort_by(|a, b| desc(a.ttft_p95.unwrap_or(-1.0), b.ttft_p95.unwrap_or(-1.0)))
            }
            Sort::Errors => servers.sort_by_key(|s| std::cmp::Reverse(s.errors_last_minute)),
            Sort::Health => servers.sort_by_key(|s| match s.state {
                ServerState::Unhealthy => 0,
                ServerState::Draining => 1,
                ServerState::Healthy => 2,
            }),
        }
        servers
    }

    /// The index of the selected server in display order (the first one if none is chosen or
    /// it is gone).
    pub fn selected_index(&self, ordered: &[&ServerStatus]) -> Option<usize> {
        if ordered.is_empty() {
            return None;
        }
        Some(
            self.selected
                .as_deref()
                .and_then(|url| ordered.iter().position(|s| s.url == url))
                .unwrap_or(0),
        )
    }

    pub fn on_key(&mut self, key: KeyEvent, status: &FleetStatus) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if self.help {
            // Any key closes the help; `q` still quits.
            self.help = false;
            return if key.code == KeyCode::Char('q') {
                Action::Quit
            } else {
                Action::None
            };
        }
        let ordered = self.ordered(status);
        let index = self.selected_index(&ordered);
        let mut select = |i: usize| {
            if let Some(s) = ordered.get(i) {
                self.selected = Some(s.url.clone());
            }
        };
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                return Action::Quit;
            }
            KeyCode::Down | KeyCode::Char('j') => {
                if let Some(i) = index {
                    select((i + 1).min(ordered.len() - 1));
                }
            }
            KeyCode::Up | KeyCode::Char('k') => {
                if let Some(i) = index {
                    select(i.saturating_sub(1));
                }
            }
            KeyCode::PageDown => {
                if let Some(i) = index {
                    select((i + 10).min(ordered.len() - 1));
                }
            }
            KeyCode::PageUp => {
                if let Some(i) = index {
                    select(i.saturating_sub(10));
                }
            }
            KeyCode::Home | KeyCode::Char('g') => select(0),
            KeyCode::End | KeyCode::Char('G') => select(ordered.len().saturating_sub(1)),
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('m') => self.show_models = !self.show_models,
            KeyCode::Char('?') | KeyCode::Char('h') => self.help = true,
            KeyCode::Char('d') => {
                if let Some(s) = index.and_then(|i| ordered.get(i)) {
                    let drain = !s.draining;
                    return Action::SetDraining(s.url.clone(), drain);
                }
            }
            _ => {}
        }
        Action::None
    }
}
