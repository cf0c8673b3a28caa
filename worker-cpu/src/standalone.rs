//! Generation without a supervisor: `worker-cpu generate` (smoke tests of a
//! build, e.g. the arm64 binary under emulation) and the in-process baseline
//! that the relay-overhead benchmark compares the full stack against.

use std::sync::mpsc;

use proto::chat::{ChatMessage, GenParams, GenStats, Role};
use proto::worker::{Generate, Load, WorkerToSupervisor};
use thiserror::Error;

use crate::engine::{self, Command, Shared};
use crate::fault::Faults;

/// A standalone generation that did not complete.
#[derive(Debug, Error)]
pub enum StandaloneError {
    /// The model did not load.
    #[error("{message}")]
    Load {
        /// Worker exit code for this failure.
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
    /// The engine thread ended without an answer.
    #[error("the engine stopped without finishing the generation")]
    EngineGone,
}

impl StandaloneError {
    /// Process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Load { exit_code, .. } => *exit_code,
            _ => 1,
        }
    }
}

/// Loads the model of `load`, generates one answer to `prompt`, calls
/// `on_token` for each piece as it is decoded, and returns the whole text and
/// the figures (`load_ms` first).
///
/// # Errors
/// [`StandaloneError`] when loading or generating fails.
pub fn generate(
    load: Load,
    prompt: &str,
    params: GenParams,
    on_token: &mut dyn FnMut(&str),
) -> Result<(String, f64, GenStats), StandaloneError> {
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let (ev_tx, ev_rx) = mpsc::channel();
    let engine = std::thread::spawn(move || {
        let shared = Shared::default();
        let emit = |e| {
            let _ = ev_tx.send(e);
        };
        engine::run(load, &cmd_rx, &shared, &Faults::default(), &emit);
    });
    let mut text = String::new();
    let mut load_ms = 0.0;
    let result = loop {
        match ev_rx.recv() {
            Ok(WorkerToSupervisor::Ready(ready)) => {
                load_ms = ready.load_ms;
                let _ = cmd_tx.send(Command::Generate(Generate {
                    request_id: 1,
                    messages: vec![ChatMessage::new(Role::User, prompt)],
                    params,
                    assistant_prefix: String::new(),
                }));
            }
            Ok(WorkerToSupervisor::LoadFailed(f)) => {
                break Err(StandaloneError::Load {
                    exit_code: f.exit_code,
                    message: f.message,
                })
            }
            Ok(WorkerToSupervisor::Token(t)) => {
                on_token(&t.text);
                text.push_str(&t.text);
            }
            Ok(WorkerToSupervisor::Done(d)) => {
                break Ok((std::mem::take(&mut text), load_ms, d.stats))
            }
            Ok(WorkerToSupervisor::Error(e)) => {
                break Err(StandaloneError::Generate { message: e.message })
            }
            Ok(WorkerToSupervisor::Heartbeat(_)) => {}
            Err(_) => break Err(StandaloneError::EngineGone),
        }
    };
    drop(cmd_tx);
    let _ = engine.join();
    result
}
