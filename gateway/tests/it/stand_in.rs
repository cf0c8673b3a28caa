//! A scripted supervisor stand-in: speaks the proto client conversation (and
//! the admin conversation for `/status`) on a temporary Unix socket, records
//! every request, and answers with scripted events.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::admin::{AdminToSupervisor, StatusReport, SupervisorToAdmin};
use proto::chat::{Backend, ChatMessage, GenStats};
use proto::client::{ClientToSupervisor, Done, Started, Submit, SupervisorToClient, Token};
use proto::frame::{FrameReader, FrameWriter};
use proto::PeerRole;
use tokio::net::UnixListener;
use tokio::task::JoinSet;

/// One step of a scripted answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// Send this event (its request id is replaced with the request's).
    Send(SupervisorToClient),
    /// Wait.
    Wait(Duration),
}

/// Maps a request to the steps that answer it.
pub type Script = Arc<dyn Fn(&Submit) -> Vec<Step> + Send + Sync>;

/// The model name the stand-in reports.
pub const MODEL: &str = "stand-in-model";
/// The decode speed the stand-in reports.
pub const TPS: f64 = 12.5;

/// The footer the bot should show for a stand-in answer.
pub fn footer() -> String {
    format!("-# cpu · {MODEL} · {TPS:.1} tok/s")
}

/// Steps streaming `answer` in pieces of about `piece` characters, `delay` apart.
pub fn stream_answer(answer: &str, piece: usize, delay: Duration) -> Vec<Step> {
    let mut steps = vec![Step::Send(SupervisorToClient::Started(Started {
        request_id: 0,
        slot: "fallback".into(),
        backend: Backend::Cpu,
        model: MODEL.into(),
    }))];
    let chars: Vec<char> = answer.chars().collect();
    for part in chars.chunks(piece.max(1)) {
        steps.push(Step::Wait(delay));
        steps.push(Step::Send(SupervisorToClient::Token(Token {
            request_id: 0,
            text: part.iter().collect(),
        })));
    }
    steps.push(Step::Send(SupervisorToClient::Done(Done {
        request_id: 0,
        text: answer.to_owned(),
        backend: Backend::Cpu,
        model: MODEL.into(),
        stats: GenStats {
            generated_tokens: u32::try_from(chars.len() / piece.max(1)).unwrap_or(0),
            decode_tps: TPS,
            cached_tokens: 0,
            ..GenStats::default()
        },
    })));
    steps
}

/// An answer that depends on the question (so a test can tell answers apart).
pub fn echo_answer(submit: &Submit) -> String {
    let question = submit
        .messages
        .last()
        .map(|m| m.content.clone())
        .unwrap_or_default();
    format!(
        "You asked: \"{question}\". Here is a considered answer in several words, \
         streamed piece by piece so the reply is edited as it grows. The end."
    )
}

fn with_id(event: &SupervisorToClient, id: u64) -> SupervisorToClient {
    let mut event = event.clone();
    match &mut event {
        SupervisorToClient::Queued(e) => e.request_id = id,
        SupervisorToClient::Started(e) => e.request_id = id,
        SupervisorToClient::Token(e) => e.request_id = id,
        SupervisorToClient::Failover(e) => e.request_id = id,
        SupervisorToClient::Done(e) => e.request_id = id,
        SupervisorToClient::Error(e) => e.request_id = id,
        SupervisorToClient::Models(e) => e.request_id = id,
    }
    event
}

/// The running stand-in.
pub struct StandIn {
    /// Client socket path.
    pub path: PathBuf,
    submits: Arc<Mutex<Vec<Submit>>>,
    tasks: JoinSet<()>,
}

impl StandIn {
    /// Listens on `path` and answers every request with `script`.
    pub fn start(path: &Path, script: Script) -> Self {
        Self::start_dropping(path, script, false)
    }

    /// Like [`start`](Self::start); with `drop_first`, the connection that
    /// brings the first request is closed without a word (a supervisor
    /// restarting just as the request was sent).
    pub fn start_dropping(path: &Path, script: Script, drop_first: bool) -> Self {
        let drop_first = Arc::new(std::sync::atomic::AtomicBool::new(drop_first));
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let submits = Arc::new(Mutex::new(Vec::new()));
        let cancels = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        let (s, c) = (Arc::clone(&submits), Arc::clone(&cancels));
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve_client(
                    stream,
                    Arc::clone(&script),
                    Arc::clone(&s),
                    Arc::clone(&c),
                    Arc::clone(&drop_first),
                ));
            }
        });
        Self {
            path: path.to_owned(),
            submits,
            tasks,
        }
    }

    /// Requests received so far.
    pub fn submits(&self) -> Vec<Submit> {
        self.submits.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (polling: the stand-in has no events).
    pub async fn wait_submits(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        while self.submits.lock().unwrap().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the supervisor stand-in did not get {n} requests"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops listening and drops every connection (as a crashed supervisor would).
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_client(
    stream: tokio::net::UnixStream,
    script: Script,
    submits: Arc<Mutex<Vec<Submit>>>,
    cancels: Arc<Mutex<Vec<u64>>>,
    drop_first: Arc<std::sync::atomic::AtomicBool>,
) {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    if proto::hello::server_handshake(&mut reader, &mut writer, &[PeerRole::Client], "stand-in")
        .await
        .is_err()
    {
        return;
    }
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let mut answers = JoinSet::new();
    while let Ok(Some(message)) = reader.recv::<ClientToSupervisor>().await {
        match message {
            ClientToSupervisor::Submit(submit) => {
                let steps = script(&submit);
                let id = submit.request_id;
                submits.lock().unwrap().push(submit);
                if drop_first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let writer = Arc::clone(&writer);
                answers.spawn(async move {
                    for step in steps {
                        match step {
                            Step::Wait(d) => tokio::time::sleep(d).await,
                            Step::Send(event) => {
                                if writer
                                    .lock()
                                    .await
                                    .send(&with_id(&event, id))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
            ClientToSupervisor::Cancel(cancel) => cancels.lock().unwrap().push(cancel.request_id),
            // The gateway never asks for models.
            ClientToSupervisor::Models(_)
            | ClientToSupervisor::Stop(_)
            | ClientToSupervisor::Continue(_) => {}
        }
    }
}

/// A stand-in admin socket answering `Status` with `report`.
pub fn start_admin(path: &Path, report: StatusReport) -> JoinSet<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let report = report.clone();
            tokio::spawn(async move {
                let (r, w) = stream.into_split();
                let mut reader = FrameReader::new(r);
                let mut writer = FrameWriter::new(w);
                if proto::hello::server_handshake(
                    &mut reader,
                    &mut writer,
                    &[PeerRole::Admin],
                    "stand-in",
                )
                .await
                .is_err()
                {
                    return;
                }
                while let Ok(Some(AdminToSupervisor::Status)) =
                    reader.recv::<AdminToSupervisor>().await
                {
                    let answer = SupervisorToAdmin::Status(Box::new(report.clone()));
                    if writer.send(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    tasks
}

/// Text of the chat turns, for assertions.
pub fn turns(messages: &[ChatMessage]) -> Vec<(String, String)> {
    messages
        .iter()
        .map(|m| (m.role.as_str().to_owned(), m.content.clone()))
        .collect()
}
