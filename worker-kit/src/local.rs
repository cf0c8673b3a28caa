//! One generation without a supervisor: the same core and engine thread as
//! the socket driver, with the messages handed to the caller instead of a
//! socket (`worker-cpu generate`, the in-process baseline of `supctl bench`).

use std::sync::mpsc;
use std::time::Instant;

use proto::worker::{Generate, Load, Ready, SupervisorToWorker, WorkerDone, WorkerToSupervisor};
use thiserror::Error;
use tokio::sync::mpsc::unbounded_channel;

use crate::core::{Core, Effect, Input};
use crate::engine::{engine_thread, Command, Engine, TokenStream};

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
    let (commands, command_rx) = mpsc::channel::<Command>();
    let (events, mut event_rx) = unbounded_channel();
    let mut core = Core::new(engine.backend(), std::process::id());
    let thread_events = events.clone();
    let thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine_thread(engine, &command_rx, &thread_events))
        .map_err(|_| LocalError::EngineGone)?;
    let mut inputs = vec![Input::Message(SupervisorToWorker::Load(load))];
    // Sent once the model is ready: before that it would be refused.
    let mut generate = Some(generate);
    let mut ready: Option<Ready> = None;
    let result = 'outer: loop {
        let input = match inputs.pop() {
            Some(input) => input,
            None => match event_rx.blocking_recv() {
                Some(event) => Input::Engine(event),
                None => break Err(LocalError::EngineGone),
            },
        };
        for effect in core.handle(input, Instant::now()) {
            match effect {
                Effect::Send(WorkerToSupervisor::Ready(r)) => {
                    ready = Some(r);
                    if let Some(g) = generate.take() {
                        inputs.push(Input::Message(SupervisorToWorker::Generate(g)));
                    }
                }
                Effect::Send(WorkerToSupervisor::LoadFailed(f)) => {
                    break 'outer Err(LocalError::Load {
                        exit_code: f.exit_code,
                        message: f.message,
                    });
                }
                Effect::Send(WorkerToSupervisor::Token(t)) => on_text(&t.text),
                Effect::Send(WorkerToSupervisor::Done(done)) => match ready.take() {
                    Some(r) => break 'outer Ok((r, done)),
                    None => break 'outer Err(LocalError::EngineGone),
                },
                Effect::Send(WorkerToSupervisor::Error(e)) => {
                    break 'outer Err(LocalError::Generate { message: e.message });
                }
                Effect::Send(WorkerToSupervisor::Heartbeat(_))
                | Effect::Stop { .. }
                | Effect::Exit(_) => {}
                Effect::Load(load) => {
                    let _ = commands.send(Command::Load(load));
                }
                Effect::Generate(job) => {
                    let s = TokenStream::new(job.generate.request_id, job.limit, events.clone());
                    let _ = commands.send(Command::Generate(job, s));
                }
            }
        }
    };
    drop(commands);
    let _ = thread.join();
    result
}
