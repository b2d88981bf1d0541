//! mvllm's live dashboard: the whole fleet on one screen, for `mvllm run` and `mvllm demo` in a
//! terminal and for `mvllm top` against a router elsewhere.
//!
//! Why a separate crate: the router must not depend on a terminal library, and the dashboard
//! only reads what the router already keeps (its [`FleetStatus`]) and asks it to drain servers.
//! Redrawing is bounded: a frame per refresh (4 per second in-process, 1 per second remote) and
//! one per key press, built from a snapshot taken outside the request path's locks but for a
//! few microseconds per server.
//!
//! [`FleetStatus`]: mvllm_router::status::FleetStatus

pub mod format;
pub mod render;
pub mod source;
pub mod view;

use std::time::SystemTime;

use crossterm::event::{Event, EventStream};
use futures_util::StreamExt;
use mvllm_router::status::FleetStatus;
use ratatui::text::Line;
use ratatui::widgets::Paragraph;

pub use source::Source;
use view::{Action, ViewState};

pub struct Options {
    /// Where the router listens, for the title line.
    pub address: String,
    pub color: bool,
    pub show_models: bool,
}

/// Colour unless `NO_COLOR` is set to something (<https://no-color.org>).
pub fn color_wanted() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Leaves the alternate screen and raw mode however the dashboard ends (quit, error, or its
/// future dropped because the process got a signal).
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Shows the dashboard on a thread of its own, so that drawing never holds up the router's
/// runtime. Returns how it ended (`Ok` when the operator quit), a sender that stops it early
/// (on a signal) and the thread, to join once stopped so the terminal is restored.
pub fn spawn_local(
    router: std::sync::Arc<mvllm_router::state::AppState>,
    options: Options,
) -> (
    tokio::sync::oneshot::Receiver<std::io::Result<()>>,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("mvllm-dashboard".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|rt| {
                    rt.block_on(run(Source::Local(router), options, async {
                        let _ = stop_rx.await;
                    }))
                });
            let _ = done_tx.send(result);
        })
        .expect("a thread for the dashboard");
    (done_rx, stop_tx, thread)
}

/// Shows the dashboard until the operator quits (`q`, Esc or Ctrl-C) or `stop` completes.
pub async fn run(
    source: Source,
    options: Options,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let _restore = RestoreTerminal;
    let mut view = ViewState::new(options.address, options.color, options.show_models);
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(source.refresh());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut status: Option<FleetStatus> = None;
    let mut problem: Option<String> = None;
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = tick.tick() => match source.status().await {
                Ok(s) => {
                    status = Some(s);
                    problem = None;
                }
                Err(e) => problem = Some(e),
            },
            event = keys.next() => match event {
                Some(Ok(Event::Key(key))) => {
                    let action = match &status {
                        Some(s) => view.on_key(key, s),
                        None if matches!(key.code, crossterm::event::KeyCode::Char('q') | crossterm::event::KeyCode::Esc) => Action::Quit,
                        None => Action::None,
                    };
                    match action {
                        Action::Quit => return Ok(()),
                        Action::SetDraining(url, drain) => {
                            view.flash = Some(match source.set_draining(&url, drain).await {
                                Ok(m) | Err(m) => m,
                            });
                            if let Ok(s) = source.status().await {
                                status = Some(s);
                            }
                        }
                        Action::None => {}
                    }
                }
                Some(Ok(_)) => {} // resize and the rest: redraw below
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
        if let Some(p) = &problem {
            view.flash = Some(p.clone());
        }
        terminal.draw(|frame| match &status {
            Some(s) => render::draw(frame, s, &view, now_epoch()),
            None => frame.render_widget(
                Paragraph::new(vec![
                    Line::raw(""),
                    Line::raw(format!(
                        "  waiting for the router's status… {}",
                        problem.as_deref().unwrap_or("")
                    )),
                    Line::raw("  q quits"),
                ]),
                frame.area(),
            ),
        })?;
    }
}
