//! Pinning a worker's threads to the CPUs the supervisor gave it (`--cpus`).
//!
//! A worker calls [`pin`] first thing in `main`, before any thread exists:
//! Linux keeps an affinity mask per thread and a new thread copies its
//! creator's, so every later thread (the async runtime's, the engine's,
//! llama.cpp's OpenMP pool) inherits the set, and the thread count llama.cpp
//! picks by itself (`available_parallelism`) is the set's size.
//!
//! On a machine without some of the CPUs (the board has 8, a laptop or CI
//! runner may have 2) the worker uses the part that exists, or everything it
//! may use when none does, and says so in its one log line: a board config
//! must still run elsewhere.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet as NixCpuSet};
use nix::unistd::Pid;
use proto::cpus::CpuSet;
use thiserror::Error;

/// Pinning failed.
#[derive(Debug, Error)]
pub enum PinError {
    /// The CPUs this process may use could not be read.
    #[error("cannot read the CPUs this process may use: {source}")]
    Read {
        /// OS error.
        #[source]
        source: nix::Error,
    },
    /// The kernel refused the set.
    #[error("cannot pin the worker's threads to CPUs {cpus}: {source}")]
    Set {
        /// The set asked for.
        cpus: CpuSet,
        /// OS error.
        #[source]
        source: nix::Error,
    },
}

/// The set a worker pins itself to, and what to say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinning {
    /// The CPUs it runs on.
    pub cpus: CpuSet,
    /// The log line.
    pub line: String,
}

/// Decides the set from what was asked for (`wanted`) and what this process
/// may use here (`allowed`): the CPUs in both; when none is in both, all of
/// `allowed` (a worker that cannot run is worse than one on other cores).
pub fn clamp(wanted: &CpuSet, allowed: &CpuSet) -> Pinning {
    let both = wanted.intersection(allowed);
    if both == *wanted {
        return Pinning {
            line: format!("threads pinned to CPUs {wanted}"),
            cpus: both,
        };
    }
    if both.is_empty() {
        return Pinning {
            line: format!(
                "threads on CPUs {allowed}: none of the configured CPUs {wanted} is available here (this machine lets the worker use {allowed})"
            ),
            cpus: allowed.clone(),
        };
    }
    Pinning {
        line: format!(
            "threads pinned to CPUs {both}: the configured CPUs {} are not available here (this machine lets the worker use {allowed})",
            wanted.difference(allowed)
        ),
        cpus: both,
    }
}

/// Pins the calling thread, and so every thread it starts afterwards, to
/// `wanted` (clamped to what exists, see [`clamp`]); logs one INFO line.
/// Call it before starting any thread.
///
/// # Errors
/// [`PinError`] when the kernel does not let us read or set the mask.
pub fn pin(wanted: &CpuSet) -> Result<CpuSet, PinError> {
    let current =
        sched_getaffinity(Pid::from_raw(0)).map_err(|source| PinError::Read { source })?;
    let allowed = CpuSet::from_cpus(
        (0..u32::try_from(NixCpuSet::count()).unwrap_or(u32::MAX))
            .filter(|&cpu| current.is_set(cpu as usize).unwrap_or(false)),
    );
    let pinning = clamp(wanted, &allowed);
    let mut mask = NixCpuSet::new();
    for cpu in pinning.cpus.iter() {
        mask.set(cpu as usize).map_err(|source| PinError::Set {
            cpus: pinning.cpus.clone(),
            source,
        })?;
    }
    sched_setaffinity(Pid::from_raw(0), &mask).map_err(|source| PinError::Set {
        cpus: pinning.cpus.clone(),
        source,
    })?;
    tracing::info!("{}", pinning.line);
    Ok(pinning.cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> CpuSet {
        s.parse().unwrap()
    }

    #[test]
    fn a_set_that_exists_is_used_as_it_is() {
        let p = clamp(&set("4-7"), &set("0-7"));
        assert_eq!(p.cpus, set("4-7"));
        assert_eq!(p.line, "threads pinned to CPUs 4-7");
    }

    #[test]
    fn a_set_partly_missing_keeps_the_part_that_exists() {
        let p = clamp(&set("0-3"), &set("0-1"));
        assert_eq!(p.cpus, set("0-1"));
        assert!(p.line.contains("CPUs 2-3 are not available"), "{}", p.line);
    }

    #[test]
    fn a_set_wholly_missing_runs_on_everything_allowed() {
        let p = clamp(&set("4-7"), &set("0-1"));
        assert_eq!(p.cpus, set("0-1"));
        assert!(
            p.line.contains("none of the configured CPUs 4-7"),
            "{}",
            p.line
        );
    }

    #[test]
    fn pinning_changes_this_threads_mask() {
        // On a thread of its own, so the test harness's threads keep theirs.
        std::thread::spawn(|| {
            let before = sched_getaffinity(Pid::from_raw(0)).unwrap();
            let first = (0..NixCpuSet::count())
                .find(|&c| before.is_set(c).unwrap())
                .unwrap();
            let first = u32::try_from(first).unwrap();
            let got = pin(&CpuSet::from_cpus([first])).unwrap();
            assert_eq!(got, CpuSet::from_cpus([first]));
            let after = sched_getaffinity(Pid::from_raw(0)).unwrap();
            let count = (0..NixCpuSet::count())
                .filter(|&c| after.is_set(c).unwrap())
                .count();
            assert_eq!(count, 1);
            // A thread started now inherits the mask.
            std::thread::spawn(move || {
                let inner = sched_getaffinity(Pid::from_raw(0)).unwrap();
                assert!(inner.is_set(first as usize).unwrap());
                let count = (0..NixCpuSet::count())
                    .filter(|&c| inner.is_set(c).unwrap())
                    .count();
                assert_eq!(count, 1);
            })
            .join()
            .unwrap();
        })
        .join()
        .unwrap();
    }
}
