//! The simulated world around the core: worker processes (load time,
//! prefill and decode rates, seeded faults), the kernel (exits, OOM kills,
//! counters), telemetry (memory and thermal readings that wander), all on a
//! simulated clock. It answers the core's effects the way the driver and the
//! real processes would.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use proto::chat::{Backend, FinishReason, GenStats};
use proto::worker::{
    CacheReport, ExitCode, Heartbeat, LoadFailed, ModelFacts, Ready, SupervisorToWorker, Warmed,
    WorkerDone, WorkerError, WorkerErrorKind, WorkerToSupervisor, WorkerToken,
};

use super::rng::Rng;
use crate::core::{Event, MemSample, Millis, OomCounters, Readings, SpawnError, ZoneReading};

/// What a simulated process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Spawned, not connected yet.
    Connecting,
    /// Loading a model (first load or a profile switch).
    Loading,
    /// Loaded, idle.
    Idle,
    /// Generating.
    Generating,
}

/// One generation in a simulated worker.
#[derive(Debug, Clone)]
pub struct Gen {
    /// The supervisor's request id.
    pub request_id: u64,
    /// Tokens still to produce.
    pub left: u32,
    /// Cancel received.
    pub cancelled: bool,
    /// Prompt tokens (for Done stats).
    pub prompt_tokens: u32,
    /// Tokens produced.
    pub produced: u32,
}

/// A simulated worker process.
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)] // independent fault switches
pub struct Proc {
    /// Which process of the slot.
    pub incarnation: u64,
    /// Its pid.
    pub pid: u32,
    /// Connected to the supervisor.
    pub connected: bool,
    /// What it does.
    pub phase: Phase,
    /// Stopped answering anything (SIGSTOP-like: ignores SIGTERM too).
    pub hung: bool,
    /// Never finishes loading.
    pub load_hang: bool,
    /// Exit code of a broken model, sent at load.
    pub broken: Option<i32>,
    /// Load time.
    pub load_ms: u64,
    /// Time per token.
    pub decode_ms: u64,
    /// Prompt tokens per second.
    pub prefill_tps: f64,
    /// Chance of refusing a request (Busy/NotLoaded).
    pub refuse_p: f64,
    /// Current generation.
    pub gen: Option<Gen>,
    /// Bumped per generation, so stale token timers do nothing.
    pub gen_seq: u64,
    /// RssAnon.
    pub anon_kb: u64,
    /// Growth per memory reading.
    pub grow_kb: u64,
    /// Exit scheduled already.
    pub exiting: bool,
    /// A warm runs until then (its `Warmed` is due).
    pub warming_until: Option<Millis>,
}

/// Something scheduled to happen.
#[derive(Debug, Clone)]
pub enum Ev {
    /// Feed this event to the core.
    Core(Event),
    /// The process connects.
    Connect(usize, u64),
    /// Loading finished.
    Loaded(usize, u64),
    /// Next token of generation `seq`.
    Token(usize, u64, u64),
    /// The process ends.
    Exit(usize, u64, Option<i32>, Option<i32>),
    /// Inject a random fault into the slot's process.
    Fault(usize),
    /// A client action or admin command (chosen by the runner).
    Client,
    /// Shutdown (SIGTERM).
    Shutdown,
}

/// The world's state.
pub struct World {
    /// Randomness.
    pub rng: Rng,
    /// Simulated clock.
    pub now: Millis,
    seq: u64,
    queue: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    evs: BTreeMap<usize, Ev>,
    next_ev: usize,
    /// Live processes per slot (a Vec to catch two at once).
    pub procs: Vec<Vec<Proc>>,
    next_pid: u32,
    /// Global oom_kill counter.
    pub oom_kills: u64,
    /// Faults injected per slot: (incarnation of the process, fault).
    pub faults: Vec<Vec<(u64, &'static str)>>,
    /// Zone temperatures (None = unreadable), and which is stuck.
    pub zones: Vec<(String, Option<f64>)>,
    /// A zone frozen at a bogus value.
    pub stuck_zone: Option<usize>,
    /// MemAvailable.
    pub mem_available_kb: u64,
    /// Chance per spawn of a transient failure.
    pub spawn_fail_p: f64,
    /// Backends per slot.
    pub backends: Vec<Backend>,
    /// Violations found by the world itself (routing to a busy worker, ...).
    pub violations: Vec<String>,
    /// Prompt tokens per second of each slot's hardware (the same for every
    /// process of the slot).
    pub prefill_tps: Vec<f64>,
    /// A slot decodes this many times slower while another slot's warm
    /// runs (1 = the slots share nothing; more = they share cores).
    pub warm_contention: u64,
}

impl World {
    /// A world for `slots` backends.
    pub fn new(seed: u64, backends: Vec<Backend>) -> Self {
        let mut rng = Rng::new(seed);
        let n = backends.len();
        let zones = vec![
            ("soc-thermal".to_owned(), Some(60.0)),
            ("npu-thermal".to_owned(), Some(62.0)),
            ("bigcore0-thermal".to_owned(), Some(58.0)),
        ];
        let spawn_fail_p = if rng.chance(0.3) { 0.15 } else { 0.0 };
        let prefill_tps = (0..n).map(|_| *rng.pick(&[200.0, 400.0, 1000.0])).collect();
        let warm_contention = *rng.pick(&[1, 1, 3]);
        Self {
            rng,
            now: Millis(0),
            seq: 0,
            queue: BinaryHeap::new(),
            evs: BTreeMap::new(),
            next_ev: 0,
            procs: vec![Vec::new(); n],
            next_pid: 1000,
            oom_kills: 0,
            faults: vec![Vec::new(); n],
            zones,
            stuck_zone: None,
            mem_available_kb: 4 << 20,
            spawn_fail_p,
            backends,
            violations: Vec::new(),
            prefill_tps,
            warm_contention,
        }
    }

    /// Schedules `ev` after `delay_ms`.
    pub fn at(&mut self, delay_ms: u64, ev: Ev) {
        self.seq += 1;
        let id = self.next_ev;
        self.next_ev += 1;
        self.evs.insert(id, ev);
        self.queue
            .push(Reverse((Millis(self.now.0 + delay_ms), self.seq, id)));
    }

    /// The next scheduled event, advancing the clock.
    pub fn pop(&mut self) -> Option<Ev> {
        let Reverse((t, _, id)) = self.queue.pop()?;
        self.now = self.now.max(t);
        self.evs.remove(&id)
    }

    fn oom(&self) -> OomCounters {
        OomCounters {
            global: Some(self.oom_kills),
            cgroup: None,
        }
    }

    /// The live process of slot `i` with `incarnation`.
    pub fn proc(&mut self, i: usize, incarnation: u64) -> Option<&mut Proc> {
        self.procs[i]
            .iter_mut()
            .find(|p| p.incarnation == incarnation)
    }

    /// Carries out a spawn: the answer event, and the process's connection.
    pub fn spawn(&mut self, i: usize, incarnation: u64) -> Event {
        if self.rng.chance(0.005) {
            // The binary vanished (a half-finished upgrade): for ever.
            return Event::SpawnFailed {
                slot: i,
                incarnation,
                error: SpawnError {
                    permanent: true,
                    message: "No such file or directory (os error 2)".into(),
                },
            };
        }
        if self.rng.chance(self.spawn_fail_p) {
            self.faults[i].push((incarnation, "spawn-fail"));
            return Event::SpawnFailed {
                slot: i,
                incarnation,
                error: SpawnError {
                    permanent: false,
                    message: "Too many open files (os error 24)".into(),
                },
            };
        }
        self.next_pid += 1;
        let r = &mut self.rng;
        let broken = if r.chance(0.01) {
            Some(ExitCode::ModelTruncated.code())
        } else {
            None
        };
        let p = Proc {
            incarnation,
            pid: self.next_pid,
            connected: false,
            phase: Phase::Connecting,
            hung: false,
            load_hang: r.chance(0.03),
            broken,
            load_ms: r.range(100, 1500),
            decode_ms: r.range(20, 150),
            prefill_tps: self.prefill_tps[i],
            refuse_p: if r.chance(0.2) { 0.3 } else { 0.0 },
            gen: None,
            gen_seq: 0,
            warming_until: None,
            anon_kb: r.range(50, 150) << 10,
            grow_kb: if r.chance(0.2) {
                r.range(10, 80) << 10
            } else {
                0
            },
            exiting: false,
        };
        if p.load_hang {
            self.faults[i].push((incarnation, "load-hang"));
        }
        if p.broken.is_some() {
            self.faults[i].push((incarnation, "exit-code"));
        }
        if p.grow_kb > 0 {
            self.faults[i].push((incarnation, "grow"));
        }
        let pid = p.pid;
        self.procs[i].push(p);
        let delay = self.rng.range(5, 100);
        self.at(delay, Ev::Connect(i, incarnation));
        Event::Spawned {
            slot: i,
            incarnation,
            pid,
            oom: self.oom(),
        }
    }

    /// Schedules the end of a process: its connection drops and it exits,
    /// in either order (the core must cope with both).
    pub fn exit(
        &mut self,
        i: usize,
        incarnation: u64,
        delay: u64,
        code: Option<i32>,
        signal: Option<i32>,
    ) {
        let Some(p) = self.proc(i, incarnation) else {
            return;
        };
        if p.exiting {
            return;
        }
        p.exiting = true;
        self.at(delay, Ev::Exit(i, incarnation, code, signal));
    }

    /// The process ends now.
    pub fn exited(
        &mut self,
        i: usize,
        incarnation: u64,
        code: Option<i32>,
        signal: Option<i32>,
    ) -> Vec<Event> {
        let Some(pos) = self.procs[i]
            .iter()
            .position(|p| p.incarnation == incarnation)
        else {
            return Vec::new();
        };
        let p = self.procs[i].remove(pos);
        let exited = Event::WorkerExited {
            slot: i,
            incarnation,
            code,
            signal,
            oom: self.oom(),
        };
        if !p.connected {
            return vec![exited];
        }
        let gone = Event::WorkerDisconnected {
            slot: i,
            incarnation,
        };
        if self.rng.chance(0.5) {
            vec![gone, exited]
        } else {
            vec![exited, gone]
        }
    }

    /// A message from the supervisor reaches slot `i`'s process.
    #[allow(clippy::too_many_lines)] // one arm per message, one place
    pub fn deliver(
        &mut self,
        i: usize,
        incarnation: u64,
        msg: SupervisorToWorker,
    ) -> Vec<(u64, Event)> {
        let now_words = self.rng.range(1, 3);
        let Some(p) = self.procs[i]
            .iter_mut()
            .find(|p| p.incarnation == incarnation)
        else {
            return Vec::new();
        };
        if p.hung || !p.connected {
            return Vec::new();
        }
        let say = |msg| Event::WorkerMessage {
            slot: i,
            incarnation,
            msg,
        };
        match msg {
            SupervisorToWorker::Load(load) => {
                if p.phase == Phase::Generating {
                    self.violations
                        .push(format!("slot {i}: Load sent during a generation"));
                }
                if let Some(code) = p.broken {
                    let failed = say(WorkerToSupervisor::LoadFailed(LoadFailed {
                        exit_code: code,
                        message: format!("model file {} is truncated", load.model_path),
                    }));
                    self.exit(i, incarnation, 10, Some(code), None);
                    return vec![(5, failed)];
                }
                p.phase = Phase::Loading;
                if !p.load_hang {
                    let ms = p.load_ms;
                    self.at(ms, Ev::Loaded(i, incarnation));
                }
                Vec::new()
            }
            SupervisorToWorker::Generate(g) => {
                if p.phase != Phase::Idle {
                    self.violations.push(format!(
                        "slot {i}: request {} routed to a worker that is {:?}",
                        g.request_id, p.phase
                    ));
                    return Vec::new();
                }
                if p.refuse_p > 0.0 && self.rng.chance(p.refuse_p) {
                    let kind = if self.rng.chance(0.5) {
                        WorkerErrorKind::Busy
                    } else {
                        WorkerErrorKind::NotLoaded
                    };
                    let err = say(WorkerToSupervisor::Error(WorkerError {
                        request_id: g.request_id,
                        kind,
                        message: "refused".into(),
                    }));
                    return vec![(3, err)];
                }
                let chars: usize = g.messages.iter().map(|m| m.content.len()).sum::<usize>()
                    + g.assistant_prefix.len();
                let prompt_tokens = u32::try_from(chars / 4).unwrap_or(u32::MAX);
                p.phase = Phase::Generating;
                p.gen_seq += 1;
                p.gen = Some(Gen {
                    request_id: g.request_id,
                    left: g.params.max_tokens,
                    cancelled: false,
                    prompt_tokens,
                    produced: 0,
                });
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let prefill = (f64::from(prompt_tokens) / p.prefill_tps * 1000.0) as u64;
                let (seq, first) = (p.gen_seq, prefill + p.decode_ms);
                self.at(first, Ev::Token(i, incarnation, seq));
                Vec::new()
            }
            SupervisorToWorker::Cancel(c) => {
                if let Some(g) = p.gen.as_mut().filter(|g| g.request_id == c.request_id) {
                    g.cancelled = true;
                }
                Vec::new()
            }
            SupervisorToWorker::Ping(ping) => {
                let hb = say(WorkerToSupervisor::Heartbeat(Heartbeat {
                    seq: ping.seq,
                    busy_with: p.gen.as_ref().map(|g| g.request_id),
                    tokens_total: 0,
                    requests_total: 0,
                    cache: CacheReport::default(),
                }));
                vec![(now_words, hb)]
            }
            // A warm only fills a KV cache the simulated workers do not
            // have: it is over after a while, holding nothing.
            SupervisorToWorker::Warm(w) => {
                let warmed = say(WorkerToSupervisor::Warmed(Warmed {
                    key: w.key,
                    tokens: 0,
                }));
                let d = self.rng.range(5, 300);
                if p.phase == Phase::Idle {
                    p.warming_until = Some(self.now + std::time::Duration::from_millis(d));
                }
                vec![(d, warmed)]
            }
            SupervisorToWorker::Shutdown => {
                let d = self.rng.range(5, 200);
                self.exit(i, incarnation, d, Some(0), None);
                Vec::new()
            }
        }
    }

    /// The next token of a generation (or its end).
    pub fn token(&mut self, i: usize, incarnation: u64, seq: u64) -> Vec<Event> {
        let word = self.rng.range(0, 1000);
        let two = self.rng.chance(0.2);
        let now = self.now;
        let warm_elsewhere =
            self.procs.iter().enumerate().any(|(j, ps)| {
                j != i && ps.iter().any(|q| q.warming_until.is_some_and(|t| t > now))
            });
        let contention = if warm_elsewhere {
            self.warm_contention
        } else {
            1
        };
        let Some(p) = self.procs[i]
            .iter_mut()
            .find(|p| p.incarnation == incarnation)
        else {
            return Vec::new();
        };
        if p.hung || !p.connected || p.gen_seq != seq || p.phase != Phase::Generating {
            return Vec::new();
        }
        let Some(g) = p.gen.as_mut() else {
            return Vec::new();
        };
        let say = |msg| Event::WorkerMessage {
            slot: i,
            incarnation,
            msg,
        };
        let mut out = Vec::new();
        if !g.cancelled && g.left > 0 {
            let tokens = if two && g.left >= 2 { 2 } else { 1 };
            g.left -= tokens;
            g.produced += tokens;
            out.push(say(WorkerToSupervisor::Token(WorkerToken {
                request_id: g.request_id,
                text: format!("w{word} "),
                tokens,
            })));
        }
        if g.cancelled || g.left == 0 {
            let stats = GenStats {
                prompt_tokens: g.prompt_tokens,
                generated_tokens: g.produced,
                ttft_ms: 10.0,
                prefill_ms: f64::from(g.prompt_tokens) / p.prefill_tps * 1000.0,
                decode_ms: 1.0,
                decode_tps: 10.0,
                cached_tokens: 0,
            };
            let finish = if g.cancelled {
                FinishReason::Cancelled
            } else {
                FinishReason::MaxTokens
            };
            out.push(say(WorkerToSupervisor::Done(WorkerDone {
                request_id: g.request_id,
                finish,
                stats,
                cache: CacheReport::default(),
            })));
            p.gen = None;
            p.phase = Phase::Idle;
        } else {
            let d = p.decode_ms * contention;
            self.at(d, Ev::Token(i, incarnation, seq));
        }
        out
    }

    /// Loading finished: Ready.
    pub fn loaded(&mut self, i: usize, incarnation: u64) -> Vec<Event> {
        let backend = self.backends[i];
        let Some(p) = self.proc(i, incarnation) else {
            return Vec::new();
        };
        if p.hung || p.phase != Phase::Loading || !p.connected {
            return Vec::new();
        }
        p.phase = Phase::Idle;
        let ready = Ready {
            backend,
            model: ModelFacts {
                name: "sim-model".into(),
                file_size: 1,
                architecture: "sim".into(),
                train_context: 2048,
                context_size: 1024,
                parameters: 1,
                chat_template: String::new(),
            },
            profile: "default".into(),
            load_ms: 1.0,
            pid: p.pid,
        };
        vec![Event::WorkerMessage {
            slot: i,
            incarnation,
            msg: WorkerToSupervisor::Ready(ready),
        }]
    }

    /// Telemetry as the driver would read it.
    pub fn readings(&mut self, workers: &[(usize, u32)]) -> Readings {
        // Temperatures wander; the stuck zone stays put; some are unreadable.
        for z in 0..self.zones.len() {
            if Some(z) == self.stuck_zone {
                continue;
            }
            #[allow(clippy::cast_precision_loss)]
            let step = (self.rng.range(0, 9) as f64 - 4.0) * 1.5;
            let readable = !self.rng.chance(0.05);
            let last = self.zones[z].1.unwrap_or(70.0);
            self.zones[z].1 = readable.then_some((last + step).clamp(40.0, 100.0));
        }
        let floor = 300u64 << 10;
        let step = self.rng.range(0, 200 << 10);
        self.mem_available_kb = (self.mem_available_kb + step)
            .saturating_sub(100 << 10)
            .max(floor / 2)
            .min(6 << 20);
        let unreadable = self.rng.chance(0.05);
        let mut samples = Vec::new();
        for &(i, pid) in workers {
            let Some(p) = self.procs[i].iter_mut().find(|p| p.pid == pid) else {
                samples.push((i, pid, None));
                continue;
            };
            p.anon_kb += p.grow_kb;
            let s = MemSample {
                rss_anon_kb: p.anon_kb,
                rss_file_kb: 100 << 10,
                vm_hwm_kb: p.anon_kb,
            };
            samples.push((i, pid, (!unreadable).then_some(s)));
        }
        Readings {
            mem_available_kb: Some(self.mem_available_kb),
            workers: samples,
            zones: self
                .zones
                .iter()
                .map(|(k, c)| ZoneReading {
                    kind: k.clone(),
                    celsius: *c,
                })
                .collect(),
        }
    }
}
