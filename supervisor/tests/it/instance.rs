//! One supervisor per runtime directory: a second one started by hand on the
//! same config exits 75 naming the first one's pid, and leaves the first one's
//! sockets and workers alone.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::admin::SlotState;
use proto::client::SupervisorToClient;

use crate::support::{bin, collect, fake_slot, greedy, user, Sup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_supervisor_on_the_same_runtime_directory_exits_75_and_changes_nothing() {
    let sup = Sup::start(&fake_slot("primary", "tokens=3", "")).await;
    let before = sup
        .wait_state("primary", SlotState::Ready, Duration::from_secs(20))
        .await;
    let config = sup.dir.path().join("config.toml");
    std::fs::write(&config, &sup.text).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(bin("rocksteady-supervisor"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Without the lock it would take over and run on: give up after a while.
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "the message does not name the holder: {stderr}"
    );
    // The first one still serves, with the same worker.
    let after = sup.slot("primary").await;
    assert_eq!(after.state, SlotState::Ready);
    assert_eq!(after.pid, before.pid, "the worker was replaced");
    let mut client = sup.client().await;
    client.submit(user("hi"), greedy(3)).await.unwrap();
    let events = collect(&mut client, Duration::from_secs(20)).await;
    assert!(matches!(
        events.last().unwrap().1,
        SupervisorToClient::Done(_)
    ));
    sup.stop().await;
}
