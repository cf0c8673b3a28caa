//! Test fixture: a real supervisor (in-process) with real CPU workers on the
//! real model, the front door in-process on a loopback port, raw HTTP for
//! malformed requests, and Python scripts using the official `openai` package.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use openai_gateway::{Config, Keys};
use proto::admin::{SlotStatus, StatusReport};
pub use test_kit::harness::FAST_POLICY as POLICY;
use test_kit::harness::{free_port, Sup};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

/// The pinned `openai` package version deploy/setup.sh installs.
pub const OPENAI_VERSION: &str = "3.51.0";
/// The key the tests use, and its name.
pub const KEY: &str = "sk-test-0123456789abcdef";
pub const KEY_NAME: &str = "tests";

/// A CPU slot section on the real model.
pub fn cpu_slot(name: &str, extra: &str) -> String {
    test_kit::harness::cpu_slot(name, &test_kit::harness::model(), extra)
}

/// A slot whose (fake) worker takes `ms` per token, so tests can act
/// mid-stream whatever the machine's speed.
pub fn slow_slot(name: &str, ms: u32) -> String {
    test_kit::harness::fake_slot(name, &format!("token-ms={ms}"), "")
}

/// A supervisor and the front door in front of it.
pub struct Board {
    /// The supervisor.
    pub sup: Sup,
    /// The front door's address.
    pub addr: SocketAddr,
    /// The supervisor's HTTP endpoint, when asked for.
    pub sup_http: Option<SocketAddr>,
    shutdown: CancellationToken,
}

impl Board {
    /// Starts the supervisor with `body` (slots, policy, ...) and
    /// `supervisor_extra` lines, waits for every slot to be ready, then the
    /// front door with `openai_extra` lines in its section.
    pub async fn start(supervisor_extra: &str, body: &str, openai_extra: &str, http: bool) -> Self {
        let sup_http = http.then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let body = match sup_http {
            Some(a) => format!("[http]\nlisten = \"{a}\"\n{body}"),
            None => body.to_owned(),
        };
        let sup = Sup::start_with(supervisor_extra, &body).await;
        sup.wait_all_ready(Duration::from_secs(90)).await;
        let openai_text = format!(
            "[openai]\nclient_socket = \"{}\"\nsupervisor_http = \"{}\"\n{openai_extra}\n",
            sup.client_socket().display(),
            sup_http.map(|a| a.to_string()).unwrap_or_default()
        );
        let config = Config::from_toml(&openai_text).unwrap();
        let keys = Keys::parse(&format!("{KEY} {KEY_NAME}\n")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                openai_gateway::run(config, keys, listener, shutdown)
                    .await
                    .unwrap();
            }
        });
        Self {
            sup,
            addr,
            sup_http,
            shutdown,
        }
    }

    pub async fn status(&self) -> StatusReport {
        self.sup.status().await
    }

    pub async fn slot(&self, name: &str) -> SlotStatus {
        self.sup.slot(name).await
    }

    pub async fn wait_slot(
        &self,
        name: &str,
        limit: Duration,
        pred: impl Fn(&SlotStatus) -> bool,
    ) -> SlotStatus {
        self.sup.wait_slot(name, limit, pred).await
    }

    /// The front door's base URL for the openai client.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Starts `script` (under tests/py/) with the openai package, pointed at
    /// this board with the test key; `args` follow the script name.
    pub fn python(&self, script: &str, args: &[&str]) -> Python {
        let python = python();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/py")
            .join(script);
        let mut child = Command::new(python)
            .arg(path)
            .args(args)
            .env("OPENAI_BASE_URL", self.base_url())
            .env("OPENAI_API_KEY", KEY)
            .env_remove("OPENAI_ORG_ID")
            .env_remove("OPENAI_PROJECT_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Python {
            child,
            stdout,
            lines: Vec::new(),
        }
    }

    /// GET of `path` on the supervisor's own HTTP endpoint.
    pub async fn sup_get(&self, path: &str) -> (u16, String) {
        let addr = self
            .sup_http
            .expect("board started without the supervisor's HTTP endpoint");
        raw_http(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
    }

    /// A raw HTTP exchange with the front door.
    pub async fn http(&self, request: &[u8]) -> (u16, String) {
        raw_http(self.addr, request).await
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The Python with the pinned openai package; a missing one fails the test.
pub fn python() -> PathBuf {
    let python = std::env::var_os("ROCKSTEADY_OPENAI_PYTHON").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/rocksteady/openai-venv/bin/python")
        },
        PathBuf::from,
    );
    let check = std::process::Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('openai'))",
        ])
        .current_dir(std::env::temp_dir())
        .output();
    match check {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            assert_eq!(
                version, OPENAI_VERSION,
                "{} has openai {version}, the tests pin {OPENAI_VERSION}: run deploy/setup.sh",
                python.display()
            );
        }
        _ => panic!(
            "no Python with the official openai package at {} (or $ROCKSTEADY_OPENAI_PYTHON): run deploy/setup.sh",
            python.display()
        ),
    }
    python
}

/// A running Python script.
pub struct Python {
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// Lines read so far.
    pub lines: Vec<String>,
}

impl Python {
    /// Reads stdout until a line equal to `marker`.
    pub async fn wait_line(&mut self, marker: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout_at(deadline.into(), self.stdout.read_line(&mut line))
                .await
                .unwrap_or_else(|_| panic!("no {marker:?} line in time; got {:?}", self.lines))
                .unwrap();
            assert!(n > 0, "script ended before {marker:?}: {:?}", self.lines);
            let line = line.trim_end().to_owned();
            let found = line == marker;
            self.lines.push(line);
            if found {
                return;
            }
        }
    }

    /// Waits for the script to end; it must succeed. Returns the last line
    /// of stdout parsed as JSON (the script's result).
    pub async fn finish(mut self, limit: Duration) -> serde_json::Value {
        let mut rest = String::new();
        tokio::time::timeout(limit, self.stdout.read_to_string(&mut rest))
            .await
            .expect("script did not end in time")
            .unwrap();
        self.lines.extend(rest.lines().map(str::to_owned));
        let status = self.child.wait().await.unwrap();
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr).await;
        }
        assert!(
            status.success(),
            "script failed ({status}):\nstdout:\n{}\nstderr:\n{stderr}",
            self.lines.join("\n")
        );
        let last = self.lines.last().cloned().unwrap_or_default();
        serde_json::from_str(&last)
            .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last:?}\nstderr:\n{stderr}"))
    }
}

/// Sends `request` and reads the whole response (the request must say
/// `Connection: close`): status and body.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let (status, _, body) = raw_http_full(addr, request).await;
    (status, body)
}

/// Like [`raw_http`], with the response head (status line and headers) too.
pub async fn raw_http_full(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let request = request.to_vec();
    // Written concurrently: the server may answer before the body is all sent.
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&request).await;
        w
    });
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut response))
        .await
        .expect("no response in time")
        .unwrap();
    drop(writer.await);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// `promtool check metrics` (Prometheus' own linter, from deploy/setup.sh)
/// on a scrape: its complaints, empty when it passes.
pub fn promtool_complaints(text: &str) -> String {
    let (passed, said) = test_kit::harness::promtool(text);
    if passed {
        said
    } else {
        format!("(failed) {said}")
    }
}

/// A counter of the front door's or the supervisor's metrics: the sum of the
/// samples whose line contains every one of `parts`.
pub fn metric(text: &str, parts: &[&str]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
