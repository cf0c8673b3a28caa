//! The worker side of the worker conversation (see `proto::worker`): connect,
//! hello, Load -> Ready | LoadFailed, Generate -> Token* -> Done | Error,
//! Cancel, Ping -> Heartbeat, Shutdown, SIGTERM or EOF -> exit.
//!
//! One task owns the socket and never waits on the runtime: loads and runs
//! happen on threads of their own and report through channels, so a Ping is
//! answered while the NPU is busy or stuck. Whether a stuck run is a
//! failure is the supervisor's call (its stall timeout), not the worker's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use proto::artifact::rkllm::Platform;
use proto::chat::{Backend, FinishReason, GenStats};
use proto::frame::{FrameReader, FrameWriter};
use proto::hello::{client_handshake, connect_path};
use proto::worker::{
    ExitCode, Generate, Heartbeat, Load, LoadFailed, Ready, SupervisorToWorker, WorkerDone,
    WorkerError, WorkerErrorKind, WorkerToSupervisor, WorkerToken,
};
use proto::{PeerRole, ProtoError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::chat;
use crate::config::{request_limit, LoadSettings};
use crate::engine::{self, Engine, EngineEvent, LoadError, LoadReport, Running};
use crate::ffi::raw::RKLLMPerfStat;

/// How long a shutdown waits for a running generation to stop before the
/// process exits without tearing the model down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How long a reload waits for the old model to be free (its last run and
/// abort calls to return) before giving up.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// What the worker needs besides the conversation.
#[derive(Debug, Clone)]
pub struct Options {
    /// The socket the supervisor listens on for this worker.
    pub socket: PathBuf,
    /// sysfs root, for the SoC (compared with the model file's name).
    pub sysfs_root: PathBuf,
}

/// How the process should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit status.
    pub code: i32,
}

/// Connects to the supervisor and serves the conversation until it ends.
/// Returns the exit status; the caller ends the process with
/// [`crate::exit`].
pub async fn run(options: Options) -> Exit {
    let stream = match connect_path(&options.socket).await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::error!(socket = %options.socket.display(), %err, "cannot connect to the supervisor");
            return Exit { code: 1 };
        }
    };
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read_half);
    let mut writer = FrameWriter::new(write_half);
    let software = concat!("worker-npu ", env!("CARGO_PKG_VERSION"));
    match client_handshake(&mut reader, &mut writer, PeerRole::Worker, software).await {
        Ok(accepted) => tracing::debug!(supervisor = %accepted.software, "handshake done"),
        Err(err @ ProtoError::VersionMismatch { .. }) => {
            tracing::error!(%err, "supervisor refused the handshake");
            return Exit {
                code: ExitCode::ProtocolMismatch.code(),
            };
        }
        Err(err) => {
            tracing::error!(%err, "handshake with the supervisor failed");
            return Exit { code: 1 };
        }
    }
    let board = crate::telemetry::read_soc(&options.sysfs_root);
    serve(reader, writer, board, terminated()).await
}

/// Resolves on SIGTERM. The supervisor stops a worker with a Shutdown
/// message and SIGTERM at once (SIGKILL after its grace period); left at its
/// default, SIGTERM would end the process before the Shutdown is read, with
/// the NPU run neither aborted nor the model destroyed.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut sigterm) => {
            sigterm.recv().await;
        }
        Err(err) => {
            tracing::warn!(%err, "cannot handle SIGTERM; it will end the worker at once");
            std::future::pending::<()>().await;
        }
    }
}

/// The conversation after the handshake (separate so tests and other
/// transports can drive it). `terminate` resolving is a shutdown request,
/// as a Shutdown message is.
pub async fn serve<R, W>(
    mut reader: FrameReader<R>,
    writer: FrameWriter<W>,
    board: Option<Platform>,
    terminate: impl std::future::Future<Output = ()>,
) -> Exit
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut terminate = std::pin::pin!(terminate);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut loading: Option<oneshot::Receiver<LoadOutcome>> = None;
    let mut worker = Worker {
        writer,
        board,
        events_tx,
        engine: None,
        loading_since: None,
        current: None,
        pending: None,
        pending_load: None,
        tokens_total: 0,
        requests_total: 0,
    };
    loop {
        let loaded = async {
            match loading.as_mut() {
                Some(rx) => rx.await,
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            () = &mut terminate => {
                tracing::info!("SIGTERM: shutting down");
                Step::Shutdown
            }
            Some(event) = events_rx.recv() => worker.on_event(event).await,
            outcome = loaded => {
                loading = None;
                let outcome = outcome.unwrap_or_else(|_| {
                    Err(LoadError::Internal { message: "the load thread ended without an answer".into() })
                });
                worker.on_loaded(outcome).await
            }
            frame = reader.recv::<SupervisorToWorker>() => match frame {
                Ok(Some(msg)) => worker.on_message(msg, &mut loading).await,
                Ok(None) => {
                    tracing::info!("supervisor closed the socket; exiting");
                    Step::Shutdown
                }
                Err(err) if err.is_disconnect() => {
                    tracing::info!(%err, "supervisor went away; exiting");
                    Step::Shutdown
                }
                Err(err @ ProtoError::Decode { .. }) => {
                    // The frame boundary is intact; one bad message does not
                    // end the conversation.
                    tracing::error!(%err, "ignoring a message that does not decode");
                    Step::Continue
                }
                Err(err) => {
                    tracing::error!(%err, "socket error; exiting");
                    Step::Shutdown
                }
            },
        };
        match step {
            Step::Continue => {}
            Step::StartLoad(load, since) => loading = Some(worker.start_load(*load, since)),
            Step::Exit(code) => return Exit { code },
            Step::Shutdown => {
                if loading.is_some() {
                    // rkllm_init cannot be interrupted; exit without waiting for it.
                    return Exit { code: 0 };
                }
                return worker.shutdown(&mut events_rx).await;
            }
        }
    }
}

type LoadOutcome = Result<(Engine, LoadReport), LoadError>;

/// What the loop does after handling one input.
enum Step {
    Continue,
    StartLoad(Box<Load>, Instant),
    Shutdown,
    Exit(i32),
}

/// The generation whose `rkllm_run` has not returned yet.
struct Current {
    request_id: u64,
    received: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    tokens: u32,
    limit: u32,
    context: u32,
    /// Done or Error already sent (after a cancel, a limit, or FINISH).
    answered: bool,
    cancelled: bool,
    limit_hit: bool,
    running: Running,
}

struct Worker<W> {
    writer: FrameWriter<W>,
    board: Option<Platform>,
    events_tx: mpsc::UnboundedSender<EngineEvent>,
    engine: Option<Engine>,
    loading_since: Option<(Instant, String)>,
    current: Option<Current>,
    /// A Generate that arrived after the current one was answered but before
    /// its run returned; it starts when the model is free.
    pending: Option<(Generate, Instant)>,
    /// A Load that arrived during a generation; it starts when the model is free.
    pending_load: Option<(Load, Instant)>,
    tokens_total: u64,
    requests_total: u64,
}

impl<W: AsyncWrite + Unpin> Worker<W> {
    async fn send(&mut self, msg: WorkerToSupervisor) -> Result<(), ProtoError> {
        self.writer.send(&msg).await
    }

    /// Sends, and turns a dead socket into the end of the worker.
    async fn send_or_quit(&mut self, msg: WorkerToSupervisor) -> Step {
        match self.send(msg).await {
            Ok(()) => Step::Continue,
            Err(err) => {
                tracing::info!(%err, "cannot write to the supervisor; exiting");
                Step::Shutdown
            }
        }
    }

    async fn on_message(
        &mut self,
        msg: SupervisorToWorker,
        loading: &mut Option<oneshot::Receiver<LoadOutcome>>,
    ) -> Step {
        match msg {
            SupervisorToWorker::Load(load) => {
                let now = Instant::now();
                if loading.is_some() || self.current.is_some() {
                    // One model per process: the new load waits until the
                    // model is free (a running generation is cancelled).
                    tracing::info!(profile = %load.profile.name, "load queued until the model is free");
                    if let Some(step) = self.cancel_current_for_load().await {
                        return step;
                    }
                    self.pending_load = Some((load, now));
                    return Step::Continue;
                }
                Step::StartLoad(Box::new(load), now)
            }
            SupervisorToWorker::Generate(generate) => {
                self.on_generate(generate, Instant::now()).await
            }
            SupervisorToWorker::Cancel(cancel) => self.on_cancel(cancel.request_id).await,
            SupervisorToWorker::Ping(ping) => {
                let busy_with = self
                    .current
                    .as_ref()
                    .filter(|c| !c.answered)
                    .map(|c| c.request_id)
                    .or_else(|| self.pending.as_ref().map(|(g, _)| g.request_id));
                let running_tokens = self.current.as_ref().map_or(0, |c| u64::from(c.tokens));
                let beat = Heartbeat {
                    seq: ping.seq,
                    busy_with,
                    tokens_total: self.tokens_total + running_tokens,
                    requests_total: self.requests_total,
                };
                self.send_or_quit(WorkerToSupervisor::Heartbeat(beat)).await
            }
            SupervisorToWorker::Shutdown => {
                tracing::info!("shutdown requested");
                Step::Shutdown
            }
        }
    }

    async fn cancel_current_for_load(&mut self) -> Option<Step> {
        let cur = self.current.as_mut()?;
        if cur.answered {
            return None;
        }
        cur.cancelled = true;
        cur.answered = true;
        cur.running.stop();
        let done = done_message(cur, FinishReason::Cancelled, None);
        self.requests_total += 1;
        match self.send_or_quit(done).await {
            Step::Continue => None,
            other => Some(other),
        }
    }

    fn start_load(&mut self, load: Load, since: Instant) -> oneshot::Receiver<LoadOutcome> {
        let (tx, rx) = oneshot::channel();
        let old = self.engine.take();
        let board = self.board;
        self.loading_since = Some((since, load.profile.name.clone()));
        tracing::info!(model = %load.model_path, profile = %load.profile.name, "loading");
        let spawned = std::thread::Builder::new()
            .name("rkllm-load".into())
            .spawn(move || {
                // The old model goes first: one model per process, and the
                // NPU memory it holds may be needed by the new one.
                if let Some(old) = old {
                    if let Err(stuck) = old.destroy(RELOAD_WAIT) {
                        std::mem::forget(stuck);
                        let _ = tx.send(Err(LoadError::Internal {
                            message: "the previous model is still in use by a run that does not end; restart the worker".into(),
                        }));
                        return;
                    }
                }
                let outcome = std::panic::catch_unwind(|| {
                    let settings = LoadSettings::from_load(&load)?;
                    engine::load(&settings, board)
                })
                .unwrap_or_else(|panic| {
                    Err(LoadError::Internal {
                        message: panic_text(&*panic),
                    })
                });
                let _ = tx.send(outcome);
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "cannot start the load thread");
            // Dropping the sender (inside the failed closure) reports the failure.
        }
        rx
    }

    async fn on_loaded(&mut self, outcome: LoadOutcome) -> Step {
        let (since, profile) = self
            .loading_since
            .take()
            .unwrap_or_else(|| (Instant::now(), String::new()));
        match outcome {
            Ok((engine, report)) => {
                let load_ms = since.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(
                    model = %report.model.name,
                    abi = %report.abi,
                    runtime = report.init.runtime_version.as_deref().unwrap_or("unknown"),
                    family = %engine.settings().family,
                    cpu_mask = format_args!("{:#x}", engine.settings().init.enabled_cpus_mask),
                    load_ms,
                    "model ready"
                );
                self.engine = Some(engine);
                let ready = Ready {
                    backend: Backend::Npu,
                    model: report.model,
                    profile,
                    load_ms,
                    pid: std::process::id(),
                };
                let step = self.send_or_quit(WorkerToSupervisor::Ready(ready)).await;
                match (step, self.pending_load.take()) {
                    // A Load that arrived during this one: the newest settings win.
                    (Step::Continue, Some((load, since))) => Step::StartLoad(Box::new(load), since),
                    (step, _) => step,
                }
            }
            Err(err) => {
                let exit_code = err.exit_code();
                let message = err.to_string();
                tracing::error!(exit_code, "load failed: {message}");
                let failed = WorkerToSupervisor::LoadFailed(LoadFailed { exit_code, message });
                // The supervisor learns the cause from the exit code too, so
                // a failed write changes nothing.
                let _ = self.send(failed).await;
                Step::Exit(exit_code)
            }
        }
    }

    async fn refuse(&mut self, request_id: u64, kind: WorkerErrorKind, message: String) -> Step {
        self.requests_total += 1;
        let error = WorkerError {
            request_id,
            kind,
            message,
        };
        self.send_or_quit(WorkerToSupervisor::Error(error)).await
    }

    async fn on_generate(&mut self, generate: Generate, received: Instant) -> Step {
        let request_id = generate.request_id;
        if self.engine.is_none() || self.loading_since.is_some() || self.pending_load.is_some() {
            return self
                .refuse(
                    request_id,
                    WorkerErrorKind::NotLoaded,
                    "no model is loaded".into(),
                )
                .await;
        }
        if let Some(cur) = &self.current {
            if cur.answered && self.pending.is_none() {
                // The previous run is winding down (after FINISH, a cancel or
                // the cap); start this one as soon as it has.
                self.pending = Some((generate, received));
                return Step::Continue;
            }
            return self
                .refuse(
                    request_id,
                    WorkerErrorKind::Busy,
                    format!("generation {} is still running", cur.request_id),
                )
                .await;
        }
        self.start_generation(generate, received).await
    }

    async fn start_generation(&mut self, generate: Generate, received: Instant) -> Step {
        let request_id = generate.request_id;
        let Some(engine) = &self.engine else {
            return self
                .refuse(
                    request_id,
                    WorkerErrorKind::NotLoaded,
                    "no model is loaded".into(),
                )
                .await;
        };
        let settings = engine.settings();
        let prompt = match chat::render(
            settings.family,
            &settings.overrides,
            &generate.messages,
            &generate.assistant_prefix,
        ) {
            Ok(prompt) => prompt,
            Err(err) => {
                return self
                    .refuse(request_id, WorkerErrorKind::BadRequest, err.to_string())
                    .await
            }
        };
        let limit = request_limit(&generate.params, settings.init.max_new_tokens);
        let context = settings.context_size();
        tracing::debug!(request_id, limit, ?prompt, "generation starts");
        match engine.start(request_id, prompt, limit, self.events_tx.clone()) {
            Ok(running) => {
                self.current = Some(Current {
                    request_id,
                    received,
                    first_token: None,
                    last_token: None,
                    tokens: 0,
                    limit,
                    context,
                    answered: false,
                    cancelled: false,
                    limit_hit: false,
                    running,
                });
                Step::Continue
            }
            Err(err) => {
                self.refuse(
                    request_id,
                    WorkerErrorKind::Engine,
                    format!("cannot start the generation thread: {err}"),
                )
                .await
            }
        }
    }

    async fn on_cancel(&mut self, request_id: u64) -> Step {
        if self
            .pending
            .as_ref()
            .is_some_and(|(g, _)| g.request_id == request_id)
        {
            self.pending = None;
            self.requests_total += 1;
            let done = WorkerToSupervisor::Done(WorkerDone {
                request_id,
                finish: FinishReason::Cancelled,
                stats: GenStats::default(),
            });
            return self.send_or_quit(done).await;
        }
        let Some(cur) = self
            .current
            .as_mut()
            .filter(|c| c.request_id == request_id && !c.answered)
        else {
            tracing::debug!(
                request_id,
                "cancel for a generation that is not running; ignored"
            );
            return Step::Continue;
        };
        tracing::info!(request_id, "cancelling");
        cur.cancelled = true;
        cur.answered = true;
        cur.running.stop();
        let done = done_message(cur, FinishReason::Cancelled, None);
        self.requests_total += 1;
        self.tokens_total += u64::from(cur.tokens);
        cur.tokens = 0;
        self.send_or_quit(done).await
    }

    async fn on_event(&mut self, event: EngineEvent) -> Step {
        let caps_itself = self
            .engine
            .as_ref()
            .is_some_and(Engine::caps_tokens_per_run);
        match event {
            EngineEvent::Text {
                request_id,
                text,
                tokens,
            } => {
                let Some(cur) = self.current_for(request_id) else {
                    return Step::Continue;
                };
                let now = Instant::now();
                cur.first_token.get_or_insert(now);
                cur.last_token = Some(now);
                let covered = tokens.saturating_sub(cur.tokens);
                cur.tokens = tokens;
                let token = WorkerToSupervisor::Token(WorkerToken {
                    request_id,
                    text,
                    tokens: covered,
                });
                self.send_or_quit(token).await
            }
            EngineEvent::LimitReached { request_id } => {
                if let Some(cur) = self.current_for(request_id) {
                    cur.limit_hit = true;
                    // 1.3.0 stops at the per-run cap by itself and reports
                    // FINISH with its figures; 1.2.x has to be stopped.
                    if !caps_itself {
                        cur.running.abort();
                    }
                }
                Step::Continue
            }
            EngineEvent::Finished {
                request_id,
                perf,
                tokens,
            } => {
                let Some(cur) = self.current_for(request_id) else {
                    return Step::Continue;
                };
                cur.tokens = tokens;
                let reason = finish_reason(cur, Some(&perf));
                self.answer_done(reason, Some(perf)).await
            }
            EngineEvent::Failed {
                request_id,
                message,
            } => {
                let Some(cur) = self.current_for(request_id) else {
                    return Step::Continue;
                };
                cur.answered = true;
                cur.running.stop();
                self.tokens_total += u64::from(std::mem::take(&mut cur.tokens));
                self.refuse(request_id, WorkerErrorKind::Engine, message)
                    .await
            }
            EngineEvent::Returned {
                request_id,
                result,
                tokens,
            } => self.on_returned(request_id, result, tokens).await,
        }
    }

    /// The current generation if it is `request_id` and not answered yet.
    fn current_for(&mut self, request_id: u64) -> Option<&mut Current> {
        self.current
            .as_mut()
            .filter(|c| c.request_id == request_id && !c.answered)
    }

    async fn answer_done(&mut self, reason: FinishReason, perf: Option<RKLLMPerfStat>) -> Step {
        let Some(cur) = self.current.as_mut() else {
            return Step::Continue;
        };
        cur.answered = true;
        let done = done_message(cur, reason, perf.as_ref());
        self.requests_total += 1;
        self.tokens_total += u64::from(std::mem::take(&mut cur.tokens));
        self.send_or_quit(done).await
    }

    async fn on_returned(
        &mut self,
        request_id: u64,
        result: Result<i32, String>,
        tokens: u32,
    ) -> Step {
        if self
            .current
            .as_ref()
            .is_none_or(|c| c.request_id != request_id)
        {
            return Step::Continue;
        }
        let mut step = Step::Continue;
        if let Some(cur) = self.current_for(request_id) {
            // The run ended without FINISH or ERROR (after an abort, or a
            // runtime that does not send FINISH).
            cur.tokens = tokens;
            step = match result {
                Ok(0) => {
                    let reason = finish_reason(cur, None);
                    self.answer_done(reason, None).await
                }
                Ok(code) => {
                    self.refuse_current(format!("rkllm_run failed with code {code}"))
                        .await
                }
                Err(message) => self.refuse_current(message).await,
            };
        }
        self.current = None;
        if !matches!(step, Step::Continue) {
            return step;
        }
        // The model is free: queued work goes next, a load first.
        if let Some((load, since)) = self.pending_load.take() {
            if let Some((g, _)) = self.pending.take() {
                let step = self
                    .refuse(
                        g.request_id,
                        WorkerErrorKind::NotLoaded,
                        "the model is being reloaded".into(),
                    )
                    .await;
                if !matches!(step, Step::Continue) {
                    return step;
                }
            }
            return Step::StartLoad(Box::new(load), since);
        }
        if let Some((generate, received)) = self.pending.take() {
            return self.start_generation(generate, received).await;
        }
        Step::Continue
    }

    async fn refuse_current(&mut self, message: String) -> Step {
        let Some(cur) = self.current.as_mut() else {
            return Step::Continue;
        };
        cur.answered = true;
        let id = cur.request_id;
        self.tokens_total += u64::from(std::mem::take(&mut cur.tokens));
        self.refuse(id, WorkerErrorKind::Engine, message).await
    }

    /// Ends the worker: stops a running generation, waits a little for the
    /// runtime to return, and tears the model down only if it did.
    async fn shutdown(mut self, events_rx: &mut mpsc::UnboundedReceiver<EngineEvent>) -> Exit {
        if let Some(cur) = &self.current {
            cur.running.stop();
            let id = cur.request_id;
            let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
            loop {
                match tokio::time::timeout_at(deadline, events_rx.recv()).await {
                    Ok(Some(EngineEvent::Returned { request_id, .. })) if request_id == id => break,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        tracing::warn!(
                            request_id = id,
                            "the NPU run did not stop; exiting without tearing the model down"
                        );
                        // Leaked on purpose: destroying a model inside a
                        // stuck run could hang the exit.
                        std::mem::forget(self.engine.take());
                        return Exit { code: 0 };
                    }
                }
            }
        }
        self.current = None;
        if let Some(engine) = self.engine.take() {
            // The run has returned; only its threads' last references remain.
            if let Err(stuck) = engine.destroy(SHUTDOWN_GRACE) {
                tracing::warn!("the model is still referenced; exiting without tearing it down");
                std::mem::forget(stuck);
            }
        }
        Exit { code: 0 }
    }
}

/// The reason a generation that ran its course stopped.
fn finish_reason(cur: &Current, perf: Option<&RKLLMPerfStat>) -> FinishReason {
    if cur.limit_hit || cur.tokens >= cur.limit {
        return FinishReason::MaxTokens;
    }
    if let Some(p) = perf {
        let used = i64::from(p.prefill_tokens) + i64::from(p.generate_tokens);
        if used >= i64::from(cur.context) {
            return FinishReason::ContextFull;
        }
    }
    FinishReason::EndOfTurn
}

/// Done for the current generation, with the runtime's figures when it gave
/// them (FINISH) and the worker's own otherwise.
fn done_message(
    cur: &Current,
    finish: FinishReason,
    perf: Option<&RKLLMPerfStat>,
) -> WorkerToSupervisor {
    WorkerToSupervisor::Done(WorkerDone {
        request_id: cur.request_id,
        finish,
        stats: stats(cur, perf),
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(cur: &Current, perf: Option<&RKLLMPerfStat>) -> GenStats {
    let ttft_ms = cur
        .first_token
        .map_or(0.0, |t| millis(t.duration_since(cur.received)));
    let own_decode_ms = match (cur.first_token, cur.last_token) {
        (Some(first), Some(last)) => millis(last.duration_since(first)),
        _ => 0.0,
    };
    match perf {
        Some(p) if p.generate_tokens > 0 || p.prefill_tokens > 0 => {
            let generated = u32::try_from(p.generate_tokens).unwrap_or(0);
            let decode_ms = f64::from(p.generate_time_ms);
            GenStats {
                prompt_tokens: u32::try_from(p.prefill_tokens).unwrap_or(0),
                generated_tokens: generated,
                ttft_ms,
                prefill_ms: f64::from(p.prefill_time_ms),
                decode_ms,
                decode_tps: if decode_ms > 0.0 {
                    f64::from(generated) * 1000.0 / decode_ms
                } else {
                    0.0
                },
            }
        }
        _ => GenStats {
            prompt_tokens: 0,
            generated_tokens: cur.tokens,
            ttft_ms,
            prefill_ms: 0.0,
            decode_ms: own_decode_ms,
            decode_tps: if own_decode_ms > 0.0 && cur.tokens > 1 {
                f64::from(cur.tokens - 1) * 1000.0 / own_decode_ms
            } else {
                0.0
            },
        },
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}
