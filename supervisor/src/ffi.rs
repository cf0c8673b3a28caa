//! The daemon's only `unsafe`: work done in a spawned worker between fork
//! and exec, where the rules are the kernel's, not Rust's.
#![allow(unsafe_code)]

use crate::identity::UserIds;

/// Makes a spawned command run as `user`: supplementary groups, then the
/// primary group, then the user (in that order: once the uid is dropped,
/// the groups can no longer be changed).
pub fn run_as(cmd: &mut tokio::process::Command, user: &UserIds) {
    let uid = nix::unistd::Uid::from_raw(user.uid);
    let gid = nix::unistd::Gid::from_raw(user.gid);
    // Built before the fork: the child must not allocate.
    let groups: Vec<nix::unistd::Gid> = user
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    // std's `CommandExt::groups` is unstable, and its `uid` would drop every
    // supplementary group (the NPU worker may need a device group), so the
    // three calls are made here, between fork and exec.
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed: it calls setgroups(2), setgid(2),
    // setuid(2) and prctl(2) (thin syscall wrappers), on data allocated
    // before the fork, and allocates nothing itself. The child is
    // single-threaded there, so glibc's all-threads set*id broadcast is moot.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
            // A supervisor that is not root switches with ambient
            // capabilities, which would survive the exec: clear them, so the
            // worker cannot switch back. (From root, setuid already dropped
            // every capability; EINVAL on kernels without ambient sets.)
            let _ = nix::libc::prctl(
                nix::libc::PR_CAP_AMBIENT,
                nix::libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
}
