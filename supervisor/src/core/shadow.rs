//! Shadowing: while one slot serves a request, the other slot, ready and
//! idle, prefills the same prompt and the answer so far into its KV cache
//! (`Warm`), again every `policy.shadow_every_tokens` streamed tokens, so a
//! failover to it decodes only the tokens streamed since the last warm
//! instead of the whole prompt and answer. A slot that is not idle when
//! the request starts (or restarts meanwhile) may start shadowing it later.
//!
//! Shadowing must not slow the answer it protects. One warm at a time is
//! in flight (the worker answers each with `Warmed`); the serving slot's
//! time per token is measured from the token frames' arrival times, split
//! by whether a warm ran meanwhile. When the time per token with a warm
//! running exceeds the time without one (the request's own, else the
//! slot's from its last request) by more than `policy.shadow_max_slowdown`,
//! over at least [`MIN_PACE_TOKENS`] tokens each, the shadow stops warming
//! (what it warmed stays for a failover), and that pair of slots does not
//! shadow for the next `policy.shadow_backoff_requests` requests on the
//! slowed slot (doubled after each further stop).
//!
//! One case is known without measuring: slots whose CPU sets overlap (two
//! CPU slots on the default cores) compete for cores, and a prefill is the
//! heaviest work there is. There the first warm waits for the serving
//! slot's first token, so the two prefills of the same prompt do not run
//! at once and the time to first token (which the rule does not see) is
//! not slowed. Disjoint slots (the NPU and a CPU worker) warm at once.

use proto::worker::{SupervisorToWorker, Warm, Warmed};

use super::slot::{Job, Pace, Shadow};
use super::{Core, Effect, Level, Millis};

/// Tokens each side of the comparison needs before the rule decides: a
/// frame or two of scheduling noise must not stop shadowing.
pub const MIN_PACE_TOKENS: u32 = 8;

/// A back-off grows to at most this many times `shadow_backoff_requests`.
const MAX_BACKOFF_FACTOR: u32 = 16;

/// A pair of slots backing off from shadowing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Requests starting on the serving slot still to skip.
    pub left: u32,
    /// The length of the next back-off.
    pub next: u32,
}

/// The rule, pure: how much slower per token the serving slot was while
/// warms ran than without (`calm_baseline`: the slot's time per token from
/// earlier requests, used while the request has too few calm tokens of its
/// own); `None` until both sides have [`MIN_PACE_TOKENS`] tokens.
pub fn slowdown(pace: &Pace, calm_baseline: Option<f64>) -> Option<f64> {
    let warm = pace.warm.per_token(MIN_PACE_TOKENS)?;
    let calm = pace
        .calm
        .per_token(MIN_PACE_TOKENS)
        .or(calm_baseline)
        .filter(|c| *c > 0.0)?;
    Some(warm / calm)
}

/// The warm of `job` so far for a shadow on `slot`: its prompt and the
/// answer streamed until now, under the shadow's `key`.
fn warm(job: &Job, slot: usize, incarnation: u64, key: String) -> Effect {
    Effect::ToWorker {
        slot,
        incarnation,
        msg: SupervisorToWorker::Warm(Warm {
            key,
            messages: job.messages.clone(),
            assistant_prefix: job.text.clone(),
        }),
    }
}

/// The cache key of a request without a conversation of its own.
pub fn shadow_key(id: u64) -> String {
    format!("shadow:{id}")
}

impl Core {
    /// The slot that would shadow request `id` served by slot `serving`: one
    /// other slot that could take a request now, serves the request's model,
    /// is not under memory pressure (a warm grows its KV cache) and is not
    /// backing off from shadowing `serving`.
    fn shadow_slot(&self, serving: usize, id: u64) -> Option<usize> {
        let job = self.jobs.get(&id)?;
        if !self.cfg.policy.shadow || job.probe || self.shutting_down {
            return None;
        }
        (0..self.slots.len()).find(|&j| {
            let s = &self.slots[j];
            j != serving
                && s.can_take()
                && s.serves(&job.model)
                && !s.memory_pressure
                && self
                    .shadow_backoff
                    .get(&(serving, j))
                    .is_none_or(|b| b.left == 0)
        })
    }

    /// Request `id` started on slot `serving` (a fresh start or after a
    /// failover): its time per token is measured anew, a back-off of a pair
    /// with `serving` counts it, and an idle slot starts shadowing it.
    pub(super) fn shadow_on_start(&mut self, serving: usize, id: u64) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.pace = Pace::default();
        let blocked: Vec<usize> = self
            .shadow_backoff
            .iter()
            .filter(|((s, _), b)| *s == serving && b.left > 0)
            .map(|((_, j), _)| *j)
            .collect();
        job.shadow_backing_off = !blocked.is_empty();
        job.shadow_deferred = false;
        if !job.probe {
            self.shadow_start(serving, id, true);
            for j in blocked {
                if let Some(b) = self.shadow_backoff.get_mut(&(serving, j)) {
                    b.left -= 1;
                }
            }
        }
    }

    /// Whether slots `a` and `b` run on overlapping CPU sets.
    fn share_cpus(&self, a: usize, b: usize) -> bool {
        match (&self.slots[a].cfg.placement, &self.slots[b].cfg.placement) {
            (Some(x), Some(y)) => !x.cpus.intersection(&y.cpus).is_empty(),
            _ => false,
        }
    }

    /// An idle slot starts shadowing request `id` served by `serving`;
    /// at the generation's start (`prefill`), one sharing the serving
    /// slot's CPUs waits for the first token instead.
    fn shadow_start(&mut self, serving: usize, id: u64, prefill: bool) {
        let Some(j) = self.shadow_slot(serving, id) else {
            return;
        };
        if prefill && self.share_cpus(serving, j) {
            if let Some(job) = self.jobs.get_mut(&id) {
                job.shadow_deferred = true;
            }
            return;
        }
        let incarnation = self.slots[j].incarnation;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let key = job.conversation.clone().unwrap_or_else(|| shadow_key(id));
        job.shadow = Some(Shadow {
            slot: j,
            incarnation,
            key: key.clone(),
            at_tokens: job.tokens,
            warming: true,
            warmed_at_tokens: 0,
            warmed_tokens: 0,
            stopped: false,
        });
        job.pace.overlap = true;
        let effect = warm(job, j, incarnation, key);
        self.out.push(effect);
    }

    /// Request `id` streamed more tokens: the shadow gets the answer so far
    /// every `shadow_every_tokens`, while its slot is still idle and its
    /// last warm is over; a slot that took other work (or restarted) stops
    /// shadowing.
    pub(super) fn shadow_progress(&mut self, id: u64) {
        let every = self.cfg.policy.shadow_every_tokens.max(1);
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let Some(sh) = job.shadow.as_mut() else {
            // No shadow (none was idle, or it took other work or
            // restarted): a slot idle now starts one, tried every N tokens
            // (not while the request's start counted a back-off); a
            // deferred one starts with the first token.
            let due = job.tokens.saturating_sub(job.shadow_tried_at) >= every;
            if job.shadow_deferred || (!job.shadow_backing_off && due) {
                job.shadow_deferred = false;
                job.shadow_tried_at = job.tokens;
                if let Some(serving) = job.slot {
                    self.shadow_start(serving, id, false);
                }
            }
            return;
        };
        if sh.stopped || job.tokens.saturating_sub(sh.at_tokens) < every {
            return;
        }
        let s = &self.slots[sh.slot];
        if !s.can_take() || s.incarnation != sh.incarnation || s.memory_pressure {
            job.shadow = None;
            job.shadow_tried_at = job.tokens;
            return;
        }
        if sh.warming {
            // One warm at a time: the next, once this one is over, covers
            // all streamed meanwhile.
            return;
        }
        sh.at_tokens = job.tokens;
        sh.warming = true;
        job.pace.overlap = true;
        let (slot, incarnation, key) = (sh.slot, sh.incarnation, sh.key.clone());
        let effect = warm(job, slot, incarnation, key);
        self.out.push(effect);
    }

    /// Slot `i`'s warm under `warmed.key` is over.
    pub(super) fn on_warmed(&mut self, i: usize, warmed: &Warmed) {
        let incarnation = self.slots[i].incarnation;
        for job in self.jobs.values_mut() {
            if let Some(sh) = job
                .shadow
                .as_mut()
                .filter(|sh| sh.slot == i && sh.incarnation == incarnation && sh.key == warmed.key)
            {
                if sh.warming {
                    sh.warming = false;
                    sh.warmed_at_tokens = sh.at_tokens;
                }
                sh.warmed_tokens = warmed.tokens;
            }
        }
    }

    /// A token frame of request `id` from the serving slot `serving` came
    /// now, `tokens` tokens after the frame at `previous` (none for the
    /// first of a generation: that interval is the prefill). The interval
    /// counts as slowed by the shadow if a warm ran during it; then the
    /// rule decides.
    pub(super) fn shadow_pace(
        &mut self,
        serving: usize,
        id: u64,
        previous: Option<Millis>,
        tokens: u32,
    ) {
        let now = self.now;
        let max = self.cfg.policy.shadow_max_slowdown;
        let baseline = self.slots[serving].calm_ms_per_token;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if let Some(p) = previous.filter(|_| tokens > 0) {
            let ms = now.since(p).as_secs_f64() * 1000.0;
            if job.pace.overlap {
                job.pace.warm.add(ms, tokens);
            } else {
                job.pace.calm.add(ms, tokens);
            }
        }
        let Some(sh) = job.shadow.as_mut().filter(|sh| !sh.stopped) else {
            job.pace.overlap = false;
            return;
        };
        job.pace.overlap = sh.warming;
        let Some(ratio) = slowdown(&job.pace, baseline).filter(|r| *r > max) else {
            return;
        };
        sh.stopped = true;
        let pair = (serving, sh.slot);
        let base = self.cfg.policy.shadow_backoff_requests.max(1);
        let b = self.shadow_backoff.entry(pair).or_insert(Backoff {
            left: 0,
            next: base,
        });
        b.left = b.next;
        b.next = b
            .next
            .saturating_mul(2)
            .min(base.saturating_mul(MAX_BACKOFF_FACTOR));
        let left = b.left;
        self.counters.shadow_stops += 1;
        let (from, by) = (self.slots[serving].name, self.slots[pair.1].name);
        let ratio = format!("{ratio:.2}");
        self.log(
            Level::Info,
            "shadowing stopped: the warms slowed the serving slot",
            &[
                ("request", &id),
                ("serving", &from),
                ("shadow", &by),
                ("slowdown", &ratio),
                ("skip_requests", &left),
            ],
        );
    }

    /// Request `job` ended on slot `serving`: its time per token without
    /// warms becomes the slot's baseline, and a shadow that ran warms
    /// without slowing it resets the pair's back-off length.
    pub(super) fn shadow_done(&mut self, serving: usize, job: &Job) {
        if let Some(calm) = job.pace.calm.per_token(MIN_PACE_TOKENS) {
            self.slots[serving].calm_ms_per_token = Some(calm);
        }
        let Some(sh) = job.shadow.as_ref().filter(|sh| !sh.stopped) else {
            return;
        };
        if job.pace.warm.tokens >= MIN_PACE_TOKENS {
            let base = self.cfg.policy.shadow_backoff_requests.max(1);
            if let Some(b) = self.shadow_backoff.get_mut(&(serving, sh.slot)) {
                b.next = base;
            }
        }
    }

    /// The pairs backing off now, for status: (serving, shadow, left).
    pub(super) fn shadow_backoffs(&self) -> impl Iterator<Item = (usize, usize, u32)> + '_ {
        self.shadow_backoff
            .iter()
            .filter(|(_, b)| b.left > 0)
            .map(|(&(s, j), b)| (s, j, b.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::PaceSum;

    fn sum(ms_per_token: f64, tokens: u32) -> PaceSum {
        PaceSum {
            ms: ms_per_token * f64::from(tokens),
            tokens,
        }
    }

    #[test]
    fn the_slowdown_compares_with_the_requests_own_pace_else_the_slots() {
        let pace = |warm: PaceSum, calm: PaceSum| Pace {
            warm,
            calm,
            overlap: false,
        };
        // Too few tokens with a warm: no decision.
        let p = pace(sum(80.0, MIN_PACE_TOKENS - 1), sum(50.0, 20));
        assert_eq!(slowdown(&p, Some(50.0)), None);
        // The request's own calm pace wins over the slot's baseline.
        let p = pace(sum(80.0, MIN_PACE_TOKENS), sum(40.0, MIN_PACE_TOKENS));
        assert_eq!(slowdown(&p, Some(50.0)), Some(2.0));
        // Too few calm tokens of its own: the slot's baseline.
        let p = pace(sum(80.0, MIN_PACE_TOKENS), sum(40.0, MIN_PACE_TOKENS - 1));
        assert_eq!(slowdown(&p, Some(50.0)), Some(1.6));
        // Neither: no decision.
        assert_eq!(slowdown(&p, None), None);
    }
}
