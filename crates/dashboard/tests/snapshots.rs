//! The dashboard drawn on ratatui's `TestBackend`, compared with the screens in `snapshots/`
//! (review a changed screen with `cargo insta review`, or `INSTA_UPDATE=always cargo test`, then
//! read the diff).

use crossterm::event::{KeyCode, KeyEvent};
use mvllm_dashboard::render;
use mvllm_dashboard::view::{Action, Sort, ViewState};
use mvllm_router::fleet::events::{Event, EventKind};
use mvllm_router::status::{FleetStatus, FleetSummary, HistoryPoint, ServerState, ServerStatus};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::Color;

const NOW: f64 = 1_800_000_000.0;

fn server(url: &str, state: ServerState) -> ServerStatus {
    ServerStatus {
        url: url.into(),
        state,
        role: "both".into(),
        draining: state == ServerState::Draining,
        reason: None,
        models: vec!["meta-llama/Llama-3.1-8B-Instruct".into()],
        running: Some(0.0),
        waiting: Some(0.0),
        kv_usage: Some(0.0),
        output_tokens_per_second: Some(0.0),
        in_flight: 0,
        capacity: 64,
        requests_per_second: 0.0,
        ttft_p50: None,
        ttft_p95: None,
        errors_last_minute: 0,
        errors_total: 0,
        scrape_age_seconds: Some(0.4),
        scrape_error: None,
        prefix_index_bytes: 0,
        predicted_hit_rate: None,
        actual_hit_rate: None,
        cache_state: "approximate".into(),
        cached_blocks: None,
        seconds_per_token: None,
    }
}

fn fleet() -> FleetStatus {
    let mut busy = server("http://gpu-a.internal:8000", ServerState::Healthy);
    busy.running = Some(48.0);
    busy.waiting = Some(6.0);
    busy.in_flight = 52;
    busy.kv_usage = Some(0.83);
    busy.requests_per_second = 21.4;
    busy.ttft_p50 = Some(0.142);
    busy.ttft_p95 = Some(0.61);
    busy.output_tokens_per_second = Some(2480.0);
    busy.prefix_index_bytes = 2 << 20;
    busy.predicted_hit_rate = Some(0.93);
    busy.actual_hit_rate = Some(0.91);
    let mut idle = server("http://gpu-b.internal:8000", ServerState::Healthy);
    idle.running = Some(9.0);
    idle.in_flight = 9;
    idle.kv_usage = Some(0.12);
    idle.requests_per_second = 6.1;
    idle.ttft_p50 = Some(0.051);
    idle.ttft_p95 = Some(0.094);
    idle.output_tokens_per_second = Some(610.0);
    idle.prefix_index_bytes = 1 << 20;
    idle.predicted_hit_rate = Some(0.88);
    idle.actual_hit_rate = Some(0.52);
    let mut down = server("http://gpu-c.internal:8000", ServerState::Unhealthy);
    down.reason = Some("connection refused".into());
    down.running = None;
    down.waiting = None;
    down.kv_usage = None;
    down.output_tokens_per_second = None;
    down.errors_last_minute = 7;
    down.errors_total = 31;
    down.scrape_age_seconds = Some(42.0);
    down.scrape_error = Some("connection refused".into());
    let mut draining = server("http://gpu-d.internal:8000", ServerState::Draining);
    draining.in_flight = 3;
    draining.running = Some(3.0);
    draining.kv_usage = Some(0.05);
    let history = (0..120)
        .map(|i| HistoryPoint {
            requests_per_second: f64::from(i % 30),
            ttft_p50: (i % 4 != 0).then_some(0.05 + f64::from(i % 7) * 0.02),
        })
        .collect();
    let events = vec![
        Event {
            at: NOW - 300.0,
            kind: EventKind::Reload,
            server: None,
            message: "config reloaded: 1 added, 0 removed, 0 changed".into(),
            count: 1,
        },
        Event {
            at: NOW - 95.0,
            kind: EventKind::Drain,
            server: Some("http://gpu-d.internal:8000".into()),
            message: "draining with 5 in flight".into(),
            count: 1,
        },
        Event {
            at: NOW - 12.0,
            kind: EventKind::Retry,
            server: Some("http://gpu-c.internal:8000".into()),
            message: "retried elsewhere: connection refused".into(),
            count: 7,
        },
        Event {
            at: NOW - 11.0,
            kind: EventKind::Unhealthy,
            server: Some("http://gpu-c.internal:8000".into()),
            message: "connection refused".into(),
            count: 1,
        },
    ];
    FleetStatus {
        version: "0.2.0".into(),
        policy: "cache_aware".into(),
        uptime_seconds: 3725.0,
        summary: FleetSummary {
            total_servers: 4,
            healthy_servers: 3,
            in_flight: 64,
            requests_per_second: 27.5,
            output_tokens_per_second: Some(3090.0),
            ttft_p50: Some(0.118),
            ttft_p99: Some(0.93),
            error_rate: 0.004,
            retries_last_minute: 7,
            prefix_index_bytes: 3 << 20,
        },
        history,
        servers: vec![busy, idle, down, draining],
        events,
        tenants: Vec::new(),
    }
}

fn draw(status: &FleetStatus, view: &ViewState, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|f| render::draw(f, status, view, NOW))
        .unwrap();
    terminal
}

fn screen_text(terminal: &Terminal<TestBackend>) -> String {
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            out.push_str(buffer[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn cell_of<'a>(terminal: &'a Terminal<TestBackend>, needle: &str) -> &'a ratatui::buffer::Cell {
    let buffer = terminal.backend().buffer();
    let text = screen_text(terminal);
    let (y, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not on screen:\n{text}"));
    let x = line[..line.find(needle).unwrap()].chars().count() as u16;
    &buffer[(x, y as u16)]
}

#[test]
fn normal_fleet_with_an_unhealthy_and_a_draining_server() {
    let view = ViewState::new("http://0.0.0.0:8888", true, true);
    let t = draw(&fleet(), &view, 120, 32);
    let text = screen_text(&t);
    insta::assert_snapshot!("normal_fleet_120x32", text);
    // Meaning is in the words, and colour repeats it.
    assert!(text.contains("DOWN") && text.contains("drain"), "{text}");
    assert_eq!(cell_of(&t, "DOWN").fg, Color::Red);
    assert_eq!(cell_of(&t, "drain ").fg, Color::Yellow);
    // The first server is selected and described in full below the table.
    assert!(
        text.contains("http://gpu-a.internal:8000 healthy"),
        "{text}"
    );
}

#[test]
fn fits_80_by_24() {
    let mut view = ViewState::new("http://0.0.0.0:8888", true, false);
    view.selected = Some("http://gpu-c.internal:8000".into());
    let t = draw(&fleet(), &view, 80, 24);
    let text = screen_text(&t);
    insta::assert_snapshot!("fleet_80x24", text);
    for needle in [
        "gpu-a",
        "gpu-d",
        "LOAD",
        "TTFT",
        "q quit",
        "Events",
        "DOWN (refused)",
    ] {
        assert!(
            text.contains(needle),
            "`{needle}` missing at 80x24:\n{text}"
        );
    }
}

#[test]
fn more_servers_than_fit_scroll_to_the_selection() {
    let mut status = fleet();
    status.servers = (0..40)
        .map(|i| {
            let mut s = server(&format!("http://gpu-{i:02}:8000"), ServerState::Healthy);
            s.in_flight = i;
            s
        })
        .collect();
    status.summary.total_servers = 40;
    status.summary.healthy_servers = 40;
    let mut view = ViewState::new("", true, false);
    // Walk down with `j` to the 26th server.
    for _ in 0..25 {
        assert_eq!(
            view.on_key(KeyEvent::from(KeyCode::Char('j')), &status),
            Action::None
        );
    }
    assert_eq!(view.selected.as_deref(), Some("http://gpu-25:8000"));
    let t = draw(&status, &view, 80, 24);
    let text = screen_text(&t);
    insta::assert_snapshot!("scrolled_80x24", text);
    assert!(
        text.contains("gpu-25:8000") && !text.contains("gpu-00:8000"),
        "{text}"
    );
    assert!(
        text.contains(" of 40"),
        "the title says which rows show:\n{text}"
    );
    // Sorting by load puts the busiest first and keeps the selection on the same server.
    view.on_key(KeyEvent::from(KeyCode::Char('s')), &status);
    assert_eq!(view.sort, Sort::Load);
    let ordered = view.ordered(&status);
    assert_eq!(ordered[0].url, "http://gpu-39:8000");
    assert_eq!(
        ordered[view.selected_index(&ordered).unwrap()].url,
        "http://gpu-25:8000"
    );
}

#[test]
fn no_colour_reads_the_same() {
    let view = ViewState::new("http://0.0.0.0:8888", false, false);
    let t = draw(&fleet(), &view, 100, 30);
    let text = screen_text(&t);
    insta::assert_snapshot!("no_colour_100x30", text);
    let buffer = t.backend().buffer();
    for cell in &buffer.content {
        assert_eq!(
            (cell.fg, cell.bg),
            (Color::Reset, Color::Reset),
            "a coloured cell: {cell:?}"
        );
    }
    assert!(text.contains("DOWN") && text.contains("drain") && text.contains("up"));
}

#[test]
fn keys_drain_the_selected_server_and_show_help() {
    let status = fleet();
    let mut view = ViewState::new("", true, false);
    view.on_key(KeyEvent::from(KeyCode::Down), &status);
    view.on_key(KeyEvent::from(KeyCode::Down), &status);
    view.on_key(KeyEvent::from(KeyCode::Down), &status);
    assert_eq!(
        view.on_key(KeyEvent::from(KeyCode::Char('d')), &status),
        Action::SetDraining("http://gpu-d.internal:8000".into(), false),
        "d on a draining server puts it back"
    );
    view.on_key(KeyEvent::from(KeyCode::Up), &status);
    assert_eq!(
        view.on_key(KeyEvent::from(KeyCode::Char('d')), &status),
        Action::SetDraining("http://gpu-c.internal:8000".into(), true)
    );
    view.on_key(KeyEvent::from(KeyCode::Char('?')), &status);
    assert!(view.help);
    let text = screen_text(&draw(&status, &view, 80, 24));
    assert!(text.contains("Keys and columns"), "{text}");
    // Any key closes the help without acting; then q quits.
    assert_eq!(
        view.on_key(KeyEvent::from(KeyCode::Char('d')), &status),
        Action::None
    );
    assert!(!view.help);
    assert_eq!(
        view.on_key(KeyEvent::from(KeyCode::Char('q')), &status),
        Action::Quit
    );
}

#[test]
fn a_disaggregated_fleet_shows_each_servers_role() {
    let mut status = fleet();
    // Without roles, no column for them.
    let text = screen_text(&draw(&status, &ViewState::new("x", false, false), 120, 32));
    assert!(!text.contains("ROLE"), "{text}");
    status.servers[0].role = "prefill".into();
    status.servers[1].role = "decode".into();
    for (width, height) in [(120, 32), (80, 24)] {
        let text = screen_text(&draw(
            &status,
            &ViewState::new("x", false, false),
            width,
            height,
        ));
        assert!(text.contains("ROLE"), "{width}x{height}:\n{text}");
        let row = |host: &str| text.lines().find(|l| l.contains(host)).unwrap().to_string();
        assert!(row("gpu-a").contains("prefill"), "{text}");
        assert!(row("gpu-b").contains("decode"), "{text}");
        assert!(row("gpu-c").contains("both"), "{text}");
    }
}

#[test]
fn tenants_show_beside_the_events_with_their_class_and_budget() {
    use mvllm_router::status::TenantStatus;
    let mut status = fleet();
    status.tenants = vec![
        TenantStatus {
            name: "chat".into(),
            priority: "critical".into(),
            weight: 2.0,
            tokens_per_minute: 0,
            requests_per_minute: 0,
            admitted: 1520,
            over_budget: 0,
            tokens: 310_000,
            in_flight: 4,
        },
        TenantStatus {
            name: "evals".into(),
            priority: "batch".into(),
            weight: 1.0,
            tokens_per_minute: 60_000,
            requests_per_minute: 0,
            admitted: 402,
            over_budget: 37,
            tokens: 59_870,
            in_flight: 23,
        },
    ];
    let text = screen_text(&draw(&status, &ViewState::new("x", false, false), 120, 40));
    assert!(text.contains("Tenants"), "{text}");
    let evals = text
        .lines()
        .find(|l| l.contains("evals"))
        .expect("a row for evals");
    for want in ["batch", " 23 ", "402", "37", "59870", "60000"] {
        assert!(evals.contains(want), "{want} in {evals}");
    }
    assert!(text.contains("Events"), "the events stay: {text}");
}
