//! Board temperatures from sysfs thermal zones (the level they imply is the
//! core's decision, in [`crate::core::thermal`]).

use std::path::Path;

use proto::admin::ZoneTemp;

use crate::core::ZoneReading;

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

pub use crate::core::thermal::hottest;

/// Every zone under `<sysfs_root>/class/thermal`, with `celsius: None` for
/// a zone whose type is known but whose temperature cannot be read: the core
/// decides what an unreadable zone means (see [`crate::core::thermal`]).
pub fn read_zone_readings(sysfs_root: &Path) -> Vec<ZoneReading> {
    let Ok(entries) = std::fs::read_dir(sysfs_root.join("class/thermal")) else {
        return Vec::new();
    };
    let mut zones: Vec<(u32, ZoneReading)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u32 = name.strip_prefix("thermal_zone")?.parse().ok()?;
            let dir = e.path();
            let kind = std::fs::read_to_string(dir.join("type"))
                .ok()?
                .trim()
                .to_owned();
            let celsius = std::fs::read_to_string(dir.join("temp"))
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .map(|milli| {
                    #[allow(clippy::cast_precision_loss)] // millidegrees fit f64 exactly
                    let c = milli as f64 / 1000.0;
                    c
                });
            Some((n, ZoneReading { kind, celsius }))
        })
        .collect();
    zones.sort_by_key(|(n, _)| *n);
    zones.into_iter().map(|(_, z)| z).collect()
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
    fn unreadable_zones_are_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        zone(dir.path(), 1, "npu-thermal", 61_500);
        let bad = dir.path().join("class/thermal/thermal_zone0");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("type"), "soc-thermal\n").unwrap();
        std::fs::write(bad.join("temp"), "garbage\n").unwrap();
        let zones = read_zone_readings(dir.path());
        assert_eq!(zones.len(), 2);
        assert_eq!(
            (zones[0].kind.as_str(), zones[0].celsius),
            ("soc-thermal", None)
        );
        assert_eq!(zones[1].celsius, Some(61.5));
    }
}
