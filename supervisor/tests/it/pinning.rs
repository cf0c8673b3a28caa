//! The CPU worker's threads run on the cores its slot was given, and status
//! shows that set next to the NPU runtime's.

use std::time::Duration;

use proto::admin::SlotState;
use proto::client::SupervisorToClient;

use crate::support::{collect, cpu_slot, greedy, model, npu_slot_without_runtime, user, Sup};

/// `Cpus_allowed_list` of every thread of process `pid`.
fn thread_cpu_lists(pid: u32) -> Vec<(String, String)> {
    let mut lists = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_owned();
        lists.push((task.file_name().to_string_lossy().into_owned(), list));
    }
    lists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_worker_runs_on_its_configured_cores_apart_from_the_npus() {
    // The board's shape scaled to this 2-core machine: the NPU runtime on
    // CPU 0 (no runtime here: the slot is unavailable, its set still
    // counts), the CPU worker pinned to CPU 1.
    let dir = tempfile::tempdir().unwrap();
    let npu = npu_slot_without_runtime(dir.path(), "enabled_cpus_mask = 0x1");
    let sup = Sup::start(&format!(
        "{npu}{}",
        cpu_slot("fallback", &model(), "[slots.fallback.cpu]\ncpus = \"1\"")
    ))
    .await;
    let cpu = sup
        .wait_state("fallback", SlotState::Ready, Duration::from_secs(60))
        .await;
    let pid = cpu.pid.unwrap();

    // One answer, so every thread the engine makes for a generation exists.
    let mut client = sup.client().await;
    client
        .submit(user("What is 2+2?"), greedy(8))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(60)).await;
    assert!(
        matches!(events.last(), Some((_, SupervisorToClient::Done(_)))),
        "{events:?}"
    );

    let lists = thread_cpu_lists(pid);
    assert!(!lists.is_empty());
    for (tid, list) in &lists {
        assert_eq!(
            list, "1",
            "thread {tid} of worker {pid} may run on CPUs {list}, not only on the configured 1 (all: {lists:?})"
        );
    }

    // Status shows both sets, and where each comes from.
    let report = sup.status().await;
    let slot = |name: &str| report.slots.iter().find(|s| s.name == name).unwrap();
    assert_eq!(slot("fallback").cpus.as_ref().unwrap().to_string(), "1");
    assert_eq!(slot("fallback").cpus_reason, "configured");
    assert_eq!(slot("primary").cpus.as_ref().unwrap().to_string(), "0");
    assert!(
        slot("primary")
            .cpus_reason
            .contains("enabled_cpus_mask 0x1"),
        "{}",
        slot("primary").cpus_reason
    );
    sup.stop().await;
}
