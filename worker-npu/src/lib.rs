//! rocksteady NPU worker: serves one RKLLM model to the supervisor over the
//! worker conversation (`proto::worker`), with the runtime library
//! (`librkllmrt.so`) loaded at run time.
//!
//! - [`worker`]: the conversation (socket task; never blocks on the runtime)
//! - [`engine`]: loading (checks, runtime, init log) and generation threads
//! - [`ffi`]: the only module with `unsafe`: the runtime's C interface
//! - [`abi`]: which layout of the interface the installed runtime has
//! - [`classify`]: what the runtime's init log means
//! - [`capture`]: capturing the runtime's output during init
//! - [`chat`]: conversations rendered into the runtime's prompt and template
//! - [`config`]: settings from the supervisor's `Load`
//! - [`utf8`]: token pieces reassembled into whole characters
//! - [`telemetry`]: NPU load, clock and driver version readers (also for the supervisor)

pub mod abi;
pub mod capture;
pub mod chat;
pub mod classify;
pub mod config;
pub mod engine;
pub mod ffi;
pub mod telemetry;
pub mod utf8;
pub mod worker;

use std::fs::File;
use std::io::Write;

pub use worker::{run, Exit, Options};

/// A handle on the process's original stderr, for the log. The runtime's
/// output is captured during init by pointing fd 2 at a pipe; a log written
/// to fd 2 itself would then be fed back into that pipe.
///
/// # Errors
/// The OS error when stderr cannot be duplicated.
pub fn log_sink() -> std::io::Result<File> {
    Ok(File::from(nix::unistd::dup(std::io::stderr())?))
}

/// Makes the runtime log its version, the model's toolkit version, target
/// platform and context limit at init, which the worker classifies and
/// reports. An operator's own `RKLLM_LOG_LEVEL` is kept.
///
/// Call before any other thread exists (it changes the environment).
pub fn prepare_environment() {
    if std::env::var_os("RKLLM_LOG_LEVEL").is_none() {
        std::env::set_var("RKLLM_LOG_LEVEL", "1");
    }
}

/// Ends the process with `exit.code`, without exit handlers: the runtime's
/// exit-time cleanup can hang when a run is stuck, and everything worth
/// keeping (socket frames, log lines) is already written.
pub fn exit(exit: Exit) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    ffi::exit_immediately(exit.code)
}
