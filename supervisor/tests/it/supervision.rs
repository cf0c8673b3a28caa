//! Supervision with real worker processes: crashes, hangs, memory, heat,
//! restart limits, failover and failback, admin commands, and the
//! supervisor's own death.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proto::admin::{
    AdminToSupervisor, FailoverCommand, RestartCommand, Routing, SlotState, SupervisorToAdmin,
};
use proto::chat::Backend;
use proto::client::SupervisorToClient;

use crate::support::{
    bin, collect, cpu_slot, fake_slot, greedy, model, npu_slot_without_runtime, streamed_text,
    user, Sup,
};

/// Fast supervision timings for tests.
const POLICY: &str = "[policy]\nheartbeat_interval_s = 0.5\nheartbeat_timeout_s = 3.0\nstall_timeout_s = 6.0\nfirst_token_timeout_s = 20.0\nstop_grace_s = 1.0\nbackoff_initial_s = 0.2\nbackoff_max_s = 1.0\nrestart_intensity = 2\nrestart_period_s = 60.0\nfailed_cooldown_s = 2.0\nfailback_hold_s = 1.0\nmemory_interval_s = 0.2\n";

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), sig).unwrap();
}

/// Two CPU slots; the primary slowed to `delay_ms` per token so a test can
/// act mid-stream.
async fn pair(delay_ms: u32, primary_extra: &str) -> Sup {
    let primary = fake_slot("primary", &format!("token-ms={delay_ms}"), primary_extra);
    let sup = Sup::start(&format!(
        "{POLICY}{primary}{}",
        cpu_slot("fallback", &model(), "")
    ))
    .await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    sup.wait_state("fallback", SlotState::Ready, Duration::from_secs(60))
        .await;
    sup
}

/// Submits a long request and waits until `tokens` tokens streamed from the primary.
async fn start_long(sup: &Sup, tokens: usize) -> (supervisor::client::ChatClient, String) {
    let mut client = sup.client().await;
    client
        .submit(
            user("Write a long story about a lighthouse keeper and a storm."),
            greedy(160),
        )
        .await
        .unwrap();
    let mut text = String::new();
    let mut seen = 0;
    while seen < tokens {
        match client.next_event().await.unwrap() {
            SupervisorToClient::Started(s) => assert_eq!(s.slot, "primary"),
            SupervisorToClient::Token(t) => {
                text.push_str(&t.text);
                seen += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (client, text)
}

fn after_failover(
    events: &[(Instant, SupervisorToClient)],
) -> (Option<&proto::client::Failover>, String) {
    let mut failover = None;
    let mut text = String::new();
    for (_, e) in events {
        match e {
            SupervisorToClient::Failover(f) => failover = Some(f),
            SupervisorToClient::Token(t) if failover.is_some() => text.push_str(&t.text),
            _ => {}
        }
    }
    (failover, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_survives_kill_9_of_its_worker() {
    let sup = pair(40, "").await;
    let (mut client, before) = start_long(&sup, 12).await;
    let pid = sup.slot("primary").await.pid.unwrap();
    signal(pid, Signal::SIGKILL);
    let events = collect(&mut client, Duration::from_secs(120)).await;
    let (failover, rest) = after_failover(&events);
    let failover = failover.expect("no failover event");
    assert_eq!((failover.from, failover.to), (Backend::Cpu, Backend::Cpu));
    assert_eq!(
        failover.reason, "killed",
        "a SIGKILL without the kernel's OOM counters rising is not an OOM kill"
    );
    let SupervisorToClient::Done(done) = &events.last().unwrap().1 else {
        panic!("{events:?}")
    };
    let full = format!("{before}{}", streamed_text(&events));
    assert_eq!(
        done.text, full,
        "done text must be everything streamed, once"
    );
    assert!(done.text.starts_with(&before));
    assert!(!rest.is_empty(), "nothing generated after the failover");
    let head: String = before.trim().chars().take(24).collect();
    assert!(
        !rest.trim_start().starts_with(&head),
        "the continuation repeats the beginning: {rest:?}"
    );
    let primary = sup
        .wait_slot("primary", Duration::from_secs(30), |s| {
            s.state == SlotState::Ready && s.restarts == 1
        })
        .await;
    assert_eq!(primary.last_restart_reason.as_deref(), Some("killed"));
    assert_eq!(sup.slot("fallback").await.requests_served, 1);
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_detected_as_hung_and_the_reply_completes() {
    let sup = pair(40, "").await;
    let (mut client, before) = start_long(&sup, 6).await;
    let pid = sup.slot("primary").await.pid.unwrap();
    let stopped_at = Instant::now();
    signal(pid, Signal::SIGSTOP);
    let events = collect(&mut client, Duration::from_secs(120)).await;
    let failover_at = events
        .iter()
        .find(|(_, e)| matches!(e, SupervisorToClient::Failover(_)))
        .map(|(t, _)| *t)
        .expect("no failover");
    let (failover, _) = after_failover(&events);
    assert_eq!(failover.unwrap().reason, "hang");
    let detected = failover_at.duration_since(stopped_at);
    assert!(
        detected < Duration::from_secs(7),
        "hang detected after {detected:?} (stall timeout 6 s)"
    );
    let SupervisorToClient::Done(done) = &events.last().unwrap().1 else {
        panic!("{events:?}")
    };
    assert!(done.text.starts_with(&before));
    // The hung process was killed (SIGTERM cannot reach a stopped process's
    // handler, so SIGKILL after the grace) and a new one started.
    let primary = sup
        .wait_slot("primary", Duration::from_secs(30), |s| {
            s.state == SlotState::Ready && s.restarts == 1
        })
        .await;
    assert_eq!(primary.last_restart_reason.as_deref(), Some("hang"));
    assert_ne!(primary.pid, Some(pid));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "hung worker still exists"
    );
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_growing_past_the_hard_ceiling_is_stopped_for_memory() {
    let slot = fake_slot(
        "primary",
        "grow-mib-per-s=300",
        "memory_soft_mib = 250\nmemory_hard_mib = 400",
    );
    let sup = Sup::start(&format!("{POLICY}{slot}")).await;
    let first_pid = sup
        .wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await
        .pid;
    let slot = sup
        .wait_slot("primary", Duration::from_secs(30), |s| s.restarts >= 1)
        .await;
    assert_eq!(
        slot.last_restart_reason.as_deref(),
        Some("memory"),
        "{slot:?}"
    );
    assert_ne!(slot.pid, first_pid);
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heat_pauses_admission_and_throttle_caps_tokens() {
    let sys = tempfile::tempdir().unwrap();
    let zone = sys.path().join("class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::write(zone.join("type"), "soc-thermal\n").unwrap();
    let set_temp = |c: u32| std::fs::write(zone.join("temp"), format!("{}\n", c * 1000)).unwrap();
    set_temp(50);
    let body = format!(
        "{POLICY}[telemetry]\nsysfs_root = \"{}\"\n[thermal]\nthrottle_c = 70.0\ncritical_c = 85.0\nresume_c = 60.0\nthrottle_max_tokens = 5\n{}",
        sys.path().display(),
        cpu_slot("primary", &model(), "")
    );
    let sup = Sup::start(&body).await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;

    // Critical: a new request waits, and is told why.
    set_temp(90);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sup.status().await.thermal.level != proto::admin::ThermalLevel::Critical {
        assert!(Instant::now() < deadline, "critical level not reached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = sup.client().await;
    client
        .submit(user("What is 2+2?"), greedy(40))
        .await
        .unwrap();
    let SupervisorToClient::Queued(q) = client.next_event().await.unwrap() else {
        panic!("not queued")
    };
    assert!(q.reason.contains("cooling down"), "{q:?}");
    // Still hot but below critical: hysteresis keeps it paused.
    set_temp(75);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sup.status().await.queue_depth, 1);
    // Below resume, but above... no: 55 is below resume and below throttle.
    set_temp(72);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        sup.status().await.queue_depth,
        1,
        "72 °C is above resume (60 °C)"
    );
    set_temp(55);
    let events = collect(&mut client, Duration::from_secs(60)).await;
    assert!(
        matches!(events.last().unwrap().1, SupervisorToClient::Done(_)),
        "{events:?}"
    );

    // Throttle: new generations get at most throttle_max_tokens.
    set_temp(75);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sup.status().await.thermal.level != proto::admin::ThermalLevel::Throttle {
        assert!(Instant::now() < deadline, "throttle level not reached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .submit(user("Write a long story about the sea."), greedy(200))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(60)).await;
    let SupervisorToClient::Done(done) = &events.last().unwrap().1 else {
        panic!("{events:?}")
    };
    assert!(
        done.stats.generated_tokens <= 5,
        "{} tokens while throttled",
        done.stats.generated_tokens
    );
    let report = sup.status().await;
    assert_eq!(report.thermal.zones[0].kind, "soc-thermal");
    assert!((report.thermal.zones[0].celsius - 75.0).abs() < 0.01);
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_crashing_on_every_start_fails_then_the_probe_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("broken");
    std::fs::write(&flag, "").unwrap();
    let primary = fake_slot(
        "primary",
        &format!("crash-on-load-while={}", flag.display()),
        "",
    );
    let sup = Sup::start(&format!(
        "{POLICY}{primary}{}",
        cpu_slot("fallback", &model(), "")
    ))
    .await;
    let failed = sup
        .wait_state("primary", SlotState::Failed, Duration::from_secs(30))
        .await;
    assert_eq!(
        failed.restarts, 3,
        "intensity 2: the third restart within the window fails the slot"
    );
    assert!(
        failed.reason.contains("restarts within"),
        "{}",
        failed.reason
    );
    // Traffic stays on the fallback.
    let mut client = sup.client().await;
    client
        .submit(user("What is 2+2?"), greedy(16))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(60)).await;
    let SupervisorToClient::Started(s) = &events[0].1 else {
        panic!("{events:?}")
    };
    assert_eq!(s.slot, "fallback");
    // Repaired: the cooldown probe brings it back.
    std::fs::remove_file(&flag).unwrap();
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(30))
        .await;
    // Failback after the hold-down: new requests go to the primary again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client
        .submit(user("What is 2+2?"), greedy(16))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(60)).await;
    let SupervisorToClient::Started(s) = &events[0].1 else {
        panic!("{events:?}")
    };
    assert_eq!(s.slot, "primary");
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_primary_model_leaves_traffic_on_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, "").unwrap();
    let body = format!(
        "{POLICY}{}{}",
        cpu_slot("primary", &empty, ""),
        cpu_slot("fallback", &model(), "")
    );
    let sup = Sup::start(&body).await;
    let primary = sup
        .wait_state("primary", SlotState::Unavailable, Duration::from_secs(30))
        .await;
    assert!(primary.reason.contains("empty"), "{}", primary.reason);
    sup.wait_state("fallback", SlotState::Ready, Duration::from_secs(60))
        .await;
    let mut client = sup.client().await;
    client
        .submit(user("What is 2+2?"), greedy(16))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(60)).await;
    let SupervisorToClient::Done(done) = &events.last().unwrap().1 else {
        panic!("{events:?}")
    };
    assert!(done.text.contains('4'));
    let report = sup.status().await;
    assert_eq!(report.active_backend, Some(Backend::Cpu));
    assert!(
        report.routing_reason.contains("unavailable"),
        "{}",
        report.routing_reason
    );
    assert_eq!(sup.slot("primary").await.restarts, 0);
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_pins_and_auto_restores_and_restart_replaces_the_worker() {
    // Primary on the NPU (no runtime on this machine: unavailable), fallback CPU.
    let dir = tempfile::tempdir().unwrap();
    let npu = npu_slot_without_runtime(dir.path(), "");
    let sup = Sup::start(&format!(
        "{POLICY}{npu}{}",
        cpu_slot("fallback", &model(), "")
    ))
    .await;
    let npu_slot = sup
        .wait_state("primary", SlotState::Unavailable, Duration::from_secs(30))
        .await;
    assert!(
        npu_slot.reason.contains("not installed"),
        "{}",
        npu_slot.reason
    );
    sup.wait_state("fallback", SlotState::Ready, Duration::from_secs(60))
        .await;

    let pin = |to| AdminToSupervisor::Failover(FailoverCommand { to });
    let SupervisorToAdmin::Ok(ok) = sup.admin(pin(Some(Backend::Npu))).await else {
        panic!()
    };
    assert!(ok.message.contains("pinned to npu"));
    let report = sup.status().await;
    assert_eq!(report.routing, Routing::Pinned(Backend::Npu));
    assert_eq!(report.active_backend, None);
    // Pinned to a backend with no worker: the request waits.
    let mut client = sup.client().await;
    client
        .submit(user("What is 2+2?"), greedy(16))
        .await
        .unwrap();
    assert!(matches!(
        client.next_event().await.unwrap(),
        SupervisorToClient::Queued(_)
    ));
    // Back to automatic: it is served by the CPU.
    sup.admin(pin(None)).await;
    let events = collect(&mut client, Duration::from_secs(60)).await;
    assert!(
        matches!(events.last().unwrap().1, SupervisorToClient::Done(_)),
        "{events:?}"
    );
    let SupervisorToAdmin::Ok(_) = sup.admin(pin(Some(Backend::Cpu))).await else {
        panic!()
    };
    assert_eq!(sup.status().await.active_backend, Some(Backend::Cpu));

    // Restart: a new process, counted as an admin restart.
    let old = sup.slot("fallback").await.pid.unwrap();
    let SupervisorToAdmin::Ok(ok) = sup
        .admin(AdminToSupervisor::Restart(RestartCommand {
            slot: "cpu".into(),
            now: false,
        }))
        .await
    else {
        panic!()
    };
    assert!(ok.message.contains("fallback"), "{}", ok.message);
    let slot = sup
        .wait_slot("fallback", Duration::from_secs(60), |s| {
            s.state == SlotState::Ready && s.pid != Some(old)
        })
        .await;
    assert_eq!(slot.last_restart_reason.as_deref(), Some("admin"));
    let SupervisorToAdmin::Error(e) = sup
        .admin(AdminToSupervisor::Restart(RestartCommand {
            slot: "tertiary".into(),
            now: true,
        }))
        .await
    else {
        panic!()
    };
    assert!(e.message.contains("no slot named"));
    sup.stop().await;
}

#[test]
fn workers_exit_when_the_supervisor_is_killed_and_a_new_one_starts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[supervisor]\nruntime_dir = \"{0}/run\"\nstate_dir = \"{0}/state\"\n{1}",
            dir.path().display(),
            cpu_slot("primary", &model(), "")
        ),
    )
    .unwrap();
    let start = || {
        Command::new(bin("rocksteady-supervisor"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let worker_pid = |deadline: Duration| -> u32 {
        let until = Instant::now() + deadline;
        loop {
            let out = Command::new(bin("supctl"))
                .arg("--config")
                .arg(&config)
                .args(["status", "--json"])
                .output()
                .unwrap();
            if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                if json["slots"][0]["state"] == "Ready" {
                    return u32::try_from(json["slots"][0]["pid"].as_u64().unwrap()).unwrap();
                }
            }
            assert!(Instant::now() < until, "supervisor never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut first = start();
    let worker = worker_pid(Duration::from_secs(60));
    first.kill().unwrap(); // SIGKILL: no chance to stop its workers
    first.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{worker}")).exists() {
        // A zombie is gone for our purposes: it no longer runs.
        let state = std::fs::read_to_string(format!("/proc/{worker}/stat")).unwrap_or_default();
        if state.contains(") Z") {
            break;
        }
        assert!(
            Instant::now() < until,
            "worker {worker} outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut second = start();
    let new_worker = worker_pid(Duration::from_secs(60));
    assert_ne!(new_worker, worker);
    signal(second.id(), Signal::SIGTERM);
    let status = second.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        !dir.path().join("run/client.sock").exists(),
        "socket left behind"
    );
}

/// Figures, not assertions of speed: failover latency (SIGKILL of the
/// serving worker to the next token from the warm fallback) and hang
/// detection latency (SIGSTOP to the failover event), medians of 3 runs each.
/// Printed straight to stderr so they show in every test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_hang_detection_latency_figures() {
    use std::io::Write;
    let policy = POLICY.replace("restart_intensity = 2", "restart_intensity = 20");
    let primary = fake_slot("primary", "token-ms=40", "");
    let sup = Sup::start(&format!(
        "{policy}{primary}{}",
        cpu_slot("fallback", &model(), "")
    ))
    .await;
    sup.wait_state("fallback", SlotState::Ready, Duration::from_secs(60))
        .await;
    let mut failover_ms = Vec::new();
    let mut hang_ms = Vec::new();
    for run in 0..6 {
        // Primary must be the active slot again (restarted, then held down).
        sup.wait_slot("primary", Duration::from_secs(60), |s| {
            s.state == SlotState::Ready
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (mut client, _) = start_long(&sup, 4).await;
        let pid = sup.slot("primary").await.pid.unwrap();
        let hang = run >= 3;
        let at = Instant::now();
        signal(
            pid,
            if hang {
                Signal::SIGSTOP
            } else {
                Signal::SIGKILL
            },
        );
        let mut failed_over = None;
        loop {
            match client.next_event().await.unwrap() {
                SupervisorToClient::Failover(_) => failed_over = Some(at.elapsed()),
                SupervisorToClient::Token(_) if failed_over.is_some() => {
                    let figure = if hang {
                        failed_over.unwrap()
                    } else {
                        at.elapsed()
                    };
                    let list = if hang { &mut hang_ms } else { &mut failover_ms };
                    list.push(figure.as_secs_f64() * 1000.0);
                    break;
                }
                SupervisorToClient::Done(_) | SupervisorToClient::Error(_) => {
                    panic!("ended without failover")
                }
                _ => {}
            }
        }
        client.cancel(1).await.unwrap();
        drop(client);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let line = format!(
        "\nFIGURES supervision: failover latency (SIGKILL -> next token on warm fallback) median {:.0} ms of {:?}; hang detection (SIGSTOP -> failover, stall timeout 6 s) median {:.0} ms of {:?}\n",
        median(&mut failover_ms),
        failover_ms.iter().map(|v| v.round()).collect::<Vec<_>>(),
        median(&mut hang_ms),
        hang_ms.iter().map(|v| v.round()).collect::<Vec<_>>(),
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    assert_eq!((failover_ms.len(), hang_ms.len()), (3, 3));
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_switches_to_the_fallback_profile_and_back() {
    use proto::admin::MemoryCeiling;
    let slot = cpu_slot(
        "primary",
        &model(),
        "[slots.primary.fallback_profile]\nname = \"small\"\ncontext_size = 256\nbatch_size = 64\nthreads = 1\nkv_cache_type = \"q8_0\"\nmax_new_tokens = 64\n",
    );
    let policy = format!("{POLICY}profile_switch_after_s = 0.5\nprofile_hold_s = 1.0\n");
    let sup = Sup::start(&format!("{policy}{slot}")).await;
    let normal = sup
        .wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    assert_eq!(normal.profile, "default");
    let ceiling = |soft_mib| {
        AdminToSupervisor::SetMemoryCeiling(MemoryCeiling {
            slot: "primary".into(),
            soft_mib,
            hard_mib: 0,
        })
    };
    // Simulated pressure: a soft ceiling below what the worker uses.
    let SupervisorToAdmin::Ok(_) = sup.admin(ceiling(1)).await else {
        panic!()
    };
    let small = sup
        .wait_slot("primary", Duration::from_secs(30), |s| {
            s.profile == "small" && s.state == SlotState::Ready
        })
        .await;
    assert_eq!(small.profile_reason, "memory pressure");
    assert!(small.memory_pressure);
    assert_eq!(
        small.restarts, 0,
        "a profile switch is a reload, not a restart"
    );
    assert_eq!(small.pid, normal.pid);
    // Requests keep completing on the fallback profile.
    let mut client = sup.client().await;
    client
        .submit(user("What is 2+2?"), greedy(16))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(60)).await;
    assert!(
        matches!(events.last().unwrap().1, SupervisorToClient::Done(_)),
        "{events:?}"
    );
    // Pressure gone: back after the hold-down.
    sup.admin(ceiling(0)).await;
    let back = sup
        .wait_slot("primary", Duration::from_secs(30), |s| {
            s.profile == "default" && s.state == SlotState::Ready
        })
        .await;
    assert!(back.profile_reason.is_empty());
    sup.stop().await;
}

/// The reproduction of issue 10: a worker older than `load_timeout_s` was
/// put back in Loading for a profile switch, and the next tick compared its
/// *spawn* time with the load timeout and stopped it ("load-timeout").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_switch_on_a_worker_older_than_the_load_timeout_keeps_it() {
    use proto::admin::MemoryCeiling;
    let slot = cpu_slot(
        "primary",
        &model(),
        "[slots.primary.fallback_profile]\nname = \"small\"\ncontext_size = 256\nbatch_size = 64\nthreads = 1\nkv_cache_type = \"q8_0\"\nmax_new_tokens = 64\n",
    );
    let policy = format!(
        "{POLICY}load_timeout_s = 6.0\nprofile_switch_after_s = 0.5\nprofile_hold_s = 60.0\n"
    );
    let sup = Sup::start(&format!("{policy}{slot}")).await;
    let normal = sup
        .wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    // Older than the load timeout before the switch.
    tokio::time::sleep(Duration::from_secs(7)).await;
    sup.admin(AdminToSupervisor::SetMemoryCeiling(MemoryCeiling {
        slot: "primary".into(),
        soft_mib: 1,
        hard_mib: 0,
    }))
    .await;
    sup.wait_slot("primary", Duration::from_secs(30), |s| {
        s.profile == "small" && s.state == SlotState::Ready
    })
    .await;
    // Several ticks and memory samples later it is still the same process.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sup.slot("primary").await;
    assert_eq!(
        (after.state, after.pid, after.restarts),
        (SlotState::Ready, normal.pid, 0),
        "the profile switch stopped or restarted the worker: {after:?}"
    );
    sup.stop().await;
}

/// SIGTERM (every `systemctl stop`) drains: the reply being generated
/// finishes, a new request is told the service is restarting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_running_reply_and_refuses_new_ones() {
    // A reply that takes seconds: the drain must wait for it.
    let slot = fake_slot("primary", "token-ms=20", "");
    let sup = Sup::start(&format!("{POLICY}{slot}")).await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    let (mut client, before) = start_long(&sup, 3).await;
    let mut late = sup.client().await;
    let stopping = tokio::spawn(sup.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    late.submit(user("What is 2+2?"), greedy(4)).await.unwrap();
    match late.next_event().await.unwrap() {
        SupervisorToClient::Error(e) => {
            assert_eq!(e.kind, proto::client::ErrorKind::ShuttingDown);
            assert!(e.message.contains("restarting"), "{}", e.message);
        }
        other => panic!("a request during the drain was not refused: {other:?}"),
    }
    let events = collect(&mut client, Duration::from_secs(60)).await;
    let SupervisorToClient::Done(done) = &events.last().unwrap().1 else {
        panic!("the running reply was cut by the shutdown: {events:?}")
    };
    assert!(done.text.starts_with(&before));
    stopping.await.unwrap();
}

/// A SIGKILL the supervisor did not send is an OOM kill only when the
/// kernel's counter rose (here a fake `/proc/vmstat`); otherwise "killed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_is_an_oom_kill_only_when_the_kernel_counted_one() {
    let proc_root = tempfile::tempdir().unwrap();
    let vmstat = proc_root.path().join("vmstat");
    std::fs::write(&vmstat, "nr_free_pages 1\noom_kill 5\n").unwrap();
    let sup = Sup::start(&format!(
        "{POLICY}[telemetry]\nproc_root = \"{}\"\n{}",
        proc_root.path().display(),
        cpu_slot("primary", &model(), "")
    ))
    .await;
    let first = sup
        .wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    std::fs::write(&vmstat, "nr_free_pages 1\noom_kill 6\n").unwrap();
    signal(first.pid.unwrap(), Signal::SIGKILL);
    let second = sup
        .wait_slot("primary", Duration::from_secs(60), |s| {
            s.restarts == 1 && s.state == SlotState::Ready
        })
        .await;
    assert_eq!(second.last_restart_reason.as_deref(), Some("oom"));
    // The counter stays put: an operator's kill -9.
    signal(second.pid.unwrap(), Signal::SIGKILL);
    let third = sup
        .wait_slot("primary", Duration::from_secs(60), |s| s.restarts == 2)
        .await;
    assert_eq!(third.last_restart_reason.as_deref(), Some("killed"));
    sup.stop().await;
}

/// Spill-over: with the primary busy, the ready fallback takes the next
/// request at once instead of idling while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_conversation_spills_over_to_the_ready_fallback() {
    let sup = pair(40, "").await;
    let (first, _) = start_long(&sup, 2).await;
    let mut second = sup.client().await;
    second
        .submit(user("What is 2+2?"), greedy(8))
        .await
        .unwrap();
    let events = collect(&mut second, Duration::from_secs(60)).await;
    let started = events
        .iter()
        .find_map(|(_, e)| match e {
            SupervisorToClient::Started(s) => Some(s.slot.clone()),
            _ => None,
        })
        .expect("never started");
    assert_eq!(started, "fallback", "{events:?}");
    assert!(
        !events
            .iter()
            .any(|(_, e)| matches!(e, SupervisorToClient::Queued(_))),
        "it waited while the fallback was idle: {events:?}"
    );
    assert!(matches!(
        events.last().unwrap().1,
        SupervisorToClient::Done(_)
    ));
    drop(first);
    sup.stop().await;
}
