//! `/status`: asks the supervisor for its status on the admin socket and
//! words the report for Discord.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use client::cluster::wire::Heartbeat;
use client::{AdminClient, ClientError};
use proto::admin::{Routing, SlotStatus, StatusReport, ThermalLevel};

use crate::SOFTWARE;

/// `/status` must answer within Discord's interaction window.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches the supervisor's status report.
///
/// # Errors
/// [`ClientError`] when the supervisor cannot be reached, refuses, or does
/// not answer within [`ADMIN_TIMEOUT`].
pub async fn fetch_status(path: &Path) -> Result<StatusReport, ClientError> {
    AdminClient::connect_as(path, SOFTWARE)
        .await?
        .with_timeout(ADMIN_TIMEOUT)
        .status()
        .await
}

fn duration(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h {}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d {}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

fn slot_line(slot: &SlotStatus) -> String {
    let mut line = format!(
        "- **{}** ({}): {} for {}",
        slot.name,
        slot.backend,
        slot.state.as_str(),
        duration(slot.state_ms)
    );
    if !slot.reason.is_empty() {
        let _ = write!(line, " ({})", slot.reason);
    }
    if !slot.model.is_empty() {
        let _ = write!(line, ", model {}", slot.model);
    }
    if !slot.profile.is_empty() {
        let _ = write!(line, ", profile {}", slot.profile);
    }
    if let Some(tps) = slot.last_decode_tps {
        let _ = write!(line, ", {tps:.1} tok/s");
    }
    if let Some(kb) = slot.rss_anon_kb {
        let _ = write!(line, ", {} MiB anon", kb / 1024);
    }
    let _ = write!(
        line,
        ", {} served, {} restarts",
        slot.requests_served, slot.restarts
    );
    if let Some(reason) = &slot.last_restart_reason {
        let _ = write!(line, " (last: {reason})");
    }
    line
}

/// A cluster's boards, from their heartbeats, as a Discord message: one line
/// per board (at most 20, so it stays under 2000 characters).
pub fn format_cluster(boards: &[(Heartbeat, bool, u64)]) -> String {
    if boards.is_empty() {
        return "**rocksteady cluster**: no board is announcing itself".to_owned();
    }
    let mut out = format!("**rocksteady cluster**: {} boards\n", boards.len());
    for (beat, alive, ago_ms) in boards.iter().take(20) {
        let ready = beat
            .slots
            .iter()
            .filter(|s| s.state == proto::admin::SlotState::Ready)
            .count();
        let hottest = beat
            .temperatures
            .iter()
            .map(|(_, c)| *c)
            .fold(f64::NAN, f64::max);
        let _ = write!(
            out,
            "{} {}: {}, {ready}/{} slots ready, {} waiting",
            if *alive { "🟢" } else { "🔴" },
            beat.board,
            if beat.classes.is_empty() {
                "serving nothing".to_owned()
            } else {
                beat.classes.join(", ")
            },
            beat.slots.len(),
            beat.queue,
        );
        if hottest.is_finite() {
            let _ = write!(out, ", {hottest:.0} °C");
        }
        if !alive {
            let _ = write!(out, ", silent for {}", duration(*ago_ms));
        }
        out.push('\n');
    }
    out
}

/// The report as a Discord message (under 2000 characters).
pub fn format_status(report: &StatusReport) -> String {
    let mut out = format!(
        "**rocksteady** {} (pid {}, up {})\n",
        report.version,
        report.pid,
        duration(report.uptime_ms)
    );
    let active = report
        .active_backend
        .map_or_else(|| "none".to_owned(), |b| b.to_string());
    let routing = match report.routing {
        Routing::Auto => "auto".to_owned(),
        Routing::Pinned(b) => format!("pinned to {b}"),
    };
    let _ = writeln!(
        out,
        "Backend: **{active}** (routing {routing}{})",
        if report.routing_reason.is_empty() {
            String::new()
        } else {
            format!(": {}", report.routing_reason)
        }
    );
    let _ = writeln!(
        out,
        "Queue: {} waiting, {} generating",
        report.queue_depth, report.in_flight
    );
    for slot in &report.slots {
        out.push_str(&slot_line(slot));
        out.push('\n');
    }
    let level = match report.thermal.level {
        ThermalLevel::Normal => "normal",
        ThermalLevel::Throttle => "throttling",
        ThermalLevel::Critical => "critical: not starting generations",
    };
    let zones: Vec<String> = report
        .thermal
        .zones
        .iter()
        .map(|z| {
            format!(
                "{} {:.1} °C",
                z.kind.trim_end_matches("-thermal"),
                z.celsius
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "Temperatures ({level}): {}",
        if zones.is_empty() {
            "not available".to_owned()
        } else {
            zones.join(", ")
        }
    );
    if let Some(kb) = report.mem_available_kb {
        let _ = writeln!(out, "Memory available: {} MiB", kb / 1024);
    }
    if out.chars().count() > crate::split::DISCORD_LIMIT {
        out = out
            .chars()
            .take(crate::split::DISCORD_LIMIT - 1)
            .collect::<String>();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::admin::{SlotState, ThermalStatus, ZoneTemp};
    use proto::chat::Backend;

    #[test]
    fn status_shows_backend_states_queue_temperatures() {
        let report = StatusReport {
            version: "0.1.0".into(),
            pid: 42,
            uptime_ms: 3_725_000,
            slots: vec![SlotStatus {
                name: "primary".into(),
                backend: Backend::Npu,
                state: SlotState::Ready,
                state_ms: 65_000,
                reason: String::new(),
                pid: Some(43),
                model: "qwen".into(),
                profile: "normal".into(),
                profile_reason: String::new(),
                rss_anon_kb: Some(2048),
                rss_file_kb: None,
                vm_hwm_kb: None,
                memory_pressure: false,
                uptime_ms: Some(1),
                requests_served: 7,
                last_decode_tps: Some(9.25),
                restarts: 1,
                last_restart_reason: Some("hang".into()),
                chat_template: String::new(),
                cpus: None,
                cpus_reason: String::new(),
                cache: proto::worker::CacheReport::default(),
                shadowing: None,
                shadowed_by: None,
            }],
            active_backend: Some(Backend::Npu),
            routing: Routing::Auto,
            routing_reason: "primary ready".into(),
            queue_depth: 2,
            in_flight: 1,
            thermal: ThermalStatus {
                zones: vec![ZoneTemp {
                    kind: "soc-thermal".into(),
                    celsius: 51.25,
                }],
                level: ThermalLevel::Throttle,
            },
            mem_available_kb: Some(4_194_304),
            telemetry: proto::admin::TelemetryStatus::default(),
            shadow: proto::admin::ShadowSummary::default(),
        };
        let text = format_status(&report);
        assert!(text.contains("up 1h 2m"), "{text}");
        assert!(text.contains("Backend: **npu**"), "{text}");
        assert!(text.contains("Queue: 2 waiting, 1 generating"), "{text}");
        assert!(
            text.contains("**primary** (npu): ready for 1m 5s"),
            "{text}"
        );
        assert!(
            text.contains("9.2 tok/s") || text.contains("9.3 tok/s"),
            "{text}"
        );
        assert!(
            text.contains("soc 51.2 °C") || text.contains("soc 51.3 °C"),
            "{text}"
        );
        assert!(text.contains("throttling"), "{text}");
        assert!(text.contains("(last: hang)"), "{text}");
        assert!(text.contains("4096 MiB"), "{text}");
    }

    #[test]
    fn a_cluster_lists_each_board_and_a_silent_one() {
        use client::cluster::wire::BoardSlot;
        use proto::admin::SlotState;
        let beat = |board: &str, classes: Vec<String>| Heartbeat {
            board: board.into(),
            classes,
            slots: vec![BoardSlot {
                name: "primary".into(),
                backend: proto::chat::Backend::Npu,
                model: "qwen".into(),
                state: SlotState::Ready,
            }],
            queue: 2,
            in_flight: 1,
            temperatures: vec![("soc-thermal".into(), 61.2), ("npu-thermal".into(), 64.8)],
            active: Vec::new(),
            interval_ms: 1000,
            problem: String::new(),
        };
        let text = format_cluster(&[
            (beat("board-1", vec!["npu-1_5b".into()]), true, 300),
            (beat("board-2", Vec::new()), false, 65_000),
        ]);
        assert!(text.contains("2 boards"), "{text}");
        assert!(
            text.contains("🟢 board-1: npu-1_5b, 1/1 slots ready, 2 waiting, 65 °C"),
            "{text}"
        );
        assert!(
            text.contains("🔴 board-2: serving nothing") && text.contains("silent for"),
            "{text}"
        );
        assert!(format_cluster(&[]).contains("no board"));
    }
}
