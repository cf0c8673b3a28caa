//! Deterministic simulation of the supervisor core: one seed drives the
//! clock, the workers' behaviour and faults, the clients, telemetry, admin
//! commands and a SIGTERM drain; every invariant is checked after every step.
//!
//! - `cargo test -p supervisor sim` runs [`DEFAULT_SCHEDULES`] seeds plus the
//!   regression seeds in [`REGRESSIONS`];
//! - `ROCKSTEADY_SIM_SCHEDULES=1000000 cargo test -p supervisor --release sim_soak -- --nocapture`
//!   runs a long soak;
//! - `ROCKSTEADY_SIM_SEED=1234 cargo test -p supervisor sim_replay -- --nocapture`
//!   replays one seed and prints its event trace.

mod check;
mod rng;
mod scenarios;
mod scripted;
mod world;

use std::fmt::Write as _;
use std::path::Path;

use proto::admin::AdminToSupervisor;
use proto::chat::Backend;
use proto::worker::SupervisorToWorker;

use crate::config::Config;
use crate::core::{Core, Effect, Event, Millis};
use check::Tracker;
use world::{Ev, World};

/// Schedules per plain `cargo test`.
pub const DEFAULT_SCHEDULES: u64 = 10_000;

/// Seeds that once failed, replayed on every run (seed: what it found).
/// Each was found either by the simulation while it was written, or with one
/// of issue 10's defects put back to prove the simulation sees it. A seed
/// stands for a schedule of this version of the simulator: a change to the
/// world (tick, fault mix) makes it another schedule, so re-derive them then.
pub const REGRESSIONS: &[(u64, &str)] = &[
    (
        0,
        "a profile switch on an old worker judged by its spawn time: load-timeout restart",
    ),
    (
        4,
        "the same; and a fixed first-token limit killing a long prompt as a hang",
    ),
    (
        18,
        "the profile-switch load timeout after an operator lowered the ceiling",
    ),
    (
        8,
        "a fixed first-token limit: a long prompt on a slow worker killed as a hang",
    ),
    (
        5010,
        "Busy/NotLoaded bounced straight back to the same worker: request sent 10 times",
    ),
    (5019, "the same hot loop"),
    (
        16,
        "an admin restart's spawn failing with EMFILE in the same step (simulator bug)",
    ),
    (
        42,
        "a fallback restarted by admin as traffic returned to the primary (simulator bug)",
    ),
    (
        60,
        "a kill -9 taken for an OOM kill by the system-wide counter",
    ),
    (
        1_044_192,
        "an admin restart of a backing-off slot counted as a backoff restart (simulator bug)",
    ),
];

/// The simulated driver's tick. Twice the real one ([`crate::core::TICK`]):
/// every timer in the core is judged on elapsed time, not on tick counts,
/// and half the ticks make the 10,000 schedules of a plain `cargo test`
/// twice as fast.
const SIM_TICK_MS: u64 = 200;

/// Simulated time of the traffic part of a schedule (a drain follows).
const SCHEDULE_MS: u64 = 12_000;

/// The config the simulation runs: short timeouts so a dozen simulated
/// seconds cover restarts, backoff, circuit breaking and profile switches.
pub fn sim_config(rng: &mut rng::Rng) -> Config {
    static BASE: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    let mut cfg = BASE.get_or_init(base_config).clone();
    cfg.policy.spill_over = rng.chance(0.7);
    if let Some(f) = cfg.slots.fallback.as_mut() {
        f.warm = rng.chance(0.7);
    }
    cfg.http.probe_interval_s = if rng.chance(0.3) { 3.0 } else { 0.0 };
    cfg.policy.mem_available_floor_mib = if rng.chance(0.3) { 400 } else { 0 };
    cfg
}

/// The fixed part of [`sim_config`], parsed once.
fn base_config() -> Config {
    let (spill, warm, probe, floor) = (true, true, 0.0, 0);
    let text = format!(
        r#"
[supervisor]
runtime_dir = "/sim/run"
state_dir = "/sim/state"
queue_capacity = 3
queue_timeout_s = 4.0
max_prompt_chars = 6000
[slots.primary]
backend = "npu"
model = "/sim/primary.rkllm"
worker = "/sim/worker-npu"
memory_soft_mib = 200
memory_hard_mib = 400
[slots.primary.profile]
name = "normal"
context_size = 1024
batch_size = 256
max_new_tokens = 256
[slots.primary.fallback_profile]
name = "small"
context_size = 512
batch_size = 128
max_new_tokens = 128
[slots.fallback]
backend = "cpu"
model = "/sim/fallback.gguf"
worker = "/sim/worker-cpu"
warm = {warm}
memory_soft_mib = 200
memory_hard_mib = 400
[slots.fallback.profile]
context_size = 1024
batch_size = 256
max_new_tokens = 256
[policy]
heartbeat_interval_s = 0.5
heartbeat_timeout_s = 2.0
stall_timeout_s = 1.5
first_token_timeout_s = 1.5
load_timeout_s = 3.0
stop_grace_s = 0.5
backoff_initial_s = 0.2
backoff_max_s = 1.0
restart_intensity = 3
restart_period_s = 10.0
failed_cooldown_s = 4.0
failback_hold_s = 2.0
memory_interval_s = 0.5
mem_available_floor_mib = {floor}
profile_switch_after_s = 1.0
profile_hold_s = 3.0
max_failovers = 3
spill_over = {spill}
drain_timeout_s = 2.0
[thermal]
throttle_c = 80.0
critical_c = 90.0
resume_c = 75.0
[http]
listen = ""
probe_interval_s = {probe}
"#
    );
    Config::from_toml(&text, Path::new("/")).expect("the simulation's config is valid")
}

/// How one schedule went.
pub struct Outcome {
    /// Broken invariants (empty = pass).
    pub violations: Vec<String>,
    /// The event trace (when asked for).
    pub trace: String,
    /// Steps run.
    pub steps: u64,
    /// Requests whose shadowing stopped for slowing the serving slot.
    pub shadow_stops: u64,
}

/// Runs schedule `seed`; `trace` records every event and effect.
#[allow(clippy::too_many_lines)] // one loop: pop, feed, answer, check
pub fn run(seed: u64, trace: bool) -> Outcome {
    let mut rng = rng::Rng::new(seed);
    let cfg = sim_config(&mut rng);
    let backends: Vec<Backend> = cfg.slot_list().iter().map(|(_, s)| s.backend).collect();
    let mut world = World::new(seed.wrapping_mul(31).wrapping_add(7), backends);
    let mut core = Core::new(cfg.clone(), 1, Millis(0));
    let mut tracker = Tracker::default();
    let mut clients = scenarios::Clients::new(rng.range(1, 4));
    let mut out = Outcome {
        violations: Vec::new(),
        trace: String::new(),
        steps: 0,
        shadow_stops: 0,
    };
    world.at(0, Ev::Core(Event::Start));
    world.at(SIM_TICK_MS, Ev::Core(Event::Tick));
    for _ in 0..rng.range(2, 10) {
        let t = rng.range(0, SCHEDULE_MS);
        world.at(t, Ev::Client);
    }
    for _ in 0..rng.range(0, 4) {
        let t = rng.range(500, SCHEDULE_MS);
        let slot = usize::try_from(rng.range(0, 2)).unwrap_or(0);
        world.at(t, Ev::Fault(slot));
    }
    if rng.chance(0.2) {
        world.stuck_zone = Some(0);
        world.zones[0].1 = Some(95.0);
    }
    world.at(SCHEDULE_MS, Ev::Shutdown);
    let hold = crate::config::secs(cfg.policy.failback_hold_s);
    let mut attempts: std::collections::BTreeMap<u64, u32> = std::collections::BTreeMap::new();
    let mut pending: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
    while !core.exited() {
        if world.now.0 > SCHEDULE_MS + 20_000 {
            out.violations.push("the drain never ended".into());
            break;
        }
        let event = if let Some(e) = pending.pop_front() {
            e
        } else {
            let Some(ev) = world.pop() else { break };
            match ev {
                Ev::Core(e) => {
                    if matches!(e, Event::Tick) {
                        world.at(SIM_TICK_MS, Ev::Core(Event::Tick));
                    }
                    e
                }
                Ev::Connect(i, inc) => {
                    let Some(p) = world.proc(i, inc) else {
                        continue;
                    };
                    p.connected = true;
                    Event::WorkerConnected {
                        slot: i,
                        incarnation: inc,
                    }
                }
                Ev::Loaded(i, inc) => {
                    pending.extend(world.loaded(i, inc));
                    continue;
                }
                Ev::Token(i, inc, seq) => {
                    pending.extend(world.token(i, inc, seq));
                    continue;
                }
                Ev::Exit(i, inc, exit_code, sig) => {
                    pending.extend(world.exited(i, inc, exit_code, sig));
                    continue;
                }
                Ev::Fault(i) => {
                    scenarios::fault(&mut world, i);
                    continue;
                }
                Ev::Client => match clients.act(&mut world, &core, &mut tracker) {
                    Some(e) => e,
                    None => continue,
                },
                Ev::Shutdown => Event::Shutdown,
            }
        };
        let now = world.now;
        if trace {
            let _ = writeln!(out.trace, "{:>6} ms  <- {}", now.0, describe(&event));
        }
        if let Event::Admin {
            cmd: AdminToSupervisor::Restart(r),
            ..
        } = &event
        {
            if let Some(i) = core.slots().iter().position(|s| s.name == r.slot) {
                let inc = core.slots()[i].incarnation;
                world.faults[i].push((inc, "admin-restart"));
                tracker.admin_restart[i] = Some(now);
            }
        }
        tracker.before(&core);
        let active_before = core.active();
        let primary_before = (core.slots()[0].restarts, core.slots()[0].healthy_since);
        let effects = core.handle(event, now);
        // Judged after the step: a fallback that just went down is no
        // reason to stay off the primary.
        let fallback_healthy = core
            .slots()
            .get(1)
            .is_some_and(|s| s.view().healthy() && !s.memory_pressure);
        out.steps += 1;
        for effect in effects {
            if trace && !matches!(effect, Effect::Publish(_) | Effect::Notify(_)) {
                let _ = writeln!(
                    out.trace,
                    "{:>6} ms  -> {}",
                    now.0,
                    describe_effect(&effect)
                );
            }
            match effect {
                Effect::Spawn {
                    slot, incarnation, ..
                } => pending.push_back(world.spawn(slot, incarnation)),
                Effect::Stop { slot, pid, grace } => {
                    let Some(p) = world.procs[slot].iter().find(|p| p.pid == pid) else {
                        continue;
                    };
                    let (inc, hung) = (p.incarnation, p.hung);
                    let grace_ms = crate::core::ms(grace);
                    if hung {
                        world.exit(slot, inc, grace_ms, None, Some(9));
                    } else {
                        let d = world.rng.range(5, grace_ms.max(6));
                        world.exit(slot, inc, d, None, Some(15));
                    }
                }
                Effect::Kill { pid } => {
                    for (slot, procs) in world.procs.clone().iter().enumerate() {
                        if let Some(p) = procs.iter().find(|p| p.pid == pid) {
                            let inc = p.incarnation;
                            world.exit(slot, inc, 0, None, Some(9));
                        }
                    }
                }
                Effect::ToWorker {
                    slot,
                    incarnation,
                    msg,
                } => {
                    if let SupervisorToWorker::Warm(w) = &msg {
                        // A warm goes only to the shadow of a request in
                        // flight under its key, never after shadowing it
                        // stopped for slowing the serving slot.
                        let shadowing = core.jobs().values().any(|j| {
                            j.shadow
                                .as_ref()
                                .is_some_and(|sh| sh.slot == slot && sh.key == w.key && !sh.stopped)
                        });
                        if !shadowing {
                            out.violations.push(format!(
                                "a warm to slot {slot} shadowing no request under that key"
                            ));
                        }
                    }
                    if let SupervisorToWorker::Generate(g) = &msg {
                        // No hot loop: a request is tried at most once, plus
                        // once per failover and per refusal the policy allows.
                        let n = attempts.entry(g.request_id).or_insert(0u32);
                        *n += 1;
                        let limit = 1 + cfg.policy.max_failovers + crate::core::MAX_REFUSALS;
                        if *n > limit {
                            out.violations.push(format!(
                                "request {} sent to workers {n} times",
                                g.request_id
                            ));
                        }
                        let (restarts, healthy_since) = primary_before;
                        if slot == 0
                            && active_before == Some(1)
                            && fallback_healthy
                            && core.routing() == proto::admin::Routing::Auto
                            && restarts > 0
                            && healthy_since.is_some_and(|h| now.since(h) < hold)
                        {
                            out.violations.push(
                                "traffic returned to the primary before the hold-down".into(),
                            );
                        }
                    }
                    for (delay, e) in world.deliver(slot, incarnation, msg) {
                        world.at(delay, Ev::Core(e));
                    }
                }
                Effect::ToClient { conn, event, .. } => {
                    if let Some(v) = tracker.client_event(conn, &event) {
                        out.violations.push(v);
                    }
                    clients.on_event(&mut world, conn, &event);
                }
                Effect::ReadTelemetry { workers } => {
                    pending.push_back(Event::Telemetry(world.readings(&workers)));
                }
                _ => {}
            }
        }
        for (i, procs) in world.procs.iter().enumerate() {
            if procs.len() > 1 {
                out.violations
                    .push(format!("slot {i} has {} processes", procs.len()));
            }
        }
        out.violations.append(&mut world.violations);
        out.violations
            .extend(tracker.after(&core, now, &mut world.faults));
        if !out.violations.is_empty() {
            if trace {
                let _ = writeln!(out.trace, "VIOLATION at {} ms: {:?}", now.0, out.violations);
            }
            return out;
        }
    }
    out.violations.extend(tracker.finish());
    out.shadow_stops = core.status().shadow.stops_for_slowdown;
    out
}

fn describe(e: &Event) -> String {
    match e {
        Event::WorkerMessage { slot, msg, .. } => {
            format!("worker {slot}: {}", scenarios::short(msg))
        }
        Event::Telemetry(r) => format!(
            "telemetry mem={:?} workers={} zones={}",
            r.mem_available_kb,
            r.workers.len(),
            r.zones.len()
        ),
        other => format!("{other:?}"),
    }
}

fn describe_effect(e: &Effect) -> String {
    match e {
        Effect::Log {
            level,
            message,
            fields,
        } => format!("log {level:?} {message} {fields:?}"),
        other => format!("{other:?}"),
    }
}

/// Replay command printed with a failing seed.
pub fn replay_command(seed: u64) -> String {
    format!("ROCKSTEADY_SIM_SEED={seed} cargo test -p supervisor sim_replay -- --nocapture")
}

/// Runs `seeds`, failing on any violation; returns the shadow stops seen.
fn run_many(seeds: impl Iterator<Item = u64>) -> u64 {
    let mut failures = Vec::new();
    let mut steps = 0;
    let mut shadow_stops = 0;
    for seed in seeds {
        let o = run(seed, false);
        steps += o.steps;
        shadow_stops += o.shadow_stops;
        if !o.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {}\n  replay: {}",
                o.violations.join("; "),
                replay_command(seed)
            ));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing schedule(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("simulation: {steps} steps, {shadow_stops} shadow stops for slowdown");
    shadow_stops
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn sim_regressions() {
    let _ = run_many(REGRESSIONS.iter().map(|(s, _)| *s));
}

/// Runs `n` schedules from seed `start` on two threads.
fn run_parallel(start: u64, n: u64) -> u64 {
    let half = std::thread::spawn(move || run_many(start..start + n / 2));
    let stops = run_many(start + n / 2..start + n);
    match half.join() {
        Ok(other) => stops + other,
        Err(e) => std::panic::resume_unwind(e),
    }
}

#[test]
fn sim_schedules() {
    // Two halves on two threads: the machine running tests has two cores.
    let stops = run_parallel(0, DEFAULT_SCHEDULES);
    // Worlds whose slots share cores slow the serving slot while a warm
    // runs: the shadowing rule is exercised, under the warm invariant.
    assert!(stops > 0, "no schedule stopped shadowing for a slowdown");
}

#[test]
fn sim_soak() {
    let Some(n) = env_u64("ROCKSTEADY_SIM_SCHEDULES") else {
        return;
    };
    let start = env_u64("ROCKSTEADY_SIM_FROM").unwrap_or(1_000_000);
    let _ = run_parallel(start, n);
}

#[test]
fn sim_replay() {
    let Some(seed) = env_u64("ROCKSTEADY_SIM_SEED") else {
        return;
    };
    let o = run(seed, true);
    println!("{}", o.trace);
    assert!(o.violations.is_empty(), "seed {seed}: {:?}", o.violations);
}
