//! The server table's columns: what each shows, how wide, and which go first when the terminal
//! is narrow.

use mvllm_router::status::{ServerState, ServerStatus};
use ratatui::style::Style;
use ratatui::widgets::Cell;

use super::Theme;
use crate::format;

/// One column of the server table.
pub(super) struct Column {
    pub(super) title: &'static str,
    pub(super) width: u16,
    /// Lower is kept longer when the terminal is narrow.
    pub(super) priority: u8,
    pub(super) cell: fn(&ServerStatus, Theme) -> Cell<'static>,
}

fn base_columns() -> Vec<Column> {
    vec![
        Column {
            title: "SERVER",
            width: 16,
            priority: 0,
            cell: |_, _| Cell::new(""), // filled in with the width it gets
        },
        Column {
            title: "STATE",
            width: 5,
            priority: 0,
            cell: |s, t| match s.state {
                ServerState::Healthy => Cell::new("up").style(t.good()),
                ServerState::Draining => Cell::new("drain").style(t.warn()),
                ServerState::Unhealthy => Cell::new("DOWN").style(t.bad()),
            },
        },
        Column {
            title: "LOAD",
            width: 11,
            priority: 1,
            cell: |s, t| {
                let u = s.utilisation();
                Cell::new(format!(
                    "{} {:>4}",
                    format::bar(u, 6),
                    format::percent(Some(u))
                ))
                .style(t.level(u))
            },
        },
        Column {
            title: "INFL/CAP",
            width: 8,
            priority: 2,
            cell: |s, _| Cell::new(format!("{}/{}", s.in_flight, s.capacity)),
        },
        Column {
            title: "RUN/WAIT",
            width: 8,
            priority: 3,
            cell: |s, t| {
                let style = if s.waiting.unwrap_or(0.0) > 0.0 {
                    t.warn()
                } else {
                    Style::new()
                };
                Cell::new(format!(
                    "{}/{}",
                    format::count(s.running),
                    format::count(s.waiting)
                ))
                .style(style)
            },
        },
        Column {
            title: "KV",
            width: 4,
            priority: 4,
            cell: |s, t| {
                let style = s.kv_usage.map_or(Style::new(), |kv| match kv {
                    kv if kv > 0.95 => t.bad(),
                    kv if kv > 0.8 => t.warn(),
                    _ => Style::new(),
                });
                Cell::new(format::percent(s.kv_usage)).style(style)
            },
        },
        Column {
            title: "REQ/S",
            width: 5,
            priority: 5,
            cell: |s, _| Cell::new(format::rate(s.requests_per_second)),
        },
        Column {
            title: "TTFT 50/95",
            width: 11,
            priority: 6,
            cell: |s, _| {
                Cell::new(format!(
                    "{}/{}",
                    format::latency(s.ttft_p50),
                    format::latency(s.ttft_p95)
                ))
            },
        },
        Column {
            title: "ERR",
            width: 4,
            priority: 7,
            cell: |s, t| {
                let style = if s.errors_last_minute > 0 {
                    t.bad()
                } else {
                    Style::new()
                };
                Cell::new(s.errors_last_minute.to_string()).style(style)
            },
        },
        Column {
            title: "TOK/S",
            width: 6,
            priority: 8,
            cell: |s, _| Cell::new(s.output_tokens_per_second.map_or("-".into(), format::rate)),
        },
        Column {
            title: "HIT P/A",
            width: 9,
            priority: 10,
            cell: |s, t| {
                // The prefix index's predicted hit rate next to the one the server reported: far
                // apart means the index is wrong about this server.
                let off = matches!((s.predicted_hit_rate, s.actual_hit_rate), (Some(p), Some(a)) if p - a > 0.2);
                Cell::new(format!(
                    "{}/{}",
                    format::percent(s.predicted_hit_rate),
                    format::percent(s.actual_hit_rate)
                ))
                .style(if off { t.warn() } else { Style::new() })
            },
        },
        Column {
            title: "AGE",
            width: 5,
            priority: 9,
            cell: |s, t| match (s.scrape_age_seconds, &s.scrape_error) {
                (_, Some(_)) => Cell::new("err").style(t.bad()),
                (None, None) => Cell::new("-").style(t.dim()),
                (Some(a), None) => {
                    Cell::new(format::age(a)).style(if a > 5.0 { t.warn() } else { t.dim() })
                }
            },
        },
    ]
}

/// The table's columns: the base ones, the server roles when the fleet disaggregates, what its
/// KV events say a server caches when some server publishes them, and the models if asked.
pub(super) fn columns(show_models: bool, show_roles: bool, show_cache: bool) -> Vec<Column> {
    let mut cols = base_columns();
    if show_cache {
        cols.push(Column {
            title: "CACHE",
            width: 9,
            priority: 10,
            cell: |s, t| match (s.cache_state.as_str(), s.cached_blocks) {
                ("exact", Some(n)) => {
                    Cell::new(format!("= {}", format::rate(n as f64))).style(t.good())
                }
                (_, Some(_)) => Cell::new("~ approx").style(t.warn()),
                _ => Cell::new("-").style(t.dim()),
            },
        });
    }
    if show_roles {
        // Prefill/decode disaggregation: which servers compute prompts and which stream tokens.
        cols.insert(
            2,
            Column {
                title: "ROLE",
                width: 7,
                priority: 1,
                cell: |s, t| match s.role.as_str() {
                    "both" => Cell::new("both").style(t.dim()),
                    role => Cell::new(role.to_string()),
                },
            },
        );
    }
    if show_models {
        cols.push(Column {
            title: "MODELS",
            width: 14,
            priority: 11,
            cell: |s, _| Cell::new(s.models.join(", ")),
        });
    }
    cols
}

/// The columns that fit in `width`, most important first, in display order; the first
/// (server) column takes what is left.
pub(super) fn fit_columns(all: Vec<Column>, width: u16) -> (Vec<Column>, u16) {
    let mut by_priority: Vec<usize> = (0..all.len()).collect();
    by_priority.sort_by_key(|&i| all[i].priority);
    let mut keep = vec![false; all.len()];
    let mut used = 0u16;
    for i in by_priority {
        let extra = all[i].width + u16::from(used > 0);
        if used + extra <= width || all[i].priority == 0 {
            used += extra;
            keep[i] = true;
        }
    }
    let spare = width.saturating_sub(used);
    let kept: Vec<Column> = all
        .into_iter()
        .zip(keep)
        .filter_map(|(c, k)| k.then_some(c))
        .collect();
    (kept, spare)
}
