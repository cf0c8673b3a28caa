//! A front door's side of the cluster: publishes requests to the work-queue
//! stream, answers the boards' claims, relays their replies, and carries out
//! the [`Tracker`]'s decisions (continuing a reply on another board).
//!
//! One background task keeps the table of boards from their heartbeats;
//! each request has its own task, which ends with the request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use proto::admin::SlotState;
use proto::chat::{Backend, ChatMessage, GenParams};
use proto::client::{ErrorEvent, ErrorKind, ModelSlot, SupervisorToClient};
use thiserror::Error;
use tokio::sync::{mpsc, OnceCell};
use tokio_util::sync::CancellationToken;

use super::boards::{Boards, Route};
use super::target::{NatsConnectError, NatsTarget};
use super::tracker::{Limits, Out, Tracker};
use super::wire::{Claim, ClaimAnswer, Control, Heartbeat, Reply, Subjects, WorkRequest};

/// How long a publish to the stream is retried (a server restarting).
const PUBLISH_PATIENCE: Duration = Duration::from_secs(20);
/// How often a request's task looks at the clock and the heartbeats.
const TICK: Duration = Duration::from_millis(200);
/// How long a new front door waits for heartbeats before it refuses a class.
const GRACE: Duration = Duration::from_millis(2_500);

/// Failures of the cluster transport.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] NatsConnectError),
    /// The work stream could not be created or reached.
    #[error("cannot set up the work stream {stream} on the NATS server")]
    Stream {
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request could not be stored in the stream in time.
    #[error("the NATS server did not accept the request within {seconds} s")]
    Publish {
        /// The patience.
        seconds: u64,
    },
    /// A subscription failed.
    #[error("cannot subscribe on the NATS server")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// No model class: the request names none and the target has no default.
    #[error("the request names no model and the NATS target has no class= default")]
    NoClass,
    /// The link is shutting down.
    #[error("the cluster link is shutting down")]
    ShuttingDown,
}

struct Front {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    default_class: Option<String>,
    limits: Limits,
    boards: StdMutex<Boards>,
    started: Instant,
    stream_ready: OnceCell<()>,
    next_owner_id: AtomicU64,
    shutdown: CancellationToken,
    servers: String,
}

impl Front {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn boards(&self) -> std::sync::MutexGuard<'_, Boards> {
        self.boards.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A front door's connection to the cluster.
#[derive(Clone)]
pub struct ClusterLink {
    front: Arc<Front>,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("servers", &self.front.servers)
            .field("prefix", &self.front.subjects.prefix())
            .finish_non_exhaustive()
    }
}

/// One request sent to the cluster. Dropping it cancels the request.
pub struct ClusterRequest {
    id: u64,
    events: mpsc::UnboundedReceiver<SupervisorToClient>,
    control: mpsc::UnboundedSender<Control>,
}

impl std::fmt::Debug for ClusterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRequest")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ClusterRequest {
    /// The owner's id of this request.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next event; `None` when the request's task ended without an end
    /// event (the link shut down).
    pub async fn next(&mut self) -> Option<SupervisorToClient> {
        self.events.recv().await
    }

    /// The next event if one is waiting; `Some(None)` as [`Self::next`].
    pub fn try_next(&mut self) -> Option<Option<SupervisorToClient>> {
        match self.events.try_recv() {
            Ok(event) => Some(Some(event)),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
        }
    }

    /// Ends the answer where it is (still with `Done`).
    pub fn stop(&self) {
        let _ = self.control.send(Control::Stop);
    }
}

impl ClusterLink {
    /// Connects to the cluster and starts listening to the boards.
    ///
    /// # Errors
    /// [`ClusterError::Connect`].
    pub async fn connect(
        target: &NatsTarget,
        software: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, ClusterError> {
        let client = target.connect(software).await?;
        let subjects = Subjects::new(&target.prefix).map_err(|e| ClusterError::Stream {
            stream: target.prefix.clone(),
            source: Box::new(e),
        })?;
        let heartbeats = client
            .subscribe(subjects.heartbeat_all())
            .await
            .map_err(ClusterError::Subscribe)?;
        let front = Arc::new(Front {
            js: jetstream::new(client.clone()),
            client,
            subjects,
            default_class: target.class.clone(),
            limits: Limits {
                silence_ms: u64::try_from(target.silence.as_millis()).unwrap_or(u64::MAX),
                ..Limits::default()
            },
            boards: StdMutex::new(Boards::default()),
            started: Instant::now(),
            stream_ready: OnceCell::new(),
            next_owner_id: AtomicU64::new(1),
            shutdown,
            servers: target.servers.clone(),
        });
        tokio::spawn(listen_heartbeats(Arc::clone(&front), heartbeats));
        Ok(Self { front })
    }

    /// The servers, for messages.
    pub fn servers(&self) -> &str {
        &self.front.servers
    }

    /// Every board seen: its last heartbeat, whether it is alive, and how
    /// many milliseconds ago it spoke.
    pub fn boards(&self) -> Vec<(Heartbeat, bool, u64)> {
        let now = self.front.now();
        self.front
            .boards()
            .list(now)
            .into_iter()
            .map(|(b, alive, ago)| (b.clone(), alive, ago))
            .collect()
    }

    /// Waits (at most `limit`) until some board announces itself.
    pub async fn wait_for_boards(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.boards().iter().any(|(_, alive, _)| *alive) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The classes live boards serve, one entry per board and class; the
    /// entry's model is the class (what a request names to get it).
    pub fn models(&self) -> Vec<ModelSlot> {
        let mut out = Vec::new();
        for (beat, alive, _) in self.boards() {
            if !alive {
                continue;
            }
            let backend = beat.slots.first().map_or(Backend::Cpu, |s| s.backend);
            let ready = beat.slots.iter().any(|s| s.state == SlotState::Ready);
            for class in &beat.classes {
                out.push(ModelSlot {
                    name: format!("{}/{class}", beat.board),
                    backend,
                    model: class.clone(),
                    model_file: class.clone(),
                    state: if ready {
                        SlotState::Ready
                    } else {
                        SlotState::Busy
                    },
                });
            }
        }
        out
    }

    async fn ensure_stream(&self) -> Result<(), ClusterError> {
        let front = &self.front;
        front
            .stream_ready
            .get_or_try_init(|| async {
                ensure_stream(&front.js, &front.subjects).await?;
                Ok::<(), ClusterError>(())
            })
            .await?;
        Ok(())
    }

    /// Sends a request for `model` (a class; empty = the target's class).
    /// A class no live board serves ends at once with an error event.
    ///
    /// # Errors
    /// [`ClusterError`] when the request could not be stored.
    pub async fn submit(
        &self,
        messages: Vec<ChatMessage>,
        params: GenParams,
        model: &str,
    ) -> Result<ClusterRequest, ClusterError> {
        let front = &self.front;
        if front.shutdown.is_cancelled() {
            return Err(ClusterError::ShuttingDown);
        }
        let class = if model.is_empty() {
            front.default_class.clone().ok_or(ClusterError::NoClass)?
        } else {
            model.to_owned()
        };
        let owner_id = front.next_owner_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (control, control_rx) = mpsc::unbounded_channel();
        let request = ClusterRequest {
            id: owner_id,
            events,
            control,
        };
        loop {
            let now = front.now();
            let route = front.boards().route(
                &class,
                now,
                now,
                u64::try_from(GRACE.as_millis()).unwrap_or(0),
            );
            match route {
                Route::Publish => break,
                Route::Wait => tokio::time::sleep(Duration::from_millis(100)).await,
                Route::Refuse(message) => {
                    let _ = events_tx.send(SupervisorToClient::Error(ErrorEvent {
                        request_id: owner_id,
                        kind: ErrorKind::NoWorker,
                        message,
                    }));
                    return Ok(request);
                }
            }
        }
        self.ensure_stream().await?;
        // A unique id; the inbox generator is the client's own nuid.
        let inbox = front.client.new_inbox();
        let id = inbox.rsplit('.').next().unwrap_or(&inbox).to_owned();
        let replies = front
            .client
            .subscribe(front.subjects.reply(&id))
            .await
            .map_err(ClusterError::Subscribe)?;
        let claims = front
            .client
            .subscribe(front.subjects.claim(&id))
            .await
            .map_err(ClusterError::Subscribe)?;
        let (tracker, first) = Tracker::new(
            id,
            owner_id,
            class,
            messages,
            params,
            front.limits,
            front.now(),
        );
        publish(front, &first).await?;
        tokio::spawn(drive(
            Arc::clone(front),
            tracker,
            replies,
            claims,
            events_tx,
            control_rx,
        ));
        Ok(request)
    }
}

/// Creates the work-queue stream if it does not exist (bridges do the same).
///
/// # Errors
/// [`ClusterError::Stream`].
pub async fn ensure_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<jetstream::stream::Stream, ClusterError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: subjects.stream(),
        subjects: vec![subjects.work_all()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        // A request nobody took within an hour is of no use to anyone.
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::Stream {
        stream: subjects.stream(),
        source: Box::new(e),
    })
}

/// Stores one attempt in the stream, retrying while the server is away; the
/// message id makes a retry of a stored attempt a no-op.
async fn publish(front: &Front, work: &WorkRequest) -> Result<(), ClusterError> {
    let body = serde_json::to_vec(work).unwrap_or_default();
    let deadline = Instant::now() + PUBLISH_PATIENCE;
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", work.msg_id().as_str());
        let attempt = async {
            front
                .js
                .publish_with_headers(
                    front.subjects.work(&work.class),
                    headers,
                    body.clone().into(),
                )
                .await?
                .await
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(err)) => tracing::warn!(error = %err, "publishing a request failed; retrying"),
            Err(_) => tracing::warn!("publishing a request timed out; retrying"),
        }
        if Instant::now() >= deadline || front.shutdown.is_cancelled() {
            return Err(ClusterError::Publish {
                seconds: PUBLISH_PATIENCE.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn listen_heartbeats(front: Arc<Front>, mut sub: async_nats::Subscriber) {
    loop {
        let msg = tokio::select! {
            () = front.shutdown.cancelled() => return,
            msg = sub.next() => msg,
        };
        let Some(msg) = msg else { return };
        match serde_json::from_slice::<Heartbeat>(&msg.payload) {
            Ok(beat) => {
                let now = front.now();
                front.boards().on_heartbeat(beat, now);
            }
            Err(err) => {
                tracing::debug!(error = %err, subject = %msg.subject, "ignored a malformed heartbeat");
            }
        }
    }
}

/// One request's task: claims, replies, controls and the clock in; the
/// tracker's decisions out.
async fn drive(
    front: Arc<Front>,
    mut tracker: Tracker,
    mut replies: async_nats::Subscriber,
    mut claims: async_nats::Subscriber,
    events: mpsc::UnboundedSender<SupervisorToClient>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let control_subject = front.subjects.control(tracker.id());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let outs = tokio::select! {
            () = front.shutdown.cancelled() => {
                tracker.cancel();
                let _ = send_control(&front, &control_subject, Control::Cancel).await;
                return;
            }
            msg = replies.next() => {
                let Some(msg) = msg else { return };
                match serde_json::from_slice::<Reply>(&msg.payload) {
                    Ok(reply) => tracker.on_reply(reply, front.now()),
                    Err(err) => {
                        tracing::debug!(error = %err, "ignored a malformed reply");
                        Vec::new()
                    }
                }
            }
            msg = claims.next() => {
                let Some(msg) = msg else { return };
                let granted = serde_json::from_slice::<Claim>(&msg.payload)
                    .is_ok_and(|c| tracker.on_claim(&c.board, c.attempt, front.now()));
                if let Some(reply) = msg.reply {
                    let answer = serde_json::to_vec(&ClaimAnswer { granted }).unwrap_or_default();
                    let _ = front.client.publish(reply, answer.into()).await;
                }
                Vec::new()
            }
            ctl = control.recv() => {
                if let Some(ctl) = ctl {
                    let _ = send_control(&front, &control_subject, ctl).await;
                    Vec::new()
                } else {
                    // The owner dropped the request.
                    tracker.cancel();
                    let _ = send_control(&front, &control_subject, Control::Cancel).await;
                    return;
                }
            }
            _ = tick.tick() => {
                let now = front.now();
                if let Some(board) = tracker.board().map(str::to_owned) {
                    let key = format!("{}/{}", tracker.id(), tracker.attempt());
                    let seen = front.boards().lists(&board, &key);
                    if let Some(at) = seen {
                        tracker.on_heartbeat(&board, at);
                    }
                }
                tracker.on_tick(now)
            }
        };
        for out in outs {
            match out {
                Out::Emit(event) => {
                    let _ = events.send(event);
                }
                Out::Publish(work) => {
                    tracing::info!(request = %work.id, attempt = work.attempt, "continuing a request on another board");
                    if let Err(err) = publish(&front, &work).await {
                        let _ = events.send(SupervisorToClient::Error(ErrorEvent {
                            request_id: tracker.owner_id(),
                            kind: ErrorKind::WorkerFailed,
                            message: format!("the answer could not be continued: {err}"),
                        }));
                        return;
                    }
                }
                Out::End => return,
            }
        }
    }
}

async fn send_control(
    front: &Front,
    subject: &str,
    ctl: Control,
) -> Result<(), async_nats::PublishError> {
    let body = serde_json::to_vec(&ctl).unwrap_or_default();
    front.client.publish(subject.to_owned(), body.into()).await
}
