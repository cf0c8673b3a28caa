//! NPU telemetry readers for the supervisor and `supctl bench`: per-core load
//! and driver version from the rknpu debugfs files, and the NPU clock from
//! devfreq. (The board's SoC, which the RKLLM checks need, is
//! `model_check::rkllm::read_soc`.)
//!
//! Every reader takes the filesystem root as a parameter (tests point it at
//! a temporary directory) and returns `None` for anything absent or
//! unparsable: telemetry shows "n/a", it never fails a request. Reading
//! debugfs needs root; without it the files are simply unreadable.

use std::fmt;
use std::path::Path;

/// Load of one NPU core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreLoad {
    /// Core number as the driver names it (`Core0` = 0).
    pub core: u32,
    /// Busy percentage (0-100).
    pub percent: u8,
}

/// Parses the rknpu `load` file. Both layouts drivers use are accepted:
/// `NPU load:  Core0: 12%, Core1:  0%, Core2:  0%,` on one line, and one
/// `Core0: 12%` per line. A single-core driver's `NPU load: 23%` counts as core 0.
pub fn parse_npu_load(text: &str) -> Vec<CoreLoad> {
    let mut cores = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("Core") {
        rest = &rest[at + "Core".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(core) = digits.parse::<u32>() else {
            continue;
        };
        let after = rest[digits.len()..].trim_start_matches([':', ' ', '\t']);
        if let Some(percent) = leading_percent(after) {
            cores.push(CoreLoad { core, percent });
        }
    }
    if cores.is_empty() {
        if let Some(after) = text.find("load:").map(|i| &text[i + "load:".len()..]) {
            if let Some(percent) = leading_percent(after.trim_start()) {
                cores.push(CoreLoad { core: 0, percent });
            }
        }
    }
    cores
}

fn leading_percent(s: &str) -> Option<u8> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    if !s[digits.len()..].starts_with('%') {
        return None;
    }
    digits.parse::<u8>().ok().filter(|p| *p <= 100)
}

/// Reads `<debugfs_root>/rknpu/load`.
pub fn read_npu_load(debugfs_root: &Path) -> Option<Vec<CoreLoad>> {
    let text = std::fs::read_to_string(debugfs_root.join("rknpu/load")).ok()?;
    let cores = parse_npu_load(&text);
    (!cores.is_empty()).then_some(cores)
}

/// Reads `<debugfs_root>/rknpu/version` (e.g. `RKNPU driver: v0.9.8` gives `v0.9.8`).
pub fn read_driver_version(debugfs_root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(debugfs_root.join("rknpu/version")).ok()?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let version = line.rsplit(':').next().unwrap_or(line).trim();
    (!version.is_empty()).then(|| version.to_owned())
}

/// The devfreq node of the RK3588 NPU.
pub const RK3588_NPU_DEVFREQ: &str = "fdab0000.npu";

/// Reads the NPU clock in Hz from `<sysfs_root>/class/devfreq/fdab0000.npu/cur_freq`,
/// or from the first devfreq node whose name ends in `.npu` (other SoCs).
pub fn read_npu_freq_hz(sysfs_root: &Path) -> Option<u64> {
    let devfreq = sysfs_root.join("class/devfreq");
    let read = |node: &Path| -> Option<u64> {
        std::fs::read_to_string(node.join("cur_freq"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    if let Some(hz) = read(&devfreq.join(RK3588_NPU_DEVFREQ)) {
        return Some(hz);
    }
    let mut nodes: Vec<_> = std::fs::read_dir(&devfreq)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".npu"))
        .map(|e| e.path())
        .collect();
    nodes.sort();
    nodes.iter().find_map(|n| read(n))
}

/// All NPU figures at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NpuTelemetry {
    /// Per-core load.
    pub load: Option<Vec<CoreLoad>>,
    /// Driver version.
    pub driver_version: Option<String>,
    /// NPU clock in Hz.
    pub freq_hz: Option<u64>,
}

impl NpuTelemetry {
    /// Reads everything from the given roots (normally `/sys/kernel/debug` and `/sys`).
    pub fn read(debugfs_root: &Path, sysfs_root: &Path) -> Self {
        Self {
            load: read_npu_load(debugfs_root),
            driver_version: read_driver_version(debugfs_root),
            freq_hz: read_npu_freq_hz(sysfs_root),
        }
    }
}

impl fmt::Display for NpuTelemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("npu load: ")?;
        match &self.load {
            Some(cores) => {
                let parts: Vec<String> = cores
                    .iter()
                    .map(|c| format!("core{} {}%", c.core, c.percent))
                    .collect();
                f.write_str(&parts.join(", "))?;
            }
            None => f.write_str("n/a")?,
        }
        f.write_str("; freq: ")?;
        match self.freq_hz {
            Some(hz) => write!(f, "{} MHz", hz / 1_000_000)?,
            None => f.write_str("n/a")?,
        }
        write!(
            f,
            "; driver: {}",
            self.driver_version.as_deref().unwrap_or("n/a")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_load() {
        let cores = parse_npu_load("NPU load:  Core0: 12%, Core1:  0%, Core2: 100%,\n");
        assert_eq!(
            cores,
            vec![
                CoreLoad {
                    core: 0,
                    percent: 12
                },
                CoreLoad {
                    core: 1,
                    percent: 0
                },
                CoreLoad {
                    core: 2,
                    percent: 100
                },
            ]
        );
    }

    #[test]
    fn one_core_per_line() {
        let cores = parse_npu_load("Core0: 5%\nCore1: 7%\n");
        assert_eq!(cores.len(), 2);
        assert_eq!(
            cores[1],
            CoreLoad {
                core: 1,
                percent: 7
            }
        );
    }

    #[test]
    fn single_core_and_garbage() {
        assert_eq!(
            parse_npu_load("NPU load: 23%"),
            vec![CoreLoad {
                core: 0,
                percent: 23
            }]
        );
        assert!(parse_npu_load("nothing here").is_empty());
        assert!(parse_npu_load("Core0: lots").is_empty());
        assert!(parse_npu_load("Core0: 400%").is_empty());
    }
}
