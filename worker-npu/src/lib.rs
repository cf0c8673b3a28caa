//! rocksteady NPU worker: serves one RKLLM model to the supervisor over the
//! worker conversation (`proto::worker`), with the runtime library
//! (`librkllmrt.so`) loaded at run time.
//!
//! The conversation itself (handshake, Load / Generate / Cancel / Ping /
//! Shutdown, SIGTERM and EOF, UTF-8 reassembly, figures, exit codes) is
//! `worker_kit`'s; this crate owns only the runtime and its threads. It must
//! not speak the protocol itself, and carries no test-only behaviour (the
//! runtime's test double is built from `tests/fake-rkllm` for the tests only).
//!
//! - [`worker`]: the runtime as a [`worker_kit::Engine`]
//! - [`engine`]: loading (checks, runtime, init log) and generation
//! - [`ffi`]: the only module with `unsafe`: the runtime's C interface
//! - [`abi`]: which layout of the interface the installed runtime has
//! - [`classify`]: what the runtime's init log means
//! - [`capture`]: capturing the runtime's output during init
//! - [`chat`]: conversations rendered into the runtime's prompt and template
//! - [`history`]: whether a request continues the runtime's KV history or clears it
//! - [`prompt_cache`]: the prompt-cache file of the configured system prompt
//! - [`config`]: settings from the supervisor's `Load`

pub mod abi;
pub mod capture;
pub mod chat;
pub mod classify;
pub mod config;
pub mod engine;
pub mod ffi;
pub mod history;
pub mod prompt_cache;
pub mod worker;

use std::fs::File;

pub use worker::NpuEngine;

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
