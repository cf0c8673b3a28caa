//! The shared integration-test harness: the built binaries and the default
//! model, a supervisor running in-process on a private temporary runtime
//! directory, waiting for a slot's state, and collecting a reply's stream.
//! Every crate's tests use this one copy.
//!
//! A fixture that cannot do its job fails the test on the spot, so these
//! panic instead of returning errors.
#![allow(clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::admin::{AdminToSupervisor, SlotState, SlotStatus, StatusReport, SupervisorToAdmin};
use proto::chat::{ChatMessage, GenParams, Role};
use proto::client::SupervisorToClient;
use supervisor::client::{AdminClient, ChatClient};
use supervisor::config::Config;
use tokio_util::sync::CancellationToken;

/// Directory of the built binaries (target/debug), next to the test binary.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

/// Path of a workspace binary, which must have been built first.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// The default model, fetched by deploy/fetch-model.sh.
pub fn model() -> PathBuf {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run deploy/fetch-model.sh",
        path.display()
    );
    path
}

/// A `[slots.<name>]` section for a CPU worker on `model` with test-friendly settings.
pub fn cpu_slot(name: &str, model: &Path, extra: &str) -> String {
    format!(
        "[slots.{name}]\nbackend = \"cpu\"\nmodel = \"{}\"\nworker = \"{}\"\n{extra}\n[slots.{name}.profile]\ncontext_size = 1024\nbatch_size = 256\nthreads = 1\nmax_new_tokens = 512\n",
        model.display(),
        bin("worker-cpu").display()
    )
}

/// A `[slots.<name>]` section for test-kit's scripted `fake-worker` (backend
/// "cpu", no model run), doing what `script` says (items in
/// test-kit/src/script.rs): for tests of routing, relay and supervision.
pub fn fake_slot(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[slots.{name}]\nbackend = \"cpu\"\nmodel = \"{}\"\nworker = \"{}\"\nworker_env = {{ ROCKSTEADY_FAKE_WORKER = \"{script}\" }}\n{extra}\n[slots.{name}.profile]\ncontext_size = 1024\nbatch_size = 256\nthreads = 1\nmax_new_tokens = 512\n",
        model().display(),
        bin("fake-worker").display()
    )
}

/// Fast supervision timings for process tests (seconds, not the minutes a
/// board uses), so a hang or a crash is met within a test's time.
pub const FAST_POLICY: &str = "[policy]\nheartbeat_interval_s = 0.5\nheartbeat_timeout_s = 3.0\nstall_timeout_s = 6.0\nfirst_token_timeout_s = 20.0\nstop_grace_s = 1.0\nbackoff_initial_s = 0.2\nbackoff_max_s = 1.0\nrestart_intensity = 5\nrestart_period_s = 60.0\nfailed_cooldown_s = 2.0\nfailback_hold_s = 1.0\nmemory_interval_s = 0.2\n";

/// A free loopback port (bound, then released for the caller to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `promtool check metrics` (Prometheus' own linter, installed by
/// deploy/setup.sh) on a scrape: whether it passed, and what it said.
pub fn promtool(text: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: run deploy/setup.sh (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// An NPU slot section (`primary`) as on a machine without the board: a
/// sound-looking `.rkllm` file in `dir` (sized like a 1.5B W8A8 model,
/// sparse: no disk used) and no runtime, so the only problem is the missing
/// runtime and the slot becomes unavailable. `npu_extra` goes into
/// `[slots.primary.npu]`.
pub fn npu_slot_without_runtime(dir: &Path, npu_extra: &str) -> String {
    let rkllm = dir.join("model-rk3588-w8a8.rkllm");
    std::fs::File::create(&rkllm)
        .unwrap()
        .set_len(1_600_000_000)
        .unwrap();
    format!(
        "[slots.primary]\nbackend = \"npu\"\nmodel = \"{}\"\nworker = \"{}\"\n[slots.primary.npu]\nruntime_path = \"{}/librkllmrt.so\"\n{npu_extra}\n",
        rkllm.display(),
        bin("worker-npu").display(),
        dir.display()
    )
}

/// A running supervisor.
pub struct Sup {
    /// The private directory (runtime and state directories inside); kept
    /// alive as long as the supervisor.
    pub dir: tempfile::TempDir,
    /// The config file's text (tests write it out for the binaries).
    pub text: String,
    /// The parsed config the supervisor runs with.
    pub config: Config,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sup {
    /// Starts a supervisor with `body` (slots and any other sections) plus a
    /// `[supervisor]` section pointing at a temporary directory.
    pub async fn start(body: &str) -> Self {
        Self::start_with("", body).await
    }

    /// Like `start`, with extra lines for the `[supervisor]` section.
    pub async fn start_with(supervisor_extra: &str, body: &str) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), supervisor_extra, body).await
    }

    /// Like `start_with`, in a directory of the caller's (whose paths, e.g.
    /// [`Sup::worker_socket_in`], a test needs before the start).
    pub async fn start_in(dir: tempfile::TempDir, supervisor_extra: &str, body: &str) -> Self {
        // No HTTP endpoint unless the test asks: tests run side by side.
        let http = if body.contains("[http]") {
            ""
        } else {
            "[http]\nlisten = \"\"\n"
        };
        let text = format!(
            "[supervisor]\nruntime_dir = \"{0}/run\"\nstate_dir = \"{0}/state\"\n{supervisor_extra}\n{http}{body}",
            dir.path().display()
        );
        let config = Config::from_toml(&text, dir.path()).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let config = config.clone();
            let shutdown = shutdown.clone();
            async move {
                supervisor::run(config, shutdown, None).await.unwrap();
            }
        });
        let sup = Self {
            text: text.clone(),
            dir,
            config,
            shutdown,
            task: Some(task),
        };
        // Wait for the admin socket.
        let deadline = Instant::now() + Duration::from_secs(10);
        while AdminClient::connect(&sup.admin_socket()).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "supervisor did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sup
    }

    /// The socket slot `slot`'s worker is started on (it is in the worker's
    /// command line) for a supervisor started in `dir`.
    pub fn worker_socket_in(dir: &Path, slot: &str) -> PathBuf {
        dir.join("run/workers").join(format!("{slot}.sock"))
    }

    /// The client socket.
    pub fn client_socket(&self) -> PathBuf {
        self.config.supervisor.client_socket()
    }

    /// The admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.config.supervisor.admin_socket()
    }

    /// The admin `Status` report.
    pub async fn status(&self) -> StatusReport {
        let mut admin = AdminClient::connect(&self.admin_socket()).await.unwrap();
        match admin.request(&AdminToSupervisor::Status).await.unwrap() {
            SupervisorToAdmin::Status(report) => *report,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// Sends one admin command on a fresh connection.
    pub async fn admin(&self, cmd: AdminToSupervisor) -> SupervisorToAdmin {
        let mut admin = AdminClient::connect(&self.admin_socket()).await.unwrap();
        admin.request(&cmd).await.unwrap()
    }

    /// The status of slot `name`.
    pub async fn slot(&self, name: &str) -> SlotStatus {
        self.status()
            .await
            .slots
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
    }

    /// Waits until `pred` holds for slot `name`, returning its status.
    pub async fn wait_slot(
        &self,
        name: &str,
        limit: Duration,
        pred: impl Fn(&SlotStatus) -> bool,
    ) -> SlotStatus {
        let deadline = Instant::now() + limit;
        loop {
            let slot = self.slot(name).await;
            if pred(&slot) {
                return slot;
            }
            assert!(
                Instant::now() < deadline,
                "slot {name} never reached the expected state; last: {slot:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every configured slot is ready (each within `limit`).
    pub async fn wait_all_ready(&self, limit: Duration) {
        let names: Vec<String> = self
            .status()
            .await
            .slots
            .into_iter()
            .map(|s| s.name)
            .collect();
        for name in names {
            self.wait_state(&name, SlotState::Ready, limit).await;
        }
    }

    /// Waits until slot `name` is in `state`.
    pub async fn wait_state(&self, name: &str, state: SlotState, limit: Duration) -> SlotStatus {
        self.wait_slot(name, limit, |s| s.state == state).await
    }

    /// A new client connection.
    pub async fn client(&self) -> ChatClient {
        ChatClient::connect(&self.client_socket()).await.unwrap()
    }

    /// Stops the supervisor and waits for it (a reply still running is
    /// drained first: up to `policy.drain_timeout_s`, 30 s by default).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(45), task)
                .await
                .expect("the supervisor did not stop")
                .unwrap();
        }
        // Nothing of the run is left listening.
        assert!(!self.client_socket().exists());
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One user message.
pub fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new(Role::User, text)]
}

/// Greedy parameters with a token limit.
pub fn greedy(max_tokens: u32) -> GenParams {
    GenParams {
        max_tokens,
        temperature: 0.0,
        ..GenParams::default()
    }
}

/// Every event of one request until it ends, each with its arrival time.
pub async fn collect(
    client: &mut ChatClient,
    limit: Duration,
) -> Vec<(Instant, SupervisorToClient)> {
    let mut events = Vec::new();
    let deadline = Instant::now() + limit;
    loop {
        let event = tokio::time::timeout_at(deadline.into(), client.next_event())
            .await
            .unwrap_or_else(|_| panic!("request did not end in time; so far: {events:?}"))
            .unwrap();
        let end = matches!(
            event,
            SupervisorToClient::Done(_) | SupervisorToClient::Error(_)
        );
        events.push((Instant::now(), event));
        if end {
            return events;
        }
    }
}

/// The concatenated token texts of a collected request.
pub fn streamed_text(events: &[(Instant, SupervisorToClient)]) -> String {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorToClient::Token(t) => Some(t.text.as_str()),
            _ => None,
        })
        .collect()
}
