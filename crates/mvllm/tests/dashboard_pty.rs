//! The real `mvllm run` in a pseudo-terminal: it shows the dashboard (not log lines), the
//! server rows fill with live numbers once traffic flows, `q` quits, and the process exits 0.
//! The screen is read back through a terminal emulator (vt100), as an operator would see it.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mvllm_sim::SimConfig;
use mvllm_testkit::eventually;
use portable_pty::{CommandBuilder, PtySize, native_pty_system};

const BIN: &str = env!("CARGO_BIN_EXE_mvllm");

struct Screen(Arc<Mutex<vt100::Parser>>);

impl Screen {
    fn text(&self) -> String {
        self.0.lock().unwrap().screen().contents()
    }
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

    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 30,
            cols: 120,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut cmd = CommandBuilder::new(BIN);
    cmd.args(["run", "--host", "127.0.0.1", "--port", "0", "--config"]);
    cmd.arg(&config);
    cmd.env("TERM", "xterm-256color");
    cmd.env_remove("NO_COLOR");
    cmd.env_remove("MVLLM_CONSOLE");
    let mut child = pty.slave.spawn_command(cmd).unwrap();
    drop(pty.slave);
    let parser = Arc::new(Mutex::new(vt100::Parser::new(
        std::num::NonZeroU16::new(30).unwrap(),
        std::num::NonZeroU16::new(120).unwrap(),
        0,
    )));
    let mut reader = pty.master.try_clone_reader().unwrap();
    let feed = parser.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            feed.lock().unwrap().process(&buf[..n]);
        }
    });
    let mut keys = pty.master.take_writer().unwrap();
    let screen = Screen(parser);

    // The dashboard, with both servers healthy.
    let row = |url: &str| url.trim_start_matches("http://").to_string();
    eventually(
        Duration::from_secs(20),
        "the dashboard lists both servers, healthy",
        || {
            let text = screen.text();
            let ok = text.contains("2/2 healthy")
                && text.contains(&row(&sims[0].url()))
                && text.contains(&row(&sims[1].url()));
            async move { ok }
        },
    )
    .await;
    let text = screen.text();
    assert!(
        text.contains("Servers (2)") && text.contains("q quit"),
        "{text}"
    );
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
    eventually(
        Duration::from_secs(10),
        "requests per second and TTFT on screen",
        || {
            let text = screen.text();
            let line = text
                .lines()
                .find(|l| l.contains("req/s "))
                .unwrap_or("")
                .to_string();
            let ok = !line.contains("req/s 0.0 ") && !line.contains("TTFT p50 - ");
            async move { ok }
        },
    )
    .await;
    let text = screen.text();
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('│') && l.contains("127.0.0.1:"))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows.iter().all(|r| r.contains(" up ")), "{text}");
    assert!(
        rows.iter().any(|r| r.contains("ms/")),
        "a server row shows its time to first token:\n{text}"
    );

    // `q` quits gracefully.
    keys.write_all(b"q").unwrap();
    keys.flush().unwrap();
    let mut status = None;
    eventually(Duration::from_secs(15), "mvllm to exit after q", || {
        status = child.try_wait().unwrap();
        let done = status.is_some();
        async move { done }
    })
    .await;
    let status = status.unwrap();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        screen.text()
    );
}
