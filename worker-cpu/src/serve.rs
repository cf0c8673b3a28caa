//! The worker side of the worker conversation: connect to the supervisor,
//! hand `Load`/`Generate` to the engine thread, relay its events, answer
//! pings, and exit when the supervisor goes away.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use proto::frame::{FrameReader, FrameWriter};
use proto::hello::{client_handshake, connect_path};
use proto::worker::{
    ExitCode, Heartbeat, SupervisorToWorker, WorkerError, WorkerErrorKind, WorkerToSupervisor,
};
use proto::{PeerRole, ProtoError};
use thiserror::Error;
use tokio::sync::mpsc::unbounded_channel;

use crate::engine::{self, Command, Shared};
use crate::fault::Faults;

/// Why the worker stopped serving.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The supervisor's socket could not be reached.
    #[error("cannot connect to the supervisor at {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The conversation broke.
    #[error("supervisor connection failed: {source}")]
    Protocol {
        /// What went wrong.
        #[from]
        source: ProtoError,
    },
}

/// How the worker ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The supervisor said `Shutdown` or closed the socket.
    Stopped,
    /// The model could not be loaded; exit with this code.
    LoadFailed(ExitCode),
}

/// Serves the supervisor on `socket` until it goes away.
///
/// # Errors
/// Connection and protocol failures ([`ServeError`]); a version mismatch is
/// `ServeError::Protocol` with [`ProtoError::VersionMismatch`].
pub async fn serve(socket: &Path, faults: Faults) -> Result<Outcome, ServeError> {
    let stream = connect_path(socket)
        .await
        .map_err(|source| ServeError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (r, w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    let software = concat!("worker-cpu ", env!("CARGO_PKG_VERSION"));
    client_handshake(&mut reader, &mut writer, PeerRole::Worker, software).await?;

    let shared = Arc::new(Shared::default());
    let (out_tx, mut out_rx) = unbounded_channel::<WorkerToSupervisor>();
    let mut commands: Option<mpsc::Sender<Command>> = None;
    let mut busy_with: Option<u64> = None;

    loop {
        tokio::select! {
            // Engine events first: a token must never wait behind a ping.
            biased;
            Some(event) = out_rx.recv() => {
                match &event {
                    WorkerToSupervisor::Done(d) if Some(d.request_id) == busy_with => busy_with = None,
                    WorkerToSupervisor::Error(e) if Some(e.request_id) == busy_with => busy_with = None,
                    _ => {}
                }
                writer.send(&event).await?;
                if let WorkerToSupervisor::LoadFailed(failed) = &event {
                    let code = ExitCode::from_code(failed.exit_code).unwrap_or(ExitCode::ModelInvalid);
                    return Ok(Outcome::LoadFailed(code));
                }
            }
            msg = reader.recv::<SupervisorToWorker>() => {
                let Some(msg) = msg? else {
                    // EOF: the supervisor is gone; never outlive it.
                    return Ok(Outcome::Stopped);
                };
                match msg {
                    SupervisorToWorker::Load(load) => {
                        if let Some(tx) = &commands {
                            // Profile switch; the supervisor only sends it between generations.
                            let _ = tx.send(Command::Reload(load));
                        } else {
                            let (tx, rx) = mpsc::channel();
                            commands = Some(tx);
                            let events = out_tx.clone();
                            let shared = Arc::clone(&shared);
                            let faults = faults.clone();
                            std::thread::Builder::new()
                                .name("llama-engine".into())
                                .spawn(move || {
                                    let emit = |e| {
                                        let _ = events.send(e);
                                    };
                                    engine::run(load, &rx, &shared, &faults, &emit);
                                })
                                .map_err(|source| ServeError::Protocol { source: source.into() })?;
                        }
                    }
                    SupervisorToWorker::Generate(g) => {
                        let refuse = |kind, message: &str| WorkerToSupervisor::Error(WorkerError {
                            request_id: g.request_id,
                            kind,
                            message: message.to_owned(),
                        });
                        match (&commands, busy_with) {
                            (None, _) => writer.send(&refuse(WorkerErrorKind::NotLoaded, "no model loaded yet")).await?,
                            (Some(_), Some(_)) => writer.send(&refuse(WorkerErrorKind::Busy, "a generation is already running")).await?,
                            (Some(tx), None) => {
                                busy_with = Some(g.request_id);
                                let _ = tx.send(Command::Generate(g));
                            }
                        }
                    }
                    SupervisorToWorker::Cancel(c) => {
                        if busy_with == Some(c.request_id) {
                            shared.cancel.store(c.request_id, Ordering::Release);
                        }
                    }
                    SupervisorToWorker::Ping(p) => {
                        writer.send(&WorkerToSupervisor::Heartbeat(Heartbeat {
                            seq: p.seq,
                            busy_with,
                            tokens_total: shared.tokens_total.load(Ordering::Relaxed),
                            requests_total: shared.requests_total.load(Ordering::Relaxed),
                        })).await?;
                    }
                    SupervisorToWorker::Shutdown => return Ok(Outcome::Stopped),
                }
            }
        }
    }
}
