//! Generations without a supervisor: the same core and engine thread as
//! the socket driver, with the messages handed to the caller instead of a
//! socket (`worker-cpu generate`, the in-process baseline of `supctl bench`).

use std::sync::mpsc;
use std::time::Instant;

use proto::worker::{
    Generate, Heartbeat, Load, Ping, Ready, SupervisorToWorker, Warm, WorkerDone,
    WorkerToSupervisor,
};
use thiserror::Error;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::core::{Core, Effect, Input};
use crate::engine::{engine_thread, Command, Engine, EngineEvent, TokenStream};

/// A local generation that did not complete.
#[derive(Debug, Error)]
pub enum LocalError {
    /// The model did not load.
    #[error("{message}")]
    Load {
        /// The worker's exit code for this failure.
        exit_code: i32,
        /// Why.
        message: String,
    },
    /// The generation failed.
    #[error("generation failed: {message}")]
    Generate {
        /// Why.
        message: String,
    },
    /// The engine thread could not start or ended without an answer.
    #[error("the engine stopped without finishing the generation")]
    EngineGone,
}

impl LocalError {
    /// Process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Load { exit_code, .. } => *exit_code,
            _ => 1,
        }
    }
}

/// Loads `load` with `engine`, runs `generate`, calls `on_text` with each
/// piece as it is decoded, and returns the `Ready` and `Done` messages the
/// supervisor would have received. Blocks; call it outside an async runtime.
///
/// # Errors
/// [`LocalError`] when loading or generating fails.
pub fn generate_locally<E: Engine>(
    engine: E,
    load: Load,
    generate: Generate,
    on_text: &mut dyn FnMut(&str),
) -> Result<(Ready, WorkerDone), LocalError> {
    let mut session = LocalSession::start(engine)?;
    let ready = session.load(load)?;
    let done = session.generate(generate, on_text)?;
    Ok((ready, done))
}

/// A worker without a supervisor that serves several requests on one loaded
/// model, in order (tests and benchmarks of what a worker keeps between
/// requests, e.g. its KV caches). Blocking; use it outside an async runtime.
pub struct LocalSession {
    core: Core,
    commands: Option<mpsc::Sender<Command>>,
    events: UnboundedSender<EngineEvent>,
    event_rx: UnboundedReceiver<EngineEvent>,
    thread: Option<std::thread::JoinHandle<()>>,
    next_seq: u64,
}

impl std::fmt::Debug for LocalSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSession").finish_non_exhaustive()
    }
}

impl LocalSession {
    /// Starts the engine thread of `engine`.
    ///
    /// # Errors
    /// [`LocalError::EngineGone`] when the thread cannot start.
    pub fn start<E: Engine>(engine: E) -> Result<Self, LocalError> {
        let (commands, command_rx) = mpsc::channel::<Command>();
        let (events, event_rx) = unbounded_channel();
        let core = Core::new(engine.backend(), std::process::id());
        let thread_events = events.clone();
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || engine_thread(engine, &command_rx, &thread_events))
            .map_err(|_| LocalError::EngineGone)?;
        Ok(Self {
            core,
            commands: Some(commands),
            events,
            event_rx,
            thread: Some(thread),
            next_seq: 1,
        })
    }

    /// Loads (or switches to) `load`; returns the `Ready`.
    ///
    /// # Errors
    /// [`LocalError::Load`] when the model does not load.
    pub fn load(&mut self, load: Load) -> Result<Ready, LocalError> {
        self.drive(SupervisorToWorker::Load(load), &mut |_| {})
            .and_then(|answer| match answer {
                Answer::Ready(r) => Ok(r),
                Answer::Done(_) => Err(LocalError::EngineGone),
            })
    }

    /// Runs `generate`, calling `on_text` with each piece; returns the `Done`.
    ///
    /// # Errors
    /// [`LocalError::Generate`] when the generation fails.
    pub fn generate(
        &mut self,
        generate: Generate,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<WorkerDone, LocalError> {
        self.drive(SupervisorToWorker::Generate(generate), on_text)
            .and_then(|answer| match answer {
                Answer::Done(d) => Ok(d),
                Answer::Ready(_) => Err(LocalError::EngineGone),
            })
    }

    /// Runs `warm` (a prefill into the KV cache; its `Warmed` is not
    /// needed here) to its end; nothing happens when the worker ignores it.
    pub fn warm(&mut self, warm: Warm) {
        let out = self.core.handle(
            Input::Message(SupervisorToWorker::Warm(warm)),
            Instant::now(),
        );
        let mut started = false;
        for effect in out {
            if let Effect::Generate(job) = effect {
                let s = TokenStream::new(job.generate.request_id, job.limit, self.events.clone());
                self.command(Command::Generate(job, s));
                started = true;
            }
        }
        if started {
            self.settle();
        }
    }

    /// The heartbeat the worker would answer a ping with now.
    pub fn heartbeat(&mut self) -> Option<Heartbeat> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let out = self.core.handle(
            Input::Message(SupervisorToWorker::Ping(Ping { seq })),
            Instant::now(),
        );
        out.into_iter().find_map(|e| match e {
            Effect::Send(WorkerToSupervisor::Heartbeat(hb)) => Some(hb),
            _ => None,
        })
    }

    fn drive(
        &mut self,
        first: SupervisorToWorker,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Answer, LocalError> {
        let mut input = Some(Input::Message(first));
        loop {
            let input = match input.take() {
                Some(input) => input,
                None => match self.event_rx.blocking_recv() {
                    Some(event) => Input::Engine(event),
                    None => return Err(LocalError::EngineGone),
                },
            };
            let finished = matches!(input, Input::Engine(EngineEvent::Finished { .. }));
            let mut answer = None;
            for effect in self.core.handle(input, Instant::now()) {
                match effect {
                    Effect::Send(WorkerToSupervisor::Ready(r)) => {
                        answer = Some(Ok(Answer::Ready(r)));
                    }
                    Effect::Send(WorkerToSupervisor::LoadFailed(f)) => {
                        answer = Some(Err(LocalError::Load {
                            exit_code: f.exit_code,
                            message: f.message,
                        }));
                    }
                    Effect::Send(WorkerToSupervisor::Token(t)) => on_text(&t.text),
                    Effect::Send(WorkerToSupervisor::Done(done)) => {
                        answer = Some(Ok(Answer::Done(done)));
                    }
                    Effect::Send(WorkerToSupervisor::Error(e)) => {
                        answer = Some(Err(LocalError::Generate { message: e.message }));
                    }
                    Effect::Send(
                        WorkerToSupervisor::Heartbeat(_) | WorkerToSupervisor::Warmed(_),
                    )
                    | Effect::Stop { .. }
                    | Effect::Exit(_) => {}
                    Effect::Load(load) => self.command(Command::Load(load)),
                    Effect::Generate(job) => {
                        let s = TokenStream::new(
                            job.generate.request_id,
                            job.limit,
                            self.events.clone(),
                        );
                        self.command(Command::Generate(job, s));
                    }
                }
            }
            if let Some(answer) = answer {
                // A Done may come before the engine is free (the token cap
                // answers at once): wait for it, so the next request is not
                // refused as busy and the engine's cache report is current.
                if !finished && matches!(answer, Ok(Answer::Done(_))) {
                    self.settle();
                }
                return answer;
            }
        }
    }

    /// Feeds engine events to the core until the engine reports the
    /// generation finished.
    fn settle(&mut self) {
        loop {
            let Some(event) = self.event_rx.blocking_recv() else {
                return;
            };
            let finished = matches!(event, EngineEvent::Finished { .. });
            self.core.handle(Input::Engine(event), Instant::now());
            if finished {
                return;
            }
        }
    }

    fn command(&self, command: Command) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(command);
        }
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        // Hanging up ends the engine thread, which drops the model.
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

enum Answer {
    Ready(Ready),
    Done(WorkerDone),
}
