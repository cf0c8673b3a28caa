//! Per-worker cgroup v2 groups, so the kernel enforces each worker's hard
//! memory ceiling (`memory.max`) and counts its OOM kills (`memory.events`).
//!
//! Needs a delegated, writable cgroup v2 subtree with the memory controller
//! (systemd: `Delegate=yes`). Where that is missing the supervisor says so
//! once and relies on its procfs RssAnon ceiling alone.
//!
//! cgroup v2 forbids processes in a group whose controllers are enabled for
//! children, so the supervisor first moves itself into a `supervisor` child
//! of its own group, then enables `memory` for the children and puts each
//! worker in `worker-<slot>`.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why per-worker cgroups are not available.
#[derive(Debug, Error)]
pub enum CgroupUnavailable {
    /// This process is not in a cgroup v2 hierarchy.
    #[error("not in a cgroup v2 hierarchy (no \"0::\" line in {path})")]
    NotV2 {
        /// The file read.
        path: PathBuf,
    },
    /// The memory controller is not offered to our group.
    #[error("the memory controller is not available in {path}")]
    NoMemoryController {
        /// Our group.
        path: PathBuf,
    },
    /// Our group cannot be written (not delegated to us).
    #[error("cannot set up worker groups under {path}: {source}")]
    NotWritable {
        /// Our group.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
}

/// The supervisor's delegated cgroup subtree.
#[derive(Debug, Clone)]
pub struct WorkerCgroups {
    base: PathBuf,
}

impl WorkerCgroups {
    /// Finds our cgroup under `cgroup_root` and prepares it for worker groups.
    ///
    /// # Errors
    /// [`CgroupUnavailable`] saying what is missing.
    pub fn setup(
        cgroup_root: &Path,
        proc_root: &Path,
        own_pid: u32,
    ) -> Result<Self, CgroupUnavailable> {
        let file = proc_root.join("self/cgroup");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let rel = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or(CgroupUnavailable::NotV2 { path: file })?;
        let base = cgroup_root.join(rel.trim().trim_start_matches('/'));
        let controllers =
            std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(CgroupUnavailable::NoMemoryController { path: base });
        }
        let not_writable = |source| CgroupUnavailable::NotWritable {
            path: base.clone(),
            source,
        };
        let own = base.join("supervisor");
        std::fs::create_dir_all(&own).map_err(not_writable)?;
        std::fs::write(own.join("cgroup.procs"), own_pid.to_string()).map_err(not_writable)?;
        std::fs::write(base.join("cgroup.subtree_control"), "+memory").map_err(not_writable)?;
        Ok(Self { base })
    }

    /// The group of a slot's workers.
    pub fn dir(&self, slot: &str) -> PathBuf {
        self.base.join(format!("worker-{slot}"))
    }

    /// Puts `pid` into the slot's group with `memory.max` = `max_bytes`
    /// (see [`memory_max`] for the figure)
    /// (`None`: no limit).
    ///
    /// # Errors
    /// Creating the group or writing its files failed.
    pub fn place(&self, slot: &str, pid: u32, max_bytes: Option<u64>) -> io::Result<PathBuf> {
        let dir = self.dir(slot);
        std::fs::create_dir_all(&dir)?;
        set_memory_max(&dir, max_bytes)?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        Ok(dir)
    }
}

/// The `memory.max` of a worker's group for a hard ceiling on its anonymous
/// memory (RssAnon, bytes; `None`: no ceiling) and the size of its model file.
///
/// The cgroup charges page cache too, and the weights are mmap'd: a limit of
/// the bare ceiling would let the kernel evict weight pages on every token
/// once RssAnon nears it, and the worker would crawl until killed as a hang.
/// So the group gets room for the whole file on top; the RssAnon ceiling
/// itself stays the supervisor's (procfs) check. `memory.high` is not used:
/// throttling would hit the same page cache.
pub fn memory_max(hard_ceiling: Option<u64>, model_bytes: u64) -> Option<u64> {
    hard_ceiling.map(|c| c.saturating_add(model_bytes))
}

/// Writes a group's `memory.max` (`None`: "max", no limit).
///
/// # Errors
/// Writing the file failed.
pub fn set_memory_max(dir: &Path, max_bytes: Option<u64>) -> io::Result<()> {
    let limit = max_bytes.map_or_else(|| "max".to_owned(), |b| b.to_string());
    std::fs::write(dir.join("memory.max"), limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(controllers: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        std::fs::create_dir_all(proc_root.join("self")).unwrap();
        std::fs::write(
            proc_root.join("self/cgroup"),
            "0::/system.slice/rocksteady-supervisor.service\n",
        )
        .unwrap();
        let cg = dir.path().join("cgroup");
        let base = cg.join("system.slice/rocksteady-supervisor.service");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("cgroup.controllers"), controllers).unwrap();
        (dir, proc_root, cg)
    }

    #[test]
    fn memory_max_leaves_room_for_the_mapped_model() {
        assert_eq!(memory_max(None, 1 << 30), None);
        assert_eq!(memory_max(Some(512 << 20), 0), Some(512 << 20));
        assert_eq!(memory_max(Some(512 << 20), 100 << 20), Some(612 << 20));
        assert_eq!(memory_max(Some(u64::MAX), 1), Some(u64::MAX));
    }

    #[test]
    fn a_changed_ceiling_rewrites_the_group_limit() {
        let (_d, proc_root, cg) = fake("memory\n");
        let groups = WorkerCgroups::setup(&cg, &proc_root, 42).unwrap();
        let model = 300 << 20;
        let dir = groups
            .place("primary", 4242, memory_max(Some(512 << 20), model))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            (812u64 << 20).to_string()
        );
        set_memory_max(&dir, memory_max(Some(1 << 30), model)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            ((1u64 << 30) + model).to_string()
        );
        set_memory_max(&dir, memory_max(None, model)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            "max"
        );
    }

    #[test]
    fn workers_get_their_own_group_with_the_ceiling() {
        let (_d, proc_root, cg) = fake("cpuset cpu io memory pids\n");
        let groups = WorkerCgroups::setup(&cg, &proc_root, 42).unwrap();
        let base = cg.join("system.slice/rocksteady-supervisor.service");
        assert_eq!(
            std::fs::read_to_string(base.join("supervisor/cgroup.procs")).unwrap(),
            "42"
        );
        assert_eq!(
            std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap(),
            "+memory"
        );
        let dir = groups.place("primary", 4242, Some(512 << 20)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            "536870912"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
            "4242"
        );
        let dir = groups.place("fallback", 4343, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            "max"
        );
    }

    #[test]
    fn missing_memory_controller_or_v1_is_reported() {
        let (_d, proc_root, cg) = fake("cpu pids\n");
        let err = WorkerCgroups::setup(&cg, &proc_root, 1).unwrap_err();
        assert!(
            matches!(err, CgroupUnavailable::NoMemoryController { .. }),
            "{err}"
        );
        std::fs::write(proc_root.join("self/cgroup"), "4:memory:/x\n").unwrap();
        assert!(matches!(
            WorkerCgroups::setup(&cg, &proc_root, 1),
            Err(CgroupUnavailable::NotV2 { .. })
        ));
    }
}
