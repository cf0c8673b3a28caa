//! Scripted scenarios, one per defect of issue 10: the core driven by hand
//! through the exact sequence that showed each defect. Each fails on the
//! code before its fix.

use proto::admin::{AdminToSupervisor, MemoryCeiling, SlotState, ThermalLevel};
use proto::chat::{ChatMessage, FinishReason, GenParams, GenStats, Role};
use proto::client::{ErrorKind, Submit, SupervisorToClient};
use proto::worker::{
    CacheReport, HeldConversation, ModelFacts, Ready, SupervisorToWorker, WorkerDone, WorkerError,
    WorkerErrorKind, WorkerToSupervisor, WorkerToken,
};

use crate::config::Config;
use crate::core::{
    Core, Effect, Event, MemSample, Millis, OomCounters, Readings, SpawnError, ZoneReading, TICK,
};
use crate::lifecycle::Reason;

/// A core with hand-fed events; spawns and telemetry are answered as the
/// driver would, from the harness's own figures.
struct H {
    core: Core,
    now: Millis,
    log: Vec<Effect>,
    next_pid: u32,
    anon_mib: [u64; 2],
    zones: Vec<ZoneReading>,
    mem_unreadable: bool,
    spawn_error: Option<SpawnError>,
    oom_kills: u64,
    /// Workers answer each `Warm` with `Warmed` at once (as a worker whose
    /// warm is quick); off, a test answers them itself.
    warmed_at_once: bool,
}

fn config(extra_policy: &str, primary_extra: &str) -> Config {
    let text = format!(
        "[slots.primary]\nbackend = \"npu\"\nmodel = \"/m/p.rkllm\"\nworker = \"/w/worker-npu\"\n{primary_extra}\n\
         [slots.fallback]\nbackend = \"cpu\"\nmodel = \"/m/f.gguf\"\nworker = \"/w/worker-cpu\"\n\
         [policy]\nheartbeat_interval_s = 0.5\nheartbeat_timeout_s = 60.0\nstall_timeout_s = 2.0\n\
         first_token_timeout_s = 2.0\nload_timeout_s = 6.0\nbackoff_initial_s = 0.5\nbackoff_max_s = 2.0\n\
         memory_interval_s = 0.5\nprofile_switch_after_s = 1.0\nprofile_hold_s = 60.0\nstop_grace_s = 1.0\n\
         drain_timeout_s = 10.0\n{extra_policy}\n[http]\nlisten = \"\"\nprobe_interval_s = 0.0\n"
    );
    Config::from_toml(&text, std::path::Path::new("/")).unwrap()
}

impl H {
    fn new(cfg: Config) -> Self {
        let mut h = Self {
            core: Core::new(cfg, 1, Millis(0)),
            now: Millis(0),
            log: Vec::new(),
            next_pid: 100,
            anon_mib: [100, 100],
            zones: vec![ZoneReading {
                kind: "soc-thermal".into(),
                celsius: Some(50.0),
            }],
            mem_unreadable: false,
            spawn_error: None,
            oom_kills: 0,
            warmed_at_once: true,
        };
        h.feed(Event::Start);
        h
    }

    fn feed(&mut self, event: Event) -> Vec<Effect> {
        let mut all = Vec::new();
        let mut pending = vec![event];
        while let Some(e) = pending.pop() {
            for effect in self.core.handle(e, self.now) {
                match &effect {
                    Effect::Spawn {
                        slot, incarnation, ..
                    } => {
                        let answer = if let Some(error) = self.spawn_error.clone() {
                            Event::SpawnFailed {
                                slot: *slot,
                                incarnation: *incarnation,
                                error,
                            }
                        } else {
                            self.next_pid += 1;
                            Event::Spawned {
                                slot: *slot,
                                incarnation: *incarnation,
                                pid: self.next_pid,
                                oom: self.oom(),
                            }
                        };
                        pending.push(answer);
                    }
                    Effect::ToWorker {
                        slot,
                        incarnation,
                        msg: SupervisorToWorker::Warm(w),
                    } if self.warmed_at_once => {
                        pending.push(Event::WorkerMessage {
                            slot: *slot,
                            incarnation: *incarnation,
                            msg: WorkerToSupervisor::Warmed(proto::worker::Warmed {
                                key: w.key.clone(),
                                tokens: 0,
                            }),
                        });
                    }
                    Effect::ReadTelemetry { workers } => {
                        let workers = workers
                            .iter()
                            .map(|&(i, pid)| {
                                let s = MemSample {
                                    rss_anon_kb: self.anon_mib[i] << 10,
                                    ..MemSample::default()
                                };
                                (i, pid, (!self.mem_unreadable).then_some(s))
                            })
                            .collect();
                        pending.push(Event::Telemetry(Readings {
                            mem_available_kb: Some(4 << 20),
                            workers,
                            zones: self.zones.clone(),
                        }));
                    }
                    _ => {}
                }
                all.push(effect);
            }
        }
        self.log.extend(all.iter().cloned());
        all
    }

    fn oom(&self) -> OomCounters {
        OomCounters {
            global: Some(self.oom_kills),
            cgroup: None,
        }
    }

    /// Lets `ms` pass in ticks.
    fn wait(&mut self, ms: u64) {
        let end = self.now.0 + ms;
        while self.now.0 < end {
            self.now = self.now + TICK;
            self.feed(Event::Tick);
        }
    }

    fn inc(&self, slot: usize) -> u64 {
        self.core.slots()[slot].incarnation
    }

    fn say(&mut self, slot: usize, msg: WorkerToSupervisor) -> Vec<Effect> {
        let incarnation = self.inc(slot);
        self.feed(Event::WorkerMessage {
            slot,
            incarnation,
            msg,
        })
    }

    /// Connects slot's process and reports it ready.
    fn ready(&mut self, slot: usize) {
        let incarnation = self.inc(slot);
        self.feed(Event::WorkerConnected { slot, incarnation });
        self.say(slot, ready());
        assert_eq!(self.core.slots()[slot].state, SlotState::Ready);
    }

    fn submit(&mut self, conn: u64, id: u64, chars: usize, params: GenParams) -> Vec<Effect> {
        self.feed(Event::ClientSubmit {
            conn,
            submit: Submit {
                request_id: id,
                messages: vec![ChatMessage::new(Role::User, "x".repeat(chars))],
                params,
                model: String::new(),
                conversation: None,
            },
        })
    }

    /// Submits a request of conversation `key`.
    fn submit_in(&mut self, conn: u64, id: u64, key: &str) -> Vec<Effect> {
        self.feed(Event::ClientSubmit {
            conn,
            submit: Submit {
                request_id: id,
                messages: vec![ChatMessage::new(Role::User, "hello")],
                params: params(8),
                model: String::new(),
                conversation: Some(key.into()),
            },
        })
    }

    /// The Generate messages sent to `slot` so far.
    fn generate_messages(&self, slot: usize) -> Vec<proto::worker::Generate> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Effect::ToWorker {
                    slot: s,
                    msg: SupervisorToWorker::Generate(g),
                    ..
                } if *s == slot => Some(g.clone()),
                _ => None,
            })
            .collect()
    }

    fn exit(&mut self, slot: usize, code: Option<i32>, signal: Option<i32>) {
        let incarnation = self.inc(slot);
        self.feed(Event::WorkerDisconnected { slot, incarnation });
        self.feed(Event::WorkerExited {
            slot,
            incarnation,
            code,
            signal,
            oom: self.oom(),
        });
    }

    /// Client events sent so far to `conn`.
    fn client(&self, conn: u64) -> Vec<SupervisorToClient> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Effect::ToClient { conn: c, event, .. } if *c == conn => Some(event.clone()),
                _ => None,
            })
            .collect()
    }

    /// Generate requests sent to `slot` so far.
    fn generates(&self, slot: usize) -> Vec<u64> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Effect::ToWorker {
                    slot: s,
                    msg: SupervisorToWorker::Generate(g),
                    ..
                } if *s == slot => Some(g.request_id),
                _ => None,
            })
            .collect()
    }
}

fn ready() -> WorkerToSupervisor {
    WorkerToSupervisor::Ready(Ready {
        backend: proto::chat::Backend::Cpu,
        model: ModelFacts {
            name: "m".into(),
            file_size: 1,
            architecture: "a".into(),
            train_context: 1024,
            context_size: 1024,
            parameters: 1,
            chat_template: String::new(),
        },
        profile: "default".into(),
        load_ms: 1.0,
        pid: 1,
    })
}

fn params(max_tokens: u32) -> GenParams {
    GenParams {
        max_tokens,
        ..GenParams::default()
    }
}

fn done(request_id: u64, prompt_tokens: u32, prefill_ms: f64) -> WorkerToSupervisor {
    WorkerToSupervisor::Done(WorkerDone {
        request_id,
        finish: FinishReason::EndOfTurn,
        stats: GenStats {
            prompt_tokens,
            prefill_ms,
            ..GenStats::default()
        },
        cache: CacheReport::default(),
    })
}

/// A worker's cache report holding `keys`, with `hits` hits.
fn holding(keys: &[&str], hits: u64) -> CacheReport {
    CacheReport {
        held: keys
            .iter()
            .map(|k| HeldConversation {
                key: (*k).into(),
                tokens: 40,
            })
            .collect(),
        capacity: 2,
        kv_bytes_per_sequence: 1 << 20,
        hits,
        misses: 1,
        reused_tokens: 30 * hits,
        evictions: 0,
        dropped: 0,
        prompt_cache: None,
    }
}

fn heartbeat(cache: CacheReport) -> WorkerToSupervisor {
    WorkerToSupervisor::Heartbeat(proto::worker::Heartbeat {
        seq: 1,
        busy_with: None,
        tokens_total: 0,
        requests_total: 0,
        cache,
    })
}

#[test]
fn a_profile_switch_on_a_worker_older_than_the_load_timeout_is_not_a_load_timeout() {
    let fallback = "memory_soft_mib = 200\n[slots.primary.fallback_profile]\nname = \"small\"\ncontext_size = 512\nbatch_size = 128\nmax_new_tokens = 64\n";
    let mut h = H::new(config("", fallback));
    h.ready(0);
    h.ready(1);
    h.wait(10_000); // older than load_timeout_s = 6
    h.anon_mib[0] = 300; // pressure
    h.wait(1_600);
    let s = &h.core.slots()[0];
    assert_eq!(
        (s.state, s.on_fallback_profile),
        (SlotState::Loading, true),
        "{}",
        s.reason
    );
    h.wait(500);
    let s = &h.core.slots()[0];
    assert_eq!(
        s.state,
        SlotState::Loading,
        "stopped during the switch: {}",
        s.reason
    );
    h.say(0, ready());
    h.wait(1_000);
    let s = &h.core.slots()[0];
    assert_eq!(
        (s.state, s.restarts, s.profile_name().as_str()),
        (SlotState::Ready, 0, "small")
    );
}

#[test]
fn a_transient_spawn_failure_backs_off_and_recovers() {
    let mut h = H::new(config("", ""));
    h.spawn_error = Some(SpawnError {
        permanent: false,
        message: "Too many open files (os error 24)".into(),
    });
    h.exit(0, Some(1), None);
    h.wait(600);
    assert_eq!(
        h.core.slots()[0].state,
        SlotState::BackingOff,
        "{}",
        h.core.slots()[0].reason
    );
    h.spawn_error = None;
    h.wait(3_000);
    assert_eq!(h.core.slots()[0].state, SlotState::Starting);
    h.ready(0);
    // Only a missing binary is for ever.
    h.spawn_error = Some(SpawnError {
        permanent: true,
        message: "No such file or directory (os error 2)".into(),
    });
    h.exit(0, Some(1), None);
    h.wait(3_000);
    let s = &h.core.slots()[0];
    assert_eq!(s.state, SlotState::Unavailable);
    assert!(s.reason.contains("No such file"), "{}", s.reason);
}

#[test]
fn a_refusing_worker_is_not_offered_the_request_again_at_once_and_the_request_ends() {
    let mut h = H::new(config("spill_over = false\n", ""));
    h.ready(0);
    h.submit(1, 1, 10, params(8));
    for round in 0..20 {
        let Some(&id) = h.generates(0).last() else {
            break;
        };
        let before = h.generates(0).len();
        h.say(
            0,
            WorkerToSupervisor::Error(WorkerError {
                request_id: id,
                kind: WorkerErrorKind::Busy,
                message: "busy".into(),
            }),
        );
        assert_eq!(
            h.generates(0).len(),
            before,
            "round {round}: re-sent in the same instant"
        );
        h.wait(1_100);
    }
    let events = h.client(1);
    let SupervisorToClient::Error(e) = events.last().unwrap() else {
        panic!("{events:?}")
    };
    assert_eq!(e.kind, ErrorKind::WorkerFailed);
    assert!(e.message.contains("refused"), "{}", e.message);
}

#[test]
fn the_first_token_limit_grows_with_the_prompt_and_a_prefill_hang_is_not_retried() {
    let mut h = H::new(config("spill_over = false\n", ""));
    h.ready(0);
    h.ready(1);
    // Teach the supervisor the primary's prefill rate: 100 tokens/s.
    h.submit(1, 1, 40, params(4));
    h.say(0, done(1, 100, 1_000.0));
    // 4000 characters ~ 1000 tokens ~ 10 s of prefill: no hang at 2 s.
    h.submit(1, 2, 4_000, params(4));
    h.wait(8_000);
    assert_eq!(
        h.core.slots()[0].state,
        SlotState::Busy,
        "{}",
        h.core.slots()[0].reason
    );
    h.say(
        0,
        WorkerToSupervisor::Token(WorkerToken {
            request_id: 2,
            text: "ok".into(),
            tokens: 1,
        }),
    );
    h.say(0, done(2, 1000, 9_000.0));
    // A prompt that never gets its first token: the worker is stopped and
    // the request fails instead of hanging the next worker too.
    h.submit(1, 3, 40, params(4));
    h.wait(4_000);
    assert_eq!(h.core.slots()[0].stopped_for, Some(Reason::Hang));
    let events = h.client(1);
    let SupervisorToClient::Error(e) = events.last().unwrap() else {
        panic!("{events:?}")
    };
    assert_eq!((e.request_id, e.kind), (3, ErrorKind::WorkerFailed));
    assert!(e.message.contains("not retried"), "{}", e.message);
    assert!(
        h.generates(1).is_empty(),
        "the suspect request was sent to the fallback"
    );
}

#[test]
fn telemetry_fails_safe() {
    let mut h = H::new(config("", "memory_soft_mib = 200\nmemory_hard_mib = 400\n"));
    h.ready(0);
    h.zones = vec![ZoneReading {
        kind: "soc-thermal".into(),
        celsius: Some(95.0),
    }];
    h.wait(600);
    assert_eq!(h.core.thermal_level(), ThermalLevel::Critical);
    // Unreadable is not cool.
    h.zones[0].celsius = None;
    h.wait(2_000);
    assert_eq!(h.core.thermal_level(), ThermalLevel::Critical);
    let status = h.core.status();
    assert_eq!(status.telemetry.unreadable_zones, ["soc-thermal"]);
    assert!(status.telemetry.blind_ms.is_some());
    // An unreadable memory sample is not 0 MiB: pressure stays.
    h.anon_mib[0] = 300;
    h.wait(600);
    assert!(h.core.slots()[0].memory_pressure);
    h.mem_unreadable = true;
    h.wait(2_000);
    assert!(h.core.slots()[0].memory_pressure);
    assert!(h.core.status().telemetry.memory_read_failures > 0);
}

#[test]
fn an_unexplained_sigkill_is_killed_and_only_the_counters_make_it_oom() {
    let mut h = H::new(config("", ""));
    h.ready(0);
    h.exit(0, None, Some(9));
    assert_eq!(h.core.slots()[0].last_restart_reason, Some(Reason::Killed));
    h.wait(1_000);
    h.ready(0);
    h.oom_kills += 1;
    h.exit(0, None, Some(9));
    assert_eq!(h.core.slots()[0].last_restart_reason, Some(Reason::Oom));
}

#[test]
fn sigterm_drains_running_replies_and_tells_waiting_clients() {
    let mut h = H::new(config("spill_over = false\n", ""));
    h.ready(0);
    h.submit(1, 1, 10, params(8));
    h.submit(2, 1, 10, params(8));
    h.feed(Event::Shutdown);
    let waiting = h.client(2);
    let SupervisorToClient::Error(e) = waiting.last().unwrap() else {
        panic!("{waiting:?}")
    };
    assert_eq!(e.kind, ErrorKind::ShuttingDown);
    assert!(e.message.contains("restarting"));
    h.wait(1_000);
    assert!(!h.core.exited());
    assert!(
        !h.log
            .iter()
            .any(|e| matches!(e, Effect::Stop { slot: 0, .. })),
        "stopped while replying"
    );
    h.say(
        0,
        WorkerToSupervisor::Token(WorkerToken {
            request_id: 1,
            text: "four".into(),
            tokens: 1,
        }),
    );
    h.say(0, done(1, 5, 10.0));
    let SupervisorToClient::Done(d) = h.client(1).last().unwrap().clone() else {
        panic!()
    };
    assert_eq!(d.text, "four");
    assert!(h
        .log
        .iter()
        .any(|e| matches!(e, Effect::Stop { slot: 0, .. })));
    h.exit(0, Some(0), None);
    h.exit(1, Some(0), None);
    h.wait(200);
    assert!(h.core.exited());
    // A new request during the drain is refused as restarting.
    let mut h2 = H::new(config("", ""));
    h2.feed(Event::Shutdown);
    h2.submit(3, 1, 10, params(8));
    let SupervisorToClient::Error(e) = h2.client(3).last().unwrap().clone() else {
        panic!()
    };
    assert_eq!(e.kind, ErrorKind::ShuttingDown);
}

#[test]
fn spill_over_puts_the_ready_fallback_to_work_while_the_primary_is_busy() {
    let mut h = H::new(config("", ""));
    h.ready(0);
    h.ready(1);
    h.submit(1, 1, 10, params(8));
    h.submit(2, 1, 10, params(8));
    assert_eq!(h.generates(0).len(), 1);
    assert_eq!(
        h.generates(1).len(),
        1,
        "the fallback idles while a request waits"
    );
    assert!(
        h.core.status().routing_reason.contains("spill-over"),
        "{}",
        h.core.status().routing_reason
    );
    // Off: the second waits for the primary.
    let mut h = H::new(config("spill_over = false\n", ""));
    h.ready(0);
    h.ready(1);
    h.submit(1, 1, 10, params(8));
    h.submit(2, 1, 10, params(8));
    assert!(h.generates(1).is_empty());
}

#[test]
fn bad_parameters_are_refused_at_the_door_and_tokens_are_counted_from_frames() {
    let mut h = H::new(config("", ""));
    h.ready(0);
    let nan = GenParams {
        temperature: f32::NAN,
        ..params(8)
    };
    h.submit(1, 1, 10, nan);
    let SupervisorToClient::Error(e) = h.client(1).last().unwrap().clone() else {
        panic!()
    };
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("temperature"), "{}", e.message);
    h.submit(1, 2, 10, params(0));
    let SupervisorToClient::Error(e) = h.client(1).last().unwrap().clone() else {
        panic!()
    };
    assert!(e.message.contains("max_tokens"), "{}", e.message);
    assert!(h.generates(0).is_empty());
    // One frame covering three model tokens counts three.
    h.submit(1, 3, 10, params(8));
    let id = *h.generates(0).last().unwrap();
    h.say(
        0,
        WorkerToSupervisor::Token(WorkerToken {
            request_id: id,
            text: "abc".into(),
            tokens: 3,
        }),
    );
    h.say(0, done(id, 5, 10.0));
    let SupervisorToClient::Done(d) = h.client(1).last().unwrap().clone() else {
        panic!()
    };
    assert_eq!(d.stats.generated_tokens, 3);
}

#[test]
fn admin_ceiling_change_reaches_the_cgroup() {
    let mut h = H::new(config("", ""));
    h.ready(0);
    h.feed(Event::Admin {
        id: 7,
        cmd: AdminToSupervisor::SetMemoryCeiling(MemoryCeiling {
            slot: "primary".into(),
            soft_mib: 100,
            hard_mib: 200,
        }),
    });
    assert!(h
        .log
        .iter()
        .any(|e| matches!(e, Effect::SetCgroupLimit { slot: 0, max: Some(m) } if *m == 200 << 20)));
    assert!(h
        .log
        .iter()
        .any(|e| matches!(e, Effect::AdminReply { id: 7, .. })));
}

/// The latencies the core hands to /metrics, in seconds, by kind.
fn observed(h: &H, latency: crate::observe::Latency) -> Vec<f64> {
    h.log
        .iter()
        .filter_map(|e| match e {
            Effect::Observe {
                latency: l,
                seconds,
                ..
            } if *l == latency => Some(*seconds),
            _ => None,
        })
        .collect()
}

#[test]
fn latencies_are_measured_on_the_core_clock_and_probes_are_not_requests() {
    use crate::observe::Latency;
    let mut h = H::new(config("", ""));
    // Loading takes 1.5 s of the core's clock.
    let incarnation = h.inc(0);
    h.feed(Event::WorkerConnected {
        slot: 0,
        incarnation,
    });
    h.wait(1500);
    h.say(0, ready());
    assert_eq!(observed(&h, Latency::Load), [1.5]);
    // Two requests: the second waits 400 ms for the first to end.
    h.submit(1, 1, 10, params(8));
    h.submit(2, 2, 10, params(8));
    let first = h.generates(0)[0];
    h.wait(300);
    let token = |request_id, tokens| {
        WorkerToSupervisor::Token(WorkerToken {
            request_id,
            text: "ab".into(),
            tokens,
        })
    };
    h.say(0, token(first, 1));
    h.wait(100);
    // A frame of two tokens 100 ms after the last: 50 ms per token.
    h.say(0, token(first, 2));
    h.say(0, done(first, 5, 10.0));
    let second = h.generates(0)[1];
    h.say(0, token(second, 1));
    h.say(0, done(second, 5, 10.0));
    let queue = observed(&h, Latency::QueueWait);
    assert_eq!(queue.len(), 2, "{queue:?}");
    assert!(
        queue[0].abs() < 1e-9 && (queue[1] - 0.4).abs() < 1e-9,
        "{queue:?}"
    );
    // First tokens from admission: 300 ms, then 400 ms (its queue wait included).
    assert_eq!(observed(&h, Latency::FirstToken), [0.3, 0.4]);
    assert_eq!(observed(&h, Latency::Token), [0.05]);
    // The supervisor's own probe generates, but is no one's wait.
    let mut cfg = config("", "");
    cfg.http.probe_interval_s = 1.0;
    cfg.http.healthy_within_s = 5.0;
    let mut h = H::new(cfg);
    h.ready(0);
    h.wait(1500);
    let probe = *h.generates(0).first().expect("a probe was sent");
    h.say(0, token(probe, 1));
    h.say(0, done(probe, 5, 10.0));
    assert!(observed(&h, Latency::QueueWait).is_empty());
    assert!(observed(&h, Latency::FirstToken).is_empty());
}

// Issue 13: conversations go where their KV cache is.

#[test]
fn a_conversation_goes_to_the_ready_slot_that_holds_it() {
    // No spill-over: the fallback is offered a request only as the holder.
    let mut h = H::new(config("spill_over = false\n", ""));
    h.ready(0);
    h.ready(1);
    h.say(1, heartbeat(holding(&["chain-7"], 1)));
    h.submit_in(1, 1, "chain-7");
    let sent = h.generate_messages(1);
    assert_eq!(sent.len(), 1, "the fallback holds chain-7");
    assert_eq!(sent[0].conversation.as_deref(), Some("chain-7"));
    assert!(h.core.status().routing_reason.contains("KV cache holds"));
    // Another conversation follows routing: the primary.
    h.submit_in(1, 2, "chain-8");
    assert_eq!(h.generate_messages(0).len(), 1);
    // A request without a key too.
    h.say(0, done(h.generates(0)[0], 10, 5.0));
    h.submit(1, 3, 10, params(8));
    assert_eq!(h.generates(0).len(), 2);
}

#[test]
fn policy_and_health_overrule_the_cache() {
    // Pinned to the NPU by an operator: the holder is not used.
    let mut h = H::new(config("spill_over = false\n", ""));
    h.ready(0);
    h.ready(1);
    h.say(1, heartbeat(holding(&["k"], 1)));
    h.feed(Event::Admin {
        id: 9,
        cmd: AdminToSupervisor::Failover(proto::admin::FailoverCommand {
            to: Some(proto::chat::Backend::Npu),
        }),
    });
    h.submit_in(1, 1, "k");
    assert_eq!(
        (h.generates(0).len(), h.generates(1).len()),
        (1, 0),
        "pinned"
    );

    // Under memory pressure the holder is passed over.
    let mut h = H::new(config("spill_over = false\n", ""));
    h.ready(0);
    h.ready(1);
    h.feed(Event::Admin {
        id: 9,
        cmd: AdminToSupervisor::SetMemoryCeiling(MemoryCeiling {
            slot: "fallback".into(),
            soft_mib: 50,
            hard_mib: 0,
        }),
    });
    h.wait(2_000);
    assert!(h.core.slots()[1].memory_pressure);
    h.say(1, heartbeat(holding(&["k"], 1)));
    h.submit_in(1, 1, "k");
    assert_eq!((h.generates(0).len(), h.generates(1).len()), (1, 0));
}

#[test]
fn a_failover_continues_the_conversation_cold_elsewhere() {
    let mut h = H::new(config("spill_over = false\n", ""));
    h.ready(0);
    h.ready(1);
    h.say(1, heartbeat(holding(&["k"], 1)));
    h.submit_in(1, 1, "k");
    let id = h.generates(1)[0];
    h.say(
        1,
        WorkerToSupervisor::Token(WorkerToken {
            request_id: id,
            text: "Hel".into(),
            tokens: 1,
        }),
    );
    h.exit(1, None, Some(9));
    let again = h.generate_messages(0);
    assert_eq!(again.len(), 1, "continued on the primary");
    assert_eq!(again[0].assistant_prefix, "Hel");
    assert_eq!(again[0].conversation.as_deref(), Some("k"));
    // The dead worker's cache is gone: nothing is routed to it for "k".
    assert!(!h.core.slots()[1].holds("k"));
}

#[test]
fn cache_figures_add_up_across_worker_restarts() {
    let mut h = H::new(config("", ""));
    h.ready(0);
    h.ready(1);
    h.say(1, heartbeat(holding(&["a", "b"], 2)));
    let st = h.core.status();
    let c = &st.slots[1].cache;
    assert_eq!((c.hits, c.misses, c.reused_tokens), (2, 1, 60));
    assert_eq!(c.held.len(), 2);
    h.exit(1, Some(1), None);
    h.wait(1_000);
    h.ready(1);
    h.say(1, heartbeat(holding(&["c"], 1)));
    let st = h.core.status();
    let c = &st.slots[1].cache;
    assert_eq!((c.hits, c.misses, c.reused_tokens), (3, 2, 90));
    let held: Vec<&str> = c.held.iter().map(|h| h.key.as_str()).collect();
    assert_eq!(held, vec!["c"], "only what the new process holds");
}

#[test]
fn an_oversized_conversation_key_is_refused() {
    let mut h = H::new(config("", ""));
    h.ready(0);
    h.submit_in(1, 1, &"k".repeat(proto::client::MAX_CONVERSATION_KEY + 1));
    assert!(h.client(1).iter().any(|e| matches!(
        e,
        SupervisorToClient::Error(err) if err.kind == ErrorKind::BadRequest && err.message.contains("conversation key")
    )));
    assert!(h.generates(0).is_empty());
}

#[test]
fn a_continued_request_gives_the_worker_its_prefix_and_done_the_whole_answer() {
    let mut h = H::new(config("", ""));
    h.ready(0);
    h.feed(Event::ClientContinue {
        conn: 1,
        submit: Submit {
            request_id: 4,
            messages: vec![ChatMessage::new(Role::User, "count")],
            params: params(8),
            model: String::new(),
            conversation: None,
        },
        assistant_prefix: "one two ".into(),
    });
    let generate = h
        .log
        .iter()
        .find_map(|e| match e {
            Effect::ToWorker {
                msg: SupervisorToWorker::Generate(g),
                ..
            } => Some(g.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(generate.assistant_prefix, "one two ");
    h.say(
        0,
        WorkerToSupervisor::Token(WorkerToken {
            request_id: generate.request_id,
            text: "three".into(),
            tokens: 1,
        }),
    );
    h.say(0, done(generate.request_id, 5, 10.0));
    let events = h.client(1);
    let streamed: String = events
        .iter()
        .filter_map(|e| match e {
            SupervisorToClient::Token(t) => Some(t.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(streamed, "three", "the prefix is not sent again");
    let SupervisorToClient::Done(d) = events.last().unwrap().clone() else {
        panic!("{events:?}")
    };
    assert_eq!(d.text, "one two three");
    assert!(!events
        .iter()
        .any(|e| matches!(e, SupervisorToClient::Failover(_))));
}

// Issue 13: the idle slot shadows the request in flight.

impl H {
    /// The Warm messages sent to `slot` so far.
    fn warms(&self, slot: usize) -> Vec<proto::worker::Warm> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Effect::ToWorker {
                    slot: s,
                    msg: SupervisorToWorker::Warm(w),
                    ..
                } if *s == slot => Some(w.clone()),
                _ => None,
            })
            .collect()
    }

    /// Slot `slot` streams `n` one-token frames of request `id`, "t0 t1 ...".
    fn stream(&mut self, slot: usize, id: u64, n: u32) {
        for k in 0..n {
            self.say(
                slot,
                WorkerToSupervisor::Token(WorkerToken {
                    request_id: id,
                    text: format!("t{k} "),
                    tokens: 1,
                }),
            );
        }
    }
}

#[test]
fn the_idle_slot_is_warmed_on_dispatch_and_every_n_tokens() {
    let mut h = H::new(config("shadow_every_tokens = 4\n", ""));
    h.ready(0);
    h.ready(1);
    h.submit(1, 1, 10, params(64));
    let id = h.generates(0)[0];
    let warms = h.warms(1);
    assert_eq!(warms.len(), 1, "warmed on dispatch");
    assert_eq!(warms[0].key, format!("shadow:{id}"));
    assert_eq!(warms[0].assistant_prefix, "");
    assert_eq!(warms[0].messages[0].content, "x".repeat(10));
    assert!(h.warms(0).is_empty(), "the serving slot is not warmed");
    h.stream(0, id, 3);
    assert_eq!(h.warms(1).len(), 1, "not before 4 tokens");
    h.stream(0, id, 1);
    let warms = h.warms(1);
    assert_eq!(warms.len(), 2, "again after 4 tokens");
    assert_eq!(warms[1].assistant_prefix, "t0 t1 t2 t0 ");
    h.stream(0, id, 4);
    assert_eq!(h.warms(1).len(), 3);
    // Done: no more shadowing.
    h.say(0, done(id, 10, 5.0));
    h.stream(0, id, 8);
    assert_eq!(h.warms(1).len(), 3);
}

#[test]
fn a_conversation_is_shadowed_under_its_own_key() {
    let mut h = H::new(config("", ""));
    h.ready(0);
    h.ready(1);
    h.submit_in(1, 1, "chain-9");
    assert_eq!(h.generates(0).len(), 1);
    let warms = h.warms(1);
    assert_eq!(warms.len(), 1);
    assert_eq!(warms[0].key, "chain-9");
}

#[test]
fn no_shadow_when_off_or_the_other_slot_is_busy_or_not_ready() {
    // Off by policy.
    let mut h = H::new(config("shadow = false\n", ""));
    h.ready(0);
    h.ready(1);
    h.submit(1, 1, 10, params(64));
    assert_eq!(h.generates(0).len(), 1);
    assert!(h.warms(1).is_empty());

    // The other slot not ready yet.
    let mut h = H::new(config("", ""));
    h.ready(0);
    h.submit(1, 1, 10, params(64));
    assert_eq!(h.generates(0).len(), 1);
    assert!(h.warms(1).is_empty());

    // The other slot busy: spill-over gives it the second request; neither
    // is shadowed by a busy slot.
    let mut h = H::new(config("", ""));
    h.ready(0);
    h.ready(1);
    h.submit(1, 1, 10, params(64));
    let first = h.generates(0)[0];
    assert_eq!(h.warms(1).len(), 1);
    h.submit(1, 2, 10, params(64));
    assert_eq!(h.generates(1).len(), 1, "spill-over");
    assert!(h.warms(0).is_empty(), "the primary is busy");
    // The fallback took other work: the first request is no longer shadowed.
    h.stream(0, first, 64);
    assert_eq!(h.warms(1).len(), 1);
}

#[test]
fn the_failover_generate_names_the_shadow_key() {
    let mut h = H::new(config("shadow_every_tokens = 2\n", ""));
    h.ready(0);
    h.ready(1);
    h.submit(1, 1, 10, params(64));
    let id = h.generates(0)[0];
    h.stream(0, id, 3);
    h.exit(0, None, Some(9));
    let again = h.generate_messages(1);
    assert_eq!(again.len(), 1, "continued on the fallback");
    assert_eq!(again[0].conversation, Some(format!("shadow:{id}")));
    assert_eq!(again[0].assistant_prefix, "t0 t1 t2 ");
    // The last warm the fallback had is a prefix of what it must prefill.
    let last = h.warms(1).pop().unwrap();
    assert_eq!(last.assistant_prefix, "t0 t1 ");

    // Without shadowing, a request without a key fails over without one.
    let mut h = H::new(config("shadow = false\n", ""));
    h.ready(0);
    h.ready(1);
    h.submit(1, 1, 10, params(64));
    let id = h.generates(0)[0];
    h.stream(0, id, 3);
    h.exit(0, None, Some(9));
    assert_eq!(h.generate_messages(1)[0].conversation, None);
}

#[test]
fn a_restarted_shadow_is_not_named_on_failover() {
    let mut h = H::new(config("", ""));
    h.ready(0);
    h.ready(1);
    h.submit(1, 1, 10, params(64));
    let id = h.generates(0)[0];
    // The shadow's process dies and comes back: its cache is empty.
    h.exit(1, Some(1), None);
    h.wait(1_000);
    h.ready(1);
    h.stream(0, id, 1);
    h.exit(0, None, Some(9));
    let again = h.generate_messages(1);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].conversation, None);
}

#[test]
fn a_slot_ready_mid_request_starts_shadowing_it_at_the_next_n_tokens() {
    let mut h = H::new(config("shadow_every_tokens = 4\n", ""));
    h.ready(0);
    h.submit(1, 1, 10, params(64));
    let id = h.generates(0)[0];
    assert!(h.warms(1).is_empty(), "the fallback is not ready yet");
    h.ready(1);
    h.stream(0, id, 3);
    assert!(h.warms(1).is_empty());
    h.stream(0, id, 1);
    let warms = h.warms(1);
    assert_eq!(warms.len(), 1, "shadowing from the 4th token on");
    assert_eq!(warms[0].assistant_prefix, "t0 t1 t2 t0 ");
    h.stream(0, id, 4);
    assert_eq!(h.warms(1).len(), 2);
    h.exit(0, None, Some(9));
    assert_eq!(
        h.generate_messages(1)[0].conversation,
        Some(format!("shadow:{id}"))
    );
}

// Issue 13: shadowing stops if it would slow the primary.

impl H {
    /// Slot `slot` streams `n` one-token frames of request `id`, one every
    /// `ms` milliseconds (the clock moves; no tick runs meanwhile).
    fn stream_every(&mut self, slot: usize, id: u64, n: u32, ms: u64) {
        for _ in 0..n {
            self.now = self.now + std::time::Duration::from_millis(ms);
            self.stream(slot, id, 1);
        }
    }

    /// Slot `slot`'s warm under `key` is over, its cache holding `tokens`.
    fn warmed(&mut self, slot: usize, key: &str, tokens: u32) {
        self.say(
            slot,
            WorkerToSupervisor::Warmed(proto::worker::Warmed {
                key: key.into(),
                tokens,
            }),
        );
    }

    /// A request whose first warm is over at once and whose primary then
    /// streams 16 tokens 50 ms apart with no warm running (15 calm tokens
    /// counted: the first frame ends the prefill), the 16th sending the
    /// next warm. Returns its id.
    fn shadowed_request(&mut self, client_id: u64) -> u64 {
        self.submit(1, client_id, 10, params(512));
        let id = *self.generates(0).last().unwrap();
        let warms = self.warms(1).len();
        let key = format!("shadow:{id}");
        self.warmed(1, &key, 30);
        self.stream_every(0, id, 16, 50);
        assert_eq!(self.warms(1).len(), warms + 1, "warmed again at 16 tokens");
        id
    }

    fn shadow_of(&self, id: u64) -> Option<crate::core::Shadow> {
        self.core.jobs().get(&id).and_then(|j| j.shadow.clone())
    }
}

const PACED: &str =
    "shadow_every_tokens = 16\nshadow_max_slowdown = 1.25\nshadow_backoff_requests = 2\n";

#[test]
fn a_primary_slowed_by_the_warms_stops_the_shadow_and_gets_no_more_warms() {
    let mut h = H::new(config(PACED, ""));
    h.warmed_at_once = false;
    h.ready(0);
    h.ready(1);
    let id = h.shadowed_request(1);
    // With the warm running, the primary takes 80 ms a token instead of 50.
    h.stream_every(0, id, 7, 80);
    assert!(
        !h.shadow_of(id).unwrap().stopped,
        "7 tokens are too few to decide"
    );
    h.stream_every(0, id, 1, 80);
    let sh = h.shadow_of(id).unwrap();
    assert!(sh.stopped, "1.6x slower than without the warm");
    assert_eq!(h.core.status().shadow.stops_for_slowdown, 1);
    // The warm in flight ends; however much streams, no warm follows.
    let sent = h.warms(1).len();
    h.warmed(1, &sh.key, 60);
    h.stream_every(0, id, 64, 50);
    assert_eq!(h.warms(1).len(), sent, "no warm after the stop");
    let status = h.core.status();
    let shadowing = status.slots[1].shadowing.clone().unwrap();
    assert!(shadowing.stopped && !shadowing.warming);
    assert_eq!(
        status.shadow.backoffs,
        vec![proto::admin::ShadowBackoff {
            serving: "primary".into(),
            shadow: "fallback".into(),
            requests_left: 2,
        }]
    );
    // What it warmed is still reused: the failover names the key.
    h.exit(0, None, Some(9));
    assert_eq!(
        h.generate_messages(1).last().unwrap().conversation,
        Some(sh.key)
    );
}

#[test]
fn a_primary_that_keeps_its_pace_keeps_its_shadow() {
    let mut h = H::new(config(PACED, ""));
    h.warmed_at_once = false;
    h.ready(0);
    h.ready(1);
    let id = h.shadowed_request(1);
    let key = format!("shadow:{id}");
    // 1.2x slower with the warm running: within 1.25.
    h.stream_every(0, id, 20, 60);
    assert!(!h.shadow_of(id).unwrap().stopped);
    h.warmed(1, &key, 60);
    let sent = h.warms(1).len();
    h.stream_every(0, id, 16, 50);
    assert_eq!(h.warms(1).len(), sent + 1, "still warmed every 16 tokens");
    assert_eq!(h.core.status().shadow.stops_for_slowdown, 0);
}

#[test]
fn one_warm_at_a_time_the_next_once_the_last_is_over() {
    let mut h = H::new(config("shadow_every_tokens = 4\n", ""));
    h.warmed_at_once = false;
    h.ready(0);
    h.ready(1);
    h.submit(1, 1, 10, params(64));
    let id = h.generates(0)[0];
    h.stream(0, id, 12);
    assert_eq!(h.warms(1).len(), 1, "the first warm is not over");
    h.warmed(1, &format!("shadow:{id}"), 30);
    h.stream(0, id, 1);
    let warms = h.warms(1);
    assert_eq!(warms.len(), 2, "the next covers all streamed meanwhile");
    assert_eq!(warms[1].assistant_prefix.split_whitespace().count(), 13);
}

#[test]
fn the_back_off_skips_the_next_requests_of_the_pair_then_expires() {
    let mut h = H::new(config(PACED, ""));
    h.warmed_at_once = false;
    h.ready(0);
    h.ready(1);
    let id = h.shadowed_request(1);
    h.stream_every(0, id, 8, 100);
    let sh = h.shadow_of(id).unwrap();
    assert!(sh.stopped);
    h.warmed(1, &sh.key, 60);
    h.say(0, done(id, 10, 5.0));
    // The next two requests on the primary get no shadow, not even later.
    for client_id in [2, 3] {
        let warms = h.warms(1).len();
        h.submit(1, client_id, 10, params(512));
        let next = *h.generates(0).last().unwrap();
        assert_ne!(next, id);
        h.stream_every(0, next, 40, 50);
        assert_eq!(h.warms(1).len(), warms, "backing off");
        assert_eq!(h.shadow_of(next), None);
        h.say(0, done(next, 10, 5.0));
    }
    assert!(h.core.status().shadow.backoffs.is_empty(), "over");
    // The third is shadowed again; slowed again, the back-off doubles.
    let again = h.shadowed_request(4);
    h.stream_every(0, again, 8, 100);
    assert!(h.shadow_of(again).unwrap().stopped);
    assert_eq!(h.core.status().shadow.backoffs[0].requests_left, 4);
    assert_eq!(h.core.status().shadow.stops_for_slowdown, 2);
}

#[test]
fn status_names_the_shadow_and_what_it_warmed() {
    let mut h = H::new(config("shadow_every_tokens = 4\n", ""));
    h.warmed_at_once = false;
    h.ready(0);
    h.ready(1);
    h.submit(1, 1, 10, params(64));
    let id = h.generates(0)[0];
    let status = h.core.status();
    assert_eq!(status.slots[0].shadowed_by.as_deref(), Some("fallback"));
    assert_eq!(status.slots[0].shadowing, None);
    assert_eq!(status.slots[1].shadowed_by, None);
    assert_eq!(
        status.slots[1].shadowing,
        Some(proto::admin::ShadowStatus {
            request_id: id,
            serving: "primary".into(),
            streamed_tokens: 0,
            warmed_answer_tokens: 0,
            warmed_tokens: 0,
            warming: true,
            stopped: false,
        })
    );
    h.warmed(1, &format!("shadow:{id}"), 31);
    h.stream(0, id, 4);
    h.warmed(1, &format!("shadow:{id}"), 35);
    h.stream(0, id, 2);
    let sh = h.core.status().slots[1].shadowing.clone().unwrap();
    assert_eq!(
        (
            sh.streamed_tokens,
            sh.warmed_answer_tokens,
            sh.warmed_tokens,
            sh.warming
        ),
        (6, 4, 35, false)
    );
    h.say(0, done(id, 10, 5.0));
    let status = h.core.status();
    assert_eq!(status.slots[1].shadowing, None, "the request is over");
    assert_eq!(status.slots[0].shadowed_by, None);
}

/// Two CPU slots; `cpus` lines for each (empty = the default cores, the
/// same for both).
fn two_cpu_config(primary_cpus: &str, fallback_cpus: &str) -> Config {
    let text = format!(
        "[slots.primary]\nbackend = \"cpu\"\nmodel = \"/m/p.gguf\"\nworker = \"/w/worker-cpu\"\n[slots.primary.cpu]\n{primary_cpus}\n\
         [slots.fallback]\nbackend = \"cpu\"\nmodel = \"/m/f.gguf\"\nworker = \"/w/worker-cpu\"\n[slots.fallback.cpu]\n{fallback_cpus}\n\
         [policy]\nheartbeat_interval_s = 0.5\nheartbeat_timeout_s = 60.0\nstall_timeout_s = 2.0\n\
         first_token_timeout_s = 2.0\nshadow_every_tokens = 4\n[http]\nlisten = \"\"\nprobe_interval_s = 0.0\n"
    );
    Config::from_toml(&text, std::path::Path::new("/")).unwrap()
}

#[test]
fn a_shadow_on_shared_cpus_waits_for_the_first_token_a_disjoint_one_does_not() {
    // Both on the default cores: the prompt's two prefills would compete.
    let mut h = H::new(two_cpu_config("", ""));
    h.ready(0);
    h.ready(1);
    h.submit(1, 1, 10, params(64));
    let id = h.generates(0)[0];
    assert!(h.warms(1).is_empty(), "not during the primary's prefill");
    h.stream(0, id, 1);
    let warms = h.warms(1);
    assert_eq!(warms.len(), 1, "with the first token");
    assert_eq!(warms[0].assistant_prefix, "t0 ");
    h.stream(0, id, 4);
    assert_eq!(h.warms(1).len(), 2, "then every 4 tokens as usual");

    // Disjoint cores: warmed on dispatch.
    let mut h = H::new(two_cpu_config("cpus = \"0-3\"", "cpus = \"4-7\""));
    h.ready(0);
    h.ready(1);
    h.submit(1, 1, 10, params(64));
    assert_eq!(h.warms(1).len(), 1, "warmed on dispatch");
}

#[test]
fn a_shadowed_request_that_keeps_its_pace_resets_the_back_off_length() {
    let mut h = H::new(config(PACED, ""));
    h.warmed_at_once = false;
    h.ready(0);
    h.ready(1);
    let mut client_id = 1;
    let slowed = |h: &mut H, client_id: &mut u64| {
        let id = h.shadowed_request(*client_id);
        *client_id += 1;
        h.stream_every(0, id, 8, 100);
        let sh = h.shadow_of(id).unwrap();
        assert!(sh.stopped);
        h.warmed(1, &sh.key, 60);
        h.say(0, done(id, 10, 5.0));
    };
    let skip = |h: &mut H, client_id: &mut u64, n: u32| {
        for _ in 0..n {
            h.submit(1, *client_id, 10, params(512));
            *client_id += 1;
            let id = *h.generates(0).last().unwrap();
            h.say(0, done(id, 10, 5.0));
        }
    };
    slowed(&mut h, &mut client_id);
    skip(&mut h, &mut client_id, 2);
    slowed(&mut h, &mut client_id);
    assert_eq!(h.core.status().shadow.backoffs[0].requests_left, 4);
    skip(&mut h, &mut client_id, 4);
    // Shadowed at its pace to the end: the next back-off is the base again.
    let id = h.shadowed_request(client_id);
    client_id += 1;
    h.stream_every(0, id, 10, 50);
    assert!(!h.shadow_of(id).unwrap().stopped);
    h.say(0, done(id, 10, 5.0));
    slowed(&mut h, &mut client_id);
    assert_eq!(h.core.status().shadow.backoffs[0].requests_left, 2);
}
