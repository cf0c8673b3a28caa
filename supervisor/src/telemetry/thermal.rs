//! Board temperatures from sysfs thermal zones, and the admission level they
//! imply (with hysteresis).

use std::path::Path;

use proto::admin::{ThermalLevel, ZoneTemp};

/// Reads every `<sysfs_root>/class/thermal/thermal_zone*/{type,temp}`; zones
/// whose files are missing or unreadable are skipped (a zone can be disabled).
/// `only` restricts to zone types in the list (empty = all).
pub fn read_zones(sysfs_root: &Path, only: &[String]) -> Vec<ZoneTemp> {
    let Ok(entries) = std::fs::read_dir(sysfs_root.join("class/thermal")) else {
        return Vec::new();
    };
    let mut zones: Vec<(String, ZoneTemp)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| {
            let dir = e.path();
            let kind = std::fs::read_to_string(dir.join("type"))
                .ok()?
                .trim()
                .to_owned();
            let milli: i64 = std::fs::read_to_string(dir.join("temp"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            #[allow(clippy::cast_precision_loss)] // millidegrees fit f64 exactly
            let celsius = milli as f64 / 1000.0;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                ZoneTemp { kind, celsius },
            ))
        })
        .filter(|(_, z)| only.is_empty() || only.contains(&z.kind))
        .collect();
    // thermal_zone10 after thermal_zone9.
    zones.sort_by_key(|(name, _)| {
        name.trim_start_matches("thermal_zone")
            .parse::<u32>()
            .unwrap_or(u32::MAX)
    });
    zones.into_iter().map(|(_, z)| z).collect()
}

/// The hottest temperature, if any zone was read.
pub fn hottest(zones: &[ZoneTemp]) -> Option<f64> {
    zones.iter().map(|z| z.celsius).reduce(f64::max)
}

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

/// The admission level after a reading. Critical is sticky until the
/// temperature falls below `resume` (hysteresis, so admission does not flap
/// around one threshold); no reading at all keeps normal service.
pub fn next_level(current: ThermalLevel, hottest: Option<f64>, t: Thresholds) -> ThermalLevel {
    let Some(temp) = hottest else {
        return ThermalLevel::Normal;
    };
    if temp >= t.critical || (current == ThermalLevel::Critical && temp >= t.resume) {
        ThermalLevel::Critical
    } else if temp >= t.throttle {
        ThermalLevel::Throttle
    } else {
        ThermalLevel::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &Path, n: u32, kind: &str, milli: i64) {
        let dir = root.join(format!("class/thermal/thermal_zone{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
        std::fs::write(dir.join("temp"), format!("{milli}\n")).unwrap();
    }

    #[test]
    fn zones_are_read_in_order_and_filtered_by_type() {
        let dir = tempfile::tempdir().unwrap();
        zone(dir.path(), 10, "npu-thermal", 61_500);
        zone(dir.path(), 0, "soc-thermal", 48_000);
        zone(dir.path(), 2, "bigcore0-thermal", 52_250);
        std::fs::create_dir_all(dir.path().join("class/thermal/thermal_zone3")).unwrap(); // no files
        let zones = read_zones(dir.path(), &[]);
        let kinds: Vec<&str> = zones.iter().map(|z| z.kind.as_str()).collect();
        assert_eq!(kinds, ["soc-thermal", "bigcore0-thermal", "npu-thermal"]);
        assert_eq!(hottest(&zones), Some(61.5));
        let only = read_zones(dir.path(), &["soc-thermal".into()]);
        assert_eq!(only.len(), 1);
        assert!(read_zones(Path::new("/nonexistent"), &[]).is_empty());
    }

    #[test]
    fn critical_holds_until_below_resume() {
        use ThermalLevel::{Critical, Normal, Throttle};
        let t = Thresholds {
            throttle: 80.0,
            critical: 90.0,
            resume: 75.0,
        };
        let mut level = ThermalLevel::Normal;
        let mut seen = Vec::new();
        for temp in [70.0, 85.0, 91.0, 85.0, 76.0, 74.0, 82.0] {
            level = next_level(level, Some(temp), t);
            seen.push(level);
        }
        assert_eq!(
            seen,
            [Normal, Throttle, Critical, Critical, Critical, Normal, Throttle]
        );
        assert_eq!(next_level(Critical, None, t), Normal);
    }
}
