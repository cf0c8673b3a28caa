//! A minimal supervisor for the tests: listens on a socket in a temporary
//! directory, starts the real `worker-npu` binary on it with the fake RKLLM
//! runtime, and speaks the worker conversation through `proto`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use proto::chat::{ChatMessage, GenParams, Role};
use proto::frame::{FrameReader, FrameWriter};
use proto::hello::server_handshake;
use proto::worker::{
    BackendOptions, Generate, KvCacheType, Load, NpuOptions, Profile, SupervisorToWorker,
    WorkerToSupervisor,
};
use proto::PeerRole;
use tempfile::TempDir;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};

/// The fake runtime with the 1.2.x layout (version 1.2.1).
pub const FAKE_1_2: &str = env!("FAKE_RKLLM_1_2_SO");
/// The fake runtime with the 1.3.0 layout.
pub const FAKE_1_3: &str = env!("FAKE_RKLLM_1_3_SO");
/// The fake runtime claiming release 1.1.4 (unsupported).
pub const FAKE_UNKNOWN: &str = env!("FAKE_RKLLM_UNKNOWN_SO");

/// The fake runtime's answer when `FAKE_RKLLM_TEXT` is not set
/// (`DEFAULT_SCRIPT` in fake_rkllm.c): multi-byte characters of 2, 3 and 4
/// bytes, which 3-byte pieces split across `RKLLM_RUN_WAITING` callbacks.
pub const SCRIPT: &str = "Hello from the fake NPU! Naïve café: ☕ and 🎉 done.";

/// A model file name the worker takes for an RK3588 W8A8 Qwen build (ChatML).
pub const MODEL_NAME: &str = "Qwen2.5-0.5B-Instruct_w8a8_rk3588.rkllm";

/// How long any single expected message may take.
const STEP: Duration = Duration::from_secs(20);

/// A temporary directory with a model file, a record file and a log file.
pub struct Fixture {
    pub dir: TempDir,
    pub model: PathBuf,
    pub record: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

impl Fixture {
    /// A fixture whose model is a plausible (2 MiB, sparse) `.rkllm` file.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join(MODEL_NAME);
        let f = File::create(&model).unwrap();
        f.set_len(2 << 20).unwrap();
        let record = dir.path().join("record.txt");
        let log = dir.path().join("worker.log");
        std::fs::create_dir(dir.path().join("sys")).unwrap();
        Self {
            dir,
            model,
            record,
            log,
            env: Vec::new(),
        }
    }

    /// Sets a variable in the worker's environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the worker and completes the handshake.
    pub async fn spawn(&self) -> Worker {
        let socket = self.dir.path().join("worker.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = worker_command();
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--sysfs-root")
            .arg(self.dir.path().join("sys"))
            // Like the supervisor: a clean environment plus the slot's table.
            .env_clear()
            .env("RUST_LOG", "debug")
            .env("FAKE_RKLLM_RECORD", &self.record)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = cmd.spawn().unwrap();
        let (stream, _) = tokio::time::timeout(STEP, listener.accept())
            .await
            .expect("the worker did not connect")
            .unwrap();
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r);
        let mut writer = FrameWriter::new(w);
        let hello = server_handshake(
            &mut reader,
            &mut writer,
            &[PeerRole::Worker],
            "test-supervisor",
        )
        .await
        .unwrap();
        assert_eq!(hello.role, PeerRole::Worker);
        Worker {
            child,
            reader,
            writer,
        }
    }

    /// The record file's key=value lines.
    pub fn record(&self) -> Vec<(String, String)> {
        read_record(&self.record)
    }

    /// The last value recorded for `key`.
    pub fn recorded(&self, key: &str) -> Option<String> {
        self.record()
            .into_iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Waits until `key` appears in the record (the runtime acts on another thread).
    pub async fn wait_recorded(&self, key: &str, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(v) = self.recorded(key) {
                return Some(v);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The worker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A Load for this fixture's model with the given runtime and ABI setting.
    pub fn load(&self, runtime: &str, abi: &str) -> Load {
        npu_load(&self.model, runtime, abi)
    }
}

/// The worker binary, run through `WORKER_NPU_TEST_RUNNER` when set (e.g.
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu` to run the whole suite on the
/// board's architecture under emulation: the test binary itself runs under
/// cargo's target runner, but the worker it starts needs one too).
fn worker_command() -> Command {
    let binary = env!("CARGO_BIN_EXE_worker-npu");
    match std::env::var("WORKER_NPU_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut parts = runner.split_whitespace();
            let mut cmd = Command::new(parts.next().unwrap_or_default());
            cmd.args(parts).arg(binary);
            cmd
        }
        _ => Command::new(binary),
    }
}

fn read_record(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Undoes the record file's escaping of `\n` and `\\`.
pub fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                // `\\`, and a lone trailing backslash.
                Some('\\') | None => out.push('\\'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A Load of `model` on the NPU with test-friendly settings.
pub fn npu_load(model: &Path, runtime: &str, abi: &str) -> Load {
    Load {
        model_path: model.to_string_lossy().into_owned(),
        profile: Profile {
            name: "test".into(),
            context_size: 2048,
            batch_size: 64,
            threads: 0,
            kv_cache_type: KvCacheType::F16,
            flash_attention: false,
            max_new_tokens: 256,
        },
        backend: BackendOptions::Npu(NpuOptions {
            runtime_path: runtime.into(),
            abi: abi.into(),
            enabled_cpus_mask: 0xF0,
            base_domain_id: 0,
            system_prompt: None,
            prompt_prefix: None,
            prompt_postfix: None,
            prompt_cache_dir: None,
        }),
    }
}

/// A one-question Generate.
pub fn ask(request_id: u64, question: &str) -> Generate {
    Generate {
        request_id,
        messages: vec![ChatMessage::new(Role::User, question)],
        params: GenParams::default(),
        assistant_prefix: String::new(),
        conversation: None,
    }
}

/// The worker process and its end of the conversation.
pub struct Worker {
    pub child: Child,
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
}

impl Worker {
    pub async fn send(&mut self, msg: SupervisorToWorker) {
        self.writer.send(&msg).await.unwrap();
    }

    /// The next message, or `None` when the worker closed the socket.
    pub async fn try_recv(&mut self, within: Duration) -> Result<Option<WorkerToSupervisor>, ()> {
        match tokio::time::timeout(within, self.reader.recv::<WorkerToSupervisor>()).await {
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(err)) if err.is_disconnect() => Ok(None),
            Ok(Err(err)) => panic!("bad frame from the worker: {err}"),
            Err(_) => Err(()),
        }
    }

    /// The next message (panics on timeout or close).
    pub async fn recv(&mut self) -> WorkerToSupervisor {
        self.try_recv(STEP)
            .await
            .expect("timed out waiting for the worker")
            .expect("the worker closed the socket")
    }

    /// Sends a Load and returns the answer.
    pub async fn load(&mut self, load: Load) -> WorkerToSupervisor {
        self.send(SupervisorToWorker::Load(load)).await;
        self.recv().await
    }

    /// Reads tokens of `request_id` until its Done or Error; returns the
    /// text pieces and the final message.
    pub async fn collect(&mut self, request_id: u64) -> (Vec<String>, WorkerToSupervisor) {
        let mut pieces = Vec::new();
        loop {
            match self.recv().await {
                WorkerToSupervisor::Token(t) => {
                    assert_eq!(t.request_id, request_id);
                    pieces.push(t.text);
                }
                WorkerToSupervisor::Heartbeat(_) => {}
                end @ (WorkerToSupervisor::Done(_) | WorkerToSupervisor::Error(_)) => {
                    return (pieces, end)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Waits for the process to end.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the worker did not exit")
            .unwrap()
    }

    /// Closes the socket (as a supervisor that died would) and keeps the process.
    pub fn hang_up(self) -> Child {
        self.child
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }
}

/// Recorded key=value pairs as a map (last value wins).
pub fn record_map(pairs: &[(String, String)]) -> HashMap<String, String> {
    pairs.iter().cloned().collect()
}
