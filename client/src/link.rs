//! A long-running front door's connection to the supervisor's client socket:
//! one shared connection carrying every request, kept up with reconnects and
//! backoff.
//!
//! A background task connects, and when the supervisor goes away (restart,
//! crash) it reconnects with exponential backoff. A request submitted while
//! disconnected first tries one immediate connect, so the first message after
//! the supervisor comes back does not wait out the backoff. Requests in flight
//! when the connection drops get [`LinkEvent::Lost`].
//!
//! [`SupervisorLink::start_target`] takes the front door's `supervisor`
//! setting instead: a socket path, or a NATS URL, in which case the same
//! handle and [`Request`]s carry requests to a cluster of boards
//! ([`crate::cluster`]) and the caller does not see the difference.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use interprocess::local_socket::tokio::Stream as LocalStream;
use proto::chat::{ChatMessage, GenParams};
use proto::client::{
    Cancel, ClientToSupervisor, Continue, ModelSlot, ModelsQuery, Submit, SupervisorToClient,
};
use proto::frame::{FrameReader, FrameWriter};
use proto::PeerRole;
use thiserror::Error;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterError, ClusterLink, ClusterRequest, Target};
use crate::connect::{connect as open, ClientError};

/// A link connects within this: a front door's request should not wait
/// long on a supervisor that is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why a request could not be submitted.
#[derive(Debug, Error)]
pub enum LinkError {
    /// The supervisor could not be reached, or the connection broke.
    #[error(transparent)]
    Supervisor(#[from] ClientError),
    /// The link is shutting down.
    #[error("the link to the supervisor is shutting down")]
    ShuttingDown,
    /// The supervisor did not answer a query in time.
    #[error("the supervisor did not answer in time")]
    NoAnswer,
    /// The cluster transport failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// What a request's owner receives. `Debug` leaves out the answer text.
#[derive(Clone, PartialEq)]
pub enum LinkEvent {
    /// An event from the supervisor about this request.
    Event(SupervisorToClient),
    /// The connection to the supervisor dropped before the request ended.
    Lost,
}

impl std::fmt::Debug for LinkEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lost => f.write_str("Lost"),
            Self::Event(event) => {
                let kind = match event {
                    SupervisorToClient::Queued(_) => "Queued",
                    SupervisorToClient::Started(_) => "Started",
                    SupervisorToClient::Token(_) => "Token",
                    SupervisorToClient::Failover(_) => "Failover",
                    SupervisorToClient::Done(_) => "Done",
                    SupervisorToClient::Error(_) => "Error",
                    SupervisorToClient::Models(_) => "Models",
                };
                write!(f, "Event({kind}, request {})", event.request_id())
            }
        }
    }
}

type Writer = FrameWriter<WriteHalf<LocalStream>>;
type Reader = FrameReader<ReadHalf<LocalStream>>;

struct Connected {
    writer: Writer,
    generation: u64,
}

struct Pending {
    generation: u64,
    events: mpsc::UnboundedSender<LinkEvent>,
}

struct Inner {
    path: PathBuf,
    software: String,
    conn: Mutex<Option<Connected>>,
    pending: StdMutex<HashMap<u64, Pending>>,
    next_request: AtomicU64,
    next_generation: AtomicU64,
    disconnected: Notify,
    shutdown: CancellationToken,
}

/// Handle on the shared supervisor connection; cheap to clone.
#[derive(Clone)]
pub struct SupervisorLink {
    inner: Arc<Inner>,
    /// Set when requests go to a cluster over NATS instead of the socket.
    cluster: Option<ClusterLink>,
}

impl std::fmt::Debug for SupervisorLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorLink")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// What a request was submitted with, kept to submit it again.
#[derive(Debug, Clone)]
struct Resend {
    messages: Vec<ChatMessage>,
    params: GenParams,
    /// Empty: any model.
    model: String,
    /// The answer's given start (empty: a fresh request).
    prefix: String,
    /// The conversation the request continues, if any.
    conversation: Option<String>,
}

/// One submitted request: its events, in order. Dropping it before the
/// request ended cancels it at the supervisor.
pub struct Request {
    id: u64,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    inner: Arc<Inner>,
    ended: bool,
    /// The request as submitted, kept until the supervisor says anything
    /// about it: a connection lost before that (a supervisor restart racing
    /// the submit) is retried once on a fresh connection.
    resend: Option<Resend>,
    /// `try_next` saw such a loss; `next` resubmits.
    resubmit_due: bool,
    /// The request when it went to a cluster (the fields above are then unused).
    cluster: Option<ClusterRequest>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SupervisorLink {
    /// Starts the link to the client socket at `path`; the background task
    /// keeps connecting until `shutdown`. `software` names the front door in
    /// the supervisor's log.
    pub fn start(path: PathBuf, software: &str, shutdown: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            path,
            software: software.to_owned(),
            conn: Mutex::new(None),
            pending: StdMutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            next_generation: AtomicU64::new(1),
            disconnected: Notify::new(),
            shutdown,
        });
        tokio::spawn(keep_connected(Arc::clone(&inner)));
        Self {
            inner,
            cluster: None,
        }
    }

    /// Starts the link to `target`: the local supervisor's socket, or a
    /// cluster over NATS (connected here; it reconnects by itself after).
    ///
    /// # Errors
    /// [`LinkError::Cluster`] when the NATS connection cannot be opened.
    pub async fn start_target(
        target: &Target,
        software: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, LinkError> {
        match target {
            Target::Unix(path) => Ok(Self::start(path.clone(), software, shutdown)),
            Target::Nats(nats) => {
                let cluster = ClusterLink::connect(nats, software, shutdown.clone()).await?;
                let inner = Arc::new(Inner {
                    path: PathBuf::from(&nats.servers),
                    software: software.to_owned(),
                    conn: Mutex::new(None),
                    pending: StdMutex::new(HashMap::new()),
                    next_request: AtomicU64::new(1),
                    next_generation: AtomicU64::new(1),
                    disconnected: Notify::new(),
                    shutdown,
                });
                Ok(Self {
                    inner,
                    cluster: Some(cluster),
                })
            }
        }
    }

    /// The cluster, when requests go to one.
    pub fn cluster(&self) -> Option<&ClusterLink> {
        self.cluster.as_ref()
    }

    /// The socket path (the NATS servers for a cluster).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Submits a request for any model.
    ///
    /// # Errors
    /// [`LinkError`] when the supervisor cannot be reached.
    pub async fn submit(
        &self,
        messages: Vec<ChatMessage>,
        params: GenParams,
    ) -> Result<Request, LinkError> {
        self.submit_to(messages, params, String::new()).await
    }

    /// Submits a request for `model` (empty = any: the supervisor routes).
    ///
    /// # Errors
    /// [`LinkError`] when the supervisor cannot be reached.
    pub async fn submit_to(
        &self,
        messages: Vec<ChatMessage>,
        params: GenParams,
        model: String,
    ) -> Result<Request, LinkError> {
        self.submit_resend(Resend {
            messages,
            params,
            model,
            prefix: String::new(),
            conversation: None,
        })
        .await
    }

    /// Submits a request for `model` (empty = any) that continues
    /// `conversation` (see [`Submit::conversation`]).
    ///
    /// # Errors
    /// [`LinkError`] when the supervisor cannot be reached.
    pub async fn submit_in(
        &self,
        messages: Vec<ChatMessage>,
        params: GenParams,
        model: String,
        conversation: Option<String>,
    ) -> Result<Request, LinkError> {
        self.submit_resend(Resend {
            messages,
            params,
            model,
            prefix: String::new(),
            conversation,
        })
        .await
    }

    /// Submits a request for `model` whose answer starts with `prefix`
    /// (already shown to the user; empty = a fresh request). The events
    /// carry only the new text; `Done` carries the whole answer.
    ///
    /// # Errors
    /// [`LinkError`] when the supervisor cannot be reached.
    pub async fn submit_continuing(
        &self,
        messages: Vec<ChatMessage>,
        params: GenParams,
        model: String,
        prefix: String,
    ) -> Result<Request, LinkError> {
        self.submit_resend(Resend {
            messages,
            params,
            model,
            prefix,
            conversation: None,
        })
        .await
    }

    async fn submit_resend(&self, request: Resend) -> Result<Request, LinkError> {
        if let Some(cluster) = &self.cluster {
            // Boxed: the cluster's submit is a large future, and every
            // front door's request handler would carry it inline. (The
            // cluster carries no conversation key: a board's cache is its own.)
            let request =
                Box::pin(cluster.submit(request.messages, request.params, &request.model)).await?;
            let (_, events) = mpsc::unbounded_channel();
            return Ok(Request {
                id: request.id(),
                events,
                inner: Arc::clone(&self.inner),
                ended: false,
                resend: None,
                resubmit_due: false,
                cluster: Some(request),
            });
        }
        let (id, events) = send_submit(&self.inner, request.clone()).await?;
        Ok(Request {
            id,
            events,
            inner: Arc::clone(&self.inner),
            ended: false,
            resend: Some(request),
            resubmit_due: false,
            cluster: None,
        })
    }

    /// The supervisor's slots and their models, waited for at most `timeout`.
    ///
    /// # Errors
    /// [`LinkError`] when the supervisor cannot be reached or does not
    /// answer in time.
    pub async fn models(&self, timeout: Duration) -> Result<Vec<ModelSlot>, LinkError> {
        if let Some(cluster) = &self.cluster {
            // The boards' heartbeats: known at once, or after the first ones.
            cluster.wait_for_boards(timeout).await;
            return Ok(cluster.models());
        }
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(LinkError::ShuttingDown);
        }
        let request_id = inner.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        {
            let mut conn = inner.conn.lock().await;
            if conn.is_none() {
                *conn = Some(connect(inner).await?);
            }
            let Some(connected) = conn.as_mut() else {
                return Err(LinkError::ShuttingDown);
            };
            inner.pending_map().insert(
                request_id,
                Pending {
                    generation: connected.generation,
                    events: tx,
                },
            );
            let query = ClientToSupervisor::Models(ModelsQuery { request_id });
            if let Err(source) = connected.writer.send(&query).await {
                inner.pending_map().remove(&request_id);
                *conn = None;
                inner.disconnected.notify_one();
                return Err(LinkError::Supervisor(ClientError::Protocol {
                    path: inner.path.clone(),
                    source,
                }));
            }
        }
        let answer = tokio::time::timeout(timeout, rx.recv()).await;
        inner.pending_map().remove(&request_id);
        match answer {
            Ok(Some(LinkEvent::Event(SupervisorToClient::Models(list)))) => Ok(list.slots),
            Ok(_) => Err(LinkError::Supervisor(ClientError::Protocol {
                path: inner.path.clone(),
                source: proto::ProtoError::Closed,
            })),
            Err(_) => Err(LinkError::NoAnswer),
        }
    }
}

/// Registers a new request and sends its `Submit`, connecting first if needed.
async fn send_submit(
    inner: &Arc<Inner>,
    Resend {
        messages,
        params,
        model,
        prefix,
        conversation,
    }: Resend,
) -> Result<(u64, mpsc::UnboundedReceiver<LinkEvent>), LinkError> {
    if inner.shutdown.is_cancelled() {
        return Err(LinkError::ShuttingDown);
    }
    let request_id = inner.next_request.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    let submit = Submit {
        request_id,
        messages,
        params,
        model,
        conversation,
    };
    let submit = if prefix.is_empty() {
        ClientToSupervisor::Submit(submit)
    } else {
        ClientToSupervisor::Continue(Continue {
            submit,
            assistant_prefix: prefix,
        })
    };
    let mut conn = inner.conn.lock().await;
    if conn.is_none() {
        *conn = Some(connect(inner).await?);
    }
    let Some(connected) = conn.as_mut() else {
        return Err(LinkError::ShuttingDown);
    };
    let generation = connected.generation;
    inner.pending_map().insert(
        request_id,
        Pending {
            generation,
            events: tx,
        },
    );
    if let Err(source) = connected.writer.send(&submit).await {
        inner.pending_map().remove(&request_id);
        *conn = None;
        inner.disconnected.notify_one();
        return Err(LinkError::Supervisor(ClientError::Protocol {
            path: inner.path.clone(),
            source,
        }));
    }
    Ok((request_id, rx))
}

impl Request {
    /// This request's id on the connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next event; `Lost` also when the link is gone for good. After the
    /// request ended this waits forever: callers stop at the end.
    pub async fn next(&mut self) -> LinkEvent {
        if let Some(cluster) = &mut self.cluster {
            if self.ended {
                return std::future::pending().await;
            }
            let event = cluster
                .next()
                .await
                .map_or(LinkEvent::Lost, LinkEvent::Event);
            self.note(&event);
            return event;
        }
        loop {
            if self.ended {
                return std::future::pending().await;
            }
            if std::mem::take(&mut self.resubmit_due) {
                if let Some(event) = self.resubmit().await {
                    return event;
                }
            }
            let event = self.events.recv().await.unwrap_or(LinkEvent::Lost);
            if event == LinkEvent::Lost && self.resend.is_some() {
                if let Some(event) = self.resubmit().await {
                    return event;
                }
                continue;
            }
            self.note(&event);
            return event;
        }
    }

    /// Ends the answer early (the caller found a stop string): the
    /// supervisor stops the generation and still ends with `Done` and its
    /// figures. Best effort: a lost connection ends the request anyway.
    pub async fn stop(&mut self) {
        if self.ended {
            return;
        }
        if let Some(cluster) = &self.cluster {
            cluster.stop();
            return;
        }
        let mut conn = self.inner.conn.lock().await;
        if let Some(connected) = conn.as_mut() {
            let _ = connected
                .writer
                .send(&ClientToSupervisor::Stop(Cancel {
                    request_id: self.id,
                }))
                .await;
        }
    }

    /// The next event if one is waiting (never anything after the end).
    pub fn try_next(&mut self) -> Option<LinkEvent> {
        if self.ended || self.resubmit_due {
            return None;
        }
        if let Some(cluster) = &mut self.cluster {
            let event = cluster
                .try_next()?
                .map_or(LinkEvent::Lost, LinkEvent::Event);
            self.note(&event);
            return Some(event);
        }
        let event = match self.events.try_recv() {
            Ok(event) => event,
            Err(mpsc::error::TryRecvError::Empty) => return None,
            Err(mpsc::error::TryRecvError::Disconnected) => LinkEvent::Lost,
        };
        if event == LinkEvent::Lost && self.resend.is_some() {
            self.resubmit_due = true;
            return None;
        }
        self.note(&event);
        Some(event)
    }

    /// Submits the kept request again (once); `Some(Lost)` when that fails.
    async fn resubmit(&mut self) -> Option<LinkEvent> {
        let resend = self.resend.take()?;
        tracing::info!(
            request = self.id,
            "supervisor connection lost before the request was taken; submitting it again"
        );
        match send_submit(&self.inner, resend).await {
            Ok((id, events)) => {
                self.id = id;
                self.events = events;
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, "resubmitting failed");
                self.ended = true;
                Some(LinkEvent::Lost)
            }
        }
    }

    fn note(&mut self, event: &LinkEvent) {
        if matches!(event, LinkEvent::Event(_)) {
            self.resend = None;
        }
        if matches!(
            event,
            LinkEvent::Lost
                | LinkEvent::Event(SupervisorToClient::Done(_) | SupervisorToClient::Error(_))
        ) {
            self.ended = true;
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        // A cluster request cancels itself when its handle is dropped.
        if self.cluster.is_some() {
            return;
        }
        self.inner.pending_map().remove(&self.id);
        if self.ended {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let request_id = self.id;
        // Cancelling is best effort: if the connection is gone, the
        // supervisor has cancelled the request already.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let mut conn = inner.conn.lock().await;
                if let Some(connected) = conn.as_mut() {
                    let _ = connected
                        .writer
                        .send(&ClientToSupervisor::Cancel(Cancel { request_id }))
                        .await;
                }
            });
        }
    }
}

impl Inner {
    fn pending_map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends every request of connection `generation` with `Lost`.
    fn fail_generation(&self, generation: u64) {
        let mut pending = self.pending_map();
        pending.retain(|_, p| {
            if p.generation == generation {
                let _ = p.events.send(LinkEvent::Lost);
                false
            } else {
                true
            }
        });
    }
}

/// Connects and shakes hands; spawns the reader of the new connection.
async fn connect(inner: &Arc<Inner>) -> Result<Connected, LinkError> {
    let path = inner.path.clone();
    let conn = open::<SupervisorToClient, ClientToSupervisor>(
        &path,
        PeerRole::Client,
        &inner.software,
        CONNECT_TIMEOUT,
    )
    .await?;
    let (reader, writer) = conn.into_parts();
    let generation = inner.next_generation.fetch_add(1, Ordering::Relaxed);
    tracing::info!(socket = %path.display(), "connected to the supervisor");
    tokio::spawn(read_events(Arc::clone(inner), reader, generation));
    Ok(Connected { writer, generation })
}

/// Routes the supervisor's events to their requests until the connection ends.
async fn read_events(inner: Arc<Inner>, mut reader: Reader, generation: u64) {
    loop {
        let next = tokio::select! {
            () = inner.shutdown.cancelled() => break,
            next = reader.recv::<SupervisorToClient>() => next,
        };
        match next {
            Ok(Some(event)) => {
                let id = event.request_id();
                let ends = matches!(
                    event,
                    SupervisorToClient::Done(_)
                        | SupervisorToClient::Error(_)
                        | SupervisorToClient::Models(_)
                );
                let mut pending = inner.pending_map();
                if let Some(p) = pending.get(&id) {
                    let _ = p.events.send(LinkEvent::Event(event));
                }
                if ends {
                    pending.remove(&id);
                }
            }
            Ok(None) => {
                tracing::warn!("the supervisor closed the connection");
                break;
            }
            Err(err) => {
                tracing::warn!(error = %err, "supervisor connection failed");
                break;
            }
        }
    }
    {
        let mut conn = inner.conn.lock().await;
        if conn.as_ref().is_some_and(|c| c.generation == generation) {
            *conn = None;
        }
    }
    inner.fail_generation(generation);
    inner.disconnected.notify_one();
}

/// Keeps a connection up: connects at start and after every loss, with
/// exponential backoff between failed attempts.
async fn keep_connected(inner: Arc<Inner>) {
    let mut backoff = BACKOFF_MIN;
    let mut logged_down = false;
    loop {
        let result = {
            let mut conn = inner.conn.lock().await;
            if conn.is_some() {
                Ok(true)
            } else {
                match connect(&inner).await {
                    Ok(c) => {
                        *conn = Some(c);
                        Ok(false)
                    }
                    Err(err) => Err(err),
                }
            }
        };
        match result {
            Ok(_) => {
                backoff = BACKOFF_MIN;
                logged_down = false;
                tokio::select! {
                    () = inner.shutdown.cancelled() => break,
                    () = inner.disconnected.notified() => {}
                }
            }
            Err(err) => {
                // Log the first failure of an outage, not every retry.
                if !logged_down {
                    tracing::warn!(error = %err, "supervisor not reachable; retrying with backoff");
                    logged_down = true;
                }
                tokio::select! {
                    () = inner.shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    // Closing the connection cancels every request at the supervisor.
    *inner.conn.lock().await = None;
}
