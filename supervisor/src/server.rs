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
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::core::{Event, Expected};

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

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Accepts chat clients until `shutdown`.
pub async fn serve_clients(
    listener: UnixListener,
    core: UnboundedSender<Event>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("client socket accept failed: {e}");
                    continue;
                }
            },
        };
        let core = core.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = client_connection(conn, stream, &core, shutdown).await {
                tracing::info!(conn, "client connection ended: {e}");
            }
            let _ = core.send(Event::ClientGone { conn });
        });
    }
}

async fn client_connection(
    conn: u64,
    stream: UnixStream,
    core: &UnboundedSender<Event>,
    shutdown: CancellationToken,
) -> Result<(), proto::ProtoError> {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    server_handshake(&mut reader, &mut writer, &[PeerRole::Client], SOFTWARE).await?;
    let (events_tx, mut events_rx) = unbounded_channel::<SupervisorToClient>();
    // Events go out from their own task, so a slow client reader never
    // delays the supervisor loop, and tokens are written as they come.
    let writer_task = tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            if writer.send(&event).await.is_err() {
                break;
            }
        }
    });
    let result = loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            msg = reader.recv::<ClientToSupervisor>() => msg,
        };
        match msg {
            Ok(Some(ClientToSupervisor::Submit(submit))) => {
                let _ = core.send(Event::ClientSubmit {
                    conn,
                    submit,
                    events: events_tx.clone(),
                });
            }
            Ok(Some(ClientToSupervisor::Cancel(c))) => {
                let _ = core.send(Event::ClientCancel {
                    conn,
                    request_id: c.request_id,
                });
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(events_tx);
    // Let queued events (the last error or done) flush unless the peer is gone.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer_task).await;
    result
}

/// Accepts `supctl` connections until `shutdown`.
pub async fn serve_admin(
    listener: UnixListener,
    core: UnboundedSender<Event>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("admin socket accept failed: {e}");
                    continue;
                }
            },
        };
        let core = core.clone();
        tokio::spawn(async move {
            if let Err(e) = admin_connection(stream, &core).await {
                tracing::info!("admin connection ended: {e}");
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
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(slot, "worker socket accept failed: {e}");
                    continue;
                }
            },
        };
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
        let _ = core.send(Event::WorkerDisconnected { slot, incarnation });
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
                    .send(Event::WorkerMessage {
                        slot,
                        incarnation,
                        msg,
                    })
                    .is_err()
                {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(slot, pid, "worker connection failed: {e}");
                break;
            }
        }
    }
    writer_task.abort();
    let _ = core.send(Event::WorkerDisconnected { slot, incarnation });
}
