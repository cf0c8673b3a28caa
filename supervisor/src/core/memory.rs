//! Memory: readings of each worker's RssAnon and the system's MemAvailable,
//! pressure and the hard ceiling, and the serving-profile switch under
//! lasting pressure (a graceful reload between requests, never a restart).

use proto::admin::SlotState;

use super::{Core, Effect, Level, Readings};
use crate::config::secs;
use crate::lifecycle::Reason;

impl Core {
    /// Asks the driver for telemetry (memory of the live workers, zones).
    pub(super) fn request_telemetry(&mut self) {
        self.last_telemetry = Some(self.now);
        let workers = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.pid.map(|pid| (i, pid)))
            .collect();
        self.out.push(Effect::ReadTelemetry { workers });
    }

    /// Whether telemetry is due (every `memory_interval_s`).
    pub(super) fn telemetry_due(&self) -> bool {
        self.last_telemetry
            .is_none_or(|t| self.now.since(t) >= secs(self.cfg.policy.memory_interval_s))
    }

    pub(super) fn on_telemetry(&mut self, r: &Readings) {
        self.on_memory(r);
        self.on_zones(&r.zones);
    }

    fn on_memory(&mut self, r: &Readings) {
        let now = self.now;
        self.mem_available_kb = r.mem_available_kb;
        let floor_kb = self.cfg.policy.mem_available_floor_mib * 1024;
        let system_low = floor_kb > 0 && self.mem_available_kb.is_some_and(|a| a < floor_kb);
        for &(i, pid, sample) in &r.workers {
            let Some(s) = self.slots.get_mut(i) else {
                continue;
            };
            if s.pid != Some(pid) {
                continue; // a reading of a process that is gone
            }
            let Some(sample) = sample else {
                // Unreadable /proc/<pid>/status: not "0 MiB". The last
                // sample and the pressure judged on it stand; the failure is
                // counted and shown in status.
                s.mem_read_failures += 1;
                self.mem_read_failures += 1;
                if s.mem_read_failures == 1 {
                    let name = s.name;
                    self.log(
                        Level::Warn,
                        "cannot read the worker's memory; keeping the last sample",
                        &[("slot", &name), ("pid", &pid)],
                    );
                }
                continue;
            };
            s.mem_read_failures = 0;
            s.mem = Some(sample);
            let anon_mib = sample.rss_anon_kb / 1024;
            let pressure =
                system_low || (s.cfg.memory_soft_mib > 0 && anon_mib >= s.cfg.memory_soft_mib);
            if pressure && !s.memory_pressure {
                let name = s.name;
                self.log(
                    Level::Warn,
                    "memory pressure",
                    &[
                        ("slot", &name),
                        ("anon_mib", &anon_mib),
                        ("system_low", &system_low),
                    ],
                );
            }
            let s = &mut self.slots[i];
            s.memory_pressure = pressure;
            if pressure {
                s.pressure_since.get_or_insert(now);
                s.calm_since = None;
            } else {
                s.calm_since.get_or_insert(now);
                s.pressure_since = None;
            }
            if s.cfg.memory_hard_mib > 0
                && anon_mib >= s.cfg.memory_hard_mib
                && s.stopped_for.is_none()
            {
                let (name, hard) = (s.name, s.cfg.memory_hard_mib);
                self.log(
                    Level::Error,
                    "RssAnon above the hard ceiling",
                    &[("slot", &name), ("anon_mib", &anon_mib), ("hard", &hard)],
                );
                self.stop(i, Reason::Memory);
            }
        }
    }

    /// Moves an idle worker to its fallback profile when memory pressure has
    /// lasted `profile_switch_after_s`, and back when it has been gone for
    /// `profile_hold_s`. The worker stays up: it reloads (Ready -> Loading),
    /// which is neither a restart nor a crash.
    pub(super) fn switch_profiles(&mut self) {
        let now = self.now;
        let after = secs(self.cfg.policy.profile_switch_after_s);
        let hold = secs(self.cfg.policy.profile_hold_s);
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.cfg.fallback_profile.is_none()
                || !s.can_take()
                || s.stopped_for.is_some()
                || self.shutting_down
            {
                continue;
            }
            let to_fallback =
                !s.on_fallback_profile && s.pressure_since.is_some_and(|t| now.since(t) >= after);
            let back = s.on_fallback_profile && s.calm_since.is_some_and(|t| now.since(t) >= hold);
            if !(to_fallback || back) {
                continue;
            }
            let s = &mut self.slots[i];
            s.on_fallback_profile = to_fallback;
            s.profile_reason = if to_fallback {
                "memory pressure".into()
            } else {
                String::new()
            };
            let name = s.profile_name();
            let slot = s.name;
            let load = s.cfg.load_message_for(to_fallback);
            s.pressure_since = None;
            s.calm_since = None;
            self.out.push(Effect::ToWorker {
                slot: i,
                incarnation: self.slots[i].incarnation,
                msg: proto::worker::SupervisorToWorker::Load(load),
            });
            self.log(
                Level::Warn,
                "switching serving profile",
                &[("slot", &slot), ("profile", &name)],
            );
            self.set_state(
                i,
                SlotState::Loading,
                Some(format!("switching to profile {name}")),
            );
        }
    }
}
