//! Dispatch and relay: which slot takes the next request (routing, the
//! cooler silicon, spill-over to an idle fallback, memory pressure), starting
//! a generation, and relaying the worker's tokens, done and errors.

use std::time::Duration;

use proto::admin::{Routing, SlotState, ThermalLevel};
use proto::client::{ErrorKind, Failover, Queued, Started, SupervisorToClient};
use proto::worker::{Generate, SupervisorToWorker};

use super::slot::{fail, send, Job};
use super::{Core, Effect, Level};
use crate::config::secs;
use crate::observe::Latency;
use crate::routing::{self, SlotView};

/// Prompt tokens per second assumed before a worker has reported its own
/// rate: slow enough that the first long prompt is not called a hang.
pub const DEFAULT_PREFILL_TPS: f64 = 20.0;

/// The first-token limit never grows beyond this multiple of
/// `first_token_timeout_s`, whatever the prompt: a real hang is still found.
const MAX_FIRST_TOKEN_FACTOR: f64 = 10.0;

/// How long a worker that refused a request (Busy/NotLoaded) is not offered
/// another: long enough to end a hot loop, short enough not to matter.
pub const REFUSAL_PAUSE: Duration = Duration::from_secs(1);

/// A request refused this many times fails instead of waiting on.
pub const MAX_REFUSALS: u32 = 5;

/// Tokens of a prompt, estimated from its characters (the supervisor has no
/// tokenizer; about 4 characters a token in English).
pub fn estimate_tokens(chars: usize) -> f64 {
    #[allow(clippy::cast_precision_loss)] // prompt sizes are far below 2^52
    let c = chars as f64;
    c / 4.0
}

/// The first-token limit for a prompt of `prompt_tokens` on a worker that
/// processes `prefill_tps` prompt tokens a second: the configured limit plus
/// the prompt's own processing time, capped.
pub fn first_token_limit(base: Duration, prompt_tokens: f64, prefill_tps: Option<f64>) -> Duration {
    let rate = prefill_tps
        .filter(|r| r.is_finite() && *r > 0.0)
        .unwrap_or(DEFAULT_PREFILL_TPS);
    let extra = (prompt_tokens / rate).max(0.0);
    let limit = base.as_secs_f64() + extra;
    Duration::from_secs_f64(limit.min(base.as_secs_f64() * MAX_FIRST_TOKEN_FACTOR))
}

impl Core {
    /// Runs after every event (but tokens): routing, starting requests, and
    /// telling the waiting ones where they stand.
    pub(super) fn dispatch(&mut self) {
        let now = self.now;
        let views: Vec<SlotView> = self.slots.iter().map(super::Slot::view).collect();
        let (mut active, mut why) = routing::choose(
            &views,
            self.routing,
            self.active,
            secs(self.cfg.policy.failback_hold_s),
            now,
        );
        if self.cfg.thermal.prefer_cooler
            && self.thermal != ThermalLevel::Normal
            && self.routing == Routing::Auto
        {
            if let Some(c) = active.and_then(|a| routing::cooler(&views, &self.zones, a)) {
                active = Some(c);
                why = format!("throttled: the {} is cooler", self.slots[c].cfg.backend);
            }
        }
        if active != self.active {
            let to = active.map_or("none", |i| self.slots[i].name);
            self.log(Level::Info, "routing", &[("active", &to), ("reason", &why)]);
        }
        self.active = active;
        self.routing_reason = why;
        self.notify_ready_once();
        if self.shutting_down {
            return;
        }
        // A cold fallback starts when it is needed.
        if active.is_none() && !self.queue.is_empty() {
            if let Some(i) = self
                .slots
                .iter()
                .position(|s| s.state == SlotState::Idle && !s.spawning)
            {
                self.spawn(i);
            }
        }
        if self.nothing_can_serve() && !self.queue.is_empty() {
            let message = self.no_worker_message();
            for id in std::mem::take(&mut self.queue) {
                if let Some(job) = self.jobs.remove(&id) {
                    fail(&mut self.out, &job, ErrorKind::NoWorker, message.clone());
                }
            }
            return;
        }
        let admitting = self.thermal != ThermalLevel::Critical;
        if let (Some(a), true) = (active, admitting) {
            self.start_waiting(a);
        }
        self.tell_positions(admitting);
    }

    fn tell_positions(&mut self, admitting: bool) {
        let reason = if !admitting {
            "the board is cooling down".to_owned()
        } else if self.active.is_none() {
            self.routing_reason.clone()
        } else {
            String::new()
        };
        for (pos, id) in self.queue.iter().enumerate() {
            if let Some(job) = self.jobs.get_mut(id) {
                let position = u32::try_from(pos + 1).unwrap_or(u32::MAX);
                if job.last_position != position || job.last_reason != reason {
                    job.last_position = position;
                    job.last_reason.clone_from(&reason);
                    let event = SupervisorToClient::Queued(Queued {
                        request_id: job.client_id,
                        position,
                        reason: reason.clone(),
                    });
                    send(&mut self.out, job, event);
                }
            }
        }
    }

    /// Slots a request may start on now, best first: the active slot, then
    /// (spill-over) any other ready one, never a primary still in its
    /// failback hold-down.
    fn candidates(&self, active: usize) -> Vec<usize> {
        let mut list = vec![active];
        if self.cfg.policy.spill_over && self.routing == Routing::Auto {
            list.extend((0..self.slots.len()).filter(|&j| j != active && j != 0));
        }
        list.retain(|&j| self.slots[j].can_take());
        list
    }

    /// [`candidates`](Self::candidates) for `job`: a ready slot whose
    /// worker holds the job's conversation in its KV cache goes first,
    /// unless policy (a pinned backend, the primary's failback hold-down,
    /// the cooler silicon while throttled) or health (memory pressure) says
    /// otherwise.
    fn candidates_for(&self, active: usize, job: &Job) -> Vec<usize> {
        let allowed = self.candidates(active);
        let Some(key) = job.conversation.as_deref() else {
            return allowed;
        };
        let cooler_first = self.cfg.thermal.prefer_cooler && self.thermal != ThermalLevel::Normal;
        if self.routing != Routing::Auto || cooler_first {
            return allowed;
        }
        let extra: Vec<usize> = (0..self.slots.len())
            .filter(|&j| j != active && j != 0 && self.slots[j].can_take())
            .collect();
        routing::holder_first(
            &allowed,
            &extra,
            |j| self.slots[j].holds(key),
            |j| !self.slots[j].memory_pressure,
        )
    }

    /// Starts queued requests while a slot can take them.
    fn start_waiting(&mut self, active: usize) {
        while let Some(&id) = self.queue.front() {
            let Some(job) = self.jobs.get(&id) else {
                self.queue.pop_front();
                continue;
            };
            let mut free = self.candidates_for(active, job);
            if !job.model.is_empty() {
                // A request for a named model goes only where that model is
                // served (whatever the routing), and waits for such a slot.
                free.retain(|&j| self.slots[j].serves(&job.model));
                if free.is_empty() {
                    free.extend(
                        (0..self.slots.len()).filter(|&j| {
                            self.slots[j].can_take() && self.slots[j].serves(&job.model)
                        }),
                    );
                }
            }
            let Some(&first) = free.first() else { return };
            let mut target = first;
            // A long request is not admitted to a slot under memory pressure
            // while another can take it.
            if self.slots[first].memory_pressure && self.is_long(job, first) {
                if let Some(other) = (0..self.slots.len()).find(|&o| {
                    o != first && self.slots[o].can_take() && self.slots[o].serves(&job.model)
                }) {
                    target = other;
                }
            }
            if target != active {
                let (from, to) = (self.slots[active].name, self.slots[target].name);
                self.routing_reason = if target == first
                    && job
                        .conversation
                        .as_deref()
                        .is_some_and(|k| self.slots[target].holds(k))
                {
                    format!(
                        "{}; {to} takes a request of a conversation its KV cache holds",
                        self.routing_reason
                    )
                } else if target == first {
                    format!(
                        "{}; spill-over: {to} takes a request while {from} is busy",
                        self.routing_reason
                    )
                } else {
                    format!(
                        "{}; {to} takes a long request while {from} is under memory pressure",
                        self.routing_reason
                    )
                };
            }
            self.queue.pop_front();
            self.start_job(target, id);
        }
    }

    /// A request that would use more than half of the slot's context window
    /// (prompt estimated at 4 characters a token, plus its token budget).
    fn is_long(&self, job: &Job, i: usize) -> bool {
        let estimate = job.prompt_chars() / 4 + job.params.max_tokens as usize;
        estimate > self.slots[i].cfg.profile.context_size as usize / 2
    }

    fn start_job(&mut self, i: usize, id: u64) {
        let throttled = self.thermal == ThermalLevel::Throttle;
        let cap = self.cfg.thermal.throttle_max_tokens;
        let base = secs(self.cfg.policy.first_token_timeout_s);
        let now = self.now;
        let s = &mut self.slots[i];
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        // Probes are the supervisor's own: not a wait anyone had.
        let waited = (!job.probe).then(|| now.since(job.waiting_since));
        let mut params = job.params;
        // The budget covers the whole answer, across failovers.
        params.max_tokens = params.max_tokens.saturating_sub(job.tokens).max(1);
        if throttled {
            params.max_tokens = params.max_tokens.min(cap);
        }
        if s.memory_pressure {
            // Under memory pressure the KV cache must not grow far.
            params.max_tokens = params
                .max_tokens
                .min((s.cfg.profile.max_new_tokens / 4).max(16));
        }
        if let Some((from, reason)) = job.failover.take() {
            let event = SupervisorToClient::Failover(Failover {
                request_id: job.client_id,
                from,
                to: s.cfg.backend,
                reason: reason.as_str().to_owned(),
            });
            send(&mut self.out, job, event);
        }
        // A slot that shadowed the request holds it under the shadow's key:
        // the failover names that key, so the worker reuses the prefill.
        let shadowed = job
            .shadow
            .take()
            .filter(|sh| sh.slot == i && sh.incarnation == s.incarnation);
        let conversation = job
            .conversation
            .clone()
            .or_else(|| shadowed.map(|sh| sh.key));
        self.out.push(Effect::ToWorker {
            slot: i,
            incarnation: s.incarnation,
            msg: SupervisorToWorker::Generate(Generate {
                request_id: id,
                messages: job.messages.clone(),
                params,
                assistant_prefix: job.text.clone(),
                conversation,
            }),
        });
        job.slot = Some(i);
        job.last_position = 0;
        let started = SupervisorToClient::Started(Started {
            request_id: job.client_id,
            slot: s.name.to_owned(),
            backend: s.cfg.backend,
            model: s.model.clone(),
        });
        send(&mut self.out, job, started);
        let prompt = estimate_tokens(job.prompt_chars() + job.text.len());
        s.first_token_limit = first_token_limit(base, prompt, s.prefill_tps);
        s.job = Some(id);
        s.generate_sent_at = Some(now);
        s.last_token_at = None;
        let backend = s.cfg.backend;
        self.set_state(i, SlotState::Busy, None);
        if let Some(waited) = waited {
            self.observe(Latency::QueueWait, backend, waited);
        }
        self.shadow_on_start(i, id);
    }
}
