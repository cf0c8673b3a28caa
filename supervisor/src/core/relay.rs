//! Relay: what a worker says while it serves (ready, tokens counted from
//! the frames' `tokens`, done, errors, refusals) reaches the client at once.

use proto::admin::SlotState;
use proto::chat::GenStats;
use proto::client::{Done, ErrorKind, SupervisorToClient, Token};
use proto::worker::{WorkerDone, WorkerErrorKind, WorkerToSupervisor};

use super::dispatch::{MAX_REFUSALS, REFUSAL_PAUSE};
use super::drain::RESTARTING;
use super::slot::{fail, send};
use super::{Core, Level};
use crate::lifecycle::Reason;
use crate::observe::Latency;

impl Core {
    pub(super) fn on_worker_message(&mut self, i: usize, msg: WorkerToSupervisor) {
        let now = self.now;
        match msg {
            WorkerToSupervisor::Ready(ready) => self.on_ready(i, &ready),
            WorkerToSupervisor::LoadFailed(failed) => {
                let name = self.slots[i].name;
                // A slot that cannot load is a configuration or artifact
                // matter (shown in status with this message), not a fault of
                // the running service: the other slot keeps serving.
                self.log(
                    Level::Warn,
                    "worker cannot load its model",
                    &[
                        ("slot", &name),
                        ("code", &failed.exit_code),
                        ("message", &failed.message),
                    ],
                );
                self.slots[i].load_failure = Some(failed.message);
            }
            WorkerToSupervisor::Heartbeat(hb) => {
                self.slots[i].last_heartbeat = now;
                self.slots[i].cache = hb.cache;
            }
            WorkerToSupervisor::Token(t) => {
                let s = &mut self.slots[i];
                if s.job != Some(t.request_id) {
                    return;
                }
                let previous = s.last_token_at.replace(now);
                let backend = s.cfg.backend;
                self.last_tokens_at = Some(now);
                let mut latencies = [None, None];
                if let Some(job) = self.jobs.get_mut(&t.request_id) {
                    if !job.probe {
                        latencies = [
                            // The answer's first token (not the first after a failover).
                            (job.tokens == 0 && job.text.is_empty())
                                .then(|| (Latency::FirstToken, now.since(job.admitted_at))),
                            // Between frames of one worker's generation, per token.
                            previous
                                .filter(|_| t.tokens > 0)
                                .map(|p| (Latency::Token, now.since(p) / t.tokens)),
                        ];
                    }
                    job.text.push_str(&t.text);
                    // The frame says how many model tokens it covers.
                    job.tokens = job.tokens.saturating_add(t.tokens);
                    if !job.cancelled {
                        let event = SupervisorToClient::Token(Token {
                            request_id: job.client_id,
                            text: t.text,
                        });
                        send(&mut self.out, job, event);
                    }
                }
                for (latency, took) in latencies.into_iter().flatten() {
                    self.observe(latency, backend, took);
                }
                self.shadow_pace(i, t.request_id, previous, t.tokens);
                self.shadow_progress(t.request_id);
            }
            WorkerToSupervisor::Done(done) => self.on_done(i, &done),
            WorkerToSupervisor::Warmed(warmed) => self.on_warmed(i, &warmed),
            WorkerToSupervisor::Error(err) => {
                if self.slots[i].job != Some(err.request_id) {
                    return;
                }
                self.finish_generation(i);
                match err.kind {
                    WorkerErrorKind::Busy | WorkerErrorKind::NotLoaded => {
                        self.on_refused(i, err.request_id);
                    }
                    kind => {
                        if let Some(job) = self.jobs.remove(&err.request_id) {
                            let client_kind = match kind {
                                WorkerErrorKind::PromptTooLong | WorkerErrorKind::BadRequest => {
                                    ErrorKind::BadRequest
                                }
                                _ => ErrorKind::WorkerFailed,
                            };
                            fail(&mut self.out, &job, client_kind, err.message);
                        }
                    }
                }
            }
        }
    }

    /// The worker would not start the request: it waits again (at the
    /// front), the worker is not offered another for a moment, and a request
    /// refused too often fails instead of looping.
    fn on_refused(&mut self, i: usize, id: u64) {
        let now = self.now;
        self.slots[i].refused_until = Some(now + REFUSAL_PAUSE);
        let name = self.slots[i].name;
        self.log(
            Level::Warn,
            "worker refused a request",
            &[("slot", &name), ("request", &id)],
        );
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.refusals += 1;
        job.slot = None;
        if job.cancelled || job.refusals >= MAX_REFUSALS || self.shutting_down {
            let refusals = job.refusals;
            if let Some(job) = self.jobs.remove(&id) {
                if job.cancelled {
                    fail(&mut self.out, &job, ErrorKind::Cancelled, "cancelled");
                } else if self.shutting_down {
                    // Nothing new starts during a drain.
                    fail(&mut self.out, &job, ErrorKind::ShuttingDown, RESTARTING);
                } else {
                    let msg = format!("the workers refused the request {refusals} times (busy or not loaded); giving up");
                    fail(&mut self.out, &job, ErrorKind::WorkerFailed, msg);
                }
            }
            return;
        }
        // Back in the queue with a fresh deadline, as after a failover: the
        // refusals are bounded by MAX_REFUSALS, not by the clock.
        job.waiting_since = self.now;
        self.queue.push_front(id);
    }

    fn on_done(&mut self, i: usize, done: &WorkerDone) {
        // What the worker holds is news whatever request it ends.
        self.slots[i].cache.clone_from(&done.cache);
        if self.slots[i].job != Some(done.request_id) {
            return;
        }
        self.finish_generation(i);
        let Some(job) = self.jobs.remove(&done.request_id) else {
            return;
        };
        self.shadow_done(i, &job);
        let s = &mut self.slots[i];
        if !job.probe {
            s.requests_served += 1;
        }
        let st = &done.stats;
        // Only the tokens not taken from the KV cache were prefilled.
        let prefilled = st.prompt_tokens.saturating_sub(st.cached_tokens);
        if prefilled > 0 && st.prefill_ms > 0.0 {
            s.prefill_tps = Some(f64::from(prefilled) / (st.prefill_ms / 1000.0));
        }
        if st.generated_tokens > 1 {
            s.last_decode_tps = Some(st.decode_tps);
        }
        if job.cancelled && !job.stopped {
            fail(&mut self.out, &job, ErrorKind::Cancelled, "cancelled");
        } else {
            let event = SupervisorToClient::Done(Done {
                request_id: job.client_id,
                text: job.text.clone(),
                backend: s.cfg.backend,
                model: s.model.clone(),
                stats: GenStats {
                    generated_tokens: job.tokens,
                    ..done.stats
                },
            });
            send(&mut self.out, &job, event);
        }
        if self.shutting_down {
            self.drain_progress();
        }
    }

    /// The slot's generation is over (done or error): back to ready, or on to
    /// a restart an operator asked for.
    pub(super) fn finish_generation(&mut self, i: usize) {
        let s = &mut self.slots[i];
        s.job = None;
        s.generate_sent_at = None;
        s.last_token_at = None;
        s.last_heartbeat = self.now;
        if s.state == SlotState::Busy {
            self.set_state(i, SlotState::Ready, None);
        }
        if self.slots[i].restart_after_job {
            self.slots[i].restart_after_job = false;
            self.stop(i, Reason::Admin);
        }
    }
}
