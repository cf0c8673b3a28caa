//! `supctl status`: the supervisor's state as a table, or JSON.

use std::fmt::Write as _;

use proto::admin::{Routing, ShadowStatus, ShadowSummary, StatusReport};
use proto::worker::{CacheReport, PromptCacheFile};

fn mib(kb: Option<u64>) -> String {
    kb.map_or_else(|| "-".into(), |kb| format!("{}", (kb + 512) / 1024))
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Renders the report as the human table.
#[allow(clippy::too_many_lines)] // one table, one place
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<4} {:<18} {:>7} {:<34} {:>6} {:>6} {:>6} {:>8} {:>6} {:>8} {:>9}",
        "WORKER",
        "BACK",
        "STATE",
        "PID",
        "MODEL",
        "ANON",
        "FILE",
        "HWM",
        "UPTIME",
        "SERVED",
        "TOK/S",
        "RESTARTS"
    );
    for s in &r.slots {
        let state = format!("{} {}", s.state.as_str(), duration(s.state_ms));
        let restarts = match &s.last_restart_reason {
            Some(reason) => format!("{} ({reason})", s.restarts),
            None => s.restarts.to_string(),
        };
        let _ = writeln!(
            out,
            "{:<9} {:<4} {:<18} {:>7} {:<34} {:>6} {:>6} {:>6} {:>8} {:>6} {:>8} {:>9}",
            s.name,
            s.backend.as_str(),
            state,
            s.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            truncate(&s.model, 34),
            mib(s.rss_anon_kb),
            mib(s.rss_file_kb),
            mib(s.vm_hwm_kb),
            s.uptime_ms.map_or_else(|| "-".into(), duration),
            s.requests_served,
            s.last_decode_tps
                .map_or_else(|| "-".into(), |t| format!("{t:.1}")),
            restarts,
        );
        if !s.reason.is_empty() {
            let _ = writeln!(out, "          why: {}", s.reason);
        }
        if s.memory_pressure {
            let _ = writeln!(
                out,
                "          memory pressure: above the soft ceiling or system memory low"
            );
        }
        if !s.chat_template.is_empty() {
            let _ = writeln!(out, "          chat template: {}", s.chat_template);
        }
        if let Some(line) = cache_line(&s.cache) {
            let _ = writeln!(out, "          kv cache: {line}");
        }
        if let Some(p) = &s.cache.prompt_cache {
            let _ = writeln!(out, "          prompt cache: {}", prompt_cache_line(p));
        }
        if let Some(sh) = &s.shadowing {
            let _ = writeln!(out, "          shadowing: {}", shadow_line(sh));
        }
        if let Some(by) = &s.shadowed_by {
            let _ = writeln!(out, "          shadowed by: {by}");
        }
        let _ = writeln!(
            out,
            "          profile: {}{}",
            s.profile,
            if s.profile_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.profile_reason)
            }
        );
        if let Some(cpus) = &s.cpus {
            let whose = match s.backend {
                proto::chat::Backend::Cpu => "threads pinned to",
                proto::chat::Backend::Npu => "runtime threads on",
            };
            let _ = writeln!(
                out,
                "          cpus: {whose} {cpus}{}",
                if s.cpus_reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.cpus_reason)
                }
            );
        }
    }
    let routing = match r.routing {
        Routing::Auto => "auto".to_owned(),
        Routing::Pinned(b) => format!("pinned to {b}"),
    };
    let _ = writeln!(
        out,
        "active: {} ({routing}; {})",
        r.active_backend.map_or("none", |b| b.as_str()),
        r.routing_reason
    );
    let _ = writeln!(
        out,
        "queue: {} waiting, {} generating",
        r.queue_depth, r.in_flight
    );
    if let Some(line) = shadow_summary(&r.shadow) {
        let _ = writeln!(out, "shadowing: {line}");
    }
    let temps: Vec<String> = r
        .thermal
        .zones
        .iter()
        .map(|z| format!("{} {:.1}°C", z.kind, z.celsius))
        .collect();
    let _ = writeln!(
        out,
        "thermal: {:?}{}",
        r.thermal.level,
        if temps.is_empty() {
            " (no zones readable)".to_owned()
        } else {
            format!(" — {}", temps.join(", "))
        }
    );
    if let Some(avail) = r.mem_available_kb {
        let _ = writeln!(out, "memory available: {} MiB", avail / 1024);
    }
    let t = &r.telemetry;
    if let Some(ms) = t.blind_ms {
        let _ = writeln!(
            out,
            "telemetry: no thermal zone readable for {}; the level is held at {:?}",
            duration(ms),
            r.thermal.level
        );
    }
    if !t.unreadable_zones.is_empty() {
        let _ = writeln!(
            out,
            "telemetry: unreadable zones left out: {}",
            t.unreadable_zones.join(", ")
        );
    }
    if !t.stuck_zones.is_empty() {
        let _ = writeln!(
            out,
            "telemetry: zones stuck at one value while others change, left out: {}",
            t.stuck_zones.join(", ")
        );
    }
    if t.memory_read_failures > 0 {
        let _ = writeln!(
            out,
            "telemetry: {} worker memory reads failed (the last sample was kept)",
            t.memory_read_failures
        );
    }
    let _ = writeln!(
        out,
        "supervisor: pid {}, up {}, version {}",
        r.pid,
        duration(r.uptime_ms),
        r.version
    );
    out
}

/// The slot's KV-cache line: what it holds and its figures; `None` for a
/// slot that keeps no conversations and never did.
fn cache_line(c: &CacheReport) -> Option<String> {
    let counted = c.hits + c.misses + c.evictions + c.dropped;
    if c.capacity == 0 && counted == 0 {
        return None;
    }
    let tokens: u64 = c.held.iter().map(|h| u64::from(h.tokens)).sum();
    Some(format!(
        "{} of {} conversations held ({tokens} tokens; {} MiB KV per sequence) · hits {} · misses {} · reused {} tokens · evictions {} · dropped by profile switches {}",
        c.held.len(),
        c.capacity,
        (c.kv_bytes_per_sequence + (1 << 19)) >> 20,
        c.hits,
        c.misses,
        c.reused_tokens,
        c.evictions,
        c.dropped
    ))
}

/// The prompt-cache line: the system prompt's KV file the worker loaded.
fn prompt_cache_line(p: &PromptCacheFile) -> String {
    format!(
        "system prompt{} in {} ({})",
        p.tokens
            .map(|t| format!(" ({t} tokens)"))
            .unwrap_or_default(),
        p.path,
        if p.built {
            "saved at this load"
        } else {
            "saved by an earlier load"
        }
    )
}

/// What a shadowing slot holds of the request it shadows.
fn shadow_line(sh: &ShadowStatus) -> String {
    let mut line = format!(
        "request {} of {} (warmed to {} of {} answer tokens; {} tokens cached)",
        sh.request_id, sh.serving, sh.warmed_answer_tokens, sh.streamed_tokens, sh.warmed_tokens
    );
    if sh.stopped {
        let _ = write!(
            line,
            "; warming stopped: it slowed {} (kept for a failover)",
            sh.serving
        );
    } else if sh.warming {
        line.push_str("; warming now");
    }
    line
}

/// Shadowing stopped for slowing the serving slot, and the back-offs;
/// `None` while neither ever happened.
fn shadow_summary(s: &ShadowSummary) -> Option<String> {
    if s.stops_for_slowdown == 0 && s.backoffs.is_empty() {
        return None;
    }
    let mut line = format!(
        "stopped {} times for slowing the serving slot",
        s.stops_for_slowdown
    );
    for b in &s.backoffs {
        let _ = write!(
            line,
            "; {} does not shadow {} for its next {} requests",
            b.shadow, b.serving, b.requests_left
        );
    }
    Some(line)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::admin::{SlotState, SlotStatus, TelemetryStatus, ThermalLevel, ThermalStatus};
    use proto::chat::Backend;

    fn slot(name: &str, backend: Backend, cpus: &str, reason: &str) -> SlotStatus {
        SlotStatus {
            name: name.into(),
            backend,
            state: SlotState::Ready,
            state_ms: 0,
            reason: String::new(),
            pid: Some(7),
            model: "m".into(),
            profile: "default".into(),
            profile_reason: String::new(),
            rss_anon_kb: None,
            rss_file_kb: None,
            vm_hwm_kb: None,
            memory_pressure: false,
            uptime_ms: None,
            requests_served: 0,
            last_decode_tps: None,
            restarts: 0,
            last_restart_reason: None,
            chat_template: String::new(),
            cpus: Some(cpus.parse().unwrap()),
            cpus_reason: reason.into(),
            cache: proto::worker::CacheReport::default(),
            shadowing: None,
            shadowed_by: None,
        }
    }

    #[test]
    fn both_workers_cores_are_shown() {
        let mut report = empty_report();
        report.slots = vec![
            slot("primary", Backend::Npu, "4-7", "npu.enabled_cpus_mask 0xf0"),
            slot(
                "fallback",
                Backend::Cpu,
                "0-3",
                "default: the board's cores the NPU runtime leaves free (it has 4-7)",
            ),
        ];
        let text = render(&report);
        assert!(
            text.contains("cpus: runtime threads on 4-7 (npu.enabled_cpus_mask 0xf0)"),
            "{text}"
        );
        assert!(
            text.contains("cpus: threads pinned to 0-3 (default: the board's cores the NPU runtime leaves free (it has 4-7))"),
            "{text}"
        );
    }

    fn empty_report() -> StatusReport {
        StatusReport {
            version: "0".into(),
            pid: 1,
            uptime_ms: 0,
            slots: Vec::new(),
            active_backend: None,
            routing: Routing::Auto,
            routing_reason: String::new(),
            queue_depth: 0,
            in_flight: 0,
            thermal: ThermalStatus {
                zones: Vec::new(),
                level: ThermalLevel::Normal,
            },
            mem_available_kb: None,
            telemetry: TelemetryStatus::default(),
            shadow: ShadowSummary::default(),
        }
    }

    #[test]
    fn telemetry_that_cannot_be_trusted_is_shown() {
        let report = StatusReport {
            version: "0".into(),
            pid: 1,
            uptime_ms: 0,
            slots: Vec::new(),
            active_backend: None,
            routing: Routing::Auto,
            routing_reason: String::new(),
            queue_depth: 0,
            in_flight: 0,
            thermal: ThermalStatus {
                zones: Vec::new(),
                level: ThermalLevel::Critical,
            },
            mem_available_kb: None,
            telemetry: TelemetryStatus {
                unreadable_zones: vec!["soc-thermal".into()],
                stuck_zones: vec!["gpu-thermal".into()],
                blind_ms: Some(90_000),
                memory_read_failures: 3,
            },
            shadow: ShadowSummary::default(),
        };
        let text = render(&report);
        assert!(
            text.contains("no thermal zone readable for 1m30s; the level is held at Critical"),
            "{text}"
        );
        assert!(
            text.contains("unreadable zones left out: soc-thermal"),
            "{text}"
        );
        assert!(text.contains("left out: gpu-thermal"), "{text}");
        assert!(text.contains("3 worker memory reads failed"), "{text}");
    }

    #[test]
    fn which_slot_shadows_which_request_is_shown() {
        let mut report = empty_report();
        let mut primary = slot("primary", Backend::Cpu, "4-7", "");
        primary.state = SlotState::Busy;
        primary.shadowed_by = Some("fallback".into());
        let mut fallback = slot("fallback", Backend::Cpu, "0-3", "");
        fallback.shadowing = Some(ShadowStatus {
            request_id: 12,
            serving: "primary".into(),
            streamed_tokens: 40,
            warmed_answer_tokens: 32,
            warmed_tokens: 104,
            warming: true,
            stopped: false,
        });
        report.slots = vec![primary, fallback];
        let text = render(&report);
        assert!(text.contains("shadowed by: fallback"), "{text}");
        assert!(
            text.contains("shadowing: request 12 of primary (warmed to 32 of 40 answer tokens; 104 tokens cached); warming now"),
            "{text}"
        );
        assert!(!text.contains("stopped"), "{text}");
        report.shadow = ShadowSummary {
            stops_for_slowdown: 2,
            backoffs: vec![proto::admin::ShadowBackoff {
                serving: "primary".into(),
                shadow: "fallback".into(),
                requests_left: 3,
            }],
        };
        if let Some(sh) = report.slots[1].shadowing.as_mut() {
            sh.stopped = true;
        }
        let text = render(&report);
        assert!(
            text.contains("warming stopped: it slowed primary (kept for a failover)"),
            "{text}"
        );
        assert!(
            text.contains("shadowing: stopped 2 times for slowing the serving slot; fallback does not shadow primary for its next 3 requests"),
            "{text}"
        );
    }

    #[test]
    fn the_kv_cache_line_shows_what_is_held_and_the_figures() {
        assert_eq!(cache_line(&CacheReport::default()), None);
        let c = CacheReport {
            held: vec![proto::worker::HeldConversation {
                key: "1".into(),
                tokens: 300,
            }],
            capacity: 4,
            kv_bytes_per_sequence: 47_185_920,
            hits: 3,
            misses: 1,
            reused_tokens: 900,
            evictions: 2,
            dropped: 1,
            prompt_cache: None,
        };
        let line = cache_line(&c).unwrap();
        assert_eq!(
            line,
            "1 of 4 conversations held (300 tokens; 45 MiB KV per sequence) · hits 3 · misses 1 · reused 900 tokens · evictions 2 · dropped by profile switches 1"
        );
    }

    #[test]
    fn the_prompt_cache_line_says_what_the_file_holds_and_who_saved_it() {
        let p = PromptCacheFile {
            path: "/s/prompt-cache/q.0a.prompt-cache".into(),
            tokens: Some(57),
            built: true,
        };
        assert_eq!(
            prompt_cache_line(&p),
            "system prompt (57 tokens) in /s/prompt-cache/q.0a.prompt-cache (saved at this load)"
        );
        let p = PromptCacheFile {
            tokens: None,
            built: false,
            ..p
        };
        assert_eq!(
            prompt_cache_line(&p),
            "system prompt in /s/prompt-cache/q.0a.prompt-cache (saved by an earlier load)"
        );
    }
}
