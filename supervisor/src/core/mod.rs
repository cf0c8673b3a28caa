//! The supervisor's decisions, without IO: [`Core::handle`] takes one
//! [`Event`] (something that happened, with the time it happened) and returns
//! the [`Effect`]s the driver must carry out (spawn, signal, send, log, ...).
//!
//! No clock, no socket, no process, no file: the driver in
//! [`crate::driver`] turns the real world into events, and the simulation in
//! `sim` (tests) turns a seeded random world into them, checking invariants
//! after every step. Every slot state change goes through
//! [`crate::lifecycle::check_transition`]; an illegal one is not applied: it
//! is logged as a bug and recorded in [`Core::violations`], which the
//! simulation fails on.
//!
//! A newcomer's map, one concern per file:
//! - `events`: the interface, [`Event`] in and [`Effect`] out;
//! - `slot`: a slot, a job, and the one function that changes a slot's state;
//! - `admission`: submits, validation, the queue, cancels, queue deadlines;
//! - `dispatch`: routing, spill-over, starting requests;
//! - `relay`: what a serving worker says (tokens, done, errors, refusals);
//! - `shadow`: the idle slot prefilling the request in flight, for failover;
//! - `process`: spawns, stops, connections, exits and their decisions;
//! - `liveness`: hangs, heartbeats, load limits, timers, rescues;
//! - `memory`: memory readings, pressure, ceilings, profile switches;
//! - `thermal`: zone readings, stuck or unreadable zones, the level;
//! - `admin`: `supctl` commands;
//! - `drain`: SIGTERM: finish what runs, then stop;
//! - `status`: the status report, snapshot and systemd notifications.

mod admin;
mod admission;
mod dispatch;
mod drain;
mod events;
mod liveness;
mod memory;
mod process;
mod relay;
mod shadow;
mod slot;
mod status;
pub mod thermal;
mod time;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Display;
use std::time::Duration;

use proto::admin::{Routing, ThermalLevel, ZoneTemp};
use proto::worker::WorkerToSupervisor;

use crate::config::{secs, Config};
use crate::lifecycle::RestartPolicy;
use crate::observe::LoopCounters;

pub use dispatch::{MAX_REFUSALS, REFUSAL_PAUSE};
pub use events::{
    Effect, Event, Level, MemSample, Notify, OomCounters, Readings, SpawnError, ZoneReading,
};
pub use slot::{Job, Pace, PaceSum, Shadow, Slot};
pub use time::{ms, Millis};

/// How often the driver sends [`Event::Tick`].
pub const TICK: Duration = Duration::from_millis(100);

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
    /// Pairs (serving, shadow) of slots backing off from shadowing after
    /// the shadow's warms slowed the serving slot.
    shadow_backoff: BTreeMap<(usize, usize), shadow::Backoff>,
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
            shadow_backoff: BTreeMap::new(),
        }
    }

    /// Handles one event that happened at `now`; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Millis) -> Vec<Effect> {
        // Time never runs backwards, whatever the caller passes.
        self.now = self.now.max(now);
        // Tokens, heartbeats and ends of warms change neither the queue nor any slot's
        // readiness: relay them without re-running dispatch on the hot path.
        let relay_only = matches!(
            event,
            Event::WorkerMessage {
                msg: WorkerToSupervisor::Token(_)
                    | WorkerToSupervisor::Heartbeat(_)
                    | WorkerToSupervisor::Warmed(_),
                ..
            }
        );
        let is_tick = matches!(event, Event::Tick);
        if self.exited {
            return Vec::new();
        }
        match event {
            Event::Start => self.start(),
            Event::ClientSubmit { conn, submit } => self.on_submit(conn, submit, String::new()),
            Event::ClientContinue {
                conn,
                submit,
                assistant_prefix,
            } => self.on_submit(conn, submit, assistant_prefix),
            Event::ClientCancel { conn, request_id } => self.on_cancel(conn, request_id),
            Event::ClientGone { conn } => self.on_client_gone(conn),
            Event::ClientStop { conn, request_id } => self.on_stop(conn, request_id),
            Event::ClientModels { conn, request_id } => self.on_models(conn, request_id),
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
