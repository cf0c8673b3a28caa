//! Memory figures from procfs: a worker's RssAnon/RssFile/VmHWM, the
//! system's MemAvailable, and the kernel's OOM-kill counter.
//!
//! The ceiling is judged on RssAnon: a GGUF model mapped with mmap is
//! RssFile (clean page cache the kernel can drop), so RSS alone would count
//! the weights and trip on every large model.

use std::path::Path;

use procfs::process::Process;
use procfs::FromRead;

pub use crate::core::MemSample;

/// Reads `/proc/<pid>/status` under `proc_root`; `None` when the process is
/// gone or the kernel does not report the fields.
pub fn sample(proc_root: &Path, pid: u32) -> Option<MemSample> {
    let status = Process::new_with_root(proc_root.join(pid.to_string()))
        .ok()?
        .status()
        .ok()?;
    Some(MemSample {
        rss_anon_kb: status.rssanon?,
        rss_file_kb: status.rssfile.unwrap_or(0),
        vm_hwm_kb: status.vmhwm.unwrap_or(0),
    })
}

/// The system's MemAvailable in KiB.
pub fn mem_available_kb(proc_root: &Path) -> Option<u64> {
    let info = procfs::Meminfo::from_file(proc_root.join("meminfo")).ok()?;
    info.mem_available.map(|bytes| bytes / 1024)
}

/// The global `oom_kill` counter of `/proc/vmstat` (kernels >= 4.13).
pub fn oom_kills(proc_root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc_root.join("vmstat")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// The `oom_kill` count of a cgroup v2 `memory.events` file.
pub fn cgroup_oom_kills(cgroup_dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(cgroup_dir.join("memory.events")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process_and_the_system() {
        let me = sample(Path::new("/proc"), std::process::id()).unwrap();
        assert!(me.rss_anon_kb > 0);
        assert!(me.vm_hwm_kb >= me.rss_anon_kb);
        assert!(mem_available_kb(Path::new("/proc")).unwrap() > 0);
        assert!(sample(Path::new("/proc"), u32::MAX).is_none());
    }

    #[test]
    fn oom_counters_parse_from_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmstat"), "nr_free_pages 1\noom_kill 7\n").unwrap();
        assert_eq!(oom_kills(dir.path()), Some(7));
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cgroup_oom_kills(dir.path()), Some(1));
        assert_eq!(oom_kills(Path::new("/nonexistent")), None);
    }
}
