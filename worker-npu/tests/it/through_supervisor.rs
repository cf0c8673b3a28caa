//! The NPU worker under the real supervisor (run in-process) on the fake
//! RKLLM runtime: streaming, load failures that leave traffic on the CPU
//! fallback, cancel reaching `rkllm_abort`, and the supervision rules (hang,
//! crash, memory) failing a reply over to the CPU slot (test-kit's fake
//! worker) mid-stream and restarting the NPU worker without ever running two
//! of them at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::ChatClient;
use proto::admin::{AdminToSupervisor, RestartCommand, SlotState, SupervisorToAdmin};
use proto::chat::Backend;
use proto::client::{ErrorKind, SupervisorToClient};
use test_kit::harness::{bin, collect, greedy, user, Sup};

use crate::support::{FAKE_1_2, FAKE_1_3, FAKE_UNKNOWN, MODEL_NAME, SCRIPT};

/// Fast supervision timings: a stalled stream is hung after 2 s, a stopped
/// worker gets 1 s before SIGKILL, restarts follow after 0.2 s.
const POLICY: &str = "[policy]\nheartbeat_interval_s = 0.5\nheartbeat_timeout_s = 3.0\nstall_timeout_s = 2.0\nfirst_token_timeout_s = 30.0\nload_timeout_s = 30.0\nstop_grace_s = 1.0\nbackoff_initial_s = 0.2\nbackoff_max_s = 1.0\nrestart_intensity = 3\nrestart_period_s = 60.0\nfailed_cooldown_s = 5.0\nfailback_hold_s = 1.0\nmemory_interval_s = 0.2\n";

/// The stall timeout in `POLICY`.
const STALL: Duration = Duration::from_secs(2);

/// Bytes per piece the fake runtime streams (its default chunk).
const CHUNK: usize = 3;

// ----- the fixture -------------------------------------------------------------

/// The fallback slot: a CPU slot served by the fake worker (a steady stream
/// of words, 5 ms apart). These tests are about the NPU worker under
/// supervision and failing over; what answers on the CPU does not matter,
/// so no model runs there (llama.cpp on two busy cores would only add
/// pauses near the stall timeout).
fn cpu_fallback() -> String {
    format!(
        "[slots.fallback]\nbackend = \"cpu\"\nmodel = \"fallback.gguf\"\nworker = \"{}\"\nworker_env = {{ ROCKSTEADY_FAKE_WORKER = \"token-ms=5\" }}\n[slots.fallback.profile]\ncontext_size = 1024\nbatch_size = 256\nthreads = 1\nmax_new_tokens = 256\n",
        bin("fake-worker").display()
    )
}

/// The NPU side of a test: a plausible `.rkllm` file, the fake runtime's
/// record file and its NPU lock file.
struct Npu {
    /// Holds the files until the test ends.
    _dir: tempfile::TempDir,
    model: PathBuf,
    record: PathBuf,
    lock: PathBuf,
}

impl Npu {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join(MODEL_NAME);
        // Sparse: the artifact check sees a plausible size, the disk does not.
        std::fs::File::create(&model)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        let record = dir.path().join("record.txt");
        let lock = dir.path().join("npu.lock");
        Self {
            _dir: dir,
            model,
            record,
            lock,
        }
    }

    /// The primary slot: `worker-npu` on `runtime` with the fake's settings in
    /// `env` (passed through the slot's `worker_env`) and `extra` slot keys.
    fn slot(&self, runtime: &str, abi: &str, env: &[(&str, &str)], extra: &str) -> String {
        let mut vars = BTreeMap::from([
            ("FAKE_RKLLM_RECORD", self.record.display().to_string()),
            ("FAKE_RKLLM_LOCK", self.lock.display().to_string()),
        ]);
        vars.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let table: Vec<String> = vars.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
        format!(
            "[slots.primary]\nbackend = \"npu\"\nmodel = \"{}\"\nworker = \"{}\"\nworker_env = {{ {} }}\n{extra}\n[slots.primary.npu]\nruntime_path = \"{runtime}\"\nabi = \"{abi}\"\n",
            self.model.display(),
            env!("CARGO_BIN_EXE_worker-npu"),
            table.join(", ")
        )
    }

    /// Every value recorded for `key`, in order.
    fn values(&self, key: &str) -> Vec<String> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
            .collect()
    }

    /// The record split into the lives of the processes that called
    /// `rkllm_init` (the fake records the pid first), in order.
    fn lives(&self) -> Vec<Vec<(String, String)>> {
        let mut lives: Vec<Vec<(String, String)>> = Vec::new();
        let text = std::fs::read_to_string(&self.record).unwrap_or_default();
        for (k, v) in text.lines().filter_map(|l| l.split_once('=')) {
            if k == "pid" {
                lives.push(Vec::new());
            }
            if let Some(life) = lives.last_mut() {
                life.push((k.to_owned(), v.to_owned()));
            }
        }
        lives
    }

    /// The pids of the processes that called `rkllm_init`, in order.
    fn init_pids(&self) -> Vec<u32> {
        self.values("pid")
            .iter()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    /// Waits until `key` has been recorded `count` times (the runtime acts on
    /// its own threads).
    async fn wait_values(&self, key: &str, count: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let values = self.values(key);
            if values.len() >= count {
                return values;
            }
            assert!(
                Instant::now() < deadline,
                "{key} recorded {} times, expected {count}; record:\n{}",
                values.len(),
                std::fs::read_to_string(&self.record).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A supervisor on `body` with the fast timings of [`POLICY`].
async fn start(body: &str) -> Sup {
    Sup::start(&format!("{POLICY}{body}")).await
}

/// [`start`] in a directory of the caller's.
async fn start_in(dir: tempfile::TempDir, body: &str) -> Sup {
    Sup::start_in(dir, "", &format!("{POLICY}{body}")).await
}

/// Reads events until `n` tokens arrived; returns their text.
async fn tokens(client: &mut ChatClient, n: usize) -> String {
    let mut text = String::new();
    let mut seen = 0;
    while seen < n {
        let event = tokio::time::timeout(Duration::from_secs(10), client.next_event())
            .await
            .expect("no token in time")
            .unwrap();
        match event {
            SupervisorToClient::Started(s) => assert_eq!(s.backend, Backend::Npu, "{s:?}"),
            SupervisorToClient::Token(t) => {
                text.push_str(&t.text);
                seen += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    text
}

/// The events of a request in short, with times relative to the first, for
/// failure messages.
fn outline(events: &[(Instant, SupervisorToClient)]) -> String {
    let Some((t0, _)) = events.first() else {
        return String::new();
    };
    events
        .iter()
        .map(|(at, e)| {
            let ms = at.duration_since(*t0).as_millis();
            let what = match e {
                SupervisorToClient::Queued(q) => format!("queued {}", q.position),
                SupervisorToClient::Started(s) => format!("started on {}", s.slot),
                SupervisorToClient::Token(t) => format!("{:?}", t.text),
                SupervisorToClient::Failover(f) => {
                    format!("failover {} -> {} ({})", f.from, f.to, f.reason)
                }
                SupervisorToClient::Done(d) => format!("done on {}", d.backend),
                SupervisorToClient::Error(e) => format!("error {:?}: {}", e.kind, e.message),
                SupervisorToClient::Models(_) => "models".to_owned(),
            };
            format!("{ms:>6} ms {what}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A request that failed over mid-stream, split at its failover event.
struct FailedOver {
    /// The first Started event's slot and backend.
    started: (String, Backend),
    /// Text streamed before the failover, and when its last token came.
    before: String,
    last_before: Option<Instant>,
    /// The failover event and when it came.
    failover: proto::client::Failover,
    failover_at: Instant,
    /// Slot of the Started event after the failover.
    resumed_on: String,
    /// Text streamed after the failover.
    after: String,
    /// The Done event.
    done: proto::client::Done,
}

fn split_at_failover(events: &[(Instant, SupervisorToClient)]) -> FailedOver {
    let mut started = Vec::new();
    let mut before = String::new();
    let mut last_before = None;
    let mut after = String::new();
    let mut failover = None;
    let mut done = None;
    for (at, e) in events {
        match e {
            SupervisorToClient::Started(s) => started.push((s.slot.clone(), s.backend)),
            SupervisorToClient::Token(t) if failover.is_none() => {
                before.push_str(&t.text);
                last_before = Some(*at);
            }
            SupervisorToClient::Token(t) => after.push_str(&t.text),
            SupervisorToClient::Failover(f) => failover = Some((f.clone(), *at)),
            SupervisorToClient::Done(d) => done = Some(d.clone()),
            SupervisorToClient::Queued(_) | SupervisorToClient::Models(_) => {}
            SupervisorToClient::Error(e) => {
                panic!("the request failed: {e:?}\n{}", outline(events))
            }
        }
    }
    let (failover, failover_at) =
        failover.unwrap_or_else(|| panic!("no failover:\n{}", outline(events)));
    assert_eq!(
        started.len(),
        2,
        "one Started per worker:\n{}",
        outline(events)
    );
    FailedOver {
        started: started[0].clone(),
        before,
        last_before,
        failover,
        failover_at,
        resumed_on: started[1].0.clone(),
        after,
        done: done.unwrap_or_else(|| panic!("no Done:\n{}", outline(events))),
    }
}

/// Checks a reply that the NPU began (up to `npu_pieces` pieces of the
/// script) and the CPU finished after a failover for `reason`.
fn assert_finished_on_the_cpu(
    events: &[(Instant, SupervisorToClient)],
    reason: &str,
    npu_pieces: usize,
) -> FailedOver {
    let r = split_at_failover(events);
    assert_eq!(r.started, ("primary".to_owned(), Backend::Npu));
    // A crashing process may take its last pieces with it; never more.
    let npu_part = &SCRIPT[..npu_pieces * CHUNK];
    assert!(
        !r.before.is_empty() && npu_part.starts_with(&r.before),
        "the NPU's part: {:?}\n{}",
        r.before,
        outline(events)
    );
    assert_eq!(
        (r.failover.from, r.failover.to, r.failover.reason.as_str()),
        (Backend::Npu, Backend::Cpu, reason)
    );
    assert_eq!(r.resumed_on, "fallback");
    assert!(
        !r.after.trim().is_empty(),
        "nothing generated after the failover"
    );
    assert_eq!(r.done.backend, Backend::Cpu);
    assert_eq!(
        r.done.text,
        format!("{}{}", r.before, r.after),
        "Done carries everything streamed, once"
    );
    r
}

/// Starts a supervisor with the NPU slot `npu_slot` and the CPU fallback,
/// watching the process table for NPU workers from before the first one
/// starts, and waits until both slots are ready.
async fn with_fallback(npu_slot: &str) -> (Sup, ProcWatch) {
    let dir = tempfile::tempdir().unwrap();
    let watch = ProcWatch::start(&Sup::worker_socket_in(dir.path(), "primary"));
    let sup = start_in(dir, &format!("{npu_slot}{}", cpu_fallback())).await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(20))
        .await;
    sup.wait_state("fallback", SlotState::Ready, Duration::from_secs(60))
        .await;
    (sup, watch)
}

// ----- watching the process table ---------------------------------------------

/// One process seen in the process table.
#[derive(Debug, Clone, Copy)]
struct Sighting {
    pid: u32,
    first: Instant,
    last: Instant,
}

/// Watches the process table for live (non-zombie) processes whose command
/// line names a socket, i.e. the workers of one slot.
struct ProcWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Vec<Sighting>, usize)>>,
}

impl ProcWatch {
    fn start(socket: &Path) -> Self {
        let socket = socket.as_os_str().as_encoded_bytes().to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let mut seen: Vec<Sighting> = Vec::new();
                let mut most = 0;
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    let live = workers_on(&socket);
                    most = most.max(live.len());
                    for pid in live {
                        match seen.iter_mut().find(|s| s.pid == pid) {
                            Some(s) => s.last = now,
                            None => seen.push(Sighting {
                                pid,
                                first: now,
                                last: now,
                            }),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                (seen, most)
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; returns every process seen (in order of appearance)
    /// and the most seen alive at once.
    fn finish(mut self) -> (Vec<Sighting>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for ProcWatch {
    /// A test that failed early does not leave the watcher running.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Live `worker-npu` processes with `socket` among their arguments.
fn workers_on(socket: &[u8]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // The name first: cheap, and it spares other processes' memory.
            let comm = std::fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
            if !comm.starts_with(b"worker-npu") {
                return false;
            }
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            if !cmdline.split(|b| *b == 0).any(|arg| arg == socket) {
                return false;
            }
            // A zombie has ended: its memory and files (the NPU) are released.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            matches!(state, Some(s) if s != 'Z' && s != 'X')
        })
        .collect()
}

fn process_gone(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty() || stat.contains(") Z")
}

/// The NPU slot never had two live workers: the process table never showed
/// two, each worker appeared only after the one before it was gone, and the
/// fake runtime's NPU lock was never found held by another process.
fn assert_one_npu_worker_at_a_time(npu: &Npu, watch: ProcWatch, workers: usize) {
    // The current worker is alive and stays so: give the 10 ms watch a few
    // rounds to see it even on a machine so loaded that its thread lags.
    std::thread::sleep(Duration::from_millis(500));
    let (seen, most) = watch.finish();
    assert_eq!(most, 1, "two NPU workers alive at once: {seen:?}");
    assert!(
        seen.len() >= workers,
        "expected {workers} workers: {seen:?}"
    );
    for pair in seen.windows(2) {
        assert!(
            pair[0].last < pair[1].first,
            "worker {} appeared while {} was still alive: {seen:?}",
            pair[1].pid,
            pair[0].pid
        );
    }
    let pids = npu.init_pids();
    assert_eq!(pids.len(), workers, "one rkllm_init per worker: {pids:?}");
    let distinct: std::collections::BTreeSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), pids.len(), "{pids:?}");
    for pid in &pids[..pids.len() - 1] {
        assert!(process_gone(*pid), "old worker {pid} still alive");
    }
    assert!(
        npu.values("npu_busy").is_empty() && npu.values("npu_lock_error").is_empty(),
        "a worker found the NPU in use by another: {:?}",
        npu.values("npu_busy")
    );
}

// ----- 1. streaming ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_the_npu_streams_the_scripted_text_exactly() {
    let npu = Npu::new();
    let sup = start(&npu.slot(FAKE_1_3, "1.3", &[], "")).await;
    let ready = sup
        .wait_state("primary", SlotState::Ready, Duration::from_secs(20))
        .await;
    assert_eq!(ready.backend, Backend::Npu);
    let mut client = sup.client().await;
    client
        .submit(user("Please say hello."), greedy(200))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(20)).await;
    let SupervisorToClient::Started(started) = &events[0].1 else {
        panic!("{events:?}")
    };
    assert_eq!(
        (started.slot.as_str(), started.backend),
        ("primary", Backend::Npu)
    );
    let pieces: Vec<&str> = events
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorToClient::Token(t) => Some(t.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(pieces.concat(), SCRIPT);
    let SupervisorToClient::Done(done) = &events.last().unwrap().1 else {
        panic!("{events:?}")
    };
    assert_eq!(done.text, SCRIPT);
    assert_eq!(done.backend, Backend::Npu);
    assert_eq!(done.stats.generated_tokens as usize, pieces.len());
    // The runtime did split characters (WAITING callbacks); the client still
    // got only whole characters, each in one token.
    let waiting: usize = npu
        .values("run_waiting_pieces")
        .last()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        waiting >= 2,
        "the script should split characters: {waiting}"
    );
    for c in ['ï', 'é', '☕', '🎉'] {
        assert!(
            pieces.iter().any(|p| p.contains(c)),
            "{c} not whole in one token: {pieces:?}"
        );
    }
    // The question reached the runtime, once, in the worker that was started,
    // after the run that saved the system prompt's prompt cache (an empty
    // user turn) in the state directory, which the question then reused.
    let prompts = npu.values("run_prompt");
    assert_eq!(prompts.len(), 2, "{prompts:?}");
    assert_eq!(prompts[0], "");
    assert!(prompts[1].contains("Please say hello."), "{prompts:?}");
    let saved = npu.values("prompt_cache_save");
    assert_eq!(saved.len(), 1);
    assert!(saved[0].contains("/prompt-cache/"), "{saved:?}");
    let reused: usize = npu
        .values("run_prompt_cache_chars")
        .last()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reused > 0);
    assert_eq!(npu.values("abi"), ["1.3"]);
    let slot = sup
        .wait_state("primary", SlotState::Ready, Duration::from_secs(5))
        .await;
    assert_eq!((slot.requests_served, slot.restarts), (1, 0));
    assert_eq!(npu.init_pids(), [slot.pid.unwrap()]);
    // Status names the prompt-cache file the worker saved and uses.
    let file = slot.cache.prompt_cache.expect("the prompt cache in status");
    assert_eq!(npu.values("prompt_cache_load"), [file.path]);
    assert!(file.built);
    sup.stop().await;
}

// ----- 2. load failures --------------------------------------------------------

/// A primary whose load fails with `words` in its reason is unavailable,
/// is never restarted, and traffic goes to the CPU fallback.
async fn a_load_failure_leaves_traffic_on_the_fallback(
    runtime: &str,
    env: &[(&str, &str)],
    words: &[&str],
    init_called: bool,
) {
    let npu = Npu::new();
    let sup = start(&format!(
        "{}{}",
        npu.slot(runtime, "auto", env, ""),
        cpu_fallback()
    ))
    .await;
    let primary = sup
        .wait_state("primary", SlotState::Unavailable, Duration::from_secs(20))
        .await;
    for w in words {
        assert!(
            primary.reason.contains(w),
            "{w:?} not in {:?}",
            primary.reason
        );
    }
    assert_eq!((primary.restarts, primary.pid), (0, None));
    sup.wait_state("fallback", SlotState::Ready, Duration::from_secs(60))
        .await;
    let mut client = sup.client().await;
    client
        .submit(user("What is 2+2?"), greedy(8))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(60)).await;
    let SupervisorToClient::Started(started) = &events[0].1 else {
        panic!("{events:?}")
    };
    assert_eq!(
        (started.slot.as_str(), started.backend),
        ("fallback", Backend::Cpu)
    );
    let SupervisorToClient::Done(done) = &events.last().unwrap().1 else {
        panic!("{events:?}")
    };
    assert!(!done.text.trim().is_empty());
    assert_eq!(done.backend, Backend::Cpu);
    // Still unavailable, never restarted: one worker ran, once.
    let primary = sup.slot("primary").await;
    assert_eq!(primary.state, SlotState::Unavailable);
    assert_eq!((primary.restarts, primary.pid), (0, None));
    assert_eq!(
        npu.init_pids().len(),
        usize::from(init_called),
        "rkllm_init calls"
    );
    let report = sup.status().await;
    assert_eq!(report.active_backend, Some(Backend::Cpu));
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_model_logged_although_init_returned_zero() {
    a_load_failure_leaves_traffic_on_the_fallback(
        FAKE_1_2,
        &[("FAKE_RKLLM_MODE", "invalid_model")],
        &["invalid rkllm model", "re-download"],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_for_another_platform() {
    a_load_failure_leaves_traffic_on_the_fallback(
        FAKE_1_3,
        &[("FAKE_RKLLM_MODE", "platform_mismatch")],
        &["target_platform does not match", "re-convert"],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npu_memory_exhausted() {
    a_load_failure_leaves_traffic_on_the_fallback(
        FAKE_1_3,
        &[("FAKE_RKLLM_MODE", "npu_oom")],
        &["failed to malloc npu memory"],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_the_runtime_does_not_support() {
    a_load_failure_leaves_traffic_on_the_fallback(
        FAKE_1_2,
        &[("FAKE_RKLLM_MODE", "unknown_platform")],
        &["Platform error", "RK3588"],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_above_the_models_limit() {
    a_load_failure_leaves_traffic_on_the_fallback(
        FAKE_1_3,
        &[("FAKE_RKLLM_CONTEXT_LIMIT", "1024")],
        &["context_size 2048", "at most 1024"],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_runtime_version() {
    a_load_failure_leaves_traffic_on_the_fallback(FAKE_UNKNOWN, &[], &["1.1.4", "1.3.0"], false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_not_installed() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("lib/librkllmrt.so");
    a_load_failure_leaves_traffic_on_the_fallback(
        &missing.display().to_string(),
        &[],
        &["not installed", &missing.display().to_string()],
        false,
    )
    .await;
}

// ----- 3. cancel ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_disconnect_reach_rkllm_abort_and_the_slot_serves_on() {
    let npu = Npu::new();
    let sup = start(&npu.slot(FAKE_1_2, "1.2", &[("FAKE_RKLLM_DELAY_MS", "100")], "")).await;
    let pid = sup
        .wait_state("primary", SlotState::Ready, Duration::from_secs(20))
        .await
        .pid;
    let pieces = SCRIPT.len().div_ceil(CHUNK);
    // The 1.2 runtime has no per-run cap: the run that saved the prompt
    // cache at load was stopped with an abort of its own.
    let primed = npu.values("abort").len();
    assert_eq!(primed, 1);
    let primed_runs = npu.values("run_aborted_after").len();

    // Cancel.
    let mut client = sup.client().await;
    let id = client
        .submit(user("Tell me a story."), greedy(200))
        .await
        .unwrap();
    tokens(&mut client, 2).await;
    client.cancel(id).await.unwrap();
    let events = collect(&mut client, Duration::from_secs(10)).await;
    let SupervisorToClient::Error(e) = &events.last().unwrap().1 else {
        panic!("{events:?}")
    };
    assert_eq!(e.kind, ErrorKind::Cancelled);
    npu.wait_values("abort", primed + 1, Duration::from_secs(5))
        .await;
    let after = npu
        .wait_values("run_aborted_after", primed_runs + 1, Duration::from_secs(5))
        .await;
    let after: usize = after[primed_runs].parse().unwrap();
    assert!(after < pieces, "the run went on to the end: {after}");
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(5))
        .await;

    // A client that goes away.
    let mut client = sup.client().await;
    client
        .submit(user("Tell me another story."), greedy(200))
        .await
        .unwrap();
    tokens(&mut client, 2).await;
    drop(client);
    npu.wait_values("abort", primed + 2, Duration::from_secs(5))
        .await;
    npu.wait_values("run_aborted_after", primed_runs + 2, Duration::from_secs(5))
        .await;
    let slot = sup
        .wait_state("primary", SlotState::Ready, Duration::from_secs(5))
        .await;
    assert_eq!(
        (slot.pid, slot.restarts),
        (pid, 0),
        "no restart for a cancel"
    );

    // The same worker serves the next request in full.
    let mut client = sup.client().await;
    client.submit(user("Hello?"), greedy(200)).await.unwrap();
    let events = collect(&mut client, Duration::from_secs(20)).await;
    let SupervisorToClient::Done(done) = &events.last().unwrap().1 else {
        panic!("{events:?}")
    };
    assert_eq!(done.text, SCRIPT);
    assert_eq!(npu.values("abort").len(), primed + 2);
    assert_eq!(npu.init_pids().len(), 1);
    assert_eq!(sup.slot("primary").await.pid, pid);
    sup.stop().await;
}

// ----- 4-7. supervision --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_npu_run_fails_over_to_the_cpu_and_the_worker_is_replaced() {
    let npu = Npu::new();
    let (sup, watch) = with_fallback(&npu.slot(
        FAKE_1_3,
        "1.3",
        &[
            ("FAKE_RKLLM_MODE", "hang"),
            ("FAKE_RKLLM_AFTER", "4"),
            ("FAKE_RKLLM_DELAY_MS", "50"),
        ],
        "",
    ))
    .await;
    let old = sup.slot("primary").await.pid.unwrap();
    let mut client = sup.client().await;
    client
        .submit(user("Write a short story about the sea."), greedy(16))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(60)).await;
    let r = assert_finished_on_the_cpu(&events, "hang", 4);
    // The hung process is alive: everything it produced reached the client.
    assert_eq!(r.before, SCRIPT[..4 * CHUNK]);
    assert_eq!(npu.values("run_hung_after"), ["4"]);
    // Detected by the stall timeout: not before it, and not long after.
    let detected = r.failover_at.duration_since(r.last_before.unwrap());
    assert!(
        detected + Duration::from_millis(150) >= STALL && detected < STALL * 2,
        "hang detected {detected:?} after the last token (stall timeout {STALL:?})"
    );
    let primary = sup
        .wait_slot("primary", Duration::from_secs(20), |s| {
            s.state == SlotState::Ready && s.restarts == 1
        })
        .await;
    assert_eq!(primary.last_restart_reason.as_deref(), Some("hang"));
    assert_ne!(primary.pid, Some(old));
    assert!(process_gone(old), "the hung worker {old} still exists");
    assert_one_npu_worker_at_a_time(&npu, watch, 2);
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_npu_crash_mid_stream_fails_over_and_the_worker_restarts_alone() {
    let npu = Npu::new();
    let (sup, watch) = with_fallback(&npu.slot(
        FAKE_1_2,
        "auto",
        &[
            ("FAKE_RKLLM_MODE", "crash"),
            ("FAKE_RKLLM_AFTER", "4"),
            ("FAKE_RKLLM_DELAY_MS", "50"),
        ],
        "",
    ))
    .await;
    let old = sup.slot("primary").await.pid.unwrap();
    let mut client = sup.client().await;
    client
        .submit(user("Write a short story about the sea."), greedy(16))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(60)).await;
    let r = assert_finished_on_the_cpu(&events, "crash", 4);
    // A crash is seen at once (the process ends), not after the stall timeout.
    let detected = r.failover_at.duration_since(r.last_before.unwrap());
    assert!(detected < STALL, "crash noticed only after {detected:?}");
    let primary = sup
        .wait_slot("primary", Duration::from_secs(20), |s| {
            s.state == SlotState::Ready && s.restarts == 1
        })
        .await;
    assert_eq!(primary.last_restart_reason.as_deref(), Some("crash"));
    assert_ne!(primary.pid, Some(old));
    assert_one_npu_worker_at_a_time(&npu, watch, 2);
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_npu_worker_growing_past_its_hard_ceiling_is_stopped_for_memory() {
    let npu = Npu::new();
    let (sup, watch) = with_fallback(&npu.slot(
        FAKE_1_3,
        "1.3",
        &[
            ("FAKE_RKLLM_MODE", "leak"),
            // Past the ceiling after 4 pieces, long before the run's 40.
            ("FAKE_RKLLM_LEAK_MB", "64"),
            ("FAKE_RKLLM_LEAK_CAP_MB", "1024"),
            ("FAKE_RKLLM_DELAY_MS", "60"),
        ],
        "memory_hard_mib = 256",
    ))
    .await;
    // The first memory sample comes with the supervisor's next telemetry
    // tick, not with Ready.
    let old = sup
        .wait_slot("primary", Duration::from_secs(10), |s| {
            s.rss_anon_kb.is_some()
        })
        .await;
    assert!(
        old.rss_anon_kb.is_some_and(|kb| kb < 256 * 1024),
        "the idle worker is already above the ceiling: {old:?}"
    );
    let mut client = sup.client().await;
    client
        .submit(user("Write a short story about the sea."), greedy(40))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(60)).await;
    let r = split_at_failover(&events);
    assert_eq!(r.started, ("primary".to_owned(), Backend::Npu));
    assert_eq!(
        (r.failover.from, r.failover.to, r.failover.reason.as_str()),
        (Backend::Npu, Backend::Cpu, "memory")
    );
    assert!(!r.before.is_empty() && SCRIPT.starts_with(&r.before));
    assert_eq!(r.done.text, format!("{}{}", r.before, r.after));
    let primary = sup
        .wait_slot("primary", Duration::from_secs(20), |s| {
            s.state == SlotState::Ready && s.restarts == 1
        })
        .await;
    assert_eq!(primary.last_restart_reason.as_deref(), Some("memory"));
    assert_ne!(primary.pid, old.pid);
    assert!(process_gone(old.pid.unwrap()));
    assert_one_npu_worker_at_a_time(&npu, watch, 2);
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_never_run_two_npu_workers_at_once_and_stop_them_in_order() {
    // Admin restarts are the quickest: the new worker is spawned the moment
    // the old one's exit is seen, with no backoff in between.
    let npu = Npu::new();
    let dir = tempfile::tempdir().unwrap();
    let watch = ProcWatch::start(&Sup::worker_socket_in(dir.path(), "primary"));
    let sup = start_in(
        dir,
        &npu.slot(FAKE_1_3, "1.3", &[("FAKE_RKLLM_DELAY_MS", "100")], ""),
    )
    .await;
    let first = sup
        .wait_state("primary", SlotState::Ready, Duration::from_secs(20))
        .await
        .pid;
    let restart = AdminToSupervisor::Restart(RestartCommand {
        slot: "npu".into(),
        now: true,
    });

    // While idle.
    let SupervisorToAdmin::Ok(_) = sup.admin(restart.clone()).await else {
        panic!()
    };
    let second = sup
        .wait_slot("primary", Duration::from_secs(20), |s| {
            s.state == SlotState::Ready && s.pid != first
        })
        .await
        .pid;

    // While it streams: the reply goes on in the next worker, after the
    // text already sent.
    let mut client = sup.client().await;
    client
        .submit(user("Tell me a story."), greedy(200))
        .await
        .unwrap();
    let before = tokens(&mut client, 3).await;
    let SupervisorToAdmin::Ok(_) = sup.admin(restart.clone()).await else {
        panic!()
    };
    let events = collect(&mut client, Duration::from_secs(30)).await;
    let SupervisorToClient::Done(done) = &events.last().unwrap().1 else {
        panic!("{events:?}")
    };
    assert_eq!(done.text, SCRIPT, "the reply continued where it stopped");
    assert!(done.text.starts_with(&before));
    let third = sup.slot("primary").await.pid;
    assert!(third.is_some() && third != second && third != first);
    let slot = sup.slot("primary").await;
    assert_eq!(slot.last_restart_reason.as_deref(), Some("admin"));
    assert_one_npu_worker_at_a_time(&npu, watch, 3);

    // Each stop was orderly (SIGTERM is a shutdown request to the worker):
    // the running generation aborted, the model destroyed, before the
    // process ended. The first worker saved the system prompt's prompt
    // cache (one run); the ones after it loaded that file instead.
    let lives = npu.lives();
    let keys = |life: &[(String, String)]| -> Vec<String> {
        life.iter()
            .map(|(k, _)| k.clone())
            .filter(|k| {
                [
                    "init",
                    "run_prompt",
                    "prompt_cache_save",
                    "prompt_cache_load",
                    "abort",
                    "destroy",
                ]
                .contains(&k.as_str())
            })
            .collect()
    };
    assert_eq!(
        keys(&lives[0]),
        [
            "init",
            "run_prompt",
            "prompt_cache_save",
            "prompt_cache_load",
            "destroy"
        ],
        "the idle worker"
    );
    assert_eq!(
        keys(&lives[1]),
        [
            "init",
            "prompt_cache_load",
            "run_prompt",
            "abort",
            "destroy"
        ],
        "the streaming worker"
    );
    assert!(lives[1].iter().any(|(k, _)| k == "run_aborted_after"));
    sup.stop().await;
    // And so was the supervisor's own shutdown.
    let lives = npu.lives();
    assert_eq!(
        keys(&lives[2]),
        ["init", "prompt_cache_load", "run_prompt", "destroy"]
    );
}
