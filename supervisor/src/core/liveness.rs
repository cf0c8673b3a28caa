//! Liveness: hangs (no token within the stall or first-token limit, no
//! heartbeat, no load in time), orphaned workers, backoff and cooldown
//! timers, readiness, and rescuing the request a lost worker was serving.

use std::time::Duration;

use proto::admin::SlotState;
use proto::client::ErrorKind;
use proto::worker::{Ping, Ready, SupervisorToWorker};

use super::process::EXIT_DRAIN;
use super::slot::fail;
use super::{Core, Effect, Level};
use crate::config::secs;
use crate::lifecycle::{self, Action, Observation, Reason};
use crate::observe::Latency;

/// A worker whose connection dropped but whose process lives on this long is
/// stopped.
const ORPHAN_LIMIT: Duration = Duration::from_secs(1);

impl Core {
    pub(super) fn on_ready(&mut self, i: usize, ready: &Ready) {
        let now = self.now;
        let s = &mut self.slots[i];
        s.model.clone_from(&ready.model.name);
        s.chat_template.clone_from(&ready.model.chat_template);
        s.last_heartbeat = now;
        // A worker that just loaded counts as fresh evidence of health.
        self.last_tokens_at = Some(now);
        let name = s.name;
        let d = lifecycle::decide(
            s.state,
            &Observation::Ready,
            &self.policy,
            &mut s.history,
            self.shutting_down,
            now,
        );
        self.log(
            Level::Info,
            "worker ready",
            &[
                ("slot", &name),
                ("model", &ready.model.name),
                ("load_ms", &ready.load_ms),
            ],
        );
        let s = &self.slots[i];
        let loaded = s
            .loading_since
            .filter(|_| s.state == SlotState::Loading)
            .map(|t| now.since(t));
        let backend = self.slots[i].cfg.backend;
        self.set_state(i, d.next, d.reason);
        if let Some(took) = loaded {
            self.observe(Latency::Load, backend, took);
        }
    }

    /// A request lost its worker mid-answer: it waits at the front of the
    /// queue to continue, on whichever worker is ready first, after the text
    /// already streamed.
    pub(super) fn rescue(&mut self, id: u64, from: usize, reason: Reason) {
        let backend = self.slots[from].cfg.backend;
        let max = self.cfg.policy.max_failovers;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.slot = None;
        if job.cancelled || self.shutting_down {
            if let Some(job) = self.jobs.remove(&id) {
                if job.cancelled {
                    fail(&mut self.out, &job, ErrorKind::Cancelled, "cancelled");
                } else {
                    fail(
                        &mut self.out,
                        &job,
                        ErrorKind::ShuttingDown,
                        "the service is restarting; try again in a minute",
                    );
                }
            }
            return;
        }
        job.failovers += 1;
        let (failovers, chars) = (job.failovers, job.text.len());
        if failovers > max {
            // A request that kills every worker it reaches (or a board so
            // loaded that nothing keeps up) must not bounce forever.
            if let Some(job) = self.jobs.remove(&id) {
                let msg = format!(
                    "the answer was interrupted {failovers} times (last: {reason}); giving up"
                );
                fail(&mut self.out, &job, ErrorKind::WorkerFailed, msg);
            }
            return;
        }
        job.failover = Some((backend, reason));
        job.waiting_since = self.now;
        self.counters.failovers += 1;
        self.queue.push_front(id);
        self.log(
            Level::Warn,
            "rescuing request",
            &[
                ("request", &id),
                ("from", &backend),
                ("reason", &reason),
                ("streamed_chars", &chars),
            ],
        );
    }

    /// Timers, exits waiting for their connection, and hang checks.
    pub(super) fn check_liveness(&mut self) {
        let now = self.now;
        let p = self.cfg.policy.clone();
        for i in 0..self.slots.len() {
            if self.slots[i].refused_until.is_some_and(|t| now >= t) {
                self.slots[i].refused_until = None;
            }
            if let Some((code, signal, oom, at)) = self.slots[i].pending_exit {
                if now.since(at) > EXIT_DRAIN {
                    self.slots[i].connected = false;
                    self.handle_exit(i, code, signal, oom);
                }
            }
            if self.slots[i].wake_at.is_some_and(|t| t <= now) {
                self.slots[i].wake_at = None;
                let s = &mut self.slots[i];
                let d = lifecycle::decide(
                    s.state,
                    &Observation::TimerDue,
                    &self.policy,
                    &mut s.history,
                    self.shutting_down,
                    now,
                );
                if d.actions.contains(&Action::Spawn) {
                    // spawn() enters Starting itself.
                    self.spawn(i);
                } else {
                    self.set_state(i, d.next, d.reason);
                }
            }
            let s = &self.slots[i];
            if s.pid.is_none() || s.stopped_for.is_some() {
                continue;
            }
            if s.disconnected_at
                .is_some_and(|t| now.since(t) > ORPHAN_LIMIT)
            {
                let name = s.name;
                self.log(
                    Level::Warn,
                    "worker lost its connection but did not exit; stopping it",
                    &[("slot", &name)],
                );
                self.stop(i, Reason::Crash);
                continue;
            }
            match s.state {
                SlotState::Busy => {
                    let stalled = match (s.last_token_at, s.generate_sent_at) {
                        (Some(t), _) => now.since(t) > secs(p.stall_timeout_s),
                        (None, Some(t)) => now.since(t) > s.first_token_limit,
                        (None, None) => false,
                    };
                    if stalled {
                        let name = s.name;
                        self.log(
                            Level::Error,
                            "no token within the limit: worker hung",
                            &[("slot", &name)],
                        );
                        self.stop(i, Reason::Hang);
                    }
                }
                SlotState::Ready => {
                    if now.since(s.last_heartbeat) > secs(p.heartbeat_timeout_s) {
                        let name = s.name;
                        self.log(
                            Level::Error,
                            "no heartbeat within the timeout: worker hung",
                            &[("slot", &name)],
                        );
                        self.stop(i, Reason::Hang);
                    } else if now.since(s.last_ping) >= secs(p.heartbeat_interval_s) && s.connected
                    {
                        let s = &mut self.slots[i];
                        s.ping_seq += 1;
                        s.last_ping = now;
                        self.out.push(Effect::ToWorker {
                            slot: i,
                            incarnation: s.incarnation,
                            msg: SupervisorToWorker::Ping(Ping { seq: s.ping_seq }),
                        });
                    }
                }
                // The limit runs from the start of *this* load: a profile
                // switch reloads a worker that may be far older than the
                // load timeout, and must not be judged by its spawn time.
                SlotState::Starting | SlotState::Loading => {
                    let since = if s.state == SlotState::Loading {
                        s.loading_since
                    } else {
                        s.spawned_at
                    };
                    if since.is_some_and(|t| now.since(t) > secs(p.load_timeout_s)) {
                        self.stop(i, Reason::LoadTimeout);
                    }
                }
                _ => {}
            }
        }
    }
}
