//! Worker processes: asking for a spawn and taking its answer, stopping a
//! worker (and moving its request on), connections and exits, and carrying
//! out the lifecycle decision on each.

use std::time::Duration;

use proto::admin::SlotState;
use proto::client::ErrorKind;
use proto::worker::SupervisorToWorker;

use super::slot::fail;
use super::{Core, Effect, Level, OomCounters, SpawnError};
use crate::config::secs;
use crate::lifecycle::{self, Action, Exit, Observation, Reason};

/// How long an exit waits for the worker's connection to drain (its last
/// messages explain the exit) before it is handled anyway.
pub(super) const EXIT_DRAIN: Duration = Duration::from_millis(500);

impl Core {
    /// Asks the driver for a new process in slot `i` (state Starting).
    pub(super) fn spawn(&mut self, i: usize) {
        if self.shutting_down {
            return;
        }
        let s = &mut self.slots[i];
        if s.pid.is_some() || s.spawning {
            let what = format!("spawn of {} while a process is alive", s.name);
            self.violation(what);
            return;
        }
        s.incarnation += 1;
        s.cache_new_process();
        s.spawning = true;
        s.stopped_for = None;
        s.load_failure = None;
        s.connected = false;
        s.mem = None;
        s.mem_read_failures = 0;
        s.wake_at = None;
        s.disconnected_at = None;
        s.pending_exit = None;
        s.refused_until = None;
        s.spawned_at = Some(self.now);
        let memory_max = (s.cfg.memory_hard_mib > 0).then_some(s.cfg.memory_hard_mib << 20);
        let incarnation = s.incarnation;
        self.out.push(Effect::Spawn {
            slot: i,
            incarnation,
            memory_max,
        });
        self.set_state(i, SlotState::Starting, None);
    }

    pub(super) fn on_spawned(&mut self, i: usize, incarnation: u64, pid: u32, oom: OomCounters) {
        let Some(s) = self
            .slots
            .get_mut(i)
            .filter(|s| s.incarnation == incarnation)
        else {
            return;
        };
        s.spawning = false;
        s.pid = Some(pid);
        s.oom_at_spawn = oom;
        s.spawned_at = Some(self.now);
        let (name, backend) = (s.name, s.cfg.backend);
        self.out.push(Effect::WritePidFile { slot: i, pid });
        self.log(
            Level::Info,
            "worker spawned",
            &[("slot", &name), ("pid", &pid), ("backend", &backend)],
        );
        if self.shutting_down {
            // Started just before the drain began: it has nothing to finish.
            self.drain_progress();
        }
    }

    pub(super) fn on_spawn_failed(&mut self, i: usize, incarnation: u64, error: &SpawnError) {
        let now = self.now;
        let Some(s) = self
            .slots
            .get_mut(i)
            .filter(|s| s.incarnation == incarnation)
        else {
            return;
        };
        s.spawning = false;
        let name = s.name;
        let binary = s.cfg.worker.as_ref().map_or_else(
            || format!("worker-{}", s.cfg.backend),
            |p| p.display().to_string(),
        );
        self.log(
            Level::Error,
            "cannot start worker",
            &[
                ("slot", &name),
                ("binary", &binary),
                ("error", &error.message),
                ("permanent", &error.permanent),
            ],
        );
        let s = &mut self.slots[i];
        let obs = Observation::SpawnFailed {
            permanent: error.permanent,
            message: format!("{binary}: {}", error.message),
        };
        let d = lifecycle::decide(
            s.state,
            &obs,
            &self.policy,
            &mut s.history,
            self.shutting_down,
            now,
        );
        self.apply(i, d, None);
    }

    /// Stops slot `i`'s worker for `reason`; the request it serves moves on
    /// now, not after the process is gone (a hung worker may take the whole
    /// grace period to die).
    pub(super) fn stop(&mut self, i: usize, reason: Reason) {
        let grace = secs(self.cfg.policy.stop_grace_s);
        let s = &mut self.slots[i];
        let Some(pid) = s.pid else { return };
        if s.stopped_for.is_some() {
            return; // already stopping
        }
        let name = s.name;
        let level = if reason == Reason::Shutdown {
            Level::Info
        } else {
            Level::Warn
        };
        self.log(
            level,
            "stopping worker",
            &[("slot", &name), ("pid", &pid), ("reason", &reason)],
        );
        let s = &mut self.slots[i];
        s.stopped_for = Some(reason);
        if s.connected {
            self.out.push(Effect::ToWorker {
                slot: i,
                incarnation: s.incarnation,
                msg: SupervisorToWorker::Shutdown,
            });
        }
        self.out.push(Effect::Stop {
            slot: i,
            pid,
            grace,
        });
        let s = &mut self.slots[i];
        // A hang before the first token is suspected to be the request's own
        // doing (a prompt that wedges the worker): it is not run again.
        let suspect =
            reason == Reason::Hang && s.last_token_at.is_none() && s.generate_sent_at.is_some();
        let limit = s.first_token_limit;
        let job = s.job.take();
        s.generate_sent_at = None;
        s.last_token_at = None;
        s.restart_after_job = false;
        self.set_state(i, SlotState::Stopping, Some(reason.as_str().to_owned()));
        if let Some(id) = job {
            if suspect {
                if let Some(job) = self.jobs.remove(&id) {
                    let msg = format!(
                        "the worker did not start answering within {:.0}s and was restarted; \
                         the request was not retried because it may be what stalls the worker",
                        limit.as_secs_f64()
                    );
                    fail(&mut self.out, &job, ErrorKind::WorkerFailed, msg);
                }
            } else {
                self.rescue(id, i, reason);
            }
        }
    }

    pub(super) fn on_worker_connected(&mut self, i: usize, incarnation: u64) {
        let now = self.now;
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        if s.incarnation != incarnation || s.state != SlotState::Starting || s.pid.is_none() {
            return;
        }
        s.connected = true;
        s.last_heartbeat = now;
        s.last_ping = now;
        self.out.push(Effect::ToWorker {
            slot: i,
            incarnation,
            msg: SupervisorToWorker::Load(s.cfg.load_message_for(s.on_fallback_profile)),
        });
        self.set_state(i, SlotState::Loading, None);
    }

    pub(super) fn on_worker_disconnected(&mut self, i: usize, incarnation: u64) {
        let now = self.now;
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        if s.incarnation != incarnation || s.pid.is_none() {
            return;
        }
        // Usually the exit follows at once; the tick stops a worker that
        // lingers without its connection.
        s.connected = false;
        s.disconnected_at = Some(now);
        if let Some((code, signal, oom, _)) = s.pending_exit.take() {
            self.handle_exit(i, code, signal, oom);
        }
    }

    pub(super) fn on_worker_exited(
        &mut self,
        i: usize,
        incarnation: u64,
        code: Option<i32>,
        signal: Option<i32>,
        oom: OomCounters,
    ) {
        let now = self.now;
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        if s.incarnation != incarnation || s.pid.is_none() {
            return;
        }
        if s.connected {
            s.pending_exit = Some((code, signal, oom, now));
        } else {
            self.handle_exit(i, code, signal, oom);
        }
    }

    pub(super) fn handle_exit(
        &mut self,
        i: usize,
        code: Option<i32>,
        signal: Option<i32>,
        oom: OomCounters,
    ) {
        let now = self.now;
        let s = &mut self.slots[i];
        let exit = Exit {
            code,
            signal,
            stopped_for: s.stopped_for,
            oom_counter_rose: oom.rose_since(s.oom_at_spawn) && s.stopped_for.is_none(),
            message: s.load_failure.take(),
        };
        let (name, pid, stopped_for) = (s.name, s.pid, s.stopped_for);
        let explained = exit.message.is_some();
        s.pid = None;
        s.connected = false;
        s.mem = None;
        s.pending_exit = None;
        s.disconnected_at = None;
        let state = if s.job.is_some() {
            SlotState::Busy
        } else {
            s.state
        };
        let d = lifecycle::decide(
            state,
            &Observation::Exited(exit),
            &self.policy,
            &mut s.history,
            self.shutting_down,
            now,
        );
        let job = s.job.take();
        s.generate_sent_at = None;
        s.last_token_at = None;
        s.restart_after_job = false;
        let pid = pid.unwrap_or(0);
        // Expected (we stopped it) or explained (it said why it could not
        // load, logged already): not a warning.
        let level = if stopped_for.is_some() || explained {
            Level::Info
        } else {
            Level::Warn
        };
        let how = format!(
            "code {code:?}, signal {signal:?}, stopped for {}",
            stopped_for.map_or("-", Reason::as_str)
        );
        self.log(
            level,
            "worker exited",
            &[("slot", &name), ("pid", &pid), ("how", &how)],
        );
        self.out.push(Effect::RemovePidFile { slot: i });
        self.apply(i, d, job);
        if self.shutting_down {
            self.drain_progress();
        }
    }

    /// Carries out a lifecycle decision for slot `i`.
    fn apply(&mut self, i: usize, d: lifecycle::Decision, job: Option<u64>) {
        self.set_state(i, d.next, d.reason);
        for action in d.actions {
            match action {
                Action::RescueRequest(reason) => {
                    if let Some(id) = job {
                        self.rescue(id, i, reason);
                    }
                }
                Action::CountRestart(reason) => {
                    let s = &mut self.slots[i];
                    s.restarts += 1;
                    s.last_restart_reason = Some(reason);
                    *self
                        .counters
                        .restarts
                        .entry((s.name.to_owned(), reason.as_str()))
                        .or_default() += 1;
                }
                Action::WakeAt(at) => self.slots[i].wake_at = Some(at),
                Action::Spawn => self.spawn(i),
            }
        }
    }
}
