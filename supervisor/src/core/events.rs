//! What goes into the core ([`Event`], with the readings it carries) and
//! what comes out ([`Effect`]): the whole interface between the decisions
//! and the world.

use std::time::Duration;

use proto::admin::{AdminToSupervisor, SupervisorToAdmin};
use proto::chat::Backend;
use proto::client::{Submit, SupervisorToClient};
use proto::worker::{SupervisorToWorker, WorkerToSupervisor};

use crate::observe::{Latency, Snapshot};

/// The kernel's OOM-kill counters, read by the driver at spawn and at exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OomCounters {
    /// `oom_kill` of `/proc/vmstat`.
    pub global: Option<u64>,
    /// `oom_kill` of the worker cgroup's `memory.events`.
    pub cgroup: Option<u64>,
}

impl OomCounters {
    /// Whether the OOM killer struck since `before`: the worker's own
    /// cgroup counter when there is one (it names this worker alone), else
    /// the system-wide counter (which may also count another process).
    pub fn rose_since(self, before: OomCounters) -> bool {
        let rose = |b: Option<u64>, a: Option<u64>| matches!((b, a), (Some(b), Some(a)) if a > b);
        if before.cgroup.is_some() && self.cgroup.is_some() {
            return rose(before.cgroup, self.cgroup);
        }
        rose(before.global, self.global)
    }
}

/// One worker's memory figures, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemSample {
    /// Resident anonymous memory (heap, KV cache, compute buffers).
    pub rss_anon_kb: u64,
    /// Resident file-backed memory (mmap'd weights).
    pub rss_file_kb: u64,
    /// Peak resident set.
    pub vm_hwm_kb: u64,
}

/// One thermal zone as read; `celsius` is `None` when its file could not be
/// read or parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneReading {
    /// Zone type (`soc-thermal`, ...).
    pub kind: String,
    /// Temperature, if readable.
    pub celsius: Option<f64>,
}

/// What the driver read for [`Effect::ReadTelemetry`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Readings {
    /// System MemAvailable (KiB), if readable.
    pub mem_available_kb: Option<u64>,
    /// Per worker: (slot, pid, sample or `None` when `/proc/<pid>/status`
    /// could not be read).
    pub workers: Vec<(usize, u32, Option<MemSample>)>,
    /// Every thermal zone, readable or not.
    pub zones: Vec<ZoneReading>,
}

/// Why a spawn failed, as far as restarting is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnError {
    /// Retrying cannot help (ENOENT, EACCES, ENOEXEC).
    pub permanent: bool,
    /// The OS error, for status and logs.
    pub message: String,
}

/// Something that happened. Every event comes with the time it happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// The driver is up: start the workers.
    Start,
    /// A client submitted a request.
    ClientSubmit {
        /// Connection id.
        conn: u64,
        /// The request.
        submit: Submit,
    },
    /// A client submitted a request whose answer continues given text.
    ClientContinue {
        /// Connection id.
        conn: u64,
        /// The request.
        submit: Submit,
        /// The start of the answer, already shown.
        assistant_prefix: String,
    },
    /// A client cancelled a request.
    ClientCancel {
        /// Connection id.
        conn: u64,
        /// The client's request id.
        request_id: u64,
    },
    /// A client connection closed.
    ClientGone {
        /// Connection id.
        conn: u64,
    },
    /// A client ended a request's answer early (it met a stop string).
    ClientStop {
        /// Connection id.
        conn: u64,
        /// The client's request id.
        request_id: u64,
    },
    /// A client asked which models the slots serve.
    ClientModels {
        /// Connection id.
        conn: u64,
        /// The client's query id.
        request_id: u64,
    },
    /// The process of [`Effect::Spawn`] runs.
    Spawned {
        /// Slot index.
        slot: usize,
        /// Which process of the slot.
        incarnation: u64,
        /// Its pid.
        pid: u32,
        /// OOM counters when it started.
        oom: OomCounters,
    },
    /// [`Effect::Spawn`] failed.
    SpawnFailed {
        /// Slot index.
        slot: usize,
        /// Which process of the slot.
        incarnation: u64,
        /// Why.
        error: SpawnError,
    },
    /// A worker connected and completed the handshake.
    WorkerConnected {
        /// Slot index.
        slot: usize,
        /// Which process of the slot.
        incarnation: u64,
    },
    /// A worker sent a message.
    WorkerMessage {
        /// Slot index.
        slot: usize,
        /// Which process of the slot.
        incarnation: u64,
        /// The message.
        msg: WorkerToSupervisor,
    },
    /// A worker's connection ended.
    WorkerDisconnected {
        /// Slot index.
        slot: usize,
        /// Which process of the slot.
        incarnation: u64,
    },
    /// A worker process ended.
    WorkerExited {
        /// Slot index.
        slot: usize,
        /// Which process of the slot.
        incarnation: u64,
        /// Exit status.
        code: Option<i32>,
        /// Terminating signal.
        signal: Option<i32>,
        /// OOM counters after it ended.
        oom: OomCounters,
    },
    /// Time passed (every [`TICK`]).
    Tick,
    /// Answer to [`Effect::ReadTelemetry`].
    Telemetry(Readings),
    /// An admin command; answer with [`Effect::AdminReply`] of the same id.
    Admin {
        /// Reply id.
        id: u64,
        /// The command.
        cmd: AdminToSupervisor,
    },
    /// SIGTERM/SIGINT: drain, then stop.
    Shutdown,
}

/// A systemd notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// READY=1 (and the embedding's ready callback).
    Ready,
    /// STATUS=...
    Status(String),
    /// WATCHDOG=1
    Watchdog,
    /// STOPPING=1
    Stopping,
}

/// Log level of an [`Effect::Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something is broken.
    Error,
    /// Something went wrong and was handled.
    Warn,
    /// Normal operation worth a line.
    Info,
    /// Detail.
    Debug,
}

/// Something the driver must do.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Start a worker process for `slot`; answer with [`Event::Spawned`] or
    /// [`Event::SpawnFailed`]. `memory_max` (bytes) is its cgroup limit.
    Spawn {
        /// Slot index.
        slot: usize,
        /// Which process of the slot this is.
        incarnation: u64,
        /// cgroup `memory.max`, if any.
        memory_max: Option<u64>,
    },
    /// SIGTERM to the process group, SIGKILL after `grace` if still alive.
    Stop {
        /// Slot index.
        slot: usize,
        /// The worker.
        pid: u32,
        /// Time between SIGTERM and SIGKILL.
        grace: Duration,
    },
    /// SIGKILL to the process group now (end of shutdown).
    Kill {
        /// The worker.
        pid: u32,
    },
    /// A message to a connected worker.
    ToWorker {
        /// Slot index.
        slot: usize,
        /// Which process of the slot.
        incarnation: u64,
        /// The message.
        msg: SupervisorToWorker,
    },
    /// An event to a client connection.
    ToClient {
        /// Connection id.
        conn: u64,
        /// The event.
        event: SupervisorToClient,
        /// The request was admitted (for the refused/error counters).
        admitted: bool,
    },
    /// The answer to [`Event::Admin`].
    AdminReply {
        /// Reply id.
        id: u64,
        /// The answer.
        answer: SupervisorToAdmin,
    },
    /// Record the slot's worker pid.
    WritePidFile {
        /// Slot index.
        slot: usize,
        /// The pid.
        pid: u32,
    },
    /// Remove the slot's pid file.
    RemovePidFile {
        /// Slot index.
        slot: usize,
    },
    /// Change the slot's cgroup `memory.max` (bytes; `None` = max).
    SetCgroupLimit {
        /// Slot index.
        slot: usize,
        /// Limit in bytes.
        max: Option<u64>,
    },
    /// Tell systemd.
    Notify(Notify),
    /// Publish the snapshot for /health and /metrics.
    Publish(Box<Snapshot>),
    /// Record a latency in the /metrics histograms (observation only:
    /// nothing the core decides depends on it).
    Observe {
        /// Which latency.
        latency: Latency,
        /// The backend it was measured on.
        backend: Backend,
        /// How long, in seconds.
        seconds: f64,
    },
    /// Read memory and thermal telemetry for these workers; answer with
    /// [`Event::Telemetry`].
    ReadTelemetry {
        /// (slot, pid) of the live workers.
        workers: Vec<(usize, u32)>,
    },
    /// A log line (never prompt text).
    Log {
        /// Level.
        level: Level,
        /// What happened.
        message: String,
        /// Structured fields.
        fields: Vec<(&'static str, String)>,
    },
    /// Everything is stopped: the driver may return.
    Exit,
}
