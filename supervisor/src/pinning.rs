//! Which CPUs each slot's work runs on, decided from the config alone (no
//! IO): the CPU worker's threads are pinned to a set of cores, the NPU
//! runtime's own threads use its `enabled_cpus_mask`, and the two never
//! share a core.
//!
//! The board is an RK3588: CPUs 0-3 are Cortex-A55 (small in-order cores,
//! several times slower at llama.cpp's work), CPUs 4-7 Cortex-A76. The defaults follow from
//! how the two workers use cores:
//! - llama.cpp splits every matrix product evenly over its threads and waits
//!   for the slowest, so a CPU worker on A76s plus A55s decodes no faster
//!   than on the A76s alone (often slower). Without an NPU slot it gets the
//!   four A76s.
//! - With an NPU slot, the NPU runtime runs its CPU-side work (sampling,
//!   tokenising, the ops the NPU leaves to the CPU) on its mask's cores,
//!   Rockchip's default the A76s; a CPU worker on the same cores would slow
//!   the primary whenever both run (spill-over, a shadowing standby). So the
//!   CPU worker gets every board core the mask leaves free: the A55s by
//!   default.
//! - An operator's `cpus` is taken as given, but a set that overlaps the
//!   NPU's mask is a config error, not a silent slowdown.

use proto::chat::Backend;
use proto::cpus::{CpuListError, CpuSet};

use crate::config::{invalid, ConfigError, SlotConfig};

/// The RK3588's cores.
pub fn board_cpus() -> CpuSet {
    CpuSet::range(0, 7)
}

/// The RK3588's Cortex-A76 cores.
pub fn big_cores() -> CpuSet {
    CpuSet::range(4, 7)
}

/// Where one slot's work runs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The CPUs.
    pub cpus: CpuSet,
    /// Where the set comes from, for status.
    pub reason: String,
}

/// What the decision needs of one slot.
#[derive(Debug, Clone)]
pub struct SlotCpuConfig {
    /// Slot name ("primary", "fallback"), for the keys in errors.
    pub name: String,
    /// Its backend.
    pub backend: Backend,
    /// `cpu.cpus`, when set.
    pub cpus: Option<CpuSet>,
    /// `npu.enabled_cpus_mask`.
    pub npu_mask: u32,
    /// `profile.threads` and, when there is one, `fallback_profile.threads`
    /// (0 = one per CPU of the set), with their keys' last parts.
    pub threads: Vec<(&'static str, u32)>,
}

impl SlotCpuConfig {
    /// The parts of `cfg` the decision needs.
    pub fn of(name: &str, cfg: &SlotConfig) -> Self {
        let mut threads = vec![("profile", cfg.profile.threads)];
        if let Some(p) = &cfg.fallback_profile {
            threads.push(("fallback_profile", p.threads));
        }
        Self {
            name: name.to_owned(),
            backend: cfg.backend,
            cpus: cfg.cpu.cpus.clone(),
            npu_mask: cfg.npu.enabled_cpus_mask,
            threads,
        }
    }
}

fn mask_text(mask: u32) -> String {
    format!("{mask:#x}, CPUs {}", CpuSet::from_mask(u64::from(mask)))
}

/// Decides every slot's CPUs, in the order given.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key: `cpus` on an NPU slot (its
/// cores are `enabled_cpus_mask`), a CPU worker's set that overlaps the NPU
/// runtime's, an NPU mask that leaves the CPU worker no default core, or
/// more threads than CPUs in the set.
pub fn place(slots: &[SlotCpuConfig]) -> Result<Vec<Placement>, ConfigError> {
    let npu = slots.iter().find(|s| s.backend == Backend::Npu);
    slots
        .iter()
        .map(|slot| {
            let key = format!("slots.{}", slot.name);
            // The wire lets an empty list through (an empty set); a config must name a CPU.
            if slot.cpus.as_ref().is_some_and(CpuSet::is_empty) {
                return Err(invalid(format!("{key}.cpu.cpus"), CpuListError::Empty.to_string()));
            }
            let placement = match slot.backend {
                Backend::Npu => {
                    if slot.cpus.is_some() {
                        return Err(invalid(
                            format!("{key}.cpu.cpus"),
                            "applies to CPU slots only: the NPU runtime's cores are npu.enabled_cpus_mask",
                        ));
                    }
                    Placement {
                        cpus: CpuSet::from_mask(u64::from(slot.npu_mask)),
                        reason: format!("npu.enabled_cpus_mask {:#x}", slot.npu_mask),
                    }
                }
                Backend::Cpu => cpu_placement(slot, &key, npu)?,
            };
            for (profile, threads) in &slot.threads {
                let len = u32::try_from(placement.cpus.len()).unwrap_or(u32::MAX);
                if slot.backend == Backend::Cpu && *threads > len {
                    return Err(invalid(
                        format!("{key}.{profile}.threads"),
                        format!(
                            "{threads} threads on {len} CPUs ({}, {}): llama.cpp waits for its slowest thread, and two on one core make every step wait; use at most {len}, or 0 for one per CPU",
                            placement.cpus, placement.reason
                        ),
                    ));
                }
            }
            Ok(placement)
        })
        .collect()
}

fn cpu_placement(
    slot: &SlotCpuConfig,
    key: &str,
    npu: Option<&SlotCpuConfig>,
) -> Result<Placement, ConfigError> {
    let npu_cpus = npu.map(|n| (n, CpuSet::from_mask(u64::from(n.npu_mask))));
    match (&slot.cpus, npu_cpus) {
        (Some(cpus), Some((n, taken))) => {
            let shared = cpus.intersection(&taken);
            if !shared.is_empty() {
                return Err(invalid(
                    format!("{key}.cpu.cpus"),
                    format!(
                        "CPUs {shared} are also the NPU runtime's (slots.{}.npu.enabled_cpus_mask = {}): the two would slow each other; give them disjoint sets",
                        n.name,
                        mask_text(n.npu_mask)
                    ),
                ));
            }
            Ok(Placement {
                cpus: cpus.clone(),
                reason: "configured".into(),
            })
        }
        (Some(cpus), None) => Ok(Placement {
            cpus: cpus.clone(),
            reason: "configured".into(),
        }),
        (None, Some((n, taken))) => {
            let free = board_cpus().difference(&taken);
            if free.is_empty() {
                return Err(invalid(
                    format!("{key}.cpu.cpus"),
                    format!(
                        "has no default: slots.{}.npu.enabled_cpus_mask ({}) takes every core of the board; set cpus, or leave the CPU worker some cores in the mask",
                        n.name,
                        mask_text(n.npu_mask)
                    ),
                ));
            }
            Ok(Placement {
                cpus: free,
                reason: format!(
                    "default: the board's cores the NPU runtime leaves free (it has {taken})"
                ),
            })
        }
        (None, None) => Ok(Placement {
            cpus: big_cores(),
            reason: "default: the board's A76 cores (no NPU slot)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, backend: Backend, cpus: Option<&str>, mask: u32) -> SlotCpuConfig {
        SlotCpuConfig {
            name: name.into(),
            backend,
            cpus: cpus.map(|c| c.parse().unwrap()),
            npu_mask: mask,
            threads: vec![("profile", 0)],
        }
    }

    fn sets(p: &[Placement]) -> Vec<String> {
        p.iter().map(|p| p.cpus.to_string()).collect()
    }

    #[test]
    fn without_an_npu_slot_the_cpu_worker_gets_the_a76_cores() {
        let p = place(&[slot("primary", Backend::Cpu, None, 0xF0)]).unwrap();
        assert_eq!(sets(&p), ["4-7"]);
        assert!(p[0].reason.contains("A76"), "{}", p[0].reason);
        // Two CPU slots may share cores: neither is the NPU's.
        let p = place(&[
            slot("primary", Backend::Cpu, None, 0xF0),
            slot("fallback", Backend::Cpu, Some("0-7"), 0xF0),
        ])
        .unwrap();
        assert_eq!(sets(&p), ["4-7", "0-7"]);
    }

    #[test]
    fn with_an_npu_slot_the_cpu_worker_gets_what_its_mask_leaves() {
        let p = place(&[
            slot("primary", Backend::Npu, None, 0xF0),
            slot("fallback", Backend::Cpu, None, 0xF0),
        ])
        .unwrap();
        assert_eq!(sets(&p), ["4-7", "0-3"]);
        assert!(p[1].reason.contains("leaves free"), "{}", p[1].reason);
        // An operator who gives the NPU the A55s frees the A76s for llama.cpp;
        // the NPU slot may come second.
        let p = place(&[
            slot("primary", Backend::Cpu, None, 0),
            slot("fallback", Backend::Npu, None, 0x0F),
        ])
        .unwrap();
        assert_eq!(sets(&p), ["4-7", "0-3"]);
        let p = place(&[
            slot("primary", Backend::Npu, None, 0x30),
            slot("fallback", Backend::Cpu, None, 0x30),
        ])
        .unwrap();
        assert_eq!(sets(&p), ["4-5", "0-3,6-7"]);
    }

    #[test]
    fn a_configured_set_is_kept_when_it_leaves_the_npu_alone() {
        let p = place(&[
            slot("primary", Backend::Npu, None, 0xC0),
            slot("fallback", Backend::Cpu, Some("4-5"), 0xF0),
        ])
        .unwrap();
        assert_eq!(sets(&p), ["6-7", "4-5"]);
        assert_eq!(p[1].reason, "configured");
    }

    #[test]
    fn an_overlap_with_the_npu_mask_is_a_config_error_naming_both_keys() {
        let e = place(&[
            slot("primary", Backend::Npu, None, 0xF0),
            slot("fallback", Backend::Cpu, Some("2-5"), 0xF0),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("slots.fallback.cpu.cpus")
                && e.contains("CPUs 4-5")
                && e.contains("slots.primary.npu.enabled_cpus_mask = 0xf0"),
            "{e}"
        );
    }

    #[test]
    fn an_npu_mask_of_every_core_leaves_no_default() {
        let e = place(&[
            slot("primary", Backend::Npu, None, 0xFF),
            slot("fallback", Backend::Cpu, None, 0xF0),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("slots.fallback.cpu.cpus") && e.contains("no default"),
            "{e}"
        );
        // Naming cores beyond the board's is the operator's way out.
        assert!(place(&[
            slot("primary", Backend::Npu, None, 0xFF),
            slot("fallback", Backend::Cpu, Some("8-9"), 0xF0),
        ])
        .is_ok());
    }

    #[test]
    fn cpus_on_an_npu_slot_is_refused() {
        let e = place(&[slot("primary", Backend::Npu, Some("0-3"), 0xF0)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("slots.primary.cpu.cpus") && e.contains("CPU slots only"),
            "{e}"
        );
    }

    #[test]
    fn more_threads_than_cpus_is_refused() {
        let mut s = slot("fallback", Backend::Cpu, Some("1-2"), 0xF0);
        s.threads = vec![("profile", 2), ("fallback_profile", 3)];
        let e = place(&[s.clone()]).unwrap_err().to_string();
        assert!(
            e.contains("slots.fallback.fallback_profile.threads")
                && e.contains("3 threads on 2 CPUs"),
            "{e}"
        );
        s.threads = vec![("profile", 2), ("fallback_profile", 0)];
        assert!(place(&[s]).is_ok());
        // An NPU slot's threads are not llama.cpp's.
        let mut n = slot("primary", Backend::Npu, None, 0x10);
        n.threads = vec![("profile", 8)];
        assert!(place(&[n]).is_ok());
    }
}
