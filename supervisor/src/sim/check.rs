//! The invariants the simulation checks after every step, and what it
//! tracks to check them (what each client received, restarts and probes).

use std::collections::BTreeMap;
use std::time::Duration;

use proto::admin::{Routing, SlotState, ThermalLevel};
use proto::client::SupervisorToClient;

use crate::config::secs;
use crate::core::{Core, Millis};
use crate::lifecycle::Reason;

/// What one client request has received.
#[derive(Debug, Default, Clone)]
pub struct Request {
    /// Token text received, in order.
    pub received: String,
    /// Done or error events received.
    pub terminals: u32,
    /// The client left before the end.
    pub gone: bool,
}

/// Observations across steps.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Per (conn, client id).
    pub requests: BTreeMap<(u64, u64), Request>,
    /// Per slot: restarts seen.
    restarts: Vec<u32>,
    /// Per slot: times of backoff restarts (BackingOff -> Starting).
    restart_spawns: Vec<Vec<Millis>>,
    /// Per slot: last probe (Failed -> Starting).
    last_probe: Vec<Option<Millis>>,
    /// Per slot: states before the step.
    states: Vec<SlotState>,
    /// Slots an admin restarted (history cleared): per slot, when.
    pub admin_restart: Vec<Option<Millis>>,
}

impl Tracker {
    /// Records an event a client received; returns a violation, if any.
    pub fn client_event(&mut self, conn: u64, event: &SupervisorToClient) -> Option<String> {
        let id = match event {
            SupervisorToClient::Queued(e) => e.request_id,
            SupervisorToClient::Started(e) => e.request_id,
            SupervisorToClient::Token(e) => e.request_id,
            SupervisorToClient::Failover(e) => e.request_id,
            SupervisorToClient::Done(e) => e.request_id,
            SupervisorToClient::Error(e) => e.request_id,
            // An answer to a models query, not a request's event.
            SupervisorToClient::Models(_) => return None,
        };
        let r = self.requests.entry((conn, id)).or_default();
        if r.gone {
            return Some(format!(
                "request {conn}/{id}: event after its client left: {event:?}"
            ));
        }
        if r.terminals > 0 {
            return Some(format!(
                "request {conn}/{id}: event after its end: {event:?}"
            ));
        }
        match event {
            SupervisorToClient::Token(t) => r.received.push_str(&t.text),
            SupervisorToClient::Done(d) => {
                r.terminals += 1;
                if d.text != r.received {
                    return Some(format!(
                        "request {conn}/{id}: done text {:?} is not what was streamed {:?}",
                        d.text, r.received
                    ));
                }
            }
            SupervisorToClient::Error(e) => {
                r.terminals += 1;
                if e.message.is_empty() {
                    return Some(format!("request {conn}/{id}: error without a message"));
                }
            }
            _ => {}
        }
        None
    }

    /// Remembers the slot states before a step.
    pub fn before(&mut self, core: &Core) {
        let n = core.slots().len();
        if self.restarts.len() != n {
            self.restarts = vec![0; n];
            self.restart_spawns = vec![Vec::new(); n];
            self.last_probe = vec![None; n];
            self.admin_restart = vec![None; n];
        }
        self.states = core.slots().iter().map(|s| s.state).collect();
    }

    /// Checks every invariant after a step; `faults` are those injected per
    /// slot, with the incarnation of the process they hit (one is used up
    /// by each restart it explains).
    #[allow(clippy::too_many_lines)] // one check after another, each short
    pub fn after(
        &mut self,
        core: &Core,
        now: Millis,
        faults: &mut [Vec<(u64, &'static str)>],
    ) -> Vec<String> {
        let mut v: Vec<String> = core.violations().to_vec();
        let policy = core.policy();
        for (i, s) in core.slots().iter().enumerate() {
            let before = self.states[i];
            if before == SlotState::BackingOff && s.state == SlotState::Starting {
                self.restart_spawns[i].push(now);
                let window = policy.period;
                let since = self.admin_restart[i];
                let recent = self.restart_spawns[i]
                    .iter()
                    .filter(|t| now.since(**t) <= window && since.is_none_or(|a| **t > a))
                    .count();
                if recent > policy.intensity as usize {
                    v.push(format!(
                        "{}: {recent} restarts within {:?}, intensity {}",
                        s.name, window, policy.intensity
                    ));
                }
            }
            if before == SlotState::Failed && s.state == SlotState::Starting {
                // A probe that reaches ready clears the restart history.
                self.restart_spawns[i].clear();
                if let Some(last) = self.last_probe[i] {
                    let admin = self.admin_restart[i].is_some_and(|a| a >= last);
                    if now.since(last) < policy.cooldown && !admin {
                        v.push(format!(
                            "{}: probed again after {:?} (cooldown {:?})",
                            s.name,
                            now.since(last),
                            policy.cooldown
                        ));
                    }
                }
                self.last_probe[i] = Some(now);
            }
            if s.restarts != self.restarts[i] {
                self.restarts[i] = s.restarts;
                let reason = s.last_restart_reason.unwrap_or(Reason::Crash);
                let allowed: &[&str] = match reason {
                    Reason::Crash => &["crash", "disconnect", "exit-code"],
                    Reason::Oom => &["oom", "oom-elsewhere"],
                    Reason::Killed => &["kill9"],
                    Reason::Hang => &["hang", "slow"],
                    Reason::LoadTimeout => &["load-hang", "hang"],
                    Reason::Memory => &["grow", "ceiling"],
                    Reason::Admin => &["admin-restart"],
                    Reason::SpawnFailed => &["spawn-fail"],
                    Reason::Shutdown => &[],
                };
                // The restart is of the current process, or of the one just
                // replaced (an admin restart spawns in the same step); a lower
                // ceiling set by an operator holds for every later process.
                let cur = s.incarnation;
                let explains = |(inc, f): &(u64, &str)| {
                    allowed.contains(f) && (*f == "ceiling" || *inc == cur || *inc + 1 == cur)
                };
                match faults[i].iter().position(explains) {
                    Some(k) => {
                        if faults[i][k].1 != "ceiling" {
                            faults[i].remove(k);
                        }
                    }
                    None => v.push(format!(
                        "{}: restart counted as {reason} with no such fault (injected: {:?})",
                        s.name, faults[i]
                    )),
                }
            }
        }
        // Never two processes in one slot is checked by the world (it holds
        // the processes); the queue and the deadlines here.
        let cfg = core.config();
        let fresh = core
            .queue()
            .iter()
            .filter(|id| {
                core.jobs()
                    .get(id)
                    .is_some_and(|j| j.failovers == 0 && j.refusals == 0 && !j.probe)
            })
            .count();
        // Admission keeps new requests within the capacity; a request that
        // lost its worker goes back to the front over it, at most one per slot.
        let bound = cfg.supervisor.queue_capacity + core.slots().len();
        if core.queue().len() > bound {
            v.push(format!(
                "{} requests queued, more than {bound}",
                core.queue().len()
            ));
        }
        if fresh > cfg.supervisor.queue_capacity {
            v.push(format!(
                "{fresh} new requests queued, capacity {}",
                cfg.supervisor.queue_capacity
            ));
        }
        // Every waiting client knows where it stands.
        for (pos, id) in core.queue().iter().enumerate() {
            if let Some(j) = core.jobs().get(id).filter(|j| !j.probe && !j.silent) {
                if j.last_position as usize != pos + 1 {
                    v.push(format!(
                        "request {id} is at {} but was told {}",
                        pos + 1,
                        j.last_position
                    ));
                }
            }
        }
        // Expiry is checked on the tick (200 ms in the simulation).
        let deadline = secs(cfg.supervisor.queue_timeout_s) + Duration::from_millis(250);
        for id in core.queue() {
            if let Some(j) = core.jobs().get(id) {
                if now.since(j.waiting_since) > deadline {
                    v.push(format!(
                        "request {id} waited {:?} without being told why",
                        now.since(j.waiting_since)
                    ));
                }
            }
        }
        // Spill-over: nothing waits while a slot that may take it is idle.
        let spill = cfg.policy.spill_over
            && core.routing() == Routing::Auto
            && !core.shutting_down()
            && core.thermal_level() != ThermalLevel::Critical;
        if spill && !core.queue().is_empty() {
            if let Some(a) = core.active() {
                for (j, s) in core.slots().iter().enumerate() {
                    if s.can_take() && (j == a || j != 0) {
                        v.push(format!(
                            "{} is idle while {} requests wait",
                            s.name,
                            core.queue().len()
                        ));
                    }
                }
            }
        }
        v
    }

    /// At the end: every request ended exactly once (unless its client left).
    pub fn finish(&self) -> Vec<String> {
        self.requests
            .iter()
            .filter(|(_, r)| !r.gone && r.terminals != 1)
            .map(|((c, id), r)| format!("request {c}/{id} ended {} times", r.terminals))
            .collect()
    }
}
