//! The thin tokio driver around [`crate::core::Core`]: it turns sockets
//! ([`crate::server`]), processes ([`crate::process`]), timers and `/proc` /
//! `/sys` reads ([`crate::telemetry`]) into [`Event`]s, and carries out the
//! core's [`Effect`]s. It decides nothing: every "whether" and "when" is the
//! core's.

pub mod conns;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use proto::admin::{AdminToSupervisor, SupervisorToAdmin};
use proto::client::{Submit, SupervisorToClient};
use proto::worker::SupervisorToWorker;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::cgroup::WorkerCgroups;
use crate::config::Config;
use crate::core::{
    Core, Effect, Event, Level, Millis, Notify, OomCounters, Readings, SpawnError, TICK,
};
use crate::identity::UserIds;
use crate::observe::Observed;
use crate::process;
use crate::telemetry::{memory, thermal};

/// What the connection tasks and process watchers send the driver.
#[derive(Debug)]
pub enum Input {
    /// A client submitted a request.
    ClientSubmit {
        /// Connection id.
        conn: u64,
        /// The request.
        submit: Submit,
        /// Where the connection's events go.
        events: ClientLink,
    },
    /// A client submitted a request whose answer continues given text.
    ClientContinue {
        /// Connection id.
        conn: u64,
        /// The request.
        submit: Submit,
        /// The start of the answer, already shown.
        assistant_prefix: String,
        /// Where the connection's events go.
        events: ClientLink,
    },
    /// A client asked which models the slots serve.
    ClientModels {
        /// Connection id.
        conn: u64,
        /// The client's query id.
        request_id: u64,
        /// Where the connection's events go.
        events: ClientLink,
    },
    /// A worker connected and completed the handshake.
    WorkerConnected {
        /// Slot index.
        slot: usize,
        /// Which process of the slot.
        incarnation: u64,
        /// Sends to the worker.
        tx: UnboundedSender<SupervisorToWorker>,
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
    },
    /// An event the core takes as it is (a cancel, a stop, a worker's
    /// message, a connection that ended): the driver only keeps its own
    /// books on the way.
    Core(Event),
    /// An admin command, answered on `reply`.
    Admin {
        /// The command.
        cmd: AdminToSupervisor,
        /// The answer.
        reply: oneshot::Sender<SupervisorToAdmin>,
    },
}

/// The driver's way to a client connection: a bounded event channel, and a
/// token that ends the connection when the client falls too far behind.
#[derive(Debug, Clone)]
pub struct ClientLink {
    /// Events for the connection's writer.
    pub events: tokio::sync::mpsc::Sender<SupervisorToClient>,
    /// Cancelled to disconnect the client.
    pub kick: CancellationToken,
}

/// The pid a slot's socket may accept, shared with its accept task so an
/// unknown peer is refused before it can say anything.
#[derive(Debug, Default)]
pub struct Expected {
    /// (pid, incarnation) of the process we spawned last.
    pub current: Mutex<Option<(u32, u64)>>,
}

/// Per slot: where its worker connects and what the driver holds for it.
struct SlotIo {
    name: &'static str,
    socket: PathBuf,
    expected: Arc<Expected>,
    worker: Option<(u64, UnboundedSender<SupervisorToWorker>)>,
    alive: Arc<AtomicBool>,
    cgroup: Option<PathBuf>,
}

/// The driver's state.
pub struct Driver {
    core: Core,
    cfg: Config,
    slots: Vec<SlotIo>,
    clients: HashMap<u64, ClientLink>,
    replies: HashMap<u64, oneshot::Sender<SupervisorToAdmin>>,
    next_reply: u64,
    tx: UnboundedSender<Input>,
    observed: Arc<Observed>,
    on_ready: Option<Box<dyn FnOnce() + Send>>,
    cgroups: Option<WorkerCgroups>,
    worker_user: Option<UserIds>,
    epoch: Instant,
    exited: bool,
}

/// Whether retrying a failed spawn can help: a missing or non-executable
/// binary never will; EMFILE, EAGAIN, ENOMEM and the like may.
pub fn spawn_error(e: &io::Error) -> SpawnError {
    const ENOEXEC: i32 = 8;
    let permanent = matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || e.raw_os_error() == Some(ENOEXEC);
    SpawnError {
        permanent,
        message: e.to_string(),
    }
}

impl Driver {
    /// A driver for `cfg`; `tx` is the sender of its own input channel
    /// (handed to the tasks it spawns); `sockets` are the per-slot worker
    /// socket paths and accept filters, in slot order.
    pub fn new(
        cfg: Config,
        tx: UnboundedSender<Input>,
        sockets: Vec<(PathBuf, Arc<Expected>)>,
        observed: Arc<Observed>,
        on_ready: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        let slots = cfg
            .slot_list()
            .into_iter()
            .zip(sockets)
            .map(|((name, _), (socket, expected))| SlotIo {
                name,
                socket,
                expected,
                worker: None,
                alive: Arc::new(AtomicBool::new(false)),
                cgroup: None,
            })
            .collect();
        Self {
            core: Core::new(cfg.clone(), std::process::id(), Millis(0)),
            cfg,
            slots,
            clients: HashMap::new(),
            replies: HashMap::new(),
            next_reply: 1,
            tx,
            observed,
            on_ready,
            cgroups: None,
            worker_user: None,
            epoch: Instant::now(),
            exited: false,
        }
    }

    /// Workers are spawned as `user` (`None`: the supervisor's own user).
    #[must_use]
    pub fn with_worker_user(mut self, user: Option<UserIds>) -> Self {
        self.worker_user = user;
        self
    }

    fn now(&self) -> Millis {
        Millis(u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Runs until the core says everything is stopped (after `shutdown`).
    pub async fn run(mut self, mut rx: UnboundedReceiver<Input>, shutdown: CancellationToken) {
        if self.cfg.supervisor.worker_cgroups {
            let t = &self.cfg.telemetry;
            match WorkerCgroups::setup(&t.cgroup_root, &t.proc_root, std::process::id()) {
                Ok(groups) => {
                    tracing::info!("workers run in their own cgroups with memory.max from the hard ceiling");
                    self.cgroups = Some(groups);
                }
                Err(e) => tracing::warn!("per-worker cgroups unavailable ({e}); the procfs RssAnon ceiling still applies"),
            }
        }
        self.feed(Event::Start);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut asked_to_stop = false;
        while !self.exited {
            tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => self.on_input(input),
                    None => break,
                },
                _ = tick.tick() => self.feed(Event::Tick),
                () = shutdown.cancelled(), if !asked_to_stop => {
                    asked_to_stop = true;
                    self.feed(Event::Shutdown);
                }
            }
        }
    }

    fn on_input(&mut self, input: Input) {
        let event = match input {
            Input::ClientSubmit {
                conn,
                submit,
                events,
            } => {
                self.clients.entry(conn).or_insert(events);
                Event::ClientSubmit { conn, submit }
            }
            Input::Core(event) => {
                match &event {
                    Event::ClientGone { conn } => {
                        self.clients.remove(conn);
                    }
                    Event::WorkerDisconnected { slot, incarnation } => {
                        let io = &mut self.slots[*slot];
                        if io
                            .worker
                            .as_ref()
                            .is_some_and(|(inc, _)| inc == incarnation)
                        {
                            io.worker = None;
                        }
                    }
                    _ => {}
                }
                event
            }
            Input::ClientContinue {
                conn,
                submit,
                assistant_prefix,
                events,
            } => {
                self.clients.entry(conn).or_insert(events);
                Event::ClientContinue {
                    conn,
                    submit,
                    assistant_prefix,
                }
            }
            Input::ClientModels {
                conn,
                request_id,
                events,
            } => {
                self.clients.entry(conn).or_insert(events);
                Event::ClientModels { conn, request_id }
            }
            Input::WorkerConnected {
                slot,
                incarnation,
                tx,
            } => {
                self.slots[slot].worker = Some((incarnation, tx));
                Event::WorkerConnected { slot, incarnation }
            }
            Input::WorkerExited {
                slot,
                incarnation,
                code,
                signal,
            } => {
                let oom = self.oom_counters(slot);
                Event::WorkerExited {
                    slot,
                    incarnation,
                    code,
                    signal,
                    oom,
                }
            }
            Input::Admin { cmd, reply } => {
                let id = self.next_reply;
                self.next_reply += 1;
                self.replies.insert(id, reply);
                Event::Admin { id, cmd }
            }
        };
        self.feed(event);
    }

    /// Hands `event` to the core and carries out the effects; effects that
    /// answer at once (spawn, telemetry) feed their answer back in order.
    fn feed(&mut self, event: Event) {
        let mut pending = VecDeque::from([event]);
        while let Some(event) = pending.pop_front() {
            let now = self.now();
            for effect in self.core.handle(event, now) {
                if let Some(answer) = self.carry_out(effect) {
                    pending.push_back(answer);
                }
            }
        }
    }

    fn oom_counters(&self, slot: usize) -> OomCounters {
        OomCounters {
            global: memory::oom_kills(&self.cfg.telemetry.proc_root),
            cgroup: self.slots[slot]
                .cgroup
                .as_deref()
                .and_then(memory::cgroup_oom_kills),
        }
    }

    #[allow(clippy::too_many_lines)] // one arm per effect, each short
    fn carry_out(&mut self, effect: Effect) -> Option<Event> {
        match effect {
            Effect::Spawn {
                slot,
                incarnation,
                memory_max,
            } => return Some(self.spawn(slot, incarnation, memory_max)),
            Effect::Stop { slot, pid, grace } => {
                process::stop_in_background(pid, grace, Arc::clone(&self.slots[slot].alive));
            }
            Effect::Kill { pid } => {
                let _ = process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
            Effect::ToWorker {
                slot,
                incarnation,
                msg,
            } => {
                if let Some((inc, tx)) = &self.slots[slot].worker {
                    if *inc == incarnation {
                        let _ = tx.send(msg);
                    }
                }
            }
            Effect::ToClient {
                conn,
                event,
                admitted,
            } => {
                self.observed.requests.count(&event, admitted);
                if let Some(link) = self.clients.get(&conn) {
                    // A closed channel means the client left; ClientGone follows.
                    if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) =
                        link.events.try_send(event)
                    {
                        // The client stopped reading: its backlog is full.
                        // Disconnect it and cancel its requests; nobody else waits.
                        link.kick.cancel();
                        self.clients.remove(&conn);
                        self.observed
                            .connections
                            .too_slow
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            conn,
                            "disconnected a client that stopped reading its answers"
                        );
                        return Some(Event::ClientGone { conn });
                    }
                }
            }
            Effect::AdminReply { id, answer } => {
                if let Some(reply) = self.replies.remove(&id) {
                    let _ = reply.send(answer);
                }
            }
            Effect::WritePidFile { slot, pid } => {
                let dir = &self.cfg.supervisor.state_dir;
                if let Err(e) = process::write_pid_file(dir, self.slots[slot].name, pid) {
                    tracing::warn!(
                        slot = self.slots[slot].name,
                        "cannot write pid file in {}: {e}",
                        dir.display()
                    );
                }
            }
            Effect::RemovePidFile { slot } => {
                let s = &self.slots[slot];
                *s.expected
                    .current
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                let _ =
                    std::fs::remove_file(process::pid_file(&self.cfg.supervisor.state_dir, s.name));
            }
            Effect::SetCgroupLimit { slot, max } => {
                let max = self.cgroup_max(slot, max);
                if let Some(dir) = &self.slots[slot].cgroup {
                    if let Err(e) = crate::cgroup::set_memory_max(dir, max) {
                        tracing::warn!(slot = self.slots[slot].name, "cannot set memory.max: {e}");
                    }
                }
            }
            Effect::Notify(n) => self.notify(&n),
            Effect::Publish(snapshot) => {
                *self
                    .observed
                    .snapshot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(*snapshot);
            }
            Effect::ReadTelemetry { workers } => {
                return Some(Event::Telemetry(self.read_telemetry(&workers)))
            }
            Effect::Observe {
                latency,
                backend,
                seconds,
            } => self.observed.latencies.observe(latency, backend, seconds),
            Effect::Log {
                level,
                message,
                fields,
            } => log(level, &message, &fields),
            Effect::Exit => self.exited = true,
        }
        None
    }

    fn notify(&mut self, n: &Notify) {
        let state = match n {
            Notify::Ready => {
                if let Some(f) = self.on_ready.take() {
                    f();
                }
                return;
            }
            Notify::Status(s) => sd_notify::NotifyState::Status(s),
            Notify::Watchdog => sd_notify::NotifyState::Watchdog,
            Notify::Stopping => sd_notify::NotifyState::Stopping,
        };
        let _ = sd_notify::notify(&[state]);
    }

    /// The group limit for a hard RssAnon ceiling: the ceiling plus the
    /// model file's size (see [`crate::cgroup::memory_max`]).
    fn cgroup_max(&self, slot: usize, ceiling: Option<u64>) -> Option<u64> {
        let model = &self.cfg.slot_list()[slot].1.model;
        let bytes = std::fs::metadata(model).map_or(0, |m| m.len());
        crate::cgroup::memory_max(ceiling, bytes)
    }

    fn spawn(&mut self, slot: usize, incarnation: u64, memory_max: Option<u64>) -> Event {
        let memory_max = self.cgroup_max(slot, memory_max);
        let sc = self.cfg.slot_list()[slot].1.clone();
        let io = &mut self.slots[slot];
        io.worker = None;
        let child = match process::spawn_worker(&sc, &io.socket, self.worker_user.as_ref()) {
            Ok(child) => child,
            Err(e) => {
                return Event::SpawnFailed {
                    slot,
                    incarnation,
                    error: spawn_error(&e),
                }
            }
        };
        let Some(pid) = child.id() else {
            return Event::SpawnFailed {
                slot,
                incarnation,
                error: SpawnError {
                    permanent: false,
                    message: "the worker exited before it could be watched".into(),
                },
            };
        };
        let proc_root = &self.cfg.telemetry.proc_root;
        if let Err(e) =
            process::set_oom_score_adj(proc_root, pid, self.cfg.policy.worker_oom_score_adj)
        {
            tracing::warn!(
                slot = io.name,
                pid,
                "cannot set the worker's oom_score_adj: {e}"
            );
        }
        *io.expected
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((pid, incarnation));
        io.cgroup = None;
        if let Some(groups) = &self.cgroups {
            match groups.place(io.name, pid, memory_max) {
                Ok(dir) => io.cgroup = Some(dir),
                Err(e) => tracing::warn!(
                    slot = io.name,
                    "cannot move the worker into its cgroup: {e}"
                ),
            }
        }
        let alive = Arc::new(AtomicBool::new(true));
        io.alive = Arc::clone(&alive);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut child = child;
            let status = child.wait().await;
            alive.store(false, Ordering::Release);
            let (code, signal) = match status {
                Ok(st) => {
                    use std::os::unix::process::ExitStatusExt;
                    (st.code(), st.signal())
                }
                Err(_) => (None, None),
            };
            let _ = tx.send(Input::WorkerExited {
                slot,
                incarnation,
                code,
                signal,
            });
        });
        Event::Spawned {
            slot,
            incarnation,
            pid,
            oom: self.oom_counters(slot),
        }
    }

    fn read_telemetry(&self, workers: &[(usize, u32)]) -> Readings {
        let t = &self.cfg.telemetry;
        Readings {
            mem_available_kb: memory::mem_available_kb(&t.proc_root),
            workers: workers
                .iter()
                .map(|&(slot, pid)| (slot, pid, memory::sample(&t.proc_root, pid)))
                .collect(),
            zones: thermal::read_zone_readings(&t.sysfs_root),
        }
    }
}

fn log(level: Level, message: &str, fields: &[(&'static str, String)]) {
    let mut line = String::from(message);
    for (k, v) in fields {
        line.push(' ');
        line.push_str(k);
        line.push('=');
        line.push_str(v);
    }
    match level {
        Level::Error => tracing::error!("{line}"),
        Level::Warn => tracing::warn!("{line}"),
        Level::Info => tracing::info!("{line}"),
        Level::Debug => tracing::debug!("{line}"),
    }
}

#[cfg(test)]
mod tests {
    use nix::errno::Errno;

    use super::*;

    #[test]
    fn only_a_missing_or_unusable_binary_is_a_permanent_spawn_failure() {
        let os = |e: Errno| spawn_error(&io::Error::from_raw_os_error(e as i32));
        assert!(os(Errno::ENOENT).permanent);
        assert!(os(Errno::EACCES).permanent);
        assert!(os(Errno::ENOEXEC).permanent);
        assert!(!os(Errno::EMFILE).permanent);
        assert!(!os(Errno::EAGAIN).permanent);
        assert!(!os(Errno::ENOMEM).permanent);
        assert!(os(Errno::EMFILE).message.contains("Too many open files"));
    }
}
