//! The supervisor's decisions, without IO: [`Core::handle`] takes one
//! [`Event`] (something that happened, with the time it happened) and returns
//! the [`Effect`]s the driver must carry out (spawn, signal, send, log, ...).
//!
//! No clock, no socket, no process, no file: the driver in
//! [`crate::driver`] turns the real world into events, and the simulation in
//! `sim` (tests) turns a seeded random world into them, checking invariants
//! after every step. Every slot state change goes through
//! [`crate::lifecycle::check_transition`]; an illegal one is a bug
//! (`debug_assert`, and [`Core::violations`] for the simulation).
//!
//! A newcomer's map, one concern per file:
//! - `admission`: submits, validation, the queue, cancels, queue deadlines;
//! - `dispatch`: routing, spill-over, starting requests, relaying tokens;
//! - `liveness`: spawns, stops, exits, hangs, heartbeats, rescues;
//! - `memory`: memory readings, pressure, ceilings, profile switches;
//! - `thermal`: zone readings, stuck or unreadable zones, the level;
//! - `admin`: `supctl` commands;
//! - `drain`: SIGTERM: finish what runs, then stop;
//! - `status`: the status report, snapshot and systemd notifications.

mod admin;
mod admission;
mod dispatch;
mod drain;
mod liveness;
mod memory;
mod slot;
mod status;
pub mod thermal;
mod time;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Display;
use std::time::Duration;

use proto::admin::{AdminToSupervisor, Routing, SupervisorToAdmin, ThermalLevel, ZoneTemp};
use proto::client::{Submit, SupervisorToClient};
use proto::worker::{SupervisorToWorker, WorkerToSupervisor};

use crate::config::{secs, Config};
use crate::lifecycle::RestartPolicy;
use crate::observe::{LoopCounters, Snapshot};

pub use dispatch::{MAX_REFUSALS, REFUSAL_PAUSE};
pub use slot::{Job, Slot};
pub use time::{ms, Millis};

/// How often the driver sends [`Event::Tick`].
pub const TICK: Duration = Duration::from_millis(100);

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

/// The supervisor's whole state.
pub struct Core {
    cfg: Config,
    slots: Vec<Slot>,
    jobs: BTreeMap<u64, Job>,
    queue: VecDeque<u64>,
    next_job: u64,
    routing: Routing,
    active: Option<usize>,
    routing_reason: String,
    started: Millis,
    now: Millis,
    pid: u32,
    shutting_down: bool,
    drain_deadline: Option<Millis>,
    kill_deadline: Option<Millis>,
    exited: bool,
    policy: RestartPolicy,
    zones: Vec<ZoneTemp>,
    thermal: ThermalLevel,
    thermal_track: thermal::Tracker,
    mem_available_kb: Option<u64>,
    mem_read_failures: u64,
    last_telemetry: Option<Millis>,
    ready_notified: bool,
    counters: LoopCounters,
    last_tokens_at: Option<Millis>,
    sd_status: String,
    last_watchdog: Millis,
    last_publish: Option<Millis>,
    out: Vec<Effect>,
    violations: Vec<String>,
}

impl Core {
    /// The state at `now`; `pid` is the supervisor's own (for status).
    pub fn new(cfg: Config, pid: u32, now: Millis) -> Self {
        let p = &cfg.policy;
        let policy = RestartPolicy {
            backoff_initial: secs(p.backoff_initial_s),
            backoff_max: secs(p.backoff_max_s),
            intensity: p.restart_intensity,
            period: secs(p.restart_period_s),
            cooldown: secs(p.failed_cooldown_s),
        };
        let slots = cfg
            .slot_list()
            .into_iter()
            .map(|(name, sc)| Slot::new(name, sc.clone(), now))
            .collect();
        Self {
            cfg,
            slots,
            jobs: BTreeMap::new(),
            queue: VecDeque::new(),
            next_job: 1,
            routing: Routing::Auto,
            active: None,
            routing_reason: "starting".into(),
            started: now,
            now,
            pid,
            shutting_down: false,
            drain_deadline: None,
            kill_deadline: None,
            exited: false,
            policy,
            zones: Vec::new(),
            thermal: ThermalLevel::Normal,
            thermal_track: thermal::Tracker::default(),
            mem_available_kb: None,
            mem_read_failures: 0,
            last_telemetry: None,
            ready_notified: false,
            counters: LoopCounters::default(),
            last_tokens_at: None,
            sd_status: String::new(),
            last_watchdog: now,
            last_publish: None,
            out: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// Handles one event that happened at `now`; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Millis) -> Vec<Effect> {
        // Time never runs backwards, whatever the caller passes.
        self.now = self.now.max(now);
        // Tokens and heartbeats change neither the queue nor any slot's
        // readiness: relay them without re-running dispatch on the hot path.
        let relay_only = matches!(
            event,
            Event::WorkerMessage {
                msg: WorkerToSupervisor::Token(_) | WorkerToSupervisor::Heartbeat(_),
                ..
            }
        );
        let is_tick = matches!(event, Event::Tick);
        if self.exited {
            return Vec::new();
        }
        match event {
            Event::Start => self.start(),
            Event::ClientSubmit { conn, submit } => self.on_submit(conn, submit),
            Event::ClientCancel { conn, request_id } => self.on_cancel(conn, request_id),
            Event::ClientGone { conn } => self.on_client_gone(conn),
            Event::Spawned {
                slot,
                incarnation,
                pid,
                oom,
            } => self.on_spawned(slot, incarnation, pid, oom),
            Event::SpawnFailed {
                slot,
                incarnation,
                error,
            } => self.on_spawn_failed(slot, incarnation, &error),
            Event::WorkerConnected { slot, incarnation } => {
                self.on_worker_connected(slot, incarnation);
            }
            Event::WorkerMessage {
                slot,
                incarnation,
                msg,
            } => {
                if self.is_current(slot, incarnation) {
                    self.on_worker_message(slot, msg);
                }
            }
            Event::WorkerDisconnected { slot, incarnation } => {
                self.on_worker_disconnected(slot, incarnation);
            }
            Event::WorkerExited {
                slot,
                incarnation,
                code,
                signal,
                oom,
            } => self.on_worker_exited(slot, incarnation, code, signal, oom),
            Event::Tick => self.on_tick(),
            Event::Telemetry(readings) => self.on_telemetry(&readings),
            Event::Admin { id, cmd } => {
                let answer = self.on_admin(cmd);
                self.out.push(Effect::AdminReply { id, answer });
            }
            Event::Shutdown => self.begin_drain(),
        }
        if !relay_only && !self.exited {
            self.dispatch();
            self.check_finished();
            if is_tick && !self.exited {
                self.publish();
            }
        }
        std::mem::take(&mut self.out)
    }

    fn is_current(&self, slot: usize, incarnation: u64) -> bool {
        self.slots
            .get(slot)
            .is_some_and(|s| s.incarnation == incarnation && s.pid.is_some())
    }

    fn start(&mut self) {
        for i in 0..self.slots.len() {
            if i == 0 || self.slots[i].cfg.warm {
                self.spawn(i);
            }
        }
        self.request_telemetry();
    }

    fn log(
        &mut self,
        level: Level,
        message: impl Into<String>,
        fields: &[(&'static str, &dyn Display)],
    ) {
        self.out.push(Effect::Log {
            level,
            message: message.into(),
            fields: fields.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        });
    }

    /// Records a broken rule (an illegal transition); the simulation fails
    /// on any, debug builds assert.
    fn violation(&mut self, what: String) {
        self.log(Level::Error, format!("bug: {what}"), &[]);
        self.violations.push(what);
    }

    /// Rules broken so far (empty unless there is a bug).
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// The slots (read-only, for invariants and tests).
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The jobs (read-only, for invariants and tests).
    pub fn jobs(&self) -> &BTreeMap<u64, Job> {
        &self.jobs
    }

    /// Waiting requests, in order.
    pub fn queue(&self) -> &VecDeque<u64> {
        &self.queue
    }

    /// The slot new requests go to.
    pub fn active(&self) -> Option<usize> {
        self.active
    }

    /// The current thermal level.
    pub fn thermal_level(&self) -> ThermalLevel {
        self.thermal
    }

    /// The configuration in force (ceilings may have been changed by admin).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether a drain has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The restart policy.
    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    /// Routing mode.
    pub fn routing(&self) -> Routing {
        self.routing
    }
}
