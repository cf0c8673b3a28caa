//! Workers as their own user (`supervisor.worker_user`): the worker process
//! runs as that user and answers; a process of that user is refused on
//! `admin.sock`, by pid inside a worker's process group and by its
//! credentials outside; a model that user cannot read stops the start with
//! a message naming the directory in the way. These tests run as root (as
//! CI does): the supervisor must be allowed to switch users.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use proto::admin::SlotState;
use proto::client::SupervisorToClient;

use crate::operate::{free_port, get, metric};
use crate::support::{bin, collect, fake_slot, greedy, user, Sup};

/// The four ids of a `Uid:` or `Gid:` line of `/proc/<pid>/status`.
fn ids(pid: u32, field: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

fn nobody() -> nix::unistd::User {
    nix::unistd::User::from_name("nobody").unwrap().unwrap()
}

/// A private directory other users may enter (tempdir makes it 0700).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `supctl status` as `uid`/`gid`, in process group `pgroup` (0: its own).
async fn supctl_status_as(
    runtime_dir: std::path::PathBuf,
    uid: u32,
    gid: u32,
    pgroup: i32,
) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(bin("supctl"))
            .arg("--runtime-dir")
            .arg(&runtime_dir)
            .arg("status")
            .uid(uid)
            .gid(gid)
            .process_group(pgroup)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_as_the_configured_user_answers_and_that_user_is_refused_on_admin_sock() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches users: run it as root"
    );
    let port = free_port();
    let body = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\nprobe_interval_s = 0.0\n{}",
        fake_slot("primary", "tokens=3", "")
    );
    // The admin socket's file mode lets anyone connect, so what refuses a
    // peer below is the supervisor's own check, not the file system.
    let sup = Sup::start_in(
        open_tempdir(),
        "worker_user = \"nobody\"\nadmin_socket_mode = \"0666\"",
        &body,
    )
    .await;
    let slot = sup
        .wait_state("primary", SlotState::Ready, Duration::from_secs(20))
        .await;
    let pid = slot.pid.unwrap();
    let nobody = nobody();
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    // Real, effective, saved and file-system ids all switched.
    assert_eq!(ids(pid, "Uid:"), [uid; 4]);
    assert_eq!(ids(pid, "Gid:"), [gid; 4]);
    // ... and no capability left to switch back with.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for caps in ["CapPrm:", "CapEff:", "CapAmb:"] {
        let line = status.lines().find(|l| l.starts_with(caps)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    // Its socket is the worker user's; the directory admits its group only.
    let socket = Sup::worker_socket_in(sup.dir.path(), "primary");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            meta.permissions().mode() & 0o777
        ),
        (uid, 0o600)
    );

    let mut client = sup.client().await;
    client.submit(user("hello"), greedy(8)).await.unwrap();
    let events = collect(&mut client, Duration::from_secs(20)).await;
    assert!(
        matches!(events.last().unwrap().1, SupervisorToClient::Done(_)),
        "{events:?}"
    );

    // The worker's user, in the worker's process group: refused by pid.
    let run_dir = sup.config.supervisor.runtime_dir.clone();
    let inside = supctl_status_as(run_dir.clone(), uid, gid, i32::try_from(pid).unwrap()).await;
    assert!(!inside.status.success(), "a worker's peer used admin.sock");
    // The worker's user elsewhere: refused by its credentials.
    let outside = supctl_status_as(run_dir, uid, gid, 0).await;
    assert!(!outside.status.success(), "the worker user used admin.sock");
    let (_, text) = get(port, "/metrics").await;
    let refused = |cause| {
        metric(
            &text,
            "rocksteady_connections_refused_total",
            &[("cause", cause)],
        )
    };
    assert!((refused("worker_peer") - 1.0).abs() < 0.5, "{text}");
    assert!((refused("peer_credentials") - 1.0).abs() < 0.5, "{text}");
    sup.stop().await;
}

#[test]
fn a_model_the_worker_user_cannot_read_stops_the_start_with_the_directory_named() {
    let dir = open_tempdir();
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let model = closed.join("m.gguf");
    std::fs::write(&model, b"GGUF").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[supervisor]\nruntime_dir = \"{0}/run\"\nstate_dir = \"{0}/state\"\nworker_user = \"nobody\"\n[http]\nlisten = \"\"\n[slots.primary]\nbackend = \"cpu\"\nmodel = \"{1}\"\nworker = \"{2}\"\n",
            dir.path().display(),
            model.display(),
            bin("fake-worker").display()
        ),
    )
    .unwrap();
    let out = Command::new(bin("rocksteady-supervisor"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("slot primary's model")
            && stderr.contains("cannot read")
            && stderr.contains(&format!("{} is mode 0700", closed.display())),
        "{stderr}"
    );
    // Nothing was left listening.
    assert!(!dir.path().join("run/client.sock").exists());
}
