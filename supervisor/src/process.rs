//! Worker processes: spawning them isolated, signalling their process group,
//! and pid files so a restarted supervisor can reap a previous run's workers.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use proto::chat::Backend;
use tokio::process::{Child, Command};

use crate::config::SlotConfig;

/// Environment variables a worker may inherit; everything else (notably
/// systemd's NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, which would let a
/// worker speak for the service) is removed.
const INHERITED_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "RKLLM_LOG_LEVEL",
];

/// Starts a worker: its own process group (so a stop reaches any helper it
/// forks), a cleaned environment, stdin closed, stdout/stderr shared with the
/// supervisor (the journal: inherited descriptors, so a worker of another
/// user needs no log file of its own), as `user` when given. A CPU worker
/// gets `--cpus LIST`, the set the config decided for it: it pins itself
/// before it starts any thread, so every thread it makes (llama.cpp's
/// included) inherits the set.
///
/// # Errors
/// The spawn error, e.g. the worker binary is missing.
pub fn spawn_worker(
    cfg: &SlotConfig,
    socket: &Path,
    user: Option<&crate::identity::UserIds>,
) -> io::Result<Child> {
    let mut cmd = Command::new(cfg.worker_binary());
    cmd.arg("--socket").arg(socket);
    if let Some(cpus) = worker_cpus_arg(cfg) {
        cmd.arg("--cpus").arg(cpus);
    }
    cmd.env_clear()
        .process_group(0)
        .stdin(Stdio::null())
        .kill_on_drop(false);
    for key in INHERITED_ENV {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(&cfg.worker_env);
    if let Some(user) = user {
        crate::identity::run_as(&mut cmd, user);
    }
    cmd.spawn()
}

/// The `--cpus` value for a slot's worker: CPU workers only (the NPU
/// runtime places its own threads from `enabled_cpus_mask`).
pub fn worker_cpus_arg(cfg: &SlotConfig) -> Option<String> {
    match cfg.backend {
        Backend::Cpu => cfg.placement.as_ref().map(|p| p.cpus.to_string()),
        Backend::Npu => None,
    }
}

/// Makes the kernel's OOM killer prefer the worker over the supervisor.
///
/// # Errors
/// Writing `/proc/<pid>/oom_score_adj` failed (raising it needs no privilege,
/// so this is unexpected).
pub fn set_oom_score_adj(proc_root: &Path, pid: u32, adj: i32) -> io::Result<()> {
    std::fs::write(
        proc_root.join(pid.to_string()).join("oom_score_adj"),
        adj.to_string(),
    )
}

/// Sends `signal` to the process group led by `pid`.
///
/// # Errors
/// `ESRCH` when the group is gone, `EPERM` when not ours.
pub fn signal_group(pid: u32, signal: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::EINVAL)?;
    killpg(Pid::from_raw(pid), signal)
}

/// Stops a worker: SIGTERM to its group, then SIGKILL after `grace` unless
/// `alive` was cleared (the supervisor saw it exit) in between. Runs in the
/// background; the exit itself is reported by the task waiting on the child.
pub fn stop_in_background(pid: u32, grace: Duration, alive: Arc<AtomicBool>) {
    if signal_group(pid, Signal::SIGTERM).is_err() {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if alive.load(Ordering::Acquire) {
            tracing::warn!(pid, "worker ignored SIGTERM for {grace:?}; sending SIGKILL");
            let _ = signal_group(pid, Signal::SIGKILL);
        }
    });
}

/// Pid file of a slot's worker.
pub fn pid_file(state_dir: &Path, slot: &str) -> PathBuf {
    state_dir.join(format!("worker-{slot}.pid"))
}

/// Records a worker's pid.
///
/// # Errors
/// Writing the file failed.
pub fn write_pid_file(state_dir: &Path, slot: &str, pid: u32) -> io::Result<()> {
    std::fs::write(pid_file(state_dir, slot), format!("{pid}\n"))
}

/// Kills the worker a previous supervisor run left behind for `slot`, if its
/// pid file names a live process that is still a worker on our socket (a
/// recycled pid of some other program is left alone). Returns the pid killed.
pub fn reap_leftover(state_dir: &Path, proc_root: &Path, slot: &str, socket: &Path) -> Option<u32> {
    let file = pid_file(state_dir, slot);
    let pid: u32 = std::fs::read_to_string(&file).ok()?.trim().parse().ok()?;
    let _ = std::fs::remove_file(&file);
    let cmdline = std::fs::read(proc_root.join(pid.to_string()).join("cmdline")).ok()?;
    let ours = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == socket.as_os_str().as_encoded_bytes());
    if !ours {
        return None;
    }
    tracing::warn!(slot, pid, "killing a worker left over from a previous run");
    let _ = signal_group(pid, Signal::SIGKILL);
    // Wait (briefly) until it is gone, so two NPU clients never overlap.
    for _ in 0..50 {
        if !proc_root.join(pid.to_string()).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(pid)
}

/// Name of the lock file in the runtime directory.
pub const LOCK_FILE: &str = "supervisor.lock";

/// The exclusive lock of one runtime directory, held for the whole run: a
/// second supervisor on the same directory must not unlink the live one's
/// sockets or kill its workers from the pid files. Dropping it releases the
/// lock (the kernel also releases it when the process dies, however it dies).
#[derive(Debug)]
pub struct InstanceLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("another supervisor{} already runs on {dir} (it holds {lock}); stop it first, or give this one another runtime_dir", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        /// The runtime directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The pid written in the lock file by its holder, when readable.
        holder: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
}

/// The pid a lock file names, if it names one.
pub fn lock_holder(text: &str) -> Option<u32> {
    text.trim().parse().ok().filter(|p| *p > 0)
}

/// Takes the exclusive lock of `runtime_dir` (without waiting) and writes
/// this process's pid into the lock file, so a second instance can say who
/// holds it.
///
/// # Errors
/// [`LockError::Held`] when another process holds it, [`LockError::Io`]
/// when the file cannot be used.
pub fn lock_instance(runtime_dir: &Path) -> Result<InstanceLock, LockError> {
    use std::io::{Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = runtime_dir.join(LOCK_FILE);
    let io_err = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    // Not truncated on open: the holder's pid must stay readable for the
    // instance that fails to lock.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(&path)
        .map_err(io_err)?;
    let mut lock = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
    {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| lock_holder(&t));
            return Err(LockError::Held {
                dir: runtime_dir.to_owned(),
                lock: path.clone(),
                holder,
            });
        }
        Err((_, errno)) => return Err(io_err(errno.into())),
    };
    lock.set_len(0).map_err(io_err)?;
    lock.rewind().map_err(io_err)?;
    writeln!(lock, "{}", std::process::id()).map_err(io_err)?;
    Ok(InstanceLock { _lock: lock })
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_instance(dir.path()).unwrap();
        let err = lock_instance(dir.path()).unwrap_err();
        match &err {
            LockError::Held { holder, .. } => assert_eq!(*holder, Some(std::process::id())),
            LockError::Io { .. } => panic!("expected Held, got {err}"),
        }
        assert!(err
            .to_string()
            .contains(&format!("pid {}", std::process::id())));
        drop(first);
        lock_instance(dir.path()).unwrap();
    }

    #[test]
    fn a_lock_file_without_a_pid_names_nobody() {
        assert_eq!(lock_holder("1234\n"), Some(1234));
        assert_eq!(lock_holder(""), None);
        assert_eq!(lock_holder("0"), None);
        assert_eq!(lock_holder("garbage"), None);
    }
}
