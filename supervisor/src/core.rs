//! The supervisor loop: one task that owns every decision. Connection tasks
//! and process watchers only send it [`Event`]s; it keeps the slots, the
//! queue and the requests, relays tokens the moment they arrive, and carries
//! out the lifecycle decisions of [`crate::lifecycle`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::admin::{
    AdminError, AdminOk, AdminToSupervisor, Routing, SlotState, SlotStatus, StatusReport,
    SupervisorToAdmin, ThermalLevel, ThermalStatus, ZoneTemp,
};
use proto::chat::{Backend, ChatMessage, GenParams, GenStats};
use proto::client::{
    Done, ErrorEvent, ErrorKind, Failover, ModelList, ModelSlot, Queued, Started, Submit,
    SupervisorToClient, Token,
};
use proto::worker::{
    CancelGeneration, Generate, Ping, SupervisorToWorker, WorkerErrorKind, WorkerToSupervisor,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::cgroup::WorkerCgroups;
use crate::config::{secs, Config, SlotConfig};
use crate::lifecycle::{
    self, check_transition, Action, Exit, Observation, Reason, RestartHistory, RestartPolicy,
};
use crate::observe::{self, LoopCounters, Observed, Snapshot};
use crate::process;
use crate::routing::{self, SlotView};
use crate::telemetry::{memory, thermal};

/// How often the loop checks timers, liveness and telemetry.
const TICK: Duration = Duration::from_millis(100);

/// Messages to the supervisor loop.
#[derive(Debug)]
pub enum Event {
    /// A client submitted a request.
    ClientSubmit {
        /// Connection id.
        conn: u64,
        /// The request.
        submit: Submit,
        /// Where the request's events go.
        events: UnboundedSender<SupervisorToClient>,
    },
    /// A client cancelled a request.
    ClientCancel {
        /// Connection id.
        conn: u64,
        /// The client's request id.
        request_id: u64,
    },
    /// A client ended a request's answer early (a stop string).
    ClientStop {
        /// Connection id.
        conn: u64,
        /// The client's request id.
        request_id: u64,
    },
    /// A client asked which models the slots serve.
    ClientModels {
        /// The client's query id.
        request_id: u64,
        /// Where the answer goes.
        events: UnboundedSender<SupervisorToClient>,
    },
    /// A client connection closed.
    ClientGone {
        /// Connection id.
        conn: u64,
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
    },
    /// An admin command, answered on `reply`.
    Admin {
        /// The command.
        cmd: AdminToSupervisor,
        /// The answer.
        reply: oneshot::Sender<SupervisorToAdmin>,
    },
}

/// The pid a slot's socket may accept, shared with its accept task so an
/// unknown peer is refused before it can say anything.
#[derive(Debug, Default)]
pub struct Expected {
    /// (pid, incarnation) of the process we spawned last.
    pub current: Mutex<Option<(u32, u64)>>,
}

struct Slot {
    name: &'static str,
    cfg: SlotConfig,
    state: SlotState,
    since: Instant,
    reason: String,
    incarnation: u64,
    pid: Option<u32>,
    alive: Arc<AtomicBool>,
    spawned_at: Option<Instant>,
    expected: Arc<Expected>,
    socket: std::path::PathBuf,
    tx: Option<UnboundedSender<SupervisorToWorker>>,
    stopped_for: Option<Reason>,
    load_failure: Option<String>,
    job: Option<u64>,
    generate_sent_at: Option<Instant>,
    last_token_at: Option<Instant>,
    ping_seq: u64,
    last_ping: Instant,
    last_heartbeat: Instant,
    history: RestartHistory,
    wake_at: Option<Instant>,
    healthy_since: Option<Instant>,
    restart_after_job: bool,
    model: String,
    requests_served: u64,
    last_decode_tps: Option<f64>,
    restarts: u32,
    last_restart_reason: Option<Reason>,
    mem: Option<memory::MemSample>,
    memory_pressure: bool,
    oom_kills_at_spawn: Option<u64>,
    cgroup: Option<(std::path::PathBuf, u64)>,
    disconnected_at: Option<Instant>,
    /// An exit seen before the worker's connection was drained: handled
    /// when the connection ends (its last messages, such as `LoadFailed`,
    /// explain the exit) or after a short wait.
    pending_exit: Option<(Option<i32>, Option<i32>, Instant)>,
    on_fallback_profile: bool,
    profile_reason: String,
    pressure_since: Option<Instant>,
    calm_since: Option<Instant>,
}

impl Slot {
    fn profile_name(&self) -> String {
        match (&self.cfg.fallback_profile, self.on_fallback_profile) {
            (Some(f), true) => f.name.clone(),
            _ => self.cfg.profile.name.clone(),
        }
    }

    /// Whether a request for `model` may run here: any model when empty,
    /// else the reported model name, the model file name or its stem.
    fn serves(&self, model: &str) -> bool {
        let file = self.cfg.model.file_name().map(|n| n.to_string_lossy());
        let stem = self.cfg.model.file_stem().map(|n| n.to_string_lossy());
        model.is_empty()
            || model == self.model
            || file.is_some_and(|f| f == model)
            || stem.is_some_and(|f| f == model)
    }

    fn view(&self) -> SlotView {
        SlotView {
            backend: self.cfg.backend,
            state: self.state,
            healthy_since: self.healthy_since,
            recovering: self.restarts > 0,
        }
    }
}

struct Job {
    observed: Arc<Observed>,
    /// The model asked for; empty = any.
    model: String,
    /// Ended early by the client's `Stop`: a cancel that still ends in `Done`.
    stopped: bool,
    conn: u64,
    client_id: u64,
    messages: Vec<ChatMessage>,
    params: GenParams,
    events: UnboundedSender<SupervisorToClient>,
    text: String,
    tokens: u32,
    waiting_since: Instant,
    slot: Option<usize>,
    failover: Option<(Backend, Reason)>,
    last_position: u32,
    cancelled: bool,
    /// A health probe of the supervisor's own, not a client's request.
    probe: bool,
    /// Workers this request has lost so far.
    failovers: u32,
}

impl Job {
    fn send(&self, event: SupervisorToClient) {
        if !self.probe {
            self.observed.requests.count(&event, true);
        }
        // A closed channel means the client left; ClientGone cleans up.
        let _ = self.events.send(event);
    }

    fn fail(&self, kind: ErrorKind, message: impl Into<String>) {
        self.send(SupervisorToClient::Error(ErrorEvent {
            request_id: self.client_id,
            kind,
            message: message.into(),
        }));
    }
}

/// The state owned by the supervisor loop.
pub struct Core {
    cfg: Config,
    slots: Vec<Slot>,
    jobs: HashMap<u64, Job>,
    queue: VecDeque<u64>,
    next_job: u64,
    routing: Routing,
    active: Option<usize>,
    routing_reason: String,
    started: Instant,
    shutting_down: bool,
    shutdown_deadline: Option<Instant>,
    tx: UnboundedSender<Event>,
    policy: RestartPolicy,
    zones: Vec<ZoneTemp>,
    thermal: ThermalLevel,
    mem_available_kb: Option<u64>,
    last_memory_sample: Instant,
    ready_notified: bool,
    on_ready: Option<Box<dyn FnOnce() + Send>>,
    cgroups: Option<WorkerCgroups>,
    observed: Arc<Observed>,
    counters: LoopCounters,
    last_tokens_at: Option<Instant>,
    sd_status: String,
    last_watchdog: Instant,
}

impl Core {
    /// Builds the loop's state; `tx` is the sender of its own event channel
    /// (handed to the tasks it spawns). `sockets` are the per-slot worker
    /// socket paths and accept filters, in slot order.
    pub fn new(
        cfg: Config,
        tx: UnboundedSender<Event>,
        sockets: Vec<(std::path::PathBuf, Arc<Expected>)>,
        on_ready: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        let now = Instant::now();
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
            .zip(sockets)
            .map(|((name, sc), (socket, expected))| Slot {
                name,
                model: sc
                    .model
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                cfg: sc.clone(),
                state: SlotState::Idle,
                since: now,
                reason: String::new(),
                incarnation: 0,
                pid: None,
                alive: Arc::new(AtomicBool::new(false)),
                spawned_at: None,
                expected,
                socket,
                tx: None,
                stopped_for: None,
                load_failure: None,
                job: None,
                generate_sent_at: None,
                last_token_at: None,
                ping_seq: 0,
                last_ping: now,
                last_heartbeat: now,
                history: RestartHistory::default(),
                wake_at: None,
                healthy_since: None,
                restart_after_job: false,
                requests_served: 0,
                last_decode_tps: None,
                restarts: 0,
                last_restart_reason: None,
                mem: None,
                memory_pressure: false,
                oom_kills_at_spawn: None,
                cgroup: None,
                disconnected_at: None,
                pending_exit: None,
                on_fallback_profile: false,
                profile_reason: String::new(),
                pressure_since: None,
                calm_since: None,
            })
            .collect();
        Self {
            cfg,
            slots,
            jobs: HashMap::new(),
            queue: VecDeque::new(),
            next_job: 1,
            routing: Routing::Auto,
            active: None,
            routing_reason: "starting".into(),
            started: now,
            shutting_down: false,
            shutdown_deadline: None,
            tx,
            policy,
            zones: Vec::new(),
            thermal: ThermalLevel::Normal,
            mem_available_kb: None,
            last_memory_sample: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
            ready_notified: false,
            on_ready,
            cgroups: None,
            observed: Arc::new(Observed::default()),
            counters: LoopCounters::default(),
            last_tokens_at: None,
            sd_status: String::new(),
            last_watchdog: now,
        }
    }

    /// Shares the published snapshot and counters with the HTTP endpoint and
    /// the connection tasks.
    #[must_use]
    pub fn with_observed(mut self, observed: Arc<Observed>) -> Self {
        self.observed = observed;
        self
    }

    /// Runs until `shutdown` fires and every worker is gone.
    pub async fn run(mut self, mut rx: UnboundedReceiver<Event>, shutdown: CancellationToken) {
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
        for i in 0..self.slots.len() {
            if i == 0 || self.slots[i].cfg.warm {
                self.spawn(i);
            }
        }
        self.sample_telemetry();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => self.handle(ev),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
                () = shutdown.cancelled(), if !self.shutting_down => self.begin_shutdown(),
            }
            if self.shutting_down {
                let all_gone = self.slots.iter().all(|s| s.pid.is_none());
                let late = self.shutdown_deadline.is_some_and(|d| Instant::now() > d);
                if all_gone || late {
                    break;
                }
            }
        }
        for slot in &self.slots {
            if let Some(pid) = slot.pid {
                let _ = process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ =
                std::fs::remove_file(process::pid_file(&self.cfg.supervisor.state_dir, slot.name));
        }
    }

    fn handle(&mut self, ev: Event) {
        // Tokens and heartbeats change neither the queue nor any slot's
        // readiness: relay them without re-running dispatch on the hot path.
        let relay_only = matches!(
            ev,
            Event::WorkerMessage {
                msg: WorkerToSupervisor::Token(_) | WorkerToSupervisor::Heartbeat(_),
                ..
            }
        );
        match ev {
            Event::ClientSubmit {
                conn,
                submit,
                events,
            } => self.on_submit(conn, submit, events),
            Event::ClientCancel { conn, request_id } => {
                let found = self
                    .jobs
                    .iter()
                    .find(|(_, j)| j.conn == conn && j.client_id == request_id)
                    .map(|(id, _)| *id);
                if let Some(id) = found {
                    self.cancel_job(id, true);
                }
            }
            Event::ClientStop { conn, request_id } => self.on_stop(conn, request_id),
            Event::ClientModels { request_id, events } => self.on_models(request_id, &events),
            Event::ClientGone { conn } => {
                let ids: Vec<u64> = self
                    .jobs
                    .iter()
                    .filter(|(_, j)| j.conn == conn)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.cancel_job(id, false);
                }
            }
            Event::WorkerConnected {
                slot,
                incarnation,
                tx,
            } => self.on_worker_connected(slot, incarnation, tx),
            Event::WorkerMessage {
                slot,
                incarnation,
                msg,
            } => {
                if self.slots[slot].incarnation == incarnation {
                    self.on_worker_message(slot, msg);
                }
            }
            Event::WorkerDisconnected { slot, incarnation } => {
                let s = &mut self.slots[slot];
                if s.incarnation == incarnation && s.pid.is_some() {
                    // Usually the exit follows at once; the tick stops a
                    // worker that lingers without its connection.
                    s.tx = None;
                    s.disconnected_at = Some(Instant::now());
                    if let Some((code, signal, _)) = s.pending_exit.take() {
                        self.on_worker_exit(slot, code, signal);
                    }
                }
            }
            Event::WorkerExited {
                slot,
                incarnation,
                code,
                signal,
            } => {
                let s = &mut self.slots[slot];
                if s.incarnation == incarnation {
                    if s.tx.is_some() {
                        s.pending_exit = Some((code, signal, Instant::now()));
                    } else {
                        self.on_worker_exit(slot, code, signal);
                    }
                }
            }
            Event::Admin { cmd, reply } => {
                let answer = self.on_admin(cmd);
                let _ = reply.send(answer);
            }
        }
        if !relay_only {
            self.dispatch();
        }
    }

    // ----- slots and processes -------------------------------------------------

    fn set_state(&mut self, i: usize, next: SlotState, reason: Option<String>) {
        let s = &mut self.slots[i];
        if !check_transition(s.state, next) {
            tracing::error!(
                slot = s.name,
                from = s.state.as_str(),
                to = next.as_str(),
                "unexpected lifecycle transition"
            );
        }
        if s.state != next {
            tracing::info!(
                slot = s.name,
                from = s.state.as_str(),
                to = next.as_str(),
                reason = reason.as_deref().unwrap_or(""),
                "slot state"
            );
            s.since = Instant::now();
        }
        let healthy = matches!(next, SlotState::Ready | SlotState::Busy);
        if !healthy {
            s.healthy_since = None;
        } else if s.healthy_since.is_none() {
            s.healthy_since = Some(Instant::now());
        }
        s.state = next;
        s.reason = reason.unwrap_or_default();
    }

    fn spawn(&mut self, i: usize) {
        if self.shutting_down {
            return;
        }
        let proc_root = self.cfg.telemetry.proc_root.clone();
        let state_dir = self.cfg.supervisor.state_dir.clone();
        let oom_adj = self.cfg.policy.worker_oom_score_adj;
        let s = &mut self.slots[i];
        s.incarnation += 1;
        s.stopped_for = None;
        s.load_failure = None;
        s.tx = None;
        s.mem = None;
        s.wake_at = None;
        s.disconnected_at = None;
        s.pending_exit = None;
        let incarnation = s.incarnation;
        let child = match process::spawn_worker(&s.cfg, &s.socket) {
            Ok(child) => child,
            Err(e) => {
                let why = format!(
                    "cannot start worker {}: {e}",
                    s.cfg.worker_binary().display()
                );
                tracing::error!(slot = s.name, "{why}");
                self.set_state(i, SlotState::Starting, None);
                self.set_state(i, SlotState::Unavailable, Some(why));
                return;
            }
        };
        let Some(pid) = child.id() else {
            // It exited already; its wait() below reports how.
            return;
        };
        if let Err(e) = process::set_oom_score_adj(&proc_root, pid, oom_adj) {
            tracing::warn!(
                slot = s.name,
                pid,
                "cannot set the worker's oom_score_adj: {e}"
            );
        }
        if let Err(e) = process::write_pid_file(&state_dir, s.name, pid) {
            tracing::warn!(
                slot = s.name,
                "cannot write pid file in {}: {e}",
                state_dir.display()
            );
        }
        *s.expected
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((pid, incarnation));
        s.pid = Some(pid);
        s.spawned_at = Some(Instant::now());
        s.oom_kills_at_spawn = memory::oom_kills(&proc_root);
        s.cgroup = None;
        if let Some(groups) = &self.cgroups {
            let max = (s.cfg.memory_hard_mib > 0).then_some(s.cfg.memory_hard_mib << 20);
            match groups.place(s.name, pid, max) {
                Ok(dir) => {
                    let before = memory::cgroup_oom_kills(&dir).unwrap_or(0);
                    s.cgroup = Some((dir, before));
                }
                Err(e) => {
                    tracing::warn!(slot = s.name, "cannot move the worker into its cgroup: {e}");
                }
            }
        }
        let alive = Arc::new(AtomicBool::new(true));
        s.alive = Arc::clone(&alive);
        tracing::info!(slot = s.name, pid, backend = %s.cfg.backend, "worker spawned");
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
            let _ = tx.send(Event::WorkerExited {
                slot: i,
                incarnation,
                code,
                signal,
            });
        });
        self.set_state(i, SlotState::Starting, None);
    }

    fn stop(&mut self, i: usize, reason: Reason) {
        let grace = secs(self.cfg.policy.stop_grace_s);
        let s = &mut self.slots[i];
        let Some(pid) = s.pid else { return };
        if s.stopped_for.is_some() && reason != Reason::Shutdown {
            return; // already stopping
        }
        if reason == Reason::Shutdown {
            tracing::info!(slot = s.name, pid, "stopping worker for shutdown");
        } else {
            tracing::warn!(
                slot = s.name,
                pid,
                reason = reason.as_str(),
                "stopping worker"
            );
        }
        s.stopped_for = Some(reason);
        if let Some(tx) = &s.tx {
            let _ = tx.send(SupervisorToWorker::Shutdown);
        }
        process::stop_in_background(pid, grace, Arc::clone(&s.alive));
        // The request it was serving moves on now, not after the process is
        // gone: a hung worker may take the whole grace period to die.
        let job = s.job.take();
        s.generate_sent_at = None;
        s.last_token_at = None;
        self.set_state(i, SlotState::Stopping, Some(reason.as_str().to_owned()));
        if let Some(id) = job {
            self.rescue(id, i, reason);
        }
    }

    fn on_worker_connected(
        &mut self,
        i: usize,
        incarnation: u64,
        tx: UnboundedSender<SupervisorToWorker>,
    ) {
        let s = &mut self.slots[i];
        if s.incarnation != incarnation || s.state != SlotState::Starting {
            return;
        }
        let _ = tx.send(SupervisorToWorker::Load(
            s.cfg.load_message_for(s.on_fallback_profile),
        ));
        s.tx = Some(tx);
        let now = Instant::now();
        s.last_heartbeat = now;
        s.last_ping = now;
        self.set_state(i, SlotState::Loading, None);
    }

    fn on_worker_message(&mut self, i: usize, msg: WorkerToSupervisor) {
        let now = Instant::now();
        match msg {
            WorkerToSupervisor::Ready(ready) => {
                let s = &mut self.slots[i];
                s.model.clone_from(&ready.model.name);
                s.last_heartbeat = now;
                // A worker that just loaded counts as fresh evidence of health.
                self.last_tokens_at = Some(now);
                tracing::info!(slot = s.name, model = %ready.model.name, load_ms = ready.load_ms, "worker ready");
                let d = lifecycle::decide(
                    s.state,
                    &Observation::Ready,
                    &self.policy,
                    &mut s.history,
                    self.shutting_down,
                    now,
                );
                self.set_state(i, d.next, d.reason);
            }
            WorkerToSupervisor::LoadFailed(failed) => {
                let s = &mut self.slots[i];
                tracing::error!(
                    slot = s.name,
                    code = failed.exit_code,
                    "worker cannot load its model: {}",
                    failed.message
                );
                s.load_failure = Some(failed.message);
            }
            WorkerToSupervisor::Heartbeat(_) => self.slots[i].last_heartbeat = now,
            WorkerToSupervisor::Token(t) => {
                let s = &mut self.slots[i];
                if s.job != Some(t.request_id) {
                    return;
                }
                s.last_token_at = Some(now);
                self.last_tokens_at = Some(now);
                if let Some(job) = self.jobs.get_mut(&t.request_id) {
                    job.text.push_str(&t.text);
                    job.tokens += t.tokens;
                    if !job.cancelled {
                        job.send(SupervisorToClient::Token(Token {
                            request_id: job.client_id,
                            text: t.text,
                        }));
                    }
                }
            }
            WorkerToSupervisor::Done(done) => self.on_done(i, &done),
            WorkerToSupervisor::Error(err) => {
                if self.slots[i].job != Some(err.request_id) {
                    return;
                }
                self.finish_generation(i);
                match err.kind {
                    WorkerErrorKind::Busy | WorkerErrorKind::NotLoaded => {
                        // Not started at all: try again from the front of the queue.
                        if let Some(job) = self.jobs.get_mut(&err.request_id) {
                            job.slot = None;
                            self.queue.push_front(err.request_id);
                        }
                    }
                    kind => {
                        if let Some(job) = self.jobs.remove(&err.request_id) {
                            let client_kind = match kind {
                                WorkerErrorKind::PromptTooLong | WorkerErrorKind::BadRequest => {
                                    ErrorKind::BadRequest
                                }
                                _ => ErrorKind::WorkerFailed,
                            };
                            job.fail(client_kind, err.message);
                        }
                    }
                }
            }
        }
    }

    fn on_done(&mut self, i: usize, done: &proto::worker::WorkerDone) {
        if self.slots[i].job != Some(done.request_id) {
            return;
        }
        self.finish_generation(i);
        if let Some(job) = self.jobs.remove(&done.request_id) {
            let s = &mut self.slots[i];
            if !job.probe {
                s.requests_served += 1;
            }
            if done.stats.generated_tokens > 1 {
                s.last_decode_tps = Some(done.stats.decode_tps);
                let g = self
                    .counters
                    .generation
                    .entry(s.cfg.backend.as_str())
                    .or_default();
                g.0 += done.stats.ttft_ms;
                g.1 += done.stats.decode_tps;
                g.2 += 1;
            }
            if job.cancelled && !job.stopped {
                job.fail(ErrorKind::Cancelled, "cancelled");
            } else {
                job.send(SupervisorToClient::Done(Done {
                    request_id: job.client_id,
                    text: job.text.clone(),
                    backend: s.cfg.backend,
                    model: s.model.clone(),
                    stats: GenStats {
                        generated_tokens: job.tokens,
                        ..done.stats
                    },
                }));
            }
        }
    }

    /// The slot's generation is over (done or error): back to ready, or on to
    /// a restart an operator asked for.
    fn finish_generation(&mut self, i: usize) {
        let s = &mut self.slots[i];
        s.job = None;
        s.generate_sent_at = None;
        s.last_token_at = None;
        s.last_heartbeat = Instant::now();
        if s.state == SlotState::Busy {
            self.set_state(i, SlotState::Ready, None);
        }
        if self.slots[i].restart_after_job {
            self.slots[i].restart_after_job = false;
            self.stop(i, Reason::Admin);
        }
    }

    fn on_worker_exit(&mut self, i: usize, code: Option<i32>, signal: Option<i32>) {
        let now = Instant::now();
        let proc_root = self.cfg.telemetry.proc_root.clone();
        let s = &mut self.slots[i];
        let global_rose = matches!(
            (s.oom_kills_at_spawn, memory::oom_kills(&proc_root)),
            (Some(before), Some(after)) if after > before
        );
        let group_rose = s.cgroup.as_ref().is_some_and(|(dir, before)| {
            memory::cgroup_oom_kills(dir).is_some_and(|after| after > *before)
        });
        let oom_counter_rose = (global_rose || group_rose) && s.stopped_for.is_none();
        let exit = Exit {
            code,
            signal,
            stopped_for: s.stopped_for,
            oom_counter_rose,
            message: s.load_failure.take(),
        };
        tracing::warn!(slot = s.name, pid = s.pid, ?code, ?signal, stopped_for = ?s.stopped_for, "worker exited");
        s.pid = None;
        s.tx = None;
        s.mem = None;
        *s.expected
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let _ = std::fs::remove_file(process::pid_file(&self.cfg.supervisor.state_dir, s.name));
        let state = if s.job.is_some() {
            SlotState::Busy
        } else {
            s.state
        };
        let d = lifecycle::decide(
            state,
            &Observation::Exited(exit),
            &self.policy,
            &mut s.history,
            self.shutting_down,
            now,
        );
        let job = s.job.take();
        s.generate_sent_at = None;
        s.last_token_at = None;
        s.restart_after_job = false;
        self.set_state(i, d.next, d.reason);
        for action in d.actions {
            match action {
                Action::RescueRequest(reason) => {
                    if let Some(id) = job {
                        self.rescue(id, i, reason);
                    }
                }
                Action::CountRestart(reason) => {
                    let s = &mut self.slots[i];
                    s.restarts += 1;
                    s.last_restart_reason = Some(reason);
                    *self
                        .counters
                        .restarts
                        .entry((s.name.to_owned(), reason.as_str()))
                        .or_default() += 1;
                }
                Action::WakeAt(at) => self.slots[i].wake_at = Some(at),
                Action::Spawn => self.spawn(i),
            }
        }
    }

    /// A request lost its worker mid-answer: put it at the front of the queue
    /// to continue, on whichever worker is ready first, after the text
    /// already streamed.
    fn rescue(&mut self, id: u64, from: usize, reason: Reason) {
        let backend = self.slots[from].cfg.backend;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.cancelled || self.shutting_down {
            let job = self.jobs.remove(&id);
            if let Some(job) = job.filter(|j| !j.cancelled) {
                job.fail(ErrorKind::ShuttingDown, "the supervisor is shutting down");
            }
            return;
        }
        tracing::warn!(request = id, from = %backend, reason = reason.as_str(), streamed_chars = job.text.len(), "rescuing request");
        job.failovers += 1;
        if job.failovers > self.cfg.policy.max_failovers {
            // A request that kills every worker it reaches (or a board so
            // loaded that nothing keeps up) must not bounce forever.
            if let Some(job) = self.jobs.remove(&id) {
                job.fail(
                    ErrorKind::WorkerFailed,
                    format!(
                        "the answer was interrupted {} times (last: {reason}); giving up",
                        job.failovers
                    ),
                );
            }
            return;
        }
        job.slot = None;
        job.failover = Some((backend, reason));
        self.counters.failovers += 1;
        job.waiting_since = Instant::now();
        self.queue.push_front(id);
    }

    // ----- requests ------------------------------------------------------------

    fn on_submit(
        &mut self,
        conn: u64,
        submit: Submit,
        events: UnboundedSender<SupervisorToClient>,
    ) {
        let observed = Arc::clone(&self.observed);
        let refuse = |kind, message: String| {
            let event = SupervisorToClient::Error(ErrorEvent {
                request_id: submit.request_id,
                kind,
                message,
            });
            observed.requests.count(&event, false);
            let _ = events.send(event);
        };
        if self.shutting_down {
            return refuse(
                ErrorKind::ShuttingDown,
                "the supervisor is shutting down".into(),
            );
        }
        if submit.messages.is_empty() {
            return refuse(ErrorKind::BadRequest, "the request has no messages".into());
        }
        if !self.slots.iter().any(|s| s.serves(&submit.model)) {
            return refuse(
                ErrorKind::BadRequest,
                format!("unknown model {:?}: no slot serves it", submit.model),
            );
        }
        let chars: usize = submit
            .messages
            .iter()
            .map(|m| m.content.chars().count())
            .sum();
        let limit = self.cfg.supervisor.max_prompt_chars;
        if chars > limit {
            return refuse(
                ErrorKind::BadRequest,
                format!("the conversation is {chars} characters; the limit is {limit}"),
            );
        }
        if self
            .jobs
            .values()
            .any(|j| j.conn == conn && j.client_id == submit.request_id)
        {
            return refuse(
                ErrorKind::BadRequest,
                format!(
                    "request id {} is already in use on this connection",
                    submit.request_id
                ),
            );
        }
        let waiting = self.queue.len();
        if waiting >= self.cfg.supervisor.queue_capacity {
            return refuse(
                ErrorKind::Busy,
                format!("busy: {waiting} requests are already waiting; try again shortly"),
            );
        }
        if self.nothing_can_serve() {
            return refuse(ErrorKind::NoWorker, self.no_worker_message());
        }
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(
            id,
            Job {
                observed: Arc::clone(&self.observed),
                probe: false,
                model: submit.model,
                stopped: false,
                conn,
                client_id: submit.request_id,
                messages: submit.messages,
                params: submit.params,
                events,
                text: String::new(),
                tokens: 0,
                waiting_since: Instant::now(),
                slot: None,
                failover: None,
                last_position: 0,
                cancelled: false,
                failovers: 0,
            },
        );
        self.queue.push_back(id);
    }

    /// A client's `Stop`: cancel, but the answer still ends with `Done`.
    fn on_stop(&mut self, conn: u64, request_id: u64) {
        let found = self
            .jobs
            .iter_mut()
            .find(|(_, j)| j.conn == conn && j.client_id == request_id);
        if let Some((&id, job)) = found {
            job.stopped = true;
            self.cancel_job(id, true);
        }
    }

    /// Answers a models query from the slots.
    fn on_models(&self, request_id: u64, events: &UnboundedSender<SupervisorToClient>) {
        let slots = self
            .slots
            .iter()
            .map(|s| ModelSlot {
                name: s.name.to_owned(),
                backend: s.cfg.backend,
                model: s.model.clone(),
                model_file: s
                    .cfg
                    .model
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                state: s.state,
            })
            .collect();
        let _ = events.send(SupervisorToClient::Models(ModelList { request_id, slots }));
    }

    fn cancel_job(&mut self, id: u64, tell_client: bool) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.cancelled = true;
        if let Some(i) = job.slot {
            // The worker ends the generation with Done; the job goes then.
            if let Some(tx) = &self.slots[i].tx {
                let _ = tx.send(SupervisorToWorker::Cancel(CancelGeneration {
                    request_id: id,
                }));
            }
            if !tell_client {
                // Nobody to tell; drop the sender so nothing is queued for it.
                let (dead, _) = tokio::sync::mpsc::unbounded_channel();
                job.events = dead;
            }
        } else {
            self.queue.retain(|q| *q != id);
            if let Some(job) = self.jobs.remove(&id) {
                if tell_client {
                    job.fail(ErrorKind::Cancelled, "cancelled");
                }
            }
        }
    }

    fn nothing_can_serve(&self) -> bool {
        self.slots.iter().all(|s| s.state == SlotState::Unavailable)
    }

    fn no_worker_message(&self) -> String {
        let parts: Vec<String> = self
            .slots
            .iter()
            .map(|s| {
                if s.reason.is_empty() {
                    format!("{} ({}) is {}", s.name, s.cfg.backend, s.state.as_str())
                } else {
                    format!(
                        "{} ({}) is {}: {}",
                        s.name,
                        s.cfg.backend,
                        s.state.as_str(),
                        s.reason
                    )
                }
            })
            .collect();
        format!("no worker available: {}", parts.join("; "))
    }

    fn dispatch(&mut self) {
        let now = Instant::now();
        let views: Vec<SlotView> = self.slots.iter().map(Slot::view).collect();
        let (mut active, mut why) = routing::choose(
            &views,
            self.routing,
            self.active,
            secs(self.cfg.policy.failback_hold_s),
            now,
        );
        if self.cfg.thermal.prefer_cooler
            && self.thermal != ThermalLevel::Normal
            && self.routing == Routing::Auto
        {
            if let Some(c) = active.and_then(|a| routing::cooler(&views, &self.zones, a)) {
                active = Some(c);
                why = format!("throttled: the {} is cooler", self.slots[c].cfg.backend);
            }
        }
        if active != self.active {
            tracing::info!(active = ?active.map(|i| self.slots[i].name), reason = %why, "routing");
        }
        self.active = active;
        self.routing_reason = why;
        self.notify_ready_once();

        // A cold fallback starts when it is needed.
        if active.is_none() && !self.queue.is_empty() {
            if let Some(i) = self.slots.iter().position(|s| s.state == SlotState::Idle) {
                self.spawn(i);
            }
        }
        if self.nothing_can_serve() && !self.queue.is_empty() {
            let message = self.no_worker_message();
            for id in std::mem::take(&mut self.queue) {
                if let Some(job) = self.jobs.remove(&id) {
                    job.fail(ErrorKind::NoWorker, message.clone());
                }
            }
            return;
        }
        let admitting = self.thermal != ThermalLevel::Critical;
        if let Some(i) = active {
            if admitting {
                self.start_next(i);
            }
        }
        let reason = if admitting {
            String::new()
        } else {
            "the board is cooling down".to_owned()
        };
        for (pos, id) in self.queue.iter().enumerate() {
            if let Some(job) = self.jobs.get_mut(id) {
                let position = u32::try_from(pos + 1).unwrap_or(u32::MAX);
                if job.last_position != position {
                    job.last_position = position;
                    job.send(SupervisorToClient::Queued(Queued {
                        request_id: job.client_id,
                        position,
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }

    /// Starts the first live queued request on slot `i` if it is ready. A
    /// long request is not admitted to a slot under memory pressure while the
    /// other slot can take it.
    fn start_next(&mut self, i: usize) {
        while let Some(&id) = self.queue.front() {
            let Some(job) = self.jobs.get(&id).filter(|j| !j.cancelled) else {
                self.queue.pop_front();
                self.jobs.remove(&id);
                continue;
            };
            let mut target = i;
            if !self.slots[i].serves(&job.model) {
                // A request pinned to a model waits for a ready slot serving it.
                match (0..self.slots.len()).find(|&o| {
                    self.slots[o].state == SlotState::Ready && self.slots[o].serves(&job.model)
                }) {
                    Some(o) => target = o,
                    None => return,
                }
            } else if self.slots[i].memory_pressure && self.is_long(job, i) {
                if let Some(other) = (0..self.slots.len())
                    .find(|&o| o != i && self.slots[o].state == SlotState::Ready)
                {
                    target = other;
                }
            }
            if self.slots[target].state == SlotState::Ready {
                self.queue.pop_front();
                self.start_job(target, id);
            }
            return;
        }
    }

    /// A request that would use more than half of the slot's context window
    /// (prompt estimated at 4 characters a token, plus its token budget).
    fn is_long(&self, job: &Job, i: usize) -> bool {
        let chars: usize = job.messages.iter().map(|m| m.content.len()).sum();
        let estimate = chars / 4 + job.params.max_tokens as usize;
        estimate > self.slots[i].cfg.profile.context_size as usize / 2
    }

    fn start_job(&mut self, i: usize, id: u64) {
        let throttled = self.thermal == ThermalLevel::Throttle;
        let cap = self.cfg.thermal.throttle_max_tokens;
        let s = &mut self.slots[i];
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let Some(tx) = &s.tx else { return };
        let mut params = job.params;
        // The budget covers the whole answer, across failovers.
        params.max_tokens = params.max_tokens.saturating_sub(job.tokens).max(1);
        if throttled {
            params.max_tokens = params.max_tokens.min(cap);
        }
        if s.memory_pressure {
            // Under memory pressure the KV cache must not grow far.
            params.max_tokens = params
                .max_tokens
                .min((s.cfg.profile.max_new_tokens / 4).max(16));
        }
        if let Some((from, reason)) = job.failover.take() {
            job.send(SupervisorToClient::Failover(Failover {
                request_id: job.client_id,
                from,
                to: s.cfg.backend,
                reason: reason.as_str().to_owned(),
            }));
        }
        let _ = tx.send(SupervisorToWorker::Generate(Generate {
            request_id: id,
            messages: job.messages.clone(),
            params,
            assistant_prefix: job.text.clone(),
        }));
        job.slot = Some(i);
        job.last_position = 0;
        job.send(SupervisorToClient::Started(Started {
            request_id: job.client_id,
            slot: s.name.to_owned(),
            backend: s.cfg.backend,
            model: s.model.clone(),
        }));
        s.job = Some(id);
        s.generate_sent_at = Some(Instant::now());
        s.last_token_at = None;
        self.set_state(i, SlotState::Busy, None);
    }

    // ----- timers, liveness, telemetry -------------------------------------------

    fn on_tick(&mut self) {
        let now = Instant::now();
        let p = self.cfg.policy.clone();
        for i in 0..self.slots.len() {
            if let Some((code, signal, at)) = self.slots[i].pending_exit {
                if now.duration_since(at) > Duration::from_millis(500) {
                    self.slots[i].pending_exit = None;
                    self.slots[i].tx = None;
                    self.on_worker_exit(i, code, signal);
                }
            }
            if self.slots[i].wake_at.is_some_and(|t| t <= now) {
                self.slots[i].wake_at = None;
                let s = &mut self.slots[i];
                let d = lifecycle::decide(
                    s.state,
                    &Observation::TimerDue,
                    &self.policy,
                    &mut s.history,
                    self.shutting_down,
                    now,
                );
                if d.actions.contains(&Action::Spawn) {
                    // spawn() enters Starting itself (or Unavailable if it cannot).
                    self.spawn(i);
                } else {
                    self.set_state(i, d.next, d.reason);
                }
            }
            let s = &self.slots[i];
            if s.pid.is_some()
                && s.stopped_for.is_none()
                && s.disconnected_at
                    .is_some_and(|t| now.duration_since(t) > Duration::from_secs(1))
            {
                tracing::warn!(
                    slot = s.name,
                    "worker lost its connection but did not exit; stopping it"
                );
                self.stop(i, Reason::Crash);
                continue;
            }
            match s.state {
                SlotState::Busy => {
                    let stalled = match (s.last_token_at, s.generate_sent_at) {
                        (Some(t), _) => now.duration_since(t) > secs(p.stall_timeout_s),
                        (None, Some(t)) => now.duration_since(t) > secs(p.first_token_timeout_s),
                        (None, None) => false,
                    };
                    if stalled {
                        tracing::error!(
                            slot = s.name,
                            "no token within the stall timeout: worker hung"
                        );
                        self.stop(i, Reason::Hang);
                    }
                }
                SlotState::Ready => {
                    if now.duration_since(s.last_heartbeat) > secs(p.heartbeat_timeout_s) {
                        tracing::error!(
                            slot = s.name,
                            "no heartbeat within the timeout: worker hung"
                        );
                        self.stop(i, Reason::Hang);
                    } else if now.duration_since(s.last_ping) >= secs(p.heartbeat_interval_s) {
                        let s = &mut self.slots[i];
                        s.ping_seq += 1;
                        s.last_ping = now;
                        if let Some(tx) = &s.tx {
                            let _ = tx.send(SupervisorToWorker::Ping(Ping { seq: s.ping_seq }));
                        }
                    }
                }
                SlotState::Starting | SlotState::Loading
                    if s.spawned_at
                        .is_some_and(|t| now.duration_since(t) > secs(p.load_timeout_s)) =>
                {
                    self.stop(i, Reason::LoadTimeout);
                }
                _ => {}
            }
        }
        if now.duration_since(self.last_memory_sample) >= secs(p.memory_interval_s) {
            self.last_memory_sample = now;
            self.sample_telemetry();
        }
        self.switch_profiles(now);
        self.expire_waiting(now);
        self.maybe_probe(now);
        self.dispatch();
        self.publish(now);
    }

    /// Moves an idle worker to its fallback profile when memory pressure has
    /// lasted `profile_switch_after_s`, and back when it has been gone for
    /// `profile_hold_s`: a graceful reload between requests.
    fn switch_profiles(&mut self, now: Instant) {
        let after = secs(self.cfg.policy.profile_switch_after_s);
        let hold = secs(self.cfg.policy.profile_hold_s);
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.cfg.fallback_profile.is_none()
                || s.state != SlotState::Ready
                || s.job.is_some()
                || self.shutting_down
            {
                continue;
            }
            let to_fallback = !s.on_fallback_profile
                && s.pressure_since
                    .is_some_and(|t| now.duration_since(t) >= after);
            let back = s.on_fallback_profile
                && s.calm_since.is_some_and(|t| now.duration_since(t) >= hold);
            if !(to_fallback || back) {
                continue;
            }
            let s = &mut self.slots[i];
            s.on_fallback_profile = to_fallback;
            s.profile_reason = if to_fallback {
                "memory pressure".into()
            } else {
                String::new()
            };
            let name = s.profile_name();
            tracing::warn!(slot = s.name, profile = %name, "switching serving profile");
            let load = s.cfg.load_message_for(to_fallback);
            if let Some(tx) = &s.tx {
                let _ = tx.send(SupervisorToWorker::Load(load));
            }
            s.pressure_since = None;
            s.calm_since = None;
            self.set_state(
                i,
                SlotState::Loading,
                Some(format!("switching to profile {name}")),
            );
        }
    }

    /// Health probe: when the active worker has produced nothing for
    /// `probe_interval_s` and nothing waits, ask it for a few tokens, so
    /// /health reflects whether inference works, not just whether a process
    /// answers pings.
    fn maybe_probe(&mut self, now: Instant) {
        let interval = self.cfg.http.probe_interval_s;
        if interval <= 0.0 || self.shutting_down || !self.queue.is_empty() {
            return;
        }
        let Some(i) = self.active else { return };
        let due = self
            .last_tokens_at
            .is_none_or(|t| now.duration_since(t) >= secs(interval));
        if !due || self.slots[i].state != SlotState::Ready || self.jobs.values().any(|j| j.probe) {
            return;
        }
        let id = self.next_job;
        self.next_job += 1;
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        self.jobs.insert(
            id,
            Job {
                observed: Arc::clone(&self.observed),
                probe: true,
                model: String::new(),
                stopped: false,
                conn: 0,
                client_id: 0,
                messages: vec![ChatMessage::new(proto::chat::Role::User, "Reply with OK.")],
                params: GenParams {
                    max_tokens: 4,
                    ..GenParams::default()
                },
                events,
                text: String::new(),
                tokens: 0,
                waiting_since: now,
                slot: None,
                failover: None,
                last_position: 0,
                cancelled: false,
                failovers: 0,
            },
        );
        self.queue.push_back(id);
    }

    /// Publishes the snapshot for /health and /metrics, and tells systemd.
    fn publish(&mut self, now: Instant) {
        let status = self.status();
        let since = self
            .last_tokens_at
            .map(|t| now.duration_since(t).as_secs_f64());
        let health = observe::health(&status, since, self.cfg.http.healthy_within_s);
        let summary = match status.active_backend {
            Some(b) => {
                let tps = self
                    .active
                    .and_then(|i| self.slots[i].last_decode_tps)
                    .map_or_else(|| "-".to_owned(), |t| format!("{t:.1}"));
                format!(
                    "serving on {b}; last {tps} tok/s; {} waiting",
                    status.queue_depth
                )
            }
            None => "no worker ready".to_owned(),
        };
        if summary != self.sd_status {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&summary)]);
            self.sd_status = summary;
        }
        // The watchdog is fed from this loop's tick: if the loop stalls,
        // systemd restarts the service.
        if now.duration_since(self.last_watchdog) >= Duration::from_secs(1) {
            self.last_watchdog = now;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
        *self
            .observed
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Snapshot {
            status,
            counters: self.counters.clone(),
            health,
        });
    }

    fn sample_telemetry(&mut self) {
        let proc_root = self.cfg.telemetry.proc_root.clone();
        self.mem_available_kb = memory::mem_available_kb(&proc_root);
        let floor_kb = self.cfg.policy.mem_available_floor_mib * 1024;
        let system_low = floor_kb > 0 && self.mem_available_kb.is_some_and(|a| a < floor_kb);
        for i in 0..self.slots.len() {
            let Some(pid) = self.slots[i].pid else {
                continue;
            };
            let sample = memory::sample(&proc_root, pid);
            let s = &mut self.slots[i];
            s.mem = sample;
            let anon_mib = sample.map_or(0, |m| m.rss_anon_kb / 1024);
            let pressure =
                system_low || (s.cfg.memory_soft_mib > 0 && anon_mib >= s.cfg.memory_soft_mib);
            if pressure && !s.memory_pressure {
                tracing::warn!(slot = s.name, anon_mib, system_low, "memory pressure");
            }
            s.memory_pressure = pressure;
            let now = Instant::now();
            if pressure {
                s.pressure_since.get_or_insert(now);
                s.calm_since = None;
            } else {
                s.calm_since.get_or_insert(now);
                s.pressure_since = None;
            }
            if s.cfg.memory_hard_mib > 0
                && anon_mib >= s.cfg.memory_hard_mib
                && s.stopped_for.is_none()
            {
                tracing::error!(
                    slot = s.name,
                    anon_mib,
                    hard = s.cfg.memory_hard_mib,
                    "RssAnon above the hard ceiling"
                );
                self.stop(i, Reason::Memory);
            }
        }
        self.zones = thermal::read_zones(&self.cfg.telemetry.sysfs_root, &self.cfg.thermal.zones);
        let t = &self.cfg.thermal;
        let level = thermal::next_level(
            self.thermal,
            thermal::hottest(&self.zones),
            thermal::Thresholds {
                throttle: t.throttle_c,
                critical: t.critical_c,
                resume: t.resume_c,
            },
        );
        if level != self.thermal {
            tracing::warn!(from = ?self.thermal, to = ?level, hottest = ?thermal::hottest(&self.zones), "thermal level");
            self.thermal = level;
            // Waiting clients are told again, now with (or without) the reason.
            for job in self.jobs.values_mut() {
                job.last_position = 0;
            }
        }
    }

    fn expire_waiting(&mut self, now: Instant) {
        let limit = secs(self.cfg.supervisor.queue_timeout_s);
        let expired: Vec<u64> = self
            .queue
            .iter()
            .copied()
            .filter(|id| {
                self.jobs
                    .get(id)
                    .is_some_and(|j| now.duration_since(j.waiting_since) > limit)
            })
            .collect();
        if expired.is_empty() {
            return;
        }
        let (kind, message) = if self.thermal == ThermalLevel::Critical {
            (
                ErrorKind::TooHot,
                format!(
                    "the board is too hot to start a generation and did not cool down within {}s",
                    limit.as_secs()
                ),
            )
        } else {
            (
                ErrorKind::NoWorker,
                format!(
                    "no worker could take the request within {}s ({})",
                    limit.as_secs(),
                    self.no_worker_message()
                ),
            )
        };
        self.queue.retain(|id| !expired.contains(id));
        for id in expired {
            if let Some(job) = self.jobs.remove(&id) {
                job.fail(kind, message.clone());
            }
        }
    }

    fn notify_ready_once(&mut self) {
        if self.ready_notified {
            return;
        }
        let settled = self
            .slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Ready | SlotState::Busy))
            || self
                .slots
                .iter()
                .all(|s| matches!(s.state, SlotState::Unavailable | SlotState::Failed));
        if settled {
            self.ready_notified = true;
            if let Some(f) = self.on_ready.take() {
                f();
            }
        }
    }

    // ----- admin and shutdown ----------------------------------------------------

    fn on_admin(&mut self, cmd: AdminToSupervisor) -> SupervisorToAdmin {
        let ok = |message: String| SupervisorToAdmin::Ok(AdminOk { message });
        let err = |message: String| SupervisorToAdmin::Error(AdminError { message });
        match cmd {
            AdminToSupervisor::Status => SupervisorToAdmin::Status(Box::new(self.status())),
            AdminToSupervisor::Failover(f) => match f.to {
                None => {
                    self.routing = Routing::Auto;
                    ok("routing is automatic again: primary when ready, else fallback".into())
                }
                Some(backend) => {
                    if !self.slots.iter().any(|s| s.cfg.backend == backend) {
                        return err(format!("no slot runs the {backend} backend"));
                    }
                    self.routing = Routing::Pinned(backend);
                    ok(format!(
                        "traffic pinned to {backend} until `supctl failover --auto`"
                    ))
                }
            },
            AdminToSupervisor::SetMemoryCeiling(c) => {
                let Some(i) = self.find_slot(&c.slot) else {
                    return err(format!(
                        "no slot named {:?} (use primary, fallback, npu or cpu)",
                        c.slot
                    ));
                };
                if c.hard_mib != 0 && c.soft_mib > c.hard_mib {
                    return err("the soft ceiling must not be above the hard one".into());
                }
                let s = &mut self.slots[i];
                s.cfg.memory_soft_mib = c.soft_mib;
                s.cfg.memory_hard_mib = c.hard_mib;
                ok(format!(
                    "{}: soft ceiling {} MiB, hard ceiling {} MiB (0 = off)",
                    s.name, c.soft_mib, c.hard_mib
                ))
            }
            AdminToSupervisor::Restart(r) => {
                let Some(i) = self
                    .slots
                    .iter()
                    .position(|s| s.name == r.slot || s.cfg.backend.as_str() == r.slot)
                else {
                    return err(format!(
                        "no slot named {:?} (use primary, fallback, npu or cpu)",
                        r.slot
                    ));
                };
                let name = self.slots[i].name;
                match self.slots[i].state {
                    SlotState::Busy if !r.now => {
                        self.slots[i].restart_after_job = true;
                        ok(format!("{name} restarts after its current request"))
                    }
                    SlotState::Idle
                    | SlotState::BackingOff
                    | SlotState::Failed
                    | SlotState::Unavailable => {
                        self.slots[i].history.clear();
                        self.slots[i].state = SlotState::Idle;
                        self.spawn(i);
                        ok(format!("{name} starting"))
                    }
                    SlotState::Stopping => ok(format!("{name} is already stopping")),
                    _ => {
                        self.stop(i, Reason::Admin);
                        ok(format!("{name} restarting"))
                    }
                }
            }
        }
    }

    fn find_slot(&self, name: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.name == name || s.cfg.backend.as_str() == name)
    }

    fn status(&self) -> StatusReport {
        let now = Instant::now();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_ms: ms(now.duration_since(self.started)),
            slots: self
                .slots
                .iter()
                .map(|s| SlotStatus {
                    name: s.name.to_owned(),
                    backend: s.cfg.backend,
                    state: s.state,
                    state_ms: ms(now.duration_since(s.since)),
                    reason: s.reason.clone(),
                    pid: s.pid,
                    model: s.model.clone(),
                    profile: s.profile_name(),
                    profile_reason: s.profile_reason.clone(),
                    rss_anon_kb: s.mem.map(|m| m.rss_anon_kb),
                    rss_file_kb: s.mem.map(|m| m.rss_file_kb),
                    vm_hwm_kb: s.mem.map(|m| m.vm_hwm_kb),
                    memory_pressure: s.memory_pressure,
                    uptime_ms: s
                        .spawned_at
                        .filter(|_| s.pid.is_some())
                        .map(|t| ms(now.duration_since(t))),
                    requests_served: s.requests_served,
                    last_decode_tps: s.last_decode_tps,
                    restarts: s.restarts,
                    last_restart_reason: s.last_restart_reason.map(|r| r.as_str().to_owned()),
                })
                .collect(),
            active_backend: self.active.map(|i| self.slots[i].cfg.backend),
            routing: self.routing,
            routing_reason: self.routing_reason.clone(),
            queue_depth: u32::try_from(self.queue.len()).unwrap_or(u32::MAX),
            in_flight: u32::try_from(self.slots.iter().filter(|s| s.job.is_some()).count())
                .unwrap_or(u32::MAX),
            thermal: ThermalStatus {
                zones: self.zones.clone(),
                level: self.thermal,
            },
            mem_available_kb: self.mem_available_kb,
        }
    }

    fn begin_shutdown(&mut self) {
        tracing::info!("shutting down: stopping workers");
        self.shutting_down = true;
        self.shutdown_deadline =
            Some(Instant::now() + secs(self.cfg.policy.stop_grace_s) + Duration::from_secs(2));
        for id in std::mem::take(&mut self.queue) {
            if let Some(job) = self.jobs.remove(&id) {
                job.fail(ErrorKind::ShuttingDown, "the supervisor is shutting down");
            }
        }
        for job in self.jobs.values() {
            if !job.cancelled {
                job.fail(ErrorKind::ShuttingDown, "the supervisor is shutting down");
            }
        }
        for job in self.jobs.values_mut() {
            job.cancelled = true;
        }
        for i in 0..self.slots.len() {
            if self.slots[i].pid.is_some() {
                self.stop(i, Reason::Shutdown);
            } else {
                let s = &mut self.slots[i];
                s.wake_at = None;
                s.state = SlotState::Idle;
            }
        }
    }
}
