//! Thermal policy: from zone readings to the admission level, failing safe.
//!
//! - A zone that cannot be read is left out and listed in status.
//! - When no zone at all can be read (after some could), the level stays
//!   where it was: "unknown" is not "cool", so Critical is not left without
//!   a reading below `resume_c`.
//! - A zone whose reading has not changed for [`STUCK_AFTER`] while another
//!   zone's did is stuck (a dead sensor reporting one bogus value): it is
//!   left out and listed, so it cannot hold the board in Critical forever.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::admin::{ThermalLevel, ZoneTemp};

use super::{Core, Level, Millis, ZoneReading};

/// A zone unchanged this long while others move is ignored as stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(600);

/// Thresholds of [`next_level`], in degrees Celsius.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Cap max tokens above this.
    pub throttle: f64,
    /// Stop admitting above this.
    pub critical: f64,
    /// Leave critical only below this.
    pub resume: f64,
}

/// The hottest temperature, if any zone was read.
pub fn hottest(zones: &[ZoneTemp]) -> Option<f64> {
    zones.iter().map(|z| z.celsius).reduce(f64::max)
}

/// The admission level after a reading. Critical is sticky until the
/// temperature falls below `resume` (hysteresis, so admission does not flap
/// around one threshold); no reading keeps the current level.
pub fn next_level(current: ThermalLevel, hottest: Option<f64>, t: Thresholds) -> ThermalLevel {
    let Some(temp) = hottest else {
        return current;
    };
    if temp >= t.critical || (current == ThermalLevel::Critical && temp >= t.resume) {
        ThermalLevel::Critical
    } else if temp >= t.throttle {
        ThermalLevel::Throttle
    } else {
        ThermalLevel::Normal
    }
}

/// What the tracker remembers of each zone.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// Per zone type: (last value, when it last changed).
    last: BTreeMap<String, (f64, Millis)>,
    /// Zones unreadable at the last reading.
    pub unreadable: Vec<String>,
    /// Zones ignored as stuck at the last reading.
    pub stuck: Vec<String>,
    /// Since when no zone could be read (after some could).
    pub blind_since: Option<Millis>,
    /// Some zone was read at least once.
    pub ever_read: bool,
}

impl Tracker {
    /// The zones to judge by: readable and not stuck.
    pub fn observe(&mut self, zones: &[ZoneReading], now: Millis) -> Vec<ZoneTemp> {
        self.unreadable = zones
            .iter()
            .filter(|z| z.celsius.is_none())
            .map(|z| z.kind.clone())
            .collect();
        let readable: Vec<ZoneTemp> = zones
            .iter()
            .filter_map(|z| {
                z.celsius.filter(|c| c.is_finite()).map(|celsius| ZoneTemp {
                    kind: z.kind.clone(),
                    celsius,
                })
            })
            .collect();
        for z in &readable {
            let entry = self.last.entry(z.kind.clone()).or_insert((z.celsius, now));
            #[allow(clippy::float_cmp)] // a stuck sensor repeats the exact value
            if entry.0 != z.celsius {
                *entry = (z.celsius, now);
            }
        }
        let latest_change = readable
            .iter()
            .filter_map(|z| self.last.get(&z.kind).map(|e| e.1))
            .max();
        self.stuck = readable
            .iter()
            .filter(|z| {
                let changed = self.last.get(&z.kind).map_or(now, |e| e.1);
                now.since(changed) >= STUCK_AFTER
                    && latest_change.is_some_and(|l| l.since(changed) >= STUCK_AFTER)
            })
            .map(|z| z.kind.clone())
            .collect();
        if readable.is_empty() {
            if self.ever_read {
                self.blind_since.get_or_insert(now);
            }
        } else {
            self.ever_read = true;
            self.blind_since = None;
        }
        readable
            .into_iter()
            .filter(|z| !self.stuck.contains(&z.kind))
            .collect()
    }
}

impl Core {
    pub(super) fn on_zones(&mut self, zones: &[ZoneReading]) {
        let now = self.now;
        let before = (
            self.thermal_track.unreadable.clone(),
            self.thermal_track.stuck.clone(),
        );
        let usable = self.thermal_track.observe(zones, now);
        let filtered: Vec<ZoneTemp> = if self.cfg.thermal.zones.is_empty() {
            usable
        } else {
            usable
                .into_iter()
                .filter(|z| self.cfg.thermal.zones.contains(&z.kind))
                .collect()
        };
        let after = (
            self.thermal_track.unreadable.clone(),
            self.thermal_track.stuck.clone(),
        );
        if after != before {
            let (unreadable, stuck) = (after.0.join(","), after.1.join(","));
            self.log(
                Level::Warn,
                "thermal zones left out",
                &[("unreadable", &unreadable), ("stuck", &stuck)],
            );
        }
        self.zones = filtered;
        let t = &self.cfg.thermal;
        let level = next_level(
            self.thermal,
            hottest(&self.zones),
            Thresholds {
                throttle: t.throttle_c,
                critical: t.critical_c,
                resume: t.resume_c,
            },
        );
        if level != self.thermal {
            let (from, to) = (format!("{:?}", self.thermal), format!("{level:?}"));
            let hot = hottest(&self.zones).map_or_else(|| "-".to_owned(), |c| format!("{c:.1}"));
            self.log(
                Level::Warn,
                "thermal level",
                &[("from", &from), ("to", &to), ("hottest", &hot)],
            );
            self.thermal = level;
            // Waiting clients are told again, now with (or without) the reason.
            for job in self.jobs.values_mut() {
                job.last_position = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Thresholds {
        Thresholds {
            throttle: 80.0,
            critical: 90.0,
            resume: 75.0,
        }
    }

    #[test]
    fn critical_holds_until_below_resume_and_without_readings() {
        use ThermalLevel::{Critical, Normal, Throttle};
        let mut level = ThermalLevel::Normal;
        let mut seen = Vec::new();
        for temp in [70.0, 85.0, 91.0, 85.0, 76.0, 74.0, 82.0] {
            level = next_level(level, Some(temp), t());
            seen.push(level);
        }
        assert_eq!(
            seen,
            [Normal, Throttle, Critical, Critical, Critical, Normal, Throttle]
        );
        // Unreadable is not cool: no reading keeps the level.
        assert_eq!(next_level(Critical, None, t()), Critical);
        assert_eq!(next_level(Normal, None, t()), Normal);
    }

    fn z(kind: &str, c: Option<f64>) -> ZoneReading {
        ZoneReading {
            kind: kind.into(),
            celsius: c,
        }
    }

    #[test]
    fn a_stuck_zone_is_ignored_once_others_move_and_unreadable_ones_are_listed() {
        let mut tr = Tracker::default();
        let mut now = Millis(0);
        for n in 0..=12u32 {
            let moving = 50.0 + f64::from(n % 3);
            let used = tr.observe(
                &[
                    z("soc-thermal", Some(95.0)),
                    z("npu-thermal", Some(moving)),
                    z("gpu-thermal", None),
                ],
                now,
            );
            if n < 10 {
                assert!(used.iter().any(|z| z.kind == "soc-thermal"), "{n}");
            } else {
                assert!(used.iter().all(|z| z.kind != "soc-thermal"), "{n}");
                assert_eq!(tr.stuck, ["soc-thermal"]);
            }
            assert_eq!(tr.unreadable, ["gpu-thermal"]);
            now = now + Duration::from_secs(60);
        }
        // All zones equally still (a quiet board) is not "stuck".
        let mut quiet = Tracker::default();
        for n in 0..20u64 {
            let used = quiet.observe(
                &[z("a", Some(40.0)), z("b", Some(41.0))],
                Millis(n * 60_000),
            );
            assert_eq!(used.len(), 2);
        }
        let used = quiet.observe(&[z("a", None)], Millis(2_000_000));
        assert!(used.is_empty());
        assert_eq!(quiet.blind_since, Some(Millis(2_000_000)));
    }
}
