//! The driver: connects to the supervisor, starts the engine thread, and
//! carries out what [`Core`] decides: frames to the socket, jobs to the
//! engine thread, stops to the running stream, and the exit.
//!
//! One task owns the socket and never waits on the engine, so a Ping is
//! answered while a model loads or a generation is stuck; whether a stuck
//! generation is a failure is the supervisor's call (its stall timeout).

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proto::frame::{FrameReader, FrameWriter};
use proto::worker::{ExitCode, SupervisorToWorker, WorkerToSupervisor};
use proto::{PeerRole, ProtoError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc::unbounded_channel, oneshot};

use crate::core::{Core, Effect, Input};
use crate::engine::{engine_thread, Command, Engine, TokenStream};
use crate::Exit;

/// How long a shutdown waits for the engine to stop its generation and drop
/// its model before the process exits without them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Connects to the supervisor at `socket`, says hello as `software`, and
/// serves the conversation with `engine` until it ends. SIGTERM is a
/// shutdown request from the moment this is called.
pub async fn run<E: Engine>(socket: &Path, software: &str, engine: E) -> Exit {
    // Before connecting: left at its default, a SIGTERM would end the process
    // with the engine in the middle of its work.
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(%err, "cannot handle SIGTERM; it will end the worker at once");
            None
        }
    };
    let terminated = async move {
        match sigterm.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    // The one connect-and-handshake of the tree (the client library's),
    // as the worker role.
    let conn = match client::connect::<SupervisorToWorker, WorkerToSupervisor>(
        socket,
        PeerRole::Worker,
        software,
        client::CONNECT_TIMEOUT,
    )
    .await
    {
        Ok(conn) => conn,
        Err(
            err @ client::ClientError::Protocol {
                source: ProtoError::VersionMismatch { .. },
                ..
            },
        ) => {
            tracing::error!(err = %err.chain(), "the supervisor refused the handshake");
            return Exit {
                code: ExitCode::ProtocolMismatch.code(),
            };
        }
        Err(err) => {
            tracing::error!(err = %err.chain(), "cannot connect to the supervisor");
            return Exit::FAILURE;
        }
    };
    let (reader, writer) = conn.into_parts();
    serve(reader, writer, engine, terminated).await
}

/// The conversation after the handshake, over any transport (tests drive it
/// in-process). `terminate` resolving is a shutdown request, as SIGTERM is.
pub async fn serve<R, W, E>(
    mut reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
    engine: E,
    terminate: impl Future<Output = ()>,
) -> Exit
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    E: Engine,
{
    let mut terminate = std::pin::pin!(terminate);
    let (commands, command_rx) = mpsc::channel::<Command>();
    let (events, mut event_rx) = unbounded_channel();
    let (ended_tx, mut ended) = oneshot::channel::<()>();
    let mut core = Core::new(engine.backend(), std::process::id());
    let thread_events = events.clone();
    let spawned = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            // Dropped when the thread ends, engine and model with it.
            let _ended = ended_tx;
            engine_thread(engine, &command_rx, &thread_events);
        });
    if let Err(err) = spawned {
        tracing::error!(%err, "cannot start the engine thread");
        return Exit::FAILURE;
    }
    let mut stream: Option<TokenStream> = None;
    let mut inputs: VecDeque<Input> = VecDeque::new();
    loop {
        let input = if let Some(input) = inputs.pop_front() {
            input
        } else {
            tokio::select! {
                biased;
                () = &mut terminate => Input::Terminate,
                // Engine events before messages: a token never waits behind a ping.
                Some(event) = event_rx.recv() => Input::Engine(event),
                frame = reader.recv::<SupervisorToWorker>() => match frame {
                    Ok(Some(msg)) => Input::Message(msg),
                    Ok(None) => Input::Hangup,
                    Err(ProtoError::Decode { .. }) => Input::Undecodable,
                    Err(err) => {
                        if !err.is_disconnect() {
                            tracing::error!(%err, "socket error");
                        }
                        Input::Hangup
                    }
                },
            }
        };
        for effect in core.handle(input, Instant::now()) {
            match effect {
                Effect::Send(msg) => {
                    if let Err(err) = writer.send(&msg).await {
                        tracing::info!(%err, "cannot write to the supervisor");
                        inputs.push_back(Input::Hangup);
                    }
                }
                Effect::Load(load) => {
                    let _ = commands.send(Command::Load(load));
                }
                Effect::Generate(job) => {
                    let s = TokenStream::new(job.generate.request_id, job.limit, events.clone());
                    stream = Some(s.clone());
                    let _ = commands.send(Command::Generate(job, s));
                }
                Effect::Stop { request_id, reason } => {
                    if let Some(s) = stream.as_ref().filter(|s| s.request_id() == request_id) {
                        s.stop(reason);
                    }
                }
                Effect::Exit(plan) => {
                    // Closing the channel tells the engine thread to finish.
                    drop(commands);
                    if plan.drain_engine {
                        let drained = tokio::time::timeout(SHUTDOWN_GRACE, &mut ended).await;
                        if drained.is_err() {
                            // Left alone on purpose: tearing down a model
                            // inside a stuck call could hang the exit.
                            tracing::warn!(
                                "the engine did not stop within {SHUTDOWN_GRACE:?}; exiting without tearing the model down"
                            );
                        }
                    }
                    return Exit { code: plan.code };
                }
            }
        }
    }
}
