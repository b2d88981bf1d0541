//! The real `mvllm run` in a pseudo-terminal: it shows the dashboard (not log lines), the
//! server rows fill with live numbers once traffic flows, `q` quits, and the process exits 0.
//! The screen is read back through a terminal emulator (vt100), as an operator would see it.

use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mvllm_router::Config;
use mvllm_router::config::{ServerConfig, Settings};
use mvllm_sim::SimConfig;
use mvllm_testkit::eventually;
use portable_pty::{CommandBuilder, PtySize, native_pty_system};

const BIN: &str = env!("CARGO_BIN_EXE_mvllm");

/// The binary running in a pseudo-terminal, its screen read back through vt100.
struct OnTerminal {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    screen: Arc<Mutex<vt100::Parser>>,
    keys: Box<dyn Write + Send>,
}

impl OnTerminal {
    fn spawn(args: &[&str]) -> OnTerminal {
        let (rows, cols) = (30, 120);
        let pty = native_pty_system()
            .openpty(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let mut cmd = CommandBuilder::new(BIN);
        cmd.args(args);
        cmd.env("TERM", "xterm-256color");
        cmd.env_remove("NO_COLOR");
        cmd.env_remove("MVLLM_CONSOLE");
        let child = pty.slave.spawn_command(cmd).unwrap();
        drop(pty.slave);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            NonZeroU16::new(rows).unwrap(),
            NonZeroU16::new(cols).unwrap(),
            0,
        )));
        let mut reader = pty.master.try_clone_reader().unwrap();
        let feed = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                feed.lock().unwrap().process(&buf[..n]);
            }
        });
        let keys = pty.master.take_writer().unwrap();
        OnTerminal {
            child,
            screen,
            keys,
        }
    }

    fn text(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) {
        eventually(Duration::from_secs(20), what, || {
            let ok = cond(&self.text());
            async move { ok }
        })
        .await;
    }

    fn press(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
        self.keys.flush().unwrap();
    }

    /// Presses `q` and waits for the process to end; its exit status.
    async fn quit(&mut self) -> portable_pty::ExitStatus {
        self.press("q");
        let mut status = None;
        eventually(
            Duration::from_secs(15),
            "the process to exit after q",
            || {
                status = self.child.try_wait().unwrap();
                let done = status.is_some();
                async move { done }
            },
        )
        .await;
        status.unwrap()
    }
}

/// The servers' rows in the table (not the title or the detail line).
fn rows(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with('│') && l.contains("127.0.0.1:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_a_terminal_shows_the_dashboard_and_q_exits_zero() {
    let sims = [
        mvllm_sim::spawn(SimConfig::default()).await.unwrap(),
        mvllm_sim::spawn(SimConfig::default()).await.unwrap(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("servers.toml");
    std::fs::write(
        &config,
        format!(
            "[servers]\nservers = [{{ url = \"{}\" }}, {{ url = \"{}\" }}]\n",
            sims[0].url(),
            sims[1].url()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let mut term = OnTerminal::spawn(&[
        "run",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--config",
        config,
    ]);

    // The dashboard, with both servers healthy.
    let row = |url: &str| url.trim_start_matches("http://").to_string();
    // Waited for as a whole: the screen is read while it may be half redrawn.
    term.wait_for("the dashboard lists both servers, healthy", |text| {
        text.contains("2/2 healthy")
            && text.contains(&row(&sims[0].url()))
            && text.contains(&row(&sims[1].url()))
            && text.contains("Servers (2)")
            && text.contains("q quit")
    })
    .await;
    let text = term.text();
    assert!(
        !text.contains(" INFO "),
        "log lines were printed over the dashboard:\n{text}"
    );
    // The router's address is in the title line.
    let title = text.lines().next().unwrap().to_string();
    let start = title
        .find("http://127.0.0.1:")
        .expect("address in the title");
    let url: String = title[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();

    // Traffic through the router shows up as live numbers.
    let client = reqwest::Client::new();
    let requests = (0..8).map(|_| {
        client
            .post(format!("{url}/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": mvllm_sim::config::DEFAULT_MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8, "ignore_eos": true, "stream": true,
            }))
            .send()
    });
    for r in futures_util::future::join_all(requests).await {
        let r = r.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("[DONE]"));
    }
    term.wait_for("requests per second and TTFT on screen", |text| {
        let line = text.lines().find(|l| l.contains("req/s ")).unwrap_or("");
        !line.contains("req/s 0.0 ") && !line.contains("TTFT p50 - ")
    })
    .await;
    let text = term.text();
    let rows = rows(&text);
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows.iter().all(|r| r.contains(" up ")), "{text}");
    assert!(
        rows.iter().any(|r| r.contains("ms/")),
        "a server row shows its time to first token:\n{text}"
    );

    // `q` quits gracefully.
    let status = term.quit().await;
    assert!(status.success(), "exit status {status:?}\n{}", term.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_router_elsewhere_and_drains_with_d() {
    let sims = [
        mvllm_sim::spawn(SimConfig::instant()).await.unwrap(),
        mvllm_sim::spawn(SimConfig::instant()).await.unwrap(),
    ];
    let token = "a-long-enough-admin-token";
    let settings = Settings {
        admin_token: Some(token.into()),
        ..Settings::default()
    };
    let servers = sims
        .iter()
        .map(|s| ServerConfig {
            url: s.url(),
            max_concurrent_requests: 4,
            api_key: None,
            models: None,
            role: Default::default(),
            kv_events: None,
        })
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = mvllm_router::start(
        &Config {
            servers,
            settings,
            ..Default::default()
        },
        listener,
    )
    .await
    .unwrap();
    let url = router.url();

    // Without the token, top says what is missing instead of showing nothing.
    let mut term = OnTerminal::spawn(&["top", "--url", &url]);
    term.wait_for("top to ask for the admin token", |t| {
        t.contains("--admin-token")
    })
    .await;
    assert!(term.quit().await.success());

    let mut term = OnTerminal::spawn(&["top", "--url", &url, "--admin-token", token]);
    term.wait_for("top lists both servers", |t| {
        rows(t).len() == 2 && t.contains("2/2 healthy")
    })
    .await;
    // The first server is selected: `d` drains it, on the router itself.
    term.press("d");
    let first = router.fleet.servers()[0].clone();
    eventually(Duration::from_secs(10), "the first server draining", || {
        let draining = first.draining.load(std::sync::atomic::Ordering::Relaxed);
        async move { draining }
    })
    .await;
    term.wait_for("its row to say drain", |t| {
        rows(t).first().is_some_and(|r| r.contains("drain"))
    })
    .await;
    let status = term.quit().await;
    assert!(status.success(), "exit status {status:?}\n{}", term.text());
}
