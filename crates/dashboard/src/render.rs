//! Drawing one frame from a [`FleetStatus`]: a pure function of the status, the view and the
//! clock, so snapshot tests draw it on ratatui's `TestBackend` exactly as a terminal shows it.
//!
//! Layout, top to bottom: a title line; the fleet summary with sparklines; the server table
//! (columns are dropped by priority when the terminal is narrow, rows scroll to keep the
//! selection visible); the selected server in full; recent events, newest first; the keys.
//! Colour only ever repeats what the text already says (`up`/`drain`/`DOWN`, numbers), so the
//! screen reads the same with `NO_COLOR`.

use mvllm_router::fleet::events::{Event, EventKind};
use mvllm_router::status::{FleetStatus, ServerState, ServerStatus};
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState};

use crate::format;
use crate::view::ViewState;

mod columns;
use columns::{columns, fit_columns};

/// Styles that carry meaning, or none at all without colour.
#[derive(Clone, Copy)]
struct Theme {
    color: bool,
}

impl Theme {
    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }
    fn good(self) -> Style {
        self.fg(Color::Green)
    }
    fn warn(self) -> Style {
        self.fg(Color::Yellow)
    }
    fn bad(self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }
    fn dim(self) -> Style {
        self.fg(Color::DarkGray)
    }
    fn accent(self) -> Style {
        self.fg(Color::Cyan)
    }
    fn bold(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }
    /// Green below 70%, yellow below 90%, red above.
    fn level(self, share: f64) -> Style {
        if share >= 0.9 {
            self.bad()
        } else if share >= 0.7 {
            self.warn()
        } else {
            self.good()
        }
    }
}

const HIGHLIGHT: &str = "▶ ";

pub fn draw(frame: &mut Frame, status: &FleetStatus, view: &ViewState, now: f64) {
    let theme = Theme { color: view.color };
    let area = frame.area();
    let events_height = match area.height {
        0..22 => 0,
        22..30 => 5,
        30..44 => 7,
        _ => 10,
    };
    let summary_height = if area.height < 16 { 0 } else { 5 };
    let [title, summary, servers, detail, events, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(summary_height),
        Constraint::Min(4),
        Constraint::Length(1),
        Constraint::Length(events_height),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_title(frame, title, status, view, theme);
    if summary_height > 0 {
        draw_summary(frame, summary, status, theme);
    }
    let ordered = view.ordered(status);
    let selected = view.selected_index(&ordered);
    draw_servers(frame, servers, &ordered, selected, view, theme);
    draw_detail(
        frame,
        detail,
        selected.and_then(|i| ordered.get(i).copied()),
        theme,
    );
    if events_height > 0 && !status.tenants.is_empty() {
        // The tenants' table is 58 columns wide; the events take the rest (40 at least).
        let [left, right] =
            Layout::horizontal([Constraint::Min(40), Constraint::Length(58)]).areas(events);
        draw_events(frame, left, &status.events, now, theme);
        draw_tenants(frame, right, &status.tenants, theme);
    } else if events_height > 0 {
        draw_events(frame, events, &status.events, now, theme);
    }
    draw_footer(frame, footer, view, theme);
    if view.help {
        draw_help(frame, area, theme);
    }
}

fn draw_title(frame: &mut Frame, area: Rect, status: &FleetStatus, view: &ViewState, t: Theme) {
    let s = &status.summary;
    let health = if s.healthy_servers == s.total_servers {
        t.good()
    } else if s.healthy_servers == 0 {
        t.bad()
    } else {
        t.warn()
    };
    let sep = || Span::styled(" │ ", t.dim());
    let mut spans = vec![
        Span::styled(
            format!(" mvllm {}", status.version),
            t.bold().patch(t.accent()),
        ),
        sep(),
    ];
    if !view.address.is_empty() {
        spans.push(Span::raw(view.address.clone()));
        spans.push(sep());
    }
    spans.extend([
        Span::raw(format!("policy {}", status.policy)),
        sep(),
        Span::raw(format!("up {}", format::uptime(status.uptime_seconds))),
        sep(),
        Span::styled(
            format!("{}/{} healthy", s.healthy_servers, s.total_servers),
            health,
        ),
    ]);
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_summary(frame: &mut Frame, area: Rect, status: &FleetStatus, t: Theme) {
    let s = &status.summary;
    let block = Block::new()
        .borders(Borders::ALL)
        .border_style(t.dim())
        .title(" Fleet ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [figures, charts] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(inner);
    let value = |x: String| Span::styled(x, t.bold());
    let label = |x: &'static str| Span::styled(x, t.dim());
    let errors = if s.error_rate > 0.0 {
        t.bad()
    } else {
        t.bold()
    };
    let mut figures_line = vec![
        label("req/s "),
        value(format::rate(s.requests_per_second)),
        label("  tok/s "),
        value(s.output_tokens_per_second.map_or("-".into(), format::rate)),
        label("  infl "),
        value(s.in_flight.to_string()),
        label("  TTFT p50 "),
        value(format::latency(s.ttft_p50)),
        label(" p99 "),
        value(format::latency(s.ttft_p99)),
        label("  err "),
        Span::styled(format!("{:.1}%", s.error_rate * 100.0), errors),
        label("  retry "),
        value(format!("{}/m", s.retries_last_minute)),
    ];
    if s.prefix_index_bytes > 0 {
        figures_line.push(label("  prefix index "));
        figures_line.push(value(format::bytes(s.prefix_index_bytes)));
    }
    frame.render_widget(Paragraph::new(Line::from(figures_line)), figures);
    let [left, right] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)]).areas(charts);
    let rps: Vec<f64> = status
        .history
        .iter()
        .map(|p| p.requests_per_second)
        .collect();
    let ttft: Vec<f64> = status
        .history
        .iter()
        .map(|p| p.ttft_p50.unwrap_or(0.0))
        .collect();
    let peak_rps = rps.iter().copied().fold(0.0, f64::max);
    let peak_ttft = ttft.iter().copied().fold(0.0, f64::max);
    sparkline(
        frame,
        left,
        "req/s",
        format::rate(peak_rps),
        &rps,
        t.accent(),
        t,
    );
    sparkline(
        frame,
        right,
        "TTFT",
        format::latency((peak_ttft > 0.0).then_some(peak_ttft)),
        &ttft,
        t.warn(),
        t,
    );
}

/// A labelled sparkline of the most recent points that fit, scaled to their peak.
fn sparkline(
    frame: &mut Frame,
    area: Rect,
    name: &'static str,
    peak: String,
    points: &[f64],
    style: Style,
    t: Theme,
) {
    let [label, chart] =
        Layout::horizontal([Constraint::Length(7), Constraint::Fill(1)]).areas(area);
    frame.render_widget(
        Paragraph::new(vec![
            Line::styled(name, t.dim()),
            Line::styled(format!("^{peak}"), t.dim()),
        ]),
        label,
    );
    let width = usize::from(chart.width.saturating_sub(1));
    let recent = &points[points.len().saturating_sub(width)..];
    let peak = recent.iter().copied().fold(0.0, f64::max);
    let data: Vec<u64> = recent
        .iter()
        .map(|&x| {
            if peak > 0.0 {
                (x / peak * 1000.0).round() as u64
            } else {
                0
            }
        })
        .collect();
    frame.render_widget(
        Sparkline::default().data(&data).max(1000).style(style),
        chart,
    );
}

fn draw_servers(
    frame: &mut Frame,
    area: Rect,
    ordered: &[&ServerStatus],
    selected: Option<usize>,
    view: &ViewState,
    t: Theme,
) {
    let inner_width = area
        .width
        .saturating_sub(2 + HIGHLIGHT.chars().count() as u16);
    let disaggregated = ordered.iter().any(|s| s.role != "both");
    let publishing = ordered.iter().any(|s| s.cached_blocks.is_some());
    let (cols, spare) = fit_columns(
        columns(view.show_models, disaggregated, publishing),
        inner_width,
    );
    // The server column (first) and, if shown, the models column (last) share what is left.
    let has_models = cols.last().is_some_and(|c| c.title == "MODELS");
    let widths: Vec<u16> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| match i {
            0 if has_models => c.width + spare / 2,
            0 => c.width + spare,
            _ if has_models && i == cols.len() - 1 => c.width + spare - spare / 2,
            _ => c.width,
        })
        .collect();
    let url_width = usize::from(widths[0]);
    let visible = usize::from(area.height.saturating_sub(3)).max(1);
    let offset = selected.map_or(0, |s| (s + 1).saturating_sub(visible));
    let rows = ordered.iter().map(|s| {
        Row::new(cols.iter().enumerate().map(|(i, c)| {
            if i == 0 {
                Cell::new(format::short_url(&s.url, url_width))
            } else {
                (c.cell)(s, t)
            }
        }))
    });
    let header = Row::new(cols.iter().map(|c| Cell::new(c.title))).style(t.dim().patch(t.bold()));
    let range = if ordered.len() > visible {
        format!(
            " · {}-{} of {}",
            offset + 1,
            (offset + visible).min(ordered.len()),
            ordered.len()
        )
    } else {
        String::new()
    };
    let title = format!(
        " Servers ({}) · sort: {}{range} ",
        ordered.len(),
        view.sort.name()
    );
    let table = Table::new(rows, widths.iter().map(|&w| Constraint::Length(w)))
        .header(header)
        .block(
            Block::new()
                .borders(Borders::ALL)
                .border_style(t.dim())
                .title(title),
        )
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(HIGHLIGHT);
    let mut state = TableState::default()
        .with_offset(offset)
        .with_selected(selected);
    frame.render_stateful_widget(table, area, &mut state);
    if ordered.is_empty() {
        let msg = Paragraph::new(
            "no servers configured: add some to the config file or with POST /admin/servers",
        )
        .style(t.warn());
        let inner = Rect {
            x: area.x + 2,
            y: area.y + 2,
            width: area.width.saturating_sub(4),
            height: 1.min(area.height.saturating_sub(3)),
        };
        frame.render_widget(msg, inner);
    }
}

fn draw_detail(frame: &mut Frame, area: Rect, server: Option<&ServerStatus>, t: Theme) {
    let Some(s) = server else {
        return;
    };
    let mut spans = vec![Span::styled(format!(" {} ", s.url), t.bold())];
    let state = match (s.state, s.draining) {
        (ServerState::Unhealthy, _) => Span::styled(
            format!(
                "DOWN ({}): {}",
                format::short_reason(s.reason.as_deref()),
                s.reason.as_deref().unwrap_or("failing checks")
            ),
            t.bad(),
        ),
        (_, true) => Span::styled("draining", t.warn()),
        _ => Span::styled("healthy", t.good()),
    };
    spans.push(state);
    let mut facts = vec![format!(
        "models: {}",
        if s.models.is_empty() {
            "-".to_string()
        } else {
            s.models.join(", ")
        }
    )];
    facts.push(format!(
        "errors {}/min, {} total",
        s.errors_last_minute, s.errors_total
    ));
    facts.push(match (&s.scrape_error, s.scrape_age_seconds) {
        (Some(e), _) => format!("metrics: {e}"),
        (None, Some(a)) => format!("metrics {} ago", format::age(a)),
        (None, None) => "metrics not read yet".into(),
    });
    if s.prefix_index_bytes > 0 || s.predicted_hit_rate.is_some() {
        facts.push(format!(
            "prefix index {}, hit rate {} predicted, {} reported",
            format::bytes(s.prefix_index_bytes),
            format::percent(s.predicted_hit_rate),
            format::percent(s.actual_hit_rate)
        ));
    }
    for f in facts {
        spans.push(Span::styled(" · ", t.dim()));
        spans.push(Span::raw(f));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn event_style(kind: EventKind, t: Theme) -> Style {
    match kind {
        EventKind::Unhealthy | EventKind::ReloadFailed => t.bad(),
        EventKind::Healthy | EventKind::Added | EventKind::Undrain => t.good(),
        EventKind::Retry | EventKind::Drain | EventKind::Removed | EventKind::Dns => t.warn(),
        EventKind::Reload => t.accent(),
    }
}

fn event_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Healthy => "healthy",
        EventKind::Unhealthy => "unhealthy",
        EventKind::Retry => "retry",
        EventKind::Reload => "reload",
        EventKind::ReloadFailed => "reload!",
        EventKind::Drain => "drain",
        EventKind::Undrain => "undrain",
        EventKind::Added => "added",
        EventKind::Removed => "removed",
        EventKind::Dns => "dns",
    }
}

fn draw_events(frame: &mut Frame, area: Rect, events: &[Event], now: f64, t: Theme) {
    let block = Block::new()
        .borders(Borders::TOP)
        .border_style(t.dim())
        .title(" Events (newest first) ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let lines: Vec<Line> = if events.is_empty() {
        vec![Line::styled(" nothing yet", t.dim())]
    } else {
        events
            .iter()
            .rev()
            .take(usize::from(inner.height))
            .map(|e| {
                let mut spans = vec![
                    Span::styled(format!(" {:>5} ", format::age(now - e.at)), t.dim()),
                    Span::styled(
                        format!("{:<10}", event_name(e.kind)),
                        event_style(e.kind, t),
                    ),
                ];
                if let Some(server) = &e.server {
                    spans.push(Span::raw(format!("{} ", format::short_url(server, 24))));
                }
                spans.push(Span::raw(e.message.clone()));
                if e.count > 1 {
                    spans.push(Span::styled(format!(" ×{}", e.count), t.bold()));
                }
                Line::from(spans)
            })
            .collect()
    };
    frame.render_widget(Paragraph::new(lines), inner);
}

/// Tenants: class, weight, requests holding slots, admitted and refused over budget, tokens
/// charged, budget.
fn draw_tenants(
    frame: &mut Frame,
    area: Rect,
    tenants: &[mvllm_router::status::TenantStatus],
    t: Theme,
) {
    let block = Block::new()
        .borders(Borders::TOP)
        .border_style(t.dim())
        .title(" Tenants ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let mut lines = vec![Line::styled(
        format!(
            " {:<10} {:<8} {:>2} {:>4} {:>6} {:>5} {:>7} {:>7}",
            "TENANT", "CLASS", "W", "RUN", "ADMIT", "OVER", "TOKENS", "TPM"
        ),
        t.dim(),
    )];
    lines.extend(
        tenants
            .iter()
            .take(usize::from(inner.height).saturating_sub(1))
            .map(|x| {
                let budget = match x.tokens_per_minute {
                    0 => "-".to_string(),
                    n => n.to_string(),
                };
                let over = Span::styled(
                    format!(" {:>5}", x.over_budget),
                    if x.over_budget > 0 { t.bold() } else { t.dim() },
                );
                Line::from(vec![
                    Span::raw(format!(
                        " {:<10} {:<8} {:>2} {:>4} {:>6}",
                        format::short_url(&x.name, 10),
                        x.priority,
                        x.weight,
                        x.in_flight,
                        x.admitted
                    )),
                    over,
                    Span::raw(format!(" {:>7} {:>7}", x.tokens, budget)),
                ])
            }),
    );
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_footer(frame: &mut Frame, area: Rect, view: &ViewState, t: Theme) {
    let key = |k: &'static str| Span::styled(k, t.bold().patch(t.accent()));
    let label = |l: &'static str| Span::styled(l, t.dim());
    let keys = Line::from(vec![
        Span::raw(" "),
        key("q"),
        label(" quit  "),
        key("↑↓"),
        label(" select  "),
        key("d"),
        label(" drain  "),
        key("s"),
        label(" sort  "),
        key("?"),
        label(" help"),
    ]);
    let [left, right] =
        Layout::horizontal([Constraint::Length(46), Constraint::Fill(1)]).areas(area);
    frame.render_widget(Paragraph::new(keys), left);
    if let Some(flash) = &view.flash {
        frame.render_widget(
            Paragraph::new(Span::styled(flash.clone(), t.warn())).alignment(Alignment::Right),
            right,
        );
    }
}

fn draw_help(frame: &mut Frame, area: Rect, t: Theme) {
    let text = [
        (
            "q, Esc",
            "quit (the router finishes in-flight requests first)",
        ),
        ("↑ ↓, j k", "select a server (PgUp/PgDn, Home/End, g/G)"),
        ("d", "drain the selected server, or put it back"),
        ("s", "sort: config order, load, TTFT p95, errors, health"),
        ("m", "show or hide each server's models"),
        ("?", "this help; any key closes it"),
        ("", ""),
        ("LOAD", "max(in flight, running + waiting) / capacity"),
        ("RUN/WAIT", "the server's own counts, from its /metrics"),
        ("KV", "the server's KV-cache usage"),
        ("TTFT", "time to first token p50/p95, last minute"),
        ("ERR", "failed attempts in the last minute"),
        ("AGE", "time since /metrics was last read"),
    ];
    let lines: Vec<Line> = text
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!(" {k:<9}"), t.bold().patch(t.accent())),
                Span::raw(*v),
            ])
        })
        .collect();
    let width = area.width.min(66);
    let height = area.height.min(lines.len() as u16 + 2);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::ALL)
                .title(" Keys and columns "),
        ),
        popup,
    );
}
