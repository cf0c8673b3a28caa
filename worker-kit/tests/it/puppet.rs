//! A scripted engine for the runtime's tests: loads and generates on cue,
//! and records what happened to it (loads, stop hooks, models dropped).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::chat::{Backend, ChatMessage, FinishReason, GenParams, Role};
use proto::frame::{FrameReader, FrameWriter};
use proto::worker::{
    BackendOptions, CpuOptions, ExitCode, Generate, KvCacheType, Load, ModelFacts, Profile,
    SupervisorToWorker, WorkerErrorKind, WorkerToSupervisor,
};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use worker_kit::{
    Engine, Exit, Finish, Flow, GenFailure, Job, LoadFailure, Model, Serve, Served, TokenStream,
};

/// What the scripted engine does.
#[derive(Debug, Clone)]
pub struct Script {
    /// Time a load takes.
    pub load: Duration,
    /// A load fails with this exit code.
    pub load_fails: Option<ExitCode>,
    /// The pieces of every answer, one per token.
    pub pieces: Vec<Vec<u8>>,
    /// Time between tokens.
    pub cadence: Duration,
    /// Fail with an engine error after this many tokens.
    pub error_after: Option<usize>,
    /// Keep going this long after being told to stop (a slow abort).
    pub stop_lag: Duration,
    /// Never return from a generation once this many tokens are out (stuck).
    pub stuck_after: Option<usize>,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            load: Duration::ZERO,
            load_fails: None,
            pieces: "one two three four five six seven eight nine ten"
                .split_inclusive(' ')
                .map(|w| w.as_bytes().to_vec())
                .collect(),
            cadence: Duration::from_millis(5),
            error_after: None,
            stop_lag: Duration::ZERO,
            stuck_after: None,
        }
    }
}

/// What happened to the engine, in order.
pub type Log = Arc<Mutex<Vec<String>>>;

pub fn note(log: &Log, what: impl Into<String>) {
    log.lock().unwrap().push(what.into());
}

pub struct Puppet {
    pub script: Script,
    pub log: Log,
}

struct PuppetModel {
    script: Script,
    log: Log,
    profile: String,
}

impl Drop for PuppetModel {
    fn drop(&mut self) {
        note(&self.log, format!("drop model {}", self.profile));
    }
}

impl Drop for Puppet {
    fn drop(&mut self) {
        note(&self.log, "drop engine");
    }
}

impl Engine for Puppet {
    fn backend(&self) -> Backend {
        Backend::Cpu
    }

    fn load(&mut self, load: &Load, serve: Serve<'_>) -> Result<Served, LoadFailure> {
        note(&self.log, format!("load {}", load.profile.name));
        std::thread::sleep(self.script.load);
        if let Some(code) = self.script.load_fails {
            return Err(LoadFailure::broken(code, "the scripted model is broken"));
        }
        let mut model = PuppetModel {
            script: self.script.clone(),
            log: Arc::clone(&self.log),
            profile: load.profile.name.clone(),
        };
        let facts = ModelFacts {
            name: "puppet".into(),
            file_size: 1,
            architecture: String::new(),
            train_context: 0,
            context_size: load.profile.context_size,
            parameters: 0,
            chat_template: String::new(),
        };
        Ok(serve.serve(facts, &mut model))
    }
}

impl Model for PuppetModel {
    fn generate(&mut self, job: &Job, out: &TokenStream) -> Result<Finish, GenFailure> {
        note(&self.log, format!("generate {}", job.generate.request_id));
        let log = Arc::clone(&self.log);
        out.on_stop(move |why| note(&log, format!("stop hook {why:?}")));
        let mut stop_seen: Option<std::time::Instant> = None;
        for (i, piece) in self.script.pieces.iter().enumerate() {
            if self.script.stuck_after == Some(i) {
                note(&self.log, "stuck");
                loop {
                    std::thread::sleep(Duration::from_secs(60));
                }
            }
            if self.script.error_after == Some(i) {
                return Err(GenFailure::new(
                    WorkerErrorKind::Engine,
                    "scripted engine failure",
                ));
            }
            std::thread::sleep(self.script.cadence);
            if out.is_stopped() {
                let since = *stop_seen.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= self.script.stop_lag {
                    return Ok(Finish::new(FinishReason::Cancelled));
                }
            }
            // Keeps decoding through a slow stop: the stream drops the text.
            if out.token(piece) == Flow::Stop && self.script.stop_lag.is_zero() {
                return Ok(Finish::new(FinishReason::MaxTokens));
            }
        }
        Ok(Finish {
            reason: FinishReason::EndOfTurn,
            prompt_tokens: Some(7),
            prefill_ms: Some(1.5),
        })
    }
}

type Reader = FrameReader<ReadHalf<DuplexStream>>;
type Writer = FrameWriter<WriteHalf<DuplexStream>>;

/// The supervisor's end of a worker served in-process.
pub struct Sup {
    pub reader: Reader,
    pub writer: Writer,
    pub log: Log,
    terminate: Option<oneshot::Sender<()>>,
    pub worker: tokio::task::JoinHandle<Exit>,
}

impl Sup {
    pub fn start(script: Script) -> Self {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (r, w) = tokio::io::split(theirs);
        let log: Log = Arc::default();
        let engine = Puppet {
            script,
            log: Arc::clone(&log),
        };
        let (term_tx, term_rx) = oneshot::channel::<()>();
        let worker = tokio::spawn(worker_kit::serve(
            FrameReader::new(r),
            FrameWriter::new(w),
            engine,
            async move {
                if term_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            },
        ));
        let (r, w) = tokio::io::split(ours);
        Self {
            reader: FrameReader::new(r),
            writer: FrameWriter::new(w),
            log,
            terminate: Some(term_tx),
            worker,
        }
    }

    pub async fn send(&mut self, msg: SupervisorToWorker) {
        self.writer.send(&msg).await.unwrap();
    }

    pub async fn recv(&mut self) -> WorkerToSupervisor {
        tokio::time::timeout(Duration::from_secs(10), self.reader.recv())
            .await
            .expect("no message from the worker within 10 s")
            .unwrap()
            .expect("the worker closed the socket")
    }

    /// Sends SIGTERM (as the runtime sees it).
    pub fn sigterm(&mut self) {
        let _ = self.terminate.take().unwrap().send(());
    }

    pub async fn load(&mut self, profile: &str) -> WorkerToSupervisor {
        self.send(SupervisorToWorker::Load(load(profile))).await;
        self.recv().await
    }

    pub async fn ready(script: Script) -> Self {
        let mut sup = Self::start(script);
        let reply = sup.load("normal").await;
        assert!(matches!(reply, WorkerToSupervisor::Ready(_)), "{reply:?}");
        sup
    }

    /// Pieces of `id` until its Done or Error, which is returned too.
    pub async fn collect(&mut self, id: u64) -> (Vec<String>, WorkerToSupervisor) {
        let mut pieces = Vec::new();
        loop {
            match self.recv().await {
                WorkerToSupervisor::Token(t) => {
                    assert_eq!(t.request_id, id);
                    pieces.push(t.text);
                }
                end @ (WorkerToSupervisor::Done(_) | WorkerToSupervisor::Error(_)) => {
                    return (pieces, end)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    pub async fn exit(self, within: Duration) -> Exit {
        tokio::time::timeout(within, self.worker)
            .await
            .expect("the worker did not exit in time")
            .unwrap()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the engine's log has `entry`.
    pub async fn wait_log(&self, entry: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.log().iter().any(|e| e == entry) {
            assert!(
                std::time::Instant::now() < deadline,
                "{entry:?} never logged: {:?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub fn load(profile: &str) -> Load {
    Load {
        model_path: "/models/puppet.gguf".into(),
        profile: Profile {
            name: profile.into(),
            context_size: 512,
            batch_size: 64,
            threads: 1,
            kv_cache_type: KvCacheType::F16,
            flash_attention: false,
            max_new_tokens: 100,
        },
        backend: BackendOptions::Cpu(CpuOptions {
            use_mmap: true,
            chat_template: None,
            cache_sequences: 0,
        }),
    }
}

pub fn ask(id: u64) -> SupervisorToWorker {
    SupervisorToWorker::Generate(Generate {
        request_id: id,
        messages: vec![ChatMessage::new(Role::User, "count")],
        params: GenParams::default(),
        assistant_prefix: String::new(),
        conversation: None,
    })
}
