//! Drain on SIGTERM (every `systemctl stop` and package upgrade): stop
//! admitting, tell waiting clients the service is restarting, let running
//! generations finish within `policy.drain_timeout_s`, then stop the workers
//! (SIGTERM, grace, SIGKILL) and exit.

use std::time::Duration;

use proto::admin::SlotState;
use proto::client::ErrorKind;

use super::slot::fail;
use super::{Core, Effect, Level, Notify};
use crate::config::secs;
use crate::lifecycle::Reason;

/// What clients are told when the service goes down under them.
pub const RESTARTING: &str = "the service is restarting; try again in a minute";

/// Margin after the last stop's grace period before the driver gives up
/// waiting for exits and kills what is left.
const KILL_MARGIN: Duration = Duration::from_secs(2);

impl Core {
    pub(super) fn begin_drain(&mut self) {
        if self.shutting_down {
            return;
        }
        let deadline = self.now + secs(self.cfg.policy.drain_timeout_s);
        let running = self.slots.iter().filter(|s| s.job.is_some()).count();
        let drain_s = self.cfg.policy.drain_timeout_s;
        self.log(
            Level::Info,
            "shutting down: draining",
            &[("running", &running), ("drain_s", &drain_s)],
        );
        self.out.push(Effect::Notify(Notify::Stopping));
        self.shutting_down = true;
        self.drain_deadline = Some(deadline);
        for id in std::mem::take(&mut self.queue) {
            if let Some(job) = self.jobs.remove(&id) {
                fail(&mut self.out, &job, ErrorKind::ShuttingDown, RESTARTING);
            }
        }
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            if s.pid.is_none() && !s.spawning && s.state != SlotState::Idle {
                s.wake_at = None;
                self.set_state(i, SlotState::Idle, None);
            }
        }
        self.drain_progress();
    }

    /// Stops every worker with nothing left to finish; after the deadline,
    /// every worker.
    pub(super) fn drain_progress(&mut self) {
        let late = self.drain_deadline.is_some_and(|d| self.now >= d);
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.pid.is_none() || s.stopped_for.is_some() {
                continue;
            }
            if s.job.is_none() || late {
                if late && s.job.is_some() {
                    let name = s.name;
                    self.log(
                        Level::Warn,
                        "drain deadline passed; cutting the reply",
                        &[("slot", &name)],
                    );
                }
                self.stop(i, Reason::Shutdown);
                let at = self.now + secs(self.cfg.policy.stop_grace_s) + KILL_MARGIN;
                self.kill_deadline = Some(self.kill_deadline.map_or(at, |k| k.max(at)));
            }
        }
    }

    /// Ends the drain once every worker is gone (or the kill deadline passed).
    pub(super) fn check_finished(&mut self) {
        if !self.shutting_down || self.exited {
            return;
        }
        let all_gone = self.slots.iter().all(|s| s.pid.is_none() && !s.spawning);
        let late = self.kill_deadline.is_some_and(|k| self.now > k);
        if !(all_gone || late) {
            return;
        }
        for i in 0..self.slots.len() {
            if let Some(pid) = self.slots[i].pid {
                self.out.push(Effect::Kill { pid });
            }
            self.out.push(Effect::RemovePidFile { slot: i });
        }
        // Anything still open hears why (it was cut by the deadline).
        let ids: Vec<u64> = self.jobs.keys().copied().collect();
        for id in ids {
            if let Some(job) = self.jobs.remove(&id) {
                if job.cancelled {
                    fail(&mut self.out, &job, ErrorKind::Cancelled, "cancelled");
                } else {
                    fail(&mut self.out, &job, ErrorKind::ShuttingDown, RESTARTING);
                }
            }
        }
        self.log(Level::Info, "supervisor stopped", &[]);
        self.exited = true;
        self.out.push(Effect::Exit);
    }

    /// Whether [`Effect::Exit`] was given.
    pub fn exited(&self) -> bool {
        self.exited
    }
}
