//! Shadowing: while one slot serves a request, the other slot, ready and
//! idle, prefills the same prompt and the answer so far into its KV cache
//! (`Warm`), again every `policy.shadow_every_tokens` streamed tokens, so a
//! failover to it decodes only the tokens streamed since the last warm
//! instead of the whole prompt and answer. A slot that is not idle when
//! the request starts (or restarts meanwhile) may start shadowing it later.

use proto::worker::{SupervisorToWorker, Warm};

use super::slot::{Job, Shadow};
use super::{Core, Effect};

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
    /// other slot that could take a request now, serves the request's model
    /// and is not under memory pressure (a warm grows its KV cache).
    fn shadow_slot(&self, serving: usize, id: u64) -> Option<usize> {
        let job = self.jobs.get(&id)?;
        if !self.cfg.policy.shadow || job.probe || self.shutting_down {
            return None;
        }
        (0..self.slots.len()).find(|&j| {
            let s = &self.slots[j];
            j != serving && s.can_take() && s.serves(&job.model) && !s.memory_pressure
        })
    }

    /// Request `id` started on slot `serving`: an idle slot starts shadowing it.
    pub(super) fn shadow_start(&mut self, serving: usize, id: u64) {
        let Some(j) = self.shadow_slot(serving, id) else {
            return;
        };
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
        });
        let effect = warm(job, j, incarnation, key);
        self.out.push(effect);
    }

    /// Request `id` streamed more tokens: the shadow gets the answer so far
    /// every `shadow_every_tokens`, while its slot is still idle; a slot
    /// that took other work (or restarted) stops shadowing.
    pub(super) fn shadow_progress(&mut self, id: u64) {
        let every = self.cfg.policy.shadow_every_tokens.max(1);
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let Some(sh) = job.shadow.as_mut() else {
            // No shadow (none was idle, or it took other work or
            // restarted): a slot idle now starts one, tried every N tokens.
            if job.tokens.saturating_sub(job.shadow_tried_at) >= every {
                job.shadow_tried_at = job.tokens;
                if let Some(serving) = job.slot {
                    self.shadow_start(serving, id);
                }
            }
            return;
        };
        if job.tokens.saturating_sub(sh.at_tokens) < every {
            return;
        }
        let s = &self.slots[sh.slot];
        if !s.can_take() || s.incarnation != sh.incarnation || s.memory_pressure {
            job.shadow = None;
            job.shadow_tried_at = job.tokens;
            return;
        }
        sh.at_tokens = job.tokens;
        let (slot, incarnation, key) = (sh.slot, sh.incarnation, sh.key.clone());
        let effect = warm(job, slot, incarnation, key);
        self.out.push(effect);
    }
}
