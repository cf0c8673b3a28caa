//! The supervisor's sockets: the client socket (chat requests), the admin
//! socket (`supctl`), and one socket per worker slot. Each connection gets
//! its own task, a handshake with a timeout, and a peer check; a bad peer
//! only ever affects its own connection.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proto::admin::{AdminToSupervisor, SupervisorToAdmin};
use proto::client::{ClientToSupervisor, SupervisorToClient};
use proto::frame::{FrameReader, FrameWriter};
use proto::hello::server_handshake;
use proto::worker::{SupervisorToWorker, WorkerToSupervisor};
use proto::PeerRole;
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};

use proto::client::{ErrorEvent, ErrorKind};
use tokio::sync::mpsc::{self, unbounded_channel, UnboundedSender};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::Event as CoreEvent;
use crate::driver::{conns, ClientLink, Expected, Input as Event};
use crate::observe::Observed;

const SOFTWARE: &str = concat!("rocksteady-supervisor ", env!("CARGO_PKG_VERSION"));

/// Binds a Unix socket at `path` with permission bits `mode`, replacing a
/// stale socket file from an earlier run (but never a non-socket file).
///
/// # Errors
/// Binding failed, or `path` exists and is not a socket.
pub fn bind(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Admin connections at once: `supctl` opens one per command, so a few are
/// plenty, and the cap keeps a looping script from exhausting descriptors.
pub const ADMIN_CAPS: conns::Caps = conns::Caps {
    total: 16,
    per_uid: 16,
};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Who may use the client and admin sockets, judged from the peer's
/// credentials (SO_PEERCRED) on top of the sockets' file permissions.
#[derive(Debug, Clone)]
pub struct Access {
    own_uid: u32,
    own_gid: u32,
    proc_root: std::path::PathBuf,
    client_uids: Vec<u32>,
    client_gids: Vec<u32>,
    admin_uids: Vec<u32>,
    admin_gids: Vec<u32>,
    workers: Vec<Arc<Expected>>,
}

/// The parent pid and process group of a process, from its
/// `/proc/<pid>/stat` line (the command name may hold spaces and parentheses,
/// so the fields are counted after its last `)`).
pub fn stat_ids(stat: &str) -> Option<(u32, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

/// Whether a peer belongs to a worker: `lineage` is the peer's pid, its
/// process group and its ancestors; `workers` the pids of the live workers.
/// Workers lead their own process group, so a helper a worker forks is
/// caught by its group or its parent chain.
pub fn from_worker(lineage: &[u32], workers: &[u32]) -> bool {
    lineage.iter().any(|p| workers.contains(p))
}

impl Access {
    /// The rules of `config`, for this process's user and group.
    pub fn from_config(config: &Config) -> Self {
        let s = &config.supervisor;
        Self {
            own_uid: nix::unistd::getuid().as_raw(),
            own_gid: nix::unistd::getgid().as_raw(),
            proc_root: config.telemetry.proc_root.clone(),
            client_uids: s.client_allowed_uids.clone(),
            client_gids: s.client_allowed_gids.clone(),
            admin_uids: s.admin_allowed_uids.clone(),
            admin_gids: s.admin_allowed_gids.clone(),
            workers: Vec::new(),
        }
    }

    /// The same rules, refusing peers that belong to these slots' workers:
    /// workers run as the supervisor's user, which passes the uid check.
    #[must_use]
    pub fn refusing_workers(mut self, workers: Vec<Arc<Expected>>) -> Self {
        self.workers = workers;
        self
    }

    /// The peer's pid, process group and ancestors (up to 32, stopping at
    /// init or at this process).
    fn lineage(&self, peer: u32) -> Vec<u32> {
        let me = std::process::id();
        let mut lineage = vec![peer];
        let mut at = peer;
        for _ in 0..32 {
            let Some((ppid, pgrp)) =
                std::fs::read_to_string(self.proc_root.join(at.to_string()).join("stat"))
                    .ok()
                    .and_then(|s| stat_ids(&s))
            else {
                break;
            };
            lineage.push(pgrp);
            if ppid <= 1 || ppid == me {
                break;
            }
            lineage.push(ppid);
            at = ppid;
        }
        lineage
    }

    /// Whether the peer with `pid` is one of our workers or descends from one.
    pub fn is_worker(&self, pid: Option<i32>) -> bool {
        let workers: Vec<u32> = self
            .workers
            .iter()
            .filter_map(|e| {
                e.current
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .map(|(pid, _)| pid)
            })
            .collect();
        if workers.is_empty() {
            return false;
        }
        // A peer whose pid we cannot read is refused: it cannot be cleared.
        let Some(pid) = pid.and_then(|p| u32::try_from(p).ok()) else {
            return true;
        };
        from_worker(&self.lineage(pid), &workers)
    }

    /// Primary and supplementary groups of a peer process.
    fn groups(&self, pid: Option<i32>, gid: u32) -> Vec<u32> {
        let mut groups = vec![gid];
        if let Some(pid) = pid {
            let status =
                std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("status"))
                    .unwrap_or_default();
            if let Some(line) = status.lines().find_map(|l| l.strip_prefix("Groups:")) {
                groups.extend(
                    line.split_whitespace()
                        .filter_map(|g| g.parse::<u32>().ok()),
                );
            }
        }
        groups
    }

    /// Whether a peer may speak on the client (`admin` false) or admin socket.
    pub fn allows(&self, cred: &tokio::net::unix::UCred, admin: bool) -> bool {
        let uid = cred.uid();
        if uid == 0 || uid == self.own_uid {
            return true;
        }
        let (uids, gids) = if admin {
            (&self.admin_uids, &self.admin_gids)
        } else {
            (&self.client_uids, &self.client_gids)
        };
        if uids.contains(&uid) {
            return true;
        }
        // Members of the supervisor's own group (the socket's group) may chat.
        self.groups(cred.pid(), cred.gid())
            .iter()
            .any(|g| gids.contains(g) || (!admin && *g == self.own_gid))
    }
}

/// Checks the peer of a fresh connection; logs and counts a refusal.
pub fn admitted(stream: &UnixStream, access: &Access, admin: bool, observed: &Observed) -> bool {
    let which = if admin { "admin" } else { "client" };
    match stream.peer_cred() {
        Ok(cred) if access.is_worker(cred.pid()) => {
            observed
                .connections
                .worker_peers
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pid = ?cred.pid(),
                "refused a worker process on the {which} socket: workers may only use their own socket"
            );
            false
        }
        Ok(cred) if access.allows(&cred, admin) => true,
        Ok(cred) => {
            observed
                .connections
                .refused_peers
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                uid = cred.uid(),
                gid = cred.gid(),
                pid = ?cred.pid(),
                "refused a peer on the {which} socket: user not allowed (see supervisor.{which}_allowed_uids and _gids)"
            );
            false
        }
        Err(e) => {
            observed
                .connections
                .refused_peers
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "refused a peer on the {which} socket: cannot read its credentials: {e}"
            );
            false
        }
    }
}

/// Logs (once per connection) and counts a connection that failed on bad input.
fn connection_failed(which: &str, err: &proto::ProtoError, observed: &Observed) {
    if err.is_disconnect() {
        tracing::debug!("{which} connection closed: {err}");
    } else {
        observed.connections.count(err);
        tracing::warn!("{which} connection refused: {err}");
    }
}

/// The next connection on `listener`, or `None` once `shutdown` fires. A
/// failed accept (e.g. out of file descriptors) is logged and retried: it
/// must not end the listener.
async fn next_peer(
    listener: &UnixListener,
    shutdown: &CancellationToken,
    which: &str,
) -> Option<UnixStream> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => return Some(stream),
                Err(e) => {
                    tracing::warn!("{which} socket accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The limits a client connection lives under, from the config.
#[derive(Debug)]
pub struct ClientLimits {
    /// Open connections by user.
    pub table: Arc<conns::Table>,
    /// Quiet time after which a connection is closed.
    pub idle: Duration,
    /// Events waiting for one client's writer.
    pub backlog: usize,
    /// Longest one write may take.
    pub write_timeout: Duration,
    /// Longest conversation, in characters.
    pub max_prompt_chars: usize,
}

impl ClientLimits {
    /// The limits of `config`.
    pub fn from_config(config: &Config) -> Self {
        let s = &config.supervisor;
        Self {
            table: conns::Table::new(conns::Caps {
                total: s.max_client_connections,
                per_uid: s.max_client_connections_per_user,
            }),
            idle: Duration::from_secs_f64(s.client_idle_timeout_s),
            backlog: s.client_event_backlog,
            write_timeout: Duration::from_secs_f64(s.client_write_timeout_s),
            max_prompt_chars: s.max_prompt_chars,
        }
    }
}

/// A place in `table` for the peer of `stream`, or `None` (counted and
/// logged) when a cap is reached; the connection is then dropped unread.
fn place(
    stream: &UnixStream,
    table: &Arc<conns::Table>,
    which: &str,
    observed: &Observed,
) -> Option<conns::Ticket> {
    let uid = stream.peer_cred().map_or(u32::MAX, |c| c.uid());
    match table.open(uid) {
        Ok(ticket) => Some(ticket),
        Err(refusal) => {
            let (counter, why) = match refusal {
                conns::CapRefusal::Total => (
                    &observed.connections.over_total_cap,
                    "the socket holds its maximum of connections (supervisor.max_client_connections)",
                ),
                conns::CapRefusal::PerUid => (
                    &observed.connections.over_uid_cap,
                    "this user holds its maximum of connections (supervisor.max_client_connections_per_user)",
                ),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(uid, "refused a connection on the {which} socket: {why}");
            None
        }
    }
}

/// Accepts chat clients until `shutdown`.
pub async fn serve_clients(
    listener: UnixListener,
    core: UnboundedSender<Event>,
    observed: Arc<Observed>,
    access: Arc<Access>,
    limits: Arc<ClientLimits>,
    shutdown: CancellationToken,
) {
    while let Some(stream) = next_peer(&listener, &shutdown, "client").await {
        if !admitted(&stream, &access, false, &observed) {
            continue;
        }
        let Some(ticket) = place(&stream, &limits.table, "client", &observed) else {
            continue;
        };
        let core = core.clone();
        let shutdown = shutdown.clone();
        let observed = Arc::clone(&observed);
        let limits = Arc::clone(&limits);
        tokio::spawn(async move {
            let _ticket = ticket;
            let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
            if let Err(e) =
                client_connection(conn, stream, &core, shutdown, &limits, &observed).await
            {
                connection_failed("client", &e, &observed);
            }
            let _ = core.send(Event::Core(CoreEvent::ClientGone { conn }));
        });
    }
}

/// Milliseconds from `start` to now, for the shared last-activity mark.
fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Writes events to the client until the channel closes or the connection is
/// kicked; a write that takes longer than the limit kicks it.
async fn client_writer(
    mut writer: FrameWriter<tokio::net::unix::OwnedWriteHalf>,
    mut events: mpsc::Receiver<SupervisorToClient>,
    kick: CancellationToken,
    write_timeout: Duration,
    activity: (Instant, Arc<AtomicU64>),
    observed: Arc<Observed>,
) {
    loop {
        let event = tokio::select! {
            () = kick.cancelled() => break,
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        match tokio::time::timeout(write_timeout, writer.send(&event)).await {
            Ok(Ok(())) => activity
                .1
                .store(millis_since(activity.0), Ordering::Relaxed),
            Ok(Err(_)) => break,
            Err(_) => {
                observed
                    .connections
                    .write_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!("disconnected a client: a write took longer than supervisor.client_write_timeout_s");
                kick.cancel();
                break;
            }
        }
    }
}

/// Passes a submit (or a continuation, with the answer's given start) to
/// the core, or refuses an oversized conversation here so it never reaches
/// the queue. False when the client's event queue is full (drop it).
fn admit(
    conn: u64,
    submit: proto::client::Submit,
    prefix: Option<String>,
    link: &ClientLink,
    core: &UnboundedSender<Event>,
    limits: &ClientLimits,
    observed: &Arc<Observed>,
) -> bool {
    if let Some(chars) = conns::prompt_too_long(&submit.messages, limits.max_prompt_chars) {
        observed
            .connections
            .prompts_too_long
            .fetch_add(1, Ordering::Relaxed);
        let refusal = SupervisorToClient::Error(ErrorEvent {
            request_id: submit.request_id,
            kind: ErrorKind::BadRequest,
            message: format!(
                "the conversation is {chars} characters; the limit is {}",
                limits.max_prompt_chars
            ),
        });
        return link.events.try_send(refusal).is_ok();
    }
    let input = match prefix {
        Some(assistant_prefix) => Event::ClientContinue {
            conn,
            submit,
            assistant_prefix,
            events: link.clone(),
        },
        None => Event::ClientSubmit {
            conn,
            submit,
            events: link.clone(),
        },
    };
    let _ = core.send(input);
    true
}

async fn client_connection(
    conn: u64,
    stream: UnixStream,
    core: &UnboundedSender<Event>,
    shutdown: CancellationToken,
    limits: &ClientLimits,
    observed: &Arc<Observed>,
) -> Result<(), proto::ProtoError> {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    server_handshake(&mut reader, &mut writer, &[PeerRole::Client], SOFTWARE).await?;
    let (events_tx, events_rx) = mpsc::channel::<SupervisorToClient>(limits.backlog);
    let kick = CancellationToken::new();
    let link = ClientLink {
        events: events_tx,
        kick: kick.clone(),
    };
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    // Events go out from their own task, so a slow client reader never
    // delays the supervisor loop, and tokens are written as they come.
    let writer_task = tokio::spawn(client_writer(
        writer,
        events_rx,
        kick.clone(),
        limits.write_timeout,
        (start, Arc::clone(&last)),
        Arc::clone(observed),
    ));
    let result = loop {
        let quiet = start
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        if conns::idle_too_long(quiet, limits.idle) {
            observed.connections.idle.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(conn, "closed an idle client connection");
            break Ok(());
        }
        let msg = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            () = kick.cancelled() => break Ok(()),
            () = tokio::time::sleep(limits.idle.saturating_sub(quiet)) => continue,
            msg = reader.recv::<ClientToSupervisor>() => msg,
        };
        last.store(millis_since(start), Ordering::Relaxed);
        match msg {
            Ok(Some(ClientToSupervisor::Submit(submit))) => {
                if !admit(conn, submit, None, &link, core, limits, observed) {
                    break Ok(());
                }
            }
            Ok(Some(ClientToSupervisor::Continue(c))) => {
                let prefix = Some(c.assistant_prefix);
                if !admit(conn, c.submit, prefix, &link, core, limits, observed) {
                    break Ok(());
                }
            }
            Ok(Some(ClientToSupervisor::Cancel(c))) => {
                let _ = core.send(Event::Core(CoreEvent::ClientCancel {
                    conn,
                    request_id: c.request_id,
                }));
            }
            Ok(Some(ClientToSupervisor::Stop(c))) => {
                let _ = core.send(Event::Core(CoreEvent::ClientStop {
                    conn,
                    request_id: c.request_id,
                }));
            }
            Ok(Some(ClientToSupervisor::Models(q))) => {
                let _ = core.send(Event::ClientModels {
                    conn,
                    request_id: q.request_id,
                    events: link.clone(),
                });
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(link);
    // The driver drops its end at once, so the writer stops once the queued
    // events (the last error or done) are out, and the connection's place is
    // free without waiting for a timeout.
    let _ = core.send(Event::Core(CoreEvent::ClientGone { conn }));
    let mut writer_task = writer_task;
    if tokio::time::timeout(Duration::from_secs(2), &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
    }
    result
}

/// Accepts `supctl` connections until `shutdown`, at most [`ADMIN_CAPS`] at once.
pub async fn serve_admin(
    listener: UnixListener,
    core: UnboundedSender<Event>,
    observed: Arc<Observed>,
    access: Arc<Access>,
    shutdown: CancellationToken,
) {
    let table = conns::Table::new(ADMIN_CAPS);
    while let Some(stream) = next_peer(&listener, &shutdown, "admin").await {
        if !admitted(&stream, &access, true, &observed) {
            continue;
        }
        let Some(ticket) = place(&stream, &table, "admin", &observed) else {
            continue;
        };
        let core = core.clone();
        let observed = Arc::clone(&observed);
        tokio::spawn(async move {
            let _ticket = ticket;
            if let Err(e) = admin_connection(stream, &core).await {
                connection_failed("admin", &e, &observed);
            }
        });
    }
}

async fn admin_connection(
    stream: UnixStream,
    core: &UnboundedSender<Event>,
) -> Result<(), proto::ProtoError> {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    server_handshake(&mut reader, &mut writer, &[PeerRole::Admin], SOFTWARE).await?;
    while let Some(cmd) = reader.recv::<AdminToSupervisor>().await? {
        let (reply, answer) = oneshot::channel();
        if core.send(Event::Admin { cmd, reply }).is_err() {
            return Ok(());
        }
        let Ok(answer) = answer.await else {
            return Ok(());
        };
        writer.send::<SupervisorToAdmin>(&answer).await?;
    }
    Ok(())
}

/// Accepts the worker of slot `slot` on its own socket. Only the process the
/// supervisor spawned last for that slot may connect (checked by the peer's
/// pid from SO_PEERCRED); anything else is refused and logged.
pub async fn serve_worker_slot(
    slot: usize,
    listener: UnixListener,
    expected: Arc<Expected>,
    core: UnboundedSender<Event>,
    shutdown: CancellationToken,
) {
    while let Some(stream) = next_peer(&listener, &shutdown, "worker").await {
        let core = core.clone();
        let expected = Arc::clone(&expected);
        tokio::spawn(async move {
            let peer_pid = stream
                .peer_cred()
                .ok()
                .and_then(|c| c.pid())
                .and_then(|p| u32::try_from(p).ok());
            // A fresh worker can connect before the supervisor loop has
            // recorded its pid (the child may run before spawn() returns),
            // so give the record a moment before calling the peer unknown.
            let mut current = None;
            for _ in 0..50 {
                current = *expected
                    .current
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if current.is_some_and(|(pid, _)| Some(pid) == peer_pid) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let Some((pid, incarnation)) = current.filter(|(pid, _)| Some(*pid) == peer_pid) else {
                tracing::warn!(slot, ?peer_pid, expected = ?current.map(|c| c.0), "refusing an unknown peer on a worker socket");
                return;
            };
            worker_connection(slot, incarnation, pid, stream, core).await;
        });
    }
}

async fn worker_connection(
    slot: usize,
    incarnation: u64,
    pid: u32,
    stream: UnixStream,
    core: UnboundedSender<Event>,
) {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    if let Err(e) = server_handshake(&mut reader, &mut writer, &[PeerRole::Worker], SOFTWARE).await
    {
        tracing::error!(slot, pid, "worker handshake failed: {e}");
        let _ = core.send(Event::Core(CoreEvent::WorkerDisconnected {
            slot,
            incarnation,
        }));
        return;
    }
    let (tx, mut rx) = unbounded_channel::<SupervisorToWorker>();
    let _ = core.send(Event::WorkerConnected {
        slot,
        incarnation,
        tx,
    });
    let writer_task = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if writer.send(&msg).await.is_err() {
                break;
            }
        }
    });
    loop {
        match reader.recv::<WorkerToSupervisor>().await {
            Ok(Some(msg)) => {
                if core
                    .send(Event::Core(CoreEvent::WorkerMessage {
                        slot,
                        incarnation,
                        msg,
                    }))
                    .is_err()
                {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                // A worker stopped or killed resets its connection: expected.
                if e.is_disconnect() {
                    tracing::debug!(slot, pid, "worker connection closed: {e}");
                } else {
                    tracing::warn!(slot, pid, "worker connection failed: {e}");
                }
                break;
            }
        }
    }
    writer_task.abort();
    let _ = core.send(Event::Core(CoreEvent::WorkerDisconnected {
        slot,
        incarnation,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(workers: Vec<Arc<Expected>>) -> Access {
        Access {
            own_uid: nix::unistd::getuid().as_raw(),
            own_gid: nix::unistd::getgid().as_raw(),
            proc_root: "/proc".into(),
            client_uids: Vec::new(),
            client_gids: Vec::new(),
            admin_uids: Vec::new(),
            admin_gids: Vec::new(),
            workers,
        }
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a) b (c)) S 17 4000 4000 0 -1 4194560";
        assert_eq!(stat_ids(line), Some((17, 4000)));
        assert_eq!(stat_ids("garbage"), None);
    }

    #[test]
    fn a_peer_is_a_worker_by_pid_group_or_ancestor() {
        assert!(from_worker(&[10, 10], &[10]));
        assert!(from_worker(&[11, 10, 10], &[10]));
        assert!(!from_worker(&[12, 12, 1], &[10]));
        assert!(!from_worker(&[12], &[]));
    }

    /// A real process the "worker" started connects to the admin socket: it
    /// runs as our own user, so only the pid check can refuse it.
    #[tokio::test]
    async fn a_workers_child_is_refused_on_the_admin_socket_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = bind(&path, 0o600).unwrap();
        // sh stands for the worker; python, its child, connects twice.
        let script = format!(
            "import socket,time\nfor _ in range(2):\n    s=socket.socket(socket.AF_UNIX)\n    s.connect({:?})\n    time.sleep(1)\n",
            path.display().to_string()
        );
        let mut worker = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("python3 -c '{script}'; true"))
            .spawn()
            .unwrap();
        let expected = Arc::new(Expected::default());
        *expected.current.lock().unwrap() = Some((worker.id(), 1));
        let access = access(vec![Arc::clone(&expected)]);
        let observed = Observed::default();
        let (stream, _) = listener.accept().await.unwrap();
        assert!(!admitted(&stream, &access, true, &observed));
        assert_eq!(observed.connections.worker_peers.load(Ordering::Relaxed), 1);
        // The same process once the worker record names someone else: allowed.
        *expected.current.lock().unwrap() = Some((u32::MAX - 1, 2));
        let (stream, _) = listener.accept().await.unwrap();
        assert!(admitted(&stream, &access, true, &observed));
        assert_eq!(observed.connections.worker_peers.load(Ordering::Relaxed), 1);
        worker.wait().unwrap();
    }
}
