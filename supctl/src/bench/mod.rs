//! `supctl bench`: measures every backend and model of a profile through
//! the supervisor's normal request path and keeps the figures.
//!
//! 1. Preflight checklist (governors, caches, memory, temperatures, NPU,
//!    the supervisor); a failed item refuses the run.
//! 2. Per backend (pinned with the admin `Failover` command, as
//!    `supctl failover --to` does) and model: a cold load (admin `Restart`,
//!    timed until ready), warm-up, then every prompt N times through the
//!    client socket, timing each token as it arrives, while a sampler reads
//!    the worker's memory and the board's temperature.
//! 3. On CPU targets, the relay overhead: the same generation decoded by
//!    `worker-cpu generate` in-process against the full stack.
//! 4. Routing and governors are put back; the result is written as JSON
//!    and an SVG chart, compared with the previous result, and reported as
//!    Markdown.
//!
//! The `conversation` profile ([`conversation`]) measures something else:
//! time to first token over the turns of a chat chain, with the CPU
//! worker's KV-cache reuse on and off.
//!
//! `--spawn` runs each target on a private supervisor started in-process
//! instead, which is how models other than the configured ones are compared.

pub mod compare;
pub mod conversation;
pub mod measure;
pub mod preflight;
pub mod profile;
pub mod quality;
pub mod relay;
pub mod report;
pub mod result;
mod runner;
pub mod stats;
pub mod svg;
pub mod text;

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::chat::Backend;
use thiserror::Error;

pub use profile::{BenchConfig, BenchProfile, PromptSpec};
pub use runner::{compare_files, run, BenchOutcome};

use crate::cli::AdminFailure;
use crate::client::ClientError;

/// What `supctl bench` was asked to do.
#[derive(Debug, Clone, Default)]
#[allow(clippy::struct_excessive_bools)] // one per command-line switch
pub struct BenchOptions {
    /// Profile to run (default: the config's `bench.default_profile`).
    pub profile: Option<String>,
    /// Result file (default: `<output_dir>/bench-<profile>-<time>.json`).
    pub output: Option<PathBuf>,
    /// Chart file (default: the result file with `.svg`).
    pub svg: Option<PathBuf>,
    /// Earlier result to compare with (default: the newest one of the same
    /// profile next to the result file).
    pub compare: Option<PathBuf>,
    /// Regression threshold in percent (default: `bench.regression_pct`).
    pub threshold_pct: Option<f64>,
    /// Set the `performance` governor for the run.
    pub tune: bool,
    /// Drop page caches before each cold load (root only).
    pub drop_caches: bool,
    /// Run each target on a private supervisor started here.
    pub spawn: bool,
    /// Measure the workers as they are, without restarting them.
    pub warm: bool,
    /// Skip the relay-overhead measurement.
    pub no_relay: bool,
    /// Override the profile's repetitions.
    pub repetitions: Option<u32>,
    /// Override the profile's backends.
    pub backends: Vec<Backend>,
}

/// Why a benchmark could not run or finish.
#[derive(Debug, Error)]
pub enum BenchError {
    /// No profile of that name.
    #[error("no bench profile named {name:?} (known: {known})")]
    UnknownProfile {
        /// Name asked for.
        name: String,
        /// Names that exist.
        known: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a bench result.
    #[error("{path} is not a supctl bench result: {source}")]
    NotAResult {
        /// The file.
        path: PathBuf,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A result file of another layout version.
    #[error(
        "{path} has result layout {found}, this supctl reads layout {}",
        result::SCHEMA
    )]
    Schema {
        /// The file.
        path: PathBuf,
        /// Its layout version.
        found: u32,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source} (choose another place with --output)")]
    Write {
        /// The file.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the supervisor failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An admin command failed.
    #[error("admin command failed: {0}")]
    Admin(#[from] AdminFailure),
    /// A preflight item failed.
    #[error("refusing to start: {item}: {value}")]
    Refused {
        /// The item.
        item: String,
        /// Its value.
        value: String,
    },
    /// Something took too long.
    #[error("{what} took longer than {seconds:.0} s")]
    Timeout {
        /// What.
        what: String,
        /// The limit.
        seconds: f64,
    },
    /// The supervisor ended a request with an error.
    #[error("request failed ({kind}): {message}")]
    Request {
        /// Error kind.
        kind: String,
        /// The supervisor's words.
        message: String,
    },
    /// The slot measured cannot serve.
    #[error("slot {slot} is {state}: {reason}")]
    SlotDown {
        /// Slot.
        slot: String,
        /// Its state.
        state: String,
        /// Why.
        reason: String,
    },
    /// A request was served by another backend than the one pinned.
    #[error("a request meant for {expected} was served by {got}")]
    WrongBackend {
        /// Backend pinned.
        expected: Backend,
        /// Backend that answered.
        got: Backend,
    },
    /// The worker failed during a request and another finished it.
    #[error("the {backend} worker failed during a request (the answer failed over)")]
    FailedOver {
        /// Backend measured.
        backend: Backend,
    },
    /// Nothing of the profile can be measured here.
    #[error("nothing to measure: {reasons}")]
    NothingToMeasure {
        /// Why each target was left out.
        reasons: String,
    },
    /// `--spawn` with an NPU target while the service runs.
    #[error("a supervisor is running at {socket}: stop it before --spawn measures the NPU (two NPU clients at once can hang the board)")]
    LiveNpu {
        /// Its admin socket.
        socket: PathBuf,
    },
    /// A private supervisor did not start.
    #[error("the private supervisor did not start: {source}")]
    Private {
        /// Why.
        #[source]
        source: supervisor::StartError,
    },
    /// A temporary directory could not be made.
    #[error("cannot create a temporary directory: {source}")]
    TempDir {
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// `worker-cpu generate` could not be run.
    #[error("cannot run {path}: {source}")]
    InProcessStart {
        /// The worker binary.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// `worker-cpu generate` failed.
    #[error("worker-cpu generate failed ({status}): {stderr_tail}")]
    InProcessFailed {
        /// Exit status.
        status: String,
        /// Last lines it printed.
        stderr_tail: String,
    },
    /// `worker-cpu generate --json` printed no figures.
    #[error("worker-cpu generate --json printed no figures (an older worker-cpu?): {stderr_tail}")]
    InProcessOutput {
        /// Last lines it printed.
        stderr_tail: String,
    },
    /// Stopped by Ctrl-C.
    #[error("interrupted; routing and governors were put back")]
    Interrupted,
}

impl BenchError {
    /// Errors that end the whole run rather than one target.
    fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Client(_) | Self::Interrupted | Self::Write { .. } | Self::TempDir { .. }
        )
    }
}

/// The progress bar on stderr; hidden when stderr is not a terminal.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar on stderr if it is a terminal, else a hidden one.
    pub fn stderr() -> Self {
        let target = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Self { bar }
    }

    /// A bar that draws nothing (library callers, tests).
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
        }
    }

    fn set_len(&self, n: u64) {
        self.bar.set_length(n);
    }

    fn step(&self, message: String) {
        self.bar.inc(1);
        self.bar.set_message(message);
    }

    fn say(&self, message: String) {
        self.bar.set_message(message);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
