//! The proxies the overhead suite puts in front of one backend: mvllm logging to the console,
//! mvllm in a pseudo-terminal with and without its dashboard, nginx as a plain reverse proxy,
//! and any other router given as a command.
//!
//! Why two terminal variants: a process started on a pseudo-terminal is in a session of its
//! own, and with the kernel's autogroup scheduling (on by default) a session gets its own share
//! of the CPU. On two cores shared with the load generator that alone moves latency by a third,
//! so the dashboard's cost is the difference between the two terminal variants, never between a
//! terminal and a pipe.
//!
//! A command is a shell line with `{backend}` (the backend's URL), `{backend_addr}` (host:port)
//! and `{port}` (where the proxy must listen) filled in; the suite waits until the port answers.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::client::{HttpClient, get_text};
use crate::pinning::Pinning;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyKind {
    Mvllm,
    /// In a pseudo-terminal with `--console`: the control for the dashboard.
    MvllmTerminalConsole,
    MvllmDashboard,
    Nginx,
    /// A name and a shell command line.
    Command(String, String),
}

impl ProxyKind {
    pub fn name(&self) -> String {
        match self {
            ProxyKind::Mvllm => "mvllm".into(),
            ProxyKind::MvllmTerminalConsole => "mvllm-tty-console".into(),
            ProxyKind::MvllmDashboard => "mvllm-tty-dashboard".into(),
            ProxyKind::Nginx => "nginx".into(),
            ProxyKind::Command(name, _) => name.clone(),
        }
    }

    /// Parses `name=command`.
    pub fn parse_command(s: &str) -> Result<ProxyKind, String> {
        let (name, cmd) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected NAME=COMMAND"))?;
        if name.is_empty() || cmd.is_empty() {
            return Err(format!("`{s}`: expected NAME=COMMAND"));
        }
        Ok(ProxyKind::Command(name.into(), cmd.into()))
    }
}

/// Where nginx is, if it is installed.
pub fn find_nginx() -> Option<std::path::PathBuf> {
    [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

enum Running {
    Piped(Child),
    /// Kept alive by a thread that drains the terminal's output.
    Terminal(Box<dyn portable_pty::Child + Send + Sync>),
}

/// A proxy under test as a child process, stopped on drop.
pub struct ProxyProcess {
    pub name: String,
    pub url: String,
    pid: u32,
    running: Running,
    dir: std::path::PathBuf,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Piped(c) => {
                if std::env::var_os("MVLLM_BENCH_WRAP").is_some() {
                    // A profiler writes its report when the process exits on its own.
                    let _ = std::process::Command::new("kill")
                        .args(["-TERM", &self.pid.to_string()])
                        .status();
                } else {
                    let _ = c.start_kill();
                }
            }
            Running::Terminal(c) => {
                let _ = c.kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl ProxyProcess {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Starts the proxy in front of `backend` and waits until it is ready. With `pin`, it runs
    /// on the router's CPU alone (see [`crate::pinning`]).
    pub async fn start(
        kind: &ProxyKind,
        client: &HttpClient,
        backend: &str,
        pin: Option<&Pinning>,
    ) -> Result<ProxyProcess, String> {
        let prefix = pin.map(Pinning::router_prefix).unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "mvllm-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let backend_addr = backend.trim_start_matches("http://").to_string();
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let config = dir.join("servers.toml");
        std::fs::write(
            &config,
            format!(
                "[servers]\nservers = [{{ url = \"{backend}\", max_concurrent_requests = 100000 }}]\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let mvllm_args = |console: bool| {
            let mut a = vec![
                "run".to_string(),
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--log-level".into(),
                "warning".into(),
                "--config".into(),
                config.display().to_string(),
            ];
            if console {
                a.push("--console".into());
            }
            a
        };
        let (running, pid, ready_path) = match kind {
            ProxyKind::Mvllm => {
                // MVLLM_BENCH_WRAP="valgrind --tool=massif" (say) runs the router under a
                // profiler.
                let mut words = prefix.clone();
                if let Ok(wrap) = std::env::var("MVLLM_BENCH_WRAP") {
                    words.extend(wrap.split_whitespace().map(String::from));
                }
                words.push(exe.display().to_string());
                let mut command = command_of(&words);
                // MVLLM_BENCH_ROUTER_LOG=FILE keeps the router's log lines (at info).
                let log = std::env::var_os("MVLLM_BENCH_ROUTER_LOG")
                    .and_then(|p| std::fs::File::create(p).ok());
                let mut args = mvllm_args(true);
                if log.is_some() {
                    args.iter_mut()
                        .filter(|a| *a == "warning")
                        .for_each(|a| *a = "info".into());
                }
                let child = command
                    .args(args)
                    .stdout(log.map_or_else(Stdio::null, Stdio::from))
                    .stderr(Stdio::inherit())
                    .kill_on_drop(std::env::var_os("MVLLM_BENCH_WRAP").is_none())
                    .spawn()
                    .map_err(|e| format!("cannot start mvllm: {e}"))?;
                let pid = child.id().unwrap_or(0);
                (Running::Piped(child), pid, "/readyz")
            }
            ProxyKind::MvllmDashboard | ProxyKind::MvllmTerminalConsole => {
                let console = *kind == ProxyKind::MvllmTerminalConsole;
                let mut words = prefix.clone();
                words.push(exe.display().to_string());
                words.extend(mvllm_args(console));
                let (child, pid) = spawn_on_terminal(&words)?;
                (Running::Terminal(child), pid, "/readyz")
            }
            ProxyKind::Nginx => {
                let nginx = find_nginx().ok_or("nginx is not installed")?;
                let conf = dir.join("nginx.conf");
                // Pinned, one worker on the router's CPU, as the kit's reference nginx.
                let workers = if pin.is_some() { "1" } else { "auto" };
                std::fs::write(&conf, nginx_conf(&dir, &backend_addr, port, workers))
                    .map_err(|e| e.to_string())?;
                let child =
                    command_of(&[prefix.clone(), vec![nginx.display().to_string()]].concat())
                        .arg("-c")
                        .arg(&conf)
                        .arg("-p")
                        .arg(&dir)
                        .arg("-e")
                        .arg(dir.join("error.log"))
                        .stdout(Stdio::null())
                        .stderr(Stdio::inherit())
                        .kill_on_drop(true)
                        .spawn()
                        .map_err(|e| format!("cannot start nginx: {e}"))?;
                let pid = child.id().unwrap_or(0);
                (Running::Piped(child), pid, "/health")
            }
            ProxyKind::Command(_, template) => {
                let line = template
                    .replace("{backend}", backend)
                    .replace("{backend_addr}", &backend_addr)
                    .replace("{port}", &port.to_string());
                let child = command_of(&[prefix.clone(), vec!["sh".into()]].concat())
                    .arg("-c")
                    .arg(format!("exec {line}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("cannot start `{line}`: {e}"))?;
                let pid = child.id().unwrap_or(0);
                (Running::Piped(child), pid, "/health")
            }
        };
        let url = format!("http://127.0.0.1:{port}");
        let process = ProxyProcess {
            name: kind.name(),
            url: url.clone(),
            pid,
            running,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = get_text(client, &format!("{url}{ready_path}")).await;
            let ready = match kind {
                ProxyKind::Mvllm | ProxyKind::MvllmTerminalConsole | ProxyKind::MvllmDashboard => {
                    answer.is_ok_and(|t| t.contains("\"ready\":true"))
                }
                _ => answer.is_ok(),
            };
            if ready {
                return Ok(process);
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not become ready on {url}", kind.name()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A command from its words: the program, then its arguments (with `--pin`, `taskset -c N`
/// comes first).
fn command_of(words: &[String]) -> Command {
    let mut command = Command::new(&words[0]);
    command.args(&words[1..]);
    command
}

/// nginx as a plain reverse proxy: keep-alive to the backend, no buffering (so streams flow),
/// no access log, `workers` worker processes (`auto`: one per core).
fn nginx_conf(dir: &std::path::Path, backend_addr: &str, port: u16, workers: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream backend {{ server {backend_addr}; keepalive 512; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://backend;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n\
               proxy_read_timeout 600s;\n    }}\n  }}\n}}\n"
    )
}

/// Runs `exe args` in a pseudo-terminal (so mvllm shows its dashboard), with a thread that
/// reads and discards the screen output so that drawing never blocks.
fn spawn_on_terminal(
    words: &[String],
) -> Result<(Box<dyn portable_pty::Child + Send + Sync>, u32), String> {
    use portable_pty::{CommandBuilder, PtySize, native_pty_system};
    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 40,
            cols: 140,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| format!("no pseudo-terminal: {e}"))?;
    let mut cmd = CommandBuilder::new(&words[0]);
    cmd.args(&words[1..]);
    cmd.env("TERM", "xterm-256color");
    let child = pty
        .slave
        .spawn_command(cmd)
        .map_err(|e| format!("cannot start mvllm on a terminal: {e}"))?;
    let mut reader = pty.master.try_clone_reader().map_err(|e| e.to_string())?;
    let master = pty.master;
    std::thread::spawn(move || {
        let _keep_open = master;
        let mut buf = [0u8; 16 * 1024];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    let pid = child.process_id().unwrap_or(0);
    Ok((child, pid))
}
