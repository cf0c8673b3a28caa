//! What the supervisor shows: the status report, the snapshot for /health
//! and /metrics, systemd's READY/STATUS/WATCHDOG, and the tick that drives
//! the timers.

use std::time::Duration;

use proto::admin::{
    ShadowBackoff, ShadowStatus, ShadowSummary, SlotState, SlotStatus, StatusReport,
    TelemetryStatus, ThermalStatus,
};
use proto::chat::Backend;

use super::{ms, Core, Effect, Notify};
use crate::observe::{self, Latency, Snapshot};

/// systemd's watchdog is fed this often from the tick.
const WATCHDOG_EVERY: Duration = Duration::from_secs(1);

/// The snapshot for /health and /metrics is refreshed this often (a scrape
/// more often than this gains nothing; `supctl status` is always fresh).
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

impl Core {
    pub(super) fn on_tick(&mut self) {
        self.check_liveness();
        if self.telemetry_due() {
            self.request_telemetry();
        }
        self.switch_profiles();
        self.expire_waiting();
        self.maybe_probe();
        if self.shutting_down {
            self.drain_progress();
        }
    }

    /// The report `supctl status` gets.
    pub fn status(&self) -> StatusReport {
        let now = self.now;
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: self.pid,
            uptime_ms: ms(now.since(self.started)),
            slots: self
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| SlotStatus {
                    name: s.name.to_owned(),
                    backend: s.cfg.backend,
                    state: s.state,
                    state_ms: ms(now.since(s.since)),
                    reason: s.reason.clone(),
                    pid: s.pid,
                    model: s.model.clone(),
                    profile: s.profile_name(),
                    profile_reason: s.profile_reason.clone(),
                    rss_anon_kb: s.mem.map(|m| m.rss_anon_kb),
                    rss_file_kb: s.mem.map(|m| m.rss_file_kb),
                    vm_hwm_kb: s.mem.map(|m| m.vm_hwm_kb),
                    memory_pressure: s.memory_pressure,
                    uptime_ms: s
                        .spawned_at
                        .filter(|_| s.pid.is_some())
                        .map(|t| ms(now.since(t))),
                    requests_served: s.requests_served,
                    last_decode_tps: s.last_decode_tps,
                    restarts: s.restarts,
                    last_restart_reason: s.last_restart_reason.map(|r| r.as_str().to_owned()),
                    chat_template: s.chat_template.clone(),
                    cpus: s.cfg.placement.as_ref().map(|p| p.cpus.clone()),
                    cpus_reason: s
                        .cfg
                        .placement
                        .as_ref()
                        .map_or_else(String::new, |p| p.reason.clone()),
                    cache: s.cache_status(),
                    shadowing: self.shadowing(i),
                    shadowed_by: self.shadowed_by(i),
                })
                .collect(),
            active_backend: self.active.map(|i| self.slots[i].cfg.backend),
            routing: self.routing,
            routing_reason: if self.shutting_down {
                format!("draining for shutdown; {}", self.routing_reason)
            } else {
                self.routing_reason.clone()
            },
            queue_depth: u32::try_from(self.queue.len()).unwrap_or(u32::MAX),
            in_flight: u32::try_from(self.slots.iter().filter(|s| s.job.is_some()).count())
                .unwrap_or(u32::MAX),
            thermal: ThermalStatus {
                zones: self.zones.clone(),
                level: self.thermal,
            },
            mem_available_kb: self.mem_available_kb,
            telemetry: TelemetryStatus {
                unreadable_zones: self.thermal_track.unreadable.clone(),
                stuck_zones: self.thermal_track.stuck.clone(),
                blind_ms: self.thermal_track.blind_since.map(|t| ms(now.since(t))),
                memory_read_failures: self.mem_read_failures,
            },
            shadow: ShadowSummary {
                stops_for_slowdown: self.counters.shadow_stops,
                backoffs: self
                    .shadow_backoffs()
                    .map(|(s, j, left)| ShadowBackoff {
                        serving: self.slots[s].name.to_owned(),
                        shadow: self.slots[j].name.to_owned(),
                        requests_left: left,
                    })
                    .collect(),
            },
        }
    }

    /// The request slot `i` shadows (its current process), if any.
    fn shadowing(&self, i: usize) -> Option<ShadowStatus> {
        let s = &self.slots[i];
        self.jobs.iter().find_map(|(&id, job)| {
            let sh = job
                .shadow
                .as_ref()
                .filter(|sh| sh.slot == i && sh.incarnation == s.incarnation)?;
            Some(ShadowStatus {
                request_id: id,
                serving: job
                    .slot
                    .map_or_else(String::new, |j| self.slots[j].name.to_owned()),
                streamed_tokens: job.tokens,
                warmed_answer_tokens: sh.warmed_at_tokens,
                warmed_tokens: sh.warmed_tokens,
                warming: sh.warming,
                stopped: sh.stopped,
            })
        })
    }

    /// The slot shadowing the request slot `i` serves, if any.
    fn shadowed_by(&self, i: usize) -> Option<String> {
        let job = self.jobs.get(&self.slots[i].job?)?;
        let sh = job.shadow.as_ref()?;
        let shadow = self.slots.get(sh.slot)?;
        (shadow.incarnation == sh.incarnation).then(|| shadow.name.to_owned())
    }

    /// Publishes the snapshot for /health and /metrics, and tells systemd.
    pub(super) fn publish(&mut self) {
        let now = self.now;
        if self
            .last_publish
            .is_some_and(|t| now.since(t) < PUBLISH_EVERY)
        {
            return;
        }
        self.last_publish = Some(now);
        let status = self.status();
        let since = self.last_tokens_at.map(|t| now.since(t).as_secs_f64());
        let health = observe::health(&status, since, self.cfg.http.healthy_within_s);
        let summary = match status.active_backend {
            Some(b) => {
                let tps = self
                    .active
                    .and_then(|i| self.slots[i].last_decode_tps)
                    .map_or_else(|| "-".to_owned(), |t| format!("{t:.1}"));
                format!(
                    "serving on {b}; last {tps} tok/s; {} waiting",
                    status.queue_depth
                )
            }
            None => "no worker ready".to_owned(),
        };
        if summary != self.sd_status {
            self.out
                .push(Effect::Notify(Notify::Status(summary.clone())));
            self.sd_status = summary;
        }
        // The watchdog is fed from the tick: if the loop stalls, systemd
        // restarts the service.
        if now.since(self.last_watchdog) >= WATCHDOG_EVERY {
            self.last_watchdog = now;
            self.out.push(Effect::Notify(Notify::Watchdog));
        }
        self.out.push(Effect::Publish(Box::new(Snapshot {
            status,
            counters: self.counters.clone(),
            health,
        })));
    }

    /// Hands a measured latency to the /metrics histograms.
    pub(super) fn observe(&mut self, latency: Latency, backend: Backend, took: Duration) {
        self.out.push(Effect::Observe {
            latency,
            backend,
            seconds: took.as_secs_f64(),
        });
    }

    /// READY=1 once a worker is ready, or none can be.
    pub(super) fn notify_ready_once(&mut self) {
        if self.ready_notified {
            return;
        }
        let settled = self
            .slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Ready | SlotState::Busy))
            || self
                .slots
                .iter()
                .all(|s| matches!(s.state, SlotState::Unavailable | SlotState::Failed));
        if settled {
            self.ready_notified = true;
            self.out.push(Effect::Notify(Notify::Ready));
        }
    }
}
