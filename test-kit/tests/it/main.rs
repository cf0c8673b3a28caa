//! The real `fake-worker` binary driven over its socket: each scripted
//! behaviour does what the script says.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use proto::chat::{ChatMessage, FinishReason, GenParams, Role};
use proto::frame::{FrameReader, FrameWriter};
use proto::hello::server_handshake;
use proto::worker::{
    BackendOptions, CpuOptions, Generate, KvCacheType, Load, Ping, Profile, SupervisorToWorker,
    WorkerErrorKind, WorkerToSupervisor,
};
use proto::PeerRole;
use test_kit::fake::words;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};

const STEP: Duration = Duration::from_secs(20);

struct Worker {
    _dir: tempfile::TempDir,
    child: Child,
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
}

impl Worker {
    async fn start(script: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("worker.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fake-worker"))
            .arg("--socket")
            .arg(&socket)
            .env_clear()
            .env(test_kit::ENV, script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (stream, _) = tokio::time::timeout(STEP, listener.accept())
            .await
            .expect("the fake worker did not connect")
            .unwrap();
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r);
        let mut writer = FrameWriter::new(w);
        server_handshake(&mut reader, &mut writer, &[PeerRole::Worker], "test")
            .await
            .unwrap();
        Self {
            _dir: dir,
            child,
            reader,
            writer,
        }
    }

    async fn send(&mut self, msg: SupervisorToWorker) {
        self.writer.send(&msg).await.unwrap();
    }

    async fn recv(&mut self) -> Option<WorkerToSupervisor> {
        tokio::time::timeout(STEP, self.reader.recv())
            .await
            .expect("no message in time")
            .ok()
            .flatten()
    }

    async fn load(&mut self) -> WorkerToSupervisor {
        self.send(SupervisorToWorker::Load(load())).await;
        self.recv().await.expect("closed during the load")
    }

    async fn ready(script: &str) -> Self {
        let mut w = Self::start(script).await;
        let reply = w.load().await;
        assert!(matches!(reply, WorkerToSupervisor::Ready(_)), "{reply:?}");
        w
    }

    /// Token texts with arrival times until the end (or the socket closes).
    async fn collect(&mut self) -> (Vec<(Instant, String)>, Option<WorkerToSupervisor>) {
        let mut tokens = Vec::new();
        loop {
            match self.recv().await {
                Some(WorkerToSupervisor::Token(t)) => tokens.push((Instant::now(), t.text)),
                end => return (tokens, end),
            }
        }
    }

    async fn wait(mut self) -> ExitStatus {
        tokio::time::timeout(STEP, self.child.wait())
            .await
            .expect("the fake worker did not exit")
            .unwrap()
    }
}

fn load() -> Load {
    Load {
        model_path: Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("Cargo.toml")
            .display()
            .to_string(),
        profile: Profile {
            name: "test".into(),
            context_size: 1024,
            batch_size: 64,
            threads: 1,
            kv_cache_type: KvCacheType::F16,
            flash_attention: false,
            max_new_tokens: 512,
        },
        backend: BackendOptions::Cpu(CpuOptions {
            use_mmap: true,
            chat_template: None,
            cache_sequences: 0,
        }),
    }
}

fn ask(id: u64, max_tokens: u32, prefix: &str) -> SupervisorToWorker {
    SupervisorToWorker::Generate(Generate {
        request_id: id,
        messages: vec![ChatMessage::new(Role::User, "tell me a story")],
        params: GenParams {
            max_tokens,
            ..GenParams::default()
        },
        assistant_prefix: prefix.to_owned(),
        conversation: None,
    })
}

#[tokio::test]
async fn streams_the_passage_at_its_cadence_and_continues_a_prefix() {
    let mut w = Worker::ready("tokens=5,token-ms=30,load-ms=200").await;
    w.send(ask(1, 100, "")).await;
    let (tokens, end) = w.collect().await;
    let Some(WorkerToSupervisor::Done(done)) = end else {
        panic!("{end:?}")
    };
    assert_eq!(done.finish, FinishReason::EndOfTurn);
    let text: String = tokens.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(text, words()[..5].concat());
    let gaps: Vec<Duration> = tokens.windows(2).map(|p| p[1].0 - p[0].0).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(20)),
        "{gaps:?}"
    );
    // A failed-over answer goes on where the prefix ends.
    w.send(ask(2, 3, &words()[..2].concat())).await;
    let (tokens, _) = w.collect().await;
    let text: String = tokens.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(text, words()[2..5].concat());
}

#[tokio::test]
async fn the_load_takes_the_scripted_time() {
    let mut w = Worker::start("load-ms=600").await;
    let WorkerToSupervisor::Ready(ready) = w.load().await else {
        panic!()
    };
    assert!(ready.load_ms >= 600.0, "{}", ready.load_ms);
}

#[tokio::test]
async fn slow_from_a_token_on() {
    let mut w = Worker::ready("token-ms=5,slow-at-token=3,slow-ms=300").await;
    w.send(ask(1, 4, "")).await;
    let (tokens, _) = w.collect().await;
    assert_eq!(tokens.len(), 4);
    assert!(tokens[1].0 - tokens[0].0 < Duration::from_millis(200));
    assert!(tokens[2].0 - tokens[1].0 >= Duration::from_millis(250));
}

#[tokio::test]
async fn crash_at_a_token_aborts_after_the_tokens_before_it() {
    let mut w = Worker::ready("crash-at-token=3").await;
    w.send(ask(1, 100, "")).await;
    let (tokens, end) = w.collect().await;
    assert!(end.is_none(), "{end:?}");
    assert_eq!(tokens.len(), 2);
    assert_eq!(w.wait().await.signal(), Some(libc_sigabrt()));
}

#[tokio::test]
async fn exit_at_a_token_exits_with_the_code() {
    let mut w = Worker::ready("exit-at-token=2:3").await;
    w.send(ask(1, 100, "")).await;
    let (tokens, _) = w.collect().await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(w.wait().await.code(), Some(3));
}

#[tokio::test]
async fn hang_at_a_token_keeps_answering_pings_and_shutdown_still_ends_it() {
    let mut w = Worker::ready("hang-at-token=2").await;
    w.send(ask(7, 100, "")).await;
    assert!(matches!(w.recv().await, Some(WorkerToSupervisor::Token(_))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.send(SupervisorToWorker::Ping(Ping { seq: 1 })).await;
    let Some(WorkerToSupervisor::Heartbeat(hb)) = w.recv().await else {
        panic!("no heartbeat from a hung engine")
    };
    assert_eq!((hb.busy_with, hb.tokens_total), (Some(7), 1));
    w.send(SupervisorToWorker::Shutdown).await;
    assert_eq!(w.wait().await.code(), Some(0));
}

#[tokio::test]
async fn a_broken_model_exit_code_at_load() {
    let mut w = Worker::start("exit-on-load=70").await;
    let WorkerToSupervisor::LoadFailed(failed) = w.load().await else {
        panic!()
    };
    assert_eq!(failed.exit_code, 70);
    assert!(failed.message.contains("truncated"), "{}", failed.message);
    assert_eq!(w.wait().await.code(), Some(70));
}

#[tokio::test]
async fn crash_on_load_while_a_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("broken");
    std::fs::write(&flag, "").unwrap();
    let script = format!("crash-on-load-while={}", flag.display());
    let mut w = Worker::start(&script).await;
    w.send(SupervisorToWorker::Load(load())).await;
    assert!(w.recv().await.is_none());
    assert_eq!(w.wait().await.signal(), Some(libc_sigabrt()));
    std::fs::remove_file(&flag).unwrap();
    let mut w = Worker::start(&script).await;
    assert!(matches!(w.load().await, WorkerToSupervisor::Ready(_)));
}

#[tokio::test]
async fn refusals() {
    for (script, kind) in [
        ("refuse=busy", WorkerErrorKind::Busy),
        ("refuse=not-loaded", WorkerErrorKind::NotLoaded),
    ] {
        let mut w = Worker::ready(script).await;
        w.send(ask(1, 10, "")).await;
        let (_, end) = w.collect().await;
        let Some(WorkerToSupervisor::Error(e)) = end else {
            panic!("{end:?}")
        };
        assert_eq!(e.kind, kind);
    }
}

#[tokio::test]
async fn memory_grows_in_rss_anon() {
    let w = Worker::ready("grow-mib-per-s=200").await;
    let pid = w.child.id().unwrap();
    let rss_anon_mib = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            / 1024
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while rss_anon_mib() < 150 {
        assert!(Instant::now() < deadline, "RssAnon {} MiB", rss_anon_mib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_script_it_does_not_understand_stops_it_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fake-worker"))
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .env_clear()
        .env(test_kit::ENV, "token-delay-ms=40")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("token-delay-ms=40"), "{stderr}");
}

fn libc_sigabrt() -> i32 {
    6
}
