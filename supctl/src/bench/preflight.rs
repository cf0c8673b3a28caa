//! Checks before a benchmark: CPU governors, page caches, free memory,
//! temperatures, the NPU driver and its load, the supervisor itself. Each
//! is a checklist item that passes, warns or fails with the value read;
//! files that do not exist (not the board, not root) read as "n/a".
//!
//! Also the two changes a run may make to the machine: the `performance`
//! governor for the run (restored after), and dropping page caches before
//! a cold load.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::admin::ZoneTemp;
use serde::{Deserialize, Serialize};

use supervisor::telemetry::{memory, npu, thermal};

/// How a checklist item came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Fine.
    Pass,
    /// The figures may suffer; the run goes on.
    Warn,
    /// The run must not start.
    Fail,
    /// Could not be read here (not the board, not root); the run goes on.
    #[serde(rename = "n/a")]
    NotAvailable,
}

impl CheckStatus {
    /// Word for the checklist.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::NotAvailable => "n/a",
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckItem {
    /// What was checked, e.g. "governor policy0".
    pub name: String,
    /// How it came out.
    pub status: CheckStatus,
    /// The value read, and what it means when not a pass.
    pub value: String,
}

impl CheckItem {
    fn new(name: impl Into<String>, status: CheckStatus, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status,
            value: value.into(),
        }
    }

    fn na(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(name, CheckStatus::NotAvailable, value)
    }
}

impl fmt::Display for CheckItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            CheckStatus::Pass => "[x]",
            CheckStatus::Warn => "[!]",
            CheckStatus::Fail => "[ ]",
            CheckStatus::NotAvailable => "[-]",
        };
        write!(
            f,
            "- {mark} {} **{}**: {}",
            self.status.as_str(),
            self.name,
            self.value
        )
    }
}

/// What the checks read and compare against.
#[derive(Debug, Clone)]
pub struct PreflightInput {
    /// procfs root (meminfo, drop_caches).
    pub proc_root: PathBuf,
    /// sysfs root (cpufreq, thermal zones).
    pub sysfs_root: PathBuf,
    /// debugfs root (rknpu).
    pub debugfs_root: PathBuf,
    /// MemAvailable the run needs (MiB).
    pub need_mib: u64,
    /// Refuse above this (degrees C).
    pub max_start_c: f64,
    /// Measured requests wait for this (degrees C).
    pub cool_to_c: f64,
    /// `--drop-caches` was given.
    pub drop_caches: bool,
    /// We run as root.
    pub is_root: bool,
    /// Check the NPU driver and load (an NPU target is in the run).
    pub npu: bool,
}

/// The governor of every cpufreq policy under `sysfs_root`, in policy
/// order; `None` where a policy's file is unreadable.
pub fn read_governors(sysfs_root: &Path) -> Vec<(String, Option<String>)> {
    let dir = sysfs_root.join("devices/system/cpu/cpufreq");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, String, Option<String>)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u32 = name.strip_prefix("policy")?.parse().ok()?;
            let gov = std::fs::read_to_string(e.path().join("scaling_governor"))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty());
            Some((n, name, gov))
        })
        .collect();
    out.sort_by_key(|(n, _, _)| *n);
    out.into_iter().map(|(_, name, gov)| (name, gov)).collect()
}

/// Runs every check.
pub fn run_checks(input: &PreflightInput) -> Vec<CheckItem> {
    let mut items = Vec::new();
    items.extend(governor_items(&input.sysfs_root));
    items.push(cache_item(input));
    items.push(memory_item(input));
    items.extend(thermal_items(
        &thermal::read_zones(&input.sysfs_root, &[]),
        input.max_start_c,
        input.cool_to_c,
    ));
    if input.npu {
        items.extend(npu_items(&input.debugfs_root));
    }
    items
}

fn governor_items(sysfs_root: &Path) -> Vec<CheckItem> {
    let govs = read_governors(sysfs_root);
    if govs.is_empty() {
        return vec![CheckItem::na("cpu governor", "n/a (no cpufreq policies)")];
    }
    govs.into_iter()
        .map(|(policy, gov)| {
            let name = format!("governor {policy}");
            match gov {
                None => CheckItem::na(name, "n/a"),
                Some(g) if g == "performance" => CheckItem::new(name, CheckStatus::Pass, g),
                Some(g) => CheckItem::new(
                    name,
                    CheckStatus::Warn,
                    format!("{g} (clocks may vary; --tune sets performance for the run)"),
                ),
            }
        })
        .collect()
}

fn cache_item(input: &PreflightInput) -> CheckItem {
    let name = "page caches";
    match (input.drop_caches, input.is_root) {
        (false, _) => CheckItem::na(
            name,
            "kept (cold loads may read the model from the page cache; --drop-caches as root drops them)",
        ),
        (true, true) => CheckItem::new(name, CheckStatus::Pass, "dropped before each cold load"),
        (true, false) => CheckItem::new(
            name,
            CheckStatus::Warn,
            "--drop-caches needs root; caches kept",
        ),
    }
}

fn memory_item(input: &PreflightInput) -> CheckItem {
    let name = "MemAvailable";
    match memory::mem_available_kb(&input.proc_root) {
        None => CheckItem::na(name, "n/a"),
        Some(kb) => {
            let avail = kb / 1024;
            let need = input.need_mib;
            let value = format!("{avail} MiB (profile needs {need} MiB)");
            let status = if avail < need {
                CheckStatus::Fail
            } else if avail < need + need / 2 {
                CheckStatus::Warn
            } else {
                CheckStatus::Pass
            };
            CheckItem::new(name, status, value)
        }
    }
}

/// One item per zone: fail above `max_start_c`, warn above `cool_to_c`.
pub fn thermal_items(zones: &[ZoneTemp], max_start_c: f64, cool_to_c: f64) -> Vec<CheckItem> {
    if zones.is_empty() {
        return vec![CheckItem::na("thermal", "n/a (no thermal zones)")];
    }
    zones
        .iter()
        .map(|z| {
            let name = format!("thermal {}", z.kind);
            let t = z.celsius;
            if t > max_start_c {
                CheckItem::new(
                    name,
                    CheckStatus::Fail,
                    format!("{t:.1} °C, above the start limit {max_start_c:.1} °C"),
                )
            } else if t > cool_to_c {
                CheckItem::new(
                    name,
                    CheckStatus::Warn,
                    format!("{t:.1} °C; runs wait until {cool_to_c:.1} °C"),
                )
            } else {
                CheckItem::new(name, CheckStatus::Pass, format!("{t:.1} °C"))
            }
        })
        .collect()
}

/// NPU load above this before the run means something else uses the NPU.
const NPU_BUSY_PCT: u8 = 5;

fn npu_items(debugfs_root: &Path) -> Vec<CheckItem> {
    let mut items = Vec::new();
    items.push(match npu::read_driver_version(debugfs_root) {
        Some(v) => CheckItem::new("npu driver", CheckStatus::Pass, v),
        None => CheckItem::na("npu driver", "n/a (rknpu debugfs not readable)"),
    });
    items.push(match npu::read_npu_load(debugfs_root) {
        None => CheckItem::na("npu load", "n/a"),
        Some(cores) => {
            let text = cores
                .iter()
                .map(|c| format!("core{} {}%", c.core, c.percent))
                .collect::<Vec<_>>()
                .join(", ");
            if cores.iter().any(|c| c.percent > NPU_BUSY_PCT) {
                CheckItem::new(
                    "npu load",
                    CheckStatus::Warn,
                    format!("{text} (busy before the run)"),
                )
            } else {
                CheckItem::new("npu load", CheckStatus::Pass, text)
            }
        }
    });
    items
}

/// The first failed item: the reason not to start.
pub fn refusal(items: &[CheckItem]) -> Option<&CheckItem> {
    items.iter().find(|i| i.status == CheckStatus::Fail)
}

/// Governors set to `performance` for a run; the old ones come back on
/// [`GovernorGuard::restore`] or drop (also when the run fails).
#[derive(Debug, Default)]
pub struct GovernorGuard {
    saved: Vec<(PathBuf, String)>,
}

impl GovernorGuard {
    /// Sets `performance` on every policy that is not already on it; one
    /// checklist item per policy says what happened.
    pub fn tune(sysfs_root: &Path) -> (Self, Vec<CheckItem>) {
        let mut guard = Self::default();
        let mut items = Vec::new();
        let dir = sysfs_root.join("devices/system/cpu/cpufreq");
        for (policy, gov) in read_governors(sysfs_root) {
            let name = format!("tune {policy}");
            let Some(old) = gov else {
                items.push(CheckItem::na(name, "n/a"));
                continue;
            };
            if old == "performance" {
                items.push(CheckItem::new(
                    name,
                    CheckStatus::Pass,
                    "already performance",
                ));
                continue;
            }
            let file = dir.join(&policy).join("scaling_governor");
            match std::fs::write(&file, "performance\n") {
                Ok(()) => {
                    items.push(CheckItem::new(
                        name,
                        CheckStatus::Pass,
                        format!("{old} -> performance for the run"),
                    ));
                    guard.saved.push((file, old));
                }
                Err(e) => items.push(CheckItem::new(
                    name,
                    CheckStatus::Warn,
                    format!("cannot set performance ({e}); stays {old}"),
                )),
            }
        }
        (guard, items)
    }

    /// Puts the old governors back; returns what could not be restored.
    pub fn restore(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for (file, old) in self.saved.drain(..) {
            if let Err(e) = std::fs::write(&file, format!("{old}\n")) {
                problems.push(format!("cannot restore {} to {old}: {e}", file.display()));
            }
        }
        problems
    }
}

impl Drop for GovernorGuard {
    fn drop(&mut self) {
        for problem in self.restore() {
            eprintln!("supctl bench: {problem}");
        }
    }
}

/// Writes dirty pages back and drops the page cache, dentries and inodes,
/// so the next model load reads from storage.
///
/// # Errors
/// The write to `<proc_root>/sys/vm/drop_caches` failing (not root).
pub fn drop_caches(proc_root: &Path) -> std::io::Result<()> {
    nix::unistd::sync();
    std::fs::write(proc_root.join("sys/vm/drop_caches"), "3\n")
}

/// How a wait for the board to cool went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoolWait {
    /// Time spent waiting.
    pub waited: Duration,
    /// The hottest zone when the wait ended, if any was read.
    pub hottest_c: Option<f64>,
    /// Gave up at the time limit.
    pub timed_out: bool,
}

/// Waits until every zone is at or below `cool_to_c`, at most `limit`.
pub async fn wait_until_cool(sysfs_root: &Path, cool_to_c: f64, limit: Duration) -> CoolWait {
    let start = Instant::now();
    loop {
        let hottest = thermal::hottest(&thermal::read_zones(sysfs_root, &[]));
        let cool = hottest.is_none_or(|t| t <= cool_to_c);
        let waited = start.elapsed();
        if cool || waited >= limit {
            return CoolWait {
                waited,
                hottest_c: hottest,
                timed_out: !cool,
            };
        }
        tokio::time::sleep(Duration::from_secs(1).min(limit.saturating_sub(waited))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npu_files_of_both_layouts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rknpu")).unwrap();
        std::fs::write(
            dir.path().join("rknpu/load"),
            "NPU load:  Core0: 12%, Core1:  0%, Core2:  7%,\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("rknpu/version"), "RKNPU driver: v0.9.8\n").unwrap();
        let items = npu_items(dir.path());
        assert_eq!(items[0].value, "v0.9.8", "{items:?}");
        assert_eq!(items[1].status, CheckStatus::Warn, "{items:?}");
        assert!(items[1].value.contains("core2 7%"), "{items:?}");
        std::fs::write(dir.path().join("rknpu/load"), "NPU load: 3%\n").unwrap();
        let items = npu_items(dir.path());
        assert_eq!(items[1].status, CheckStatus::Pass, "{items:?}");
        let items = npu_items(Path::new("/nonexistent"));
        assert_eq!(items[1].value, "n/a", "{items:?}");
    }

    #[test]
    fn tuning_sets_performance_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        for (n, gov) in [(0, "schedutil"), (4, "performance")] {
            let p = dir
                .path()
                .join(format!("devices/system/cpu/cpufreq/policy{n}"));
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("scaling_governor"), format!("{gov}\n")).unwrap();
        }
        let read = || read_governors(dir.path());
        {
            let (_guard, items) = GovernorGuard::tune(dir.path());
            assert_eq!(items.len(), 2);
            assert!(read()
                .iter()
                .all(|(_, g)| g.as_deref() == Some("performance")));
        }
        assert_eq!(
            read(),
            [
                ("policy0".to_owned(), Some("schedutil".to_owned())),
                ("policy4".to_owned(), Some("performance".to_owned()))
            ]
        );
    }
}
