//! rocksteady's worker runtime: the worker side of the worker conversation
//! (`proto::worker`), written once for every backend. A worker binary is an
//! [`Engine`] (load a model, generate into a [`TokenStream`]) plus
//! `worker_kit::run`; this crate does the rest.
//!
//! What it does: connect and handshake, the Load / Generate / Cancel / Ping /
//! Shutdown loop, SIGTERM and EOF as shutdown, pings answered during loads
//! and generations, UTF-8 reassembly, the token count of each frame, the
//! token cap, [`GenStats`](proto::chat::GenStats) with one decode-speed
//! formula, and the exit codes.
//!
//! What it must not do: touch an inference engine (the engine thread is the
//! backend's), know any backend's settings, or carry test-only behaviour
//! (fault injection lives in `test-kit`'s fake worker, never here).
//!
//! - [`core`]: the decisions, a state machine without IO
//! - [`affinity`]: pinning the worker's threads to its CPUs (`--cpus`)
//! - [`run`](mod@run): the driver (socket, engine thread, SIGTERM, exit)
//! - [`engine`]: what a backend implements and is handed
//! - [`local`]: generations without a supervisor
//! - [`utf8`]: token bytes into whole characters
//! - [`stats`]: the figures of a generation
//!
//! # One behaviour for every worker
//!
//! | event | behaviour |
//! |---|---|
//! | a frame that does not decode | logged and skipped; the conversation goes on (the framing is intact; an oversized or truncated frame ends it as a hang-up) |
//! | SIGTERM | shutdown: the running generation is stopped (its stream says stop, the engine's stop hook runs), the engine thread gets [`SHUTDOWN_GRACE`](run::SHUTDOWN_GRACE) to return and drop its model, then the process exits 0; during a load it exits 0 at once |
//! | EOF or a socket error | the same as SIGTERM: a worker never outlives its supervisor |
//! | `Shutdown` | the same as SIGTERM |
//! | `Load` during a generation | the generation is answered `Done` (`Cancelled`) and stopped; the new model loads once the engine is free (the old one dropped first); `Generate` before the new `Ready` is refused `NotLoaded`; a `Load` during a load waits for it, then the newest settings load |
//! | `Cancel` | answered `Done` (`Cancelled`, figures so far) at once; the engine is stopped and its later text dropped; a cancel for another id is ignored; a `Generate` right after it runs as soon as the engine is free |
//! | `Ping` during a load or a generation | answered at once (`busy_with` is the unanswered generation) |
//! | `Generate` while one runs | refused `Busy`; before a model is ready `NotLoaded`; with no messages `BadRequest` |
//! | token cap reached | `Done` (`MaxTokens`) at once; a character cut in half by the cap is dropped |
//! | engine error | `Error` (`Engine`); the worker keeps serving |
//! | load failure | `LoadFailed`, then exit with its code (64-78: never restart; 1: may work after a restart) |
//! | supervisor of another protocol version | exit 78 (`ProtocolMismatch`) |
//! | `Done` and heartbeats | carry the engine's latest KV-cache report ([`Model::cache`]: conversations held, figures); an engine reports it after its prompt too, so a `Done` sent at the token cap already names the conversation |

pub mod affinity;
pub mod cache;
pub mod core;
pub mod engine;
mod ffi;
pub mod local;
pub mod run;
pub mod stats;
pub mod utf8;

use std::io::Write;

pub use engine::{
    Engine, Finish, Flow, GenFailure, Job, LoadFailure, Model, Serve, Served, StopReason,
    TokenStream,
};
pub use local::{generate_locally, LocalError, LocalSession};
pub use run::{run, serve};

/// How the worker process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit status.
    pub code: i32,
}

impl Exit {
    /// A failure that may pass with a restart.
    pub const FAILURE: Self = Self { code: 1 };
}

/// Ends the process with `exit.code` at once, without exit handlers: an
/// engine's exit-time cleanup (C++ static destructors, a runtime's own
/// teardown) can hang or crash while one of its threads is stuck, and
/// everything worth keeping (socket frames, log lines) is already written.
pub fn exit(exit: Exit) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    ffi::exit_immediately(exit.code)
}
