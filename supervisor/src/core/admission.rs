//! Admission and the queue: which submits are accepted, cancels, clients
//! that leave, and requests that waited past their deadline.

use proto::admin::{SlotState, ThermalLevel};
use proto::chat::{ChatMessage, GenParams, Role};
use proto::client::{ErrorEvent, ErrorKind, Submit, SupervisorToClient, MAX_CONVERSATION_KEY};
use proto::worker::{CancelGeneration, SupervisorToWorker};

use super::slot::{fail, Job, Pace};
use super::{Core, Effect};
use crate::config::secs;

impl Core {
    fn refuse(&mut self, conn: u64, request_id: u64, kind: ErrorKind, message: String) {
        self.out.push(Effect::ToClient {
            conn,
            event: SupervisorToClient::Error(ErrorEvent {
                request_id,
                kind,
                message,
            }),
            admitted: false,
        });
    }

    /// A new request; `prefix` is the start of the answer already shown
    /// (a continuation from another board), empty for a fresh one.
    pub(super) fn on_submit(&mut self, conn: u64, submit: Submit, prefix: String) {
        let id = submit.request_id;
        if self.shutting_down {
            return self.refuse(
                conn,
                id,
                ErrorKind::ShuttingDown,
                "the service is restarting; try again in a minute".into(),
            );
        }
        if submit.messages.is_empty() {
            return self.refuse(
                conn,
                id,
                ErrorKind::BadRequest,
                "the request has no messages".into(),
            );
        }
        if !self.slots.iter().any(|s| s.serves(&submit.model)) {
            return self.refuse(
                conn,
                id,
                ErrorKind::BadRequest,
                format!("unknown model {:?}: no slot serves it", submit.model),
            );
        }
        if let Some(key) = &submit.conversation {
            if key.is_empty() || key.len() > MAX_CONVERSATION_KEY {
                return self.refuse(
                    conn,
                    id,
                    ErrorKind::BadRequest,
                    format!(
                        "the conversation key must be 1 to {MAX_CONVERSATION_KEY} bytes (got {})",
                        key.len()
                    ),
                );
            }
        }
        if let Err(e) = submit.params.validate() {
            return self.refuse(
                conn,
                id,
                ErrorKind::BadRequest,
                format!("bad parameters: {e}"),
            );
        }
        let chars: usize = submit
            .messages
            .iter()
            .map(|m| m.content.chars().count())
            .sum();
        let limit = self.cfg.supervisor.max_prompt_chars;
        if chars > limit {
            return self.refuse(
                conn,
                id,
                ErrorKind::BadRequest,
                format!("the conversation is {chars} characters; the limit is {limit}"),
            );
        }
        if self
            .jobs
            .values()
            .any(|j| j.conn == conn && j.client_id == id && !j.probe)
        {
            return self.refuse(
                conn,
                id,
                ErrorKind::BadRequest,
                format!("request id {id} is already in use on this connection"),
            );
        }
        let waiting = self.queue.len();
        if waiting >= self.cfg.supervisor.queue_capacity {
            return self.refuse(
                conn,
                id,
                ErrorKind::Busy,
                format!("busy: {waiting} requests are already waiting; try again shortly"),
            );
        }
        if self.nothing_can_serve() {
            let message = self.no_worker_message();
            return self.refuse(conn, id, ErrorKind::NoWorker, message);
        }
        let job = self.new_job(conn, id, submit.messages, submit.params, false);
        if let Some(j) = self.jobs.get_mut(&job) {
            j.model = submit.model;
            j.conversation = submit.conversation;
            // Continued exactly like a failover: the worker gets it as its
            // assistant prefix and `Done` carries the whole answer.
            j.text = prefix;
        }
        self.queue.push_back(job);
    }

    pub(super) fn new_job(
        &mut self,
        conn: u64,
        client_id: u64,
        messages: Vec<ChatMessage>,
        params: GenParams,
        probe: bool,
    ) -> u64 {
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(
            id,
            Job {
                conn,
                client_id,
                messages,
                params,
                text: String::new(),
                tokens: 0,
                admitted_at: self.now,
                waiting_since: self.now,
                slot: None,
                failover: None,
                last_position: 0,
                last_reason: String::new(),
                cancelled: false,
                silent: false,
                probe,
                failovers: 0,
                refusals: 0,
                model: String::new(),
                stopped: false,
                conversation: None,
                shadow: None,
                shadow_tried_at: 0,
                shadow_backing_off: false,
                shadow_deferred: false,
                pace: Pace::default(),
            },
        );
        id
    }

    /// A client's `Stop` (it met a stop string): the generation is
    /// cancelled, but the answer still ends with `Done` and its figures.
    pub(super) fn on_stop(&mut self, conn: u64, request_id: u64) {
        let found = self
            .jobs
            .iter_mut()
            .find(|(_, j)| j.conn == conn && j.client_id == request_id && !j.probe);
        if let Some((&id, job)) = found {
            job.stopped = true;
            self.cancel_job(id, true);
        }
    }

    /// Answers a client's question of which models the slots serve.
    pub(super) fn on_models(&mut self, conn: u64, request_id: u64) {
        let slots = self
            .slots
            .iter()
            .map(|s| proto::client::ModelSlot {
                name: s.name.to_owned(),
                backend: s.cfg.backend,
                model: s.model.clone(),
                model_file: s
                    .cfg
                    .model
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                state: s.state,
            })
            .collect();
        self.out.push(Effect::ToClient {
            conn,
            event: SupervisorToClient::Models(proto::client::ModelList { request_id, slots }),
            admitted: false,
        });
    }

    pub(super) fn on_cancel(&mut self, conn: u64, request_id: u64) {
        let found = self
            .jobs
            .iter()
            .find(|(_, j)| j.conn == conn && j.client_id == request_id && !j.probe)
            .map(|(id, _)| *id);
        if let Some(id) = found {
            self.cancel_job(id, true);
        }
    }

    pub(super) fn on_client_gone(&mut self, conn: u64) {
        let ids: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.conn == conn && !j.probe)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.cancel_job(id, false);
        }
    }

    fn cancel_job(&mut self, id: u64, tell_client: bool) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.cancelled = true;
        if !tell_client {
            job.silent = true;
        }
        if let Some(i) = job.slot {
            // The worker ends the generation with Done; the job goes then.
            let s = &self.slots[i];
            if s.connected {
                self.out.push(Effect::ToWorker {
                    slot: i,
                    incarnation: s.incarnation,
                    msg: SupervisorToWorker::Cancel(CancelGeneration { request_id: id }),
                });
            }
        } else {
            self.queue.retain(|q| *q != id);
            if let Some(job) = self.jobs.remove(&id) {
                fail(&mut self.out, &job, ErrorKind::Cancelled, "cancelled");
            }
        }
    }

    /// Every slot is unavailable for good.
    pub(super) fn nothing_can_serve(&self) -> bool {
        self.slots.iter().all(|s| s.state == SlotState::Unavailable)
    }

    pub(super) fn no_worker_message(&self) -> String {
        let parts: Vec<String> = self
            .slots
            .iter()
            .map(|s| {
                if s.reason.is_empty() {
                    format!("{} ({}) is {}", s.name, s.cfg.backend, s.state.as_str())
                } else {
                    format!(
                        "{} ({}) is {}: {}",
                        s.name,
                        s.cfg.backend,
                        s.state.as_str(),
                        s.reason
                    )
                }
            })
            .collect();
        format!("no worker available: {}", parts.join("; "))
    }

    /// Requests that waited longer than `queue_timeout_s` fail, saying why.
    pub(super) fn expire_waiting(&mut self) {
        let now = self.now;
        let limit = secs(self.cfg.supervisor.queue_timeout_s);
        let expired: Vec<u64> = self
            .queue
            .iter()
            .copied()
            .filter(|id| {
                self.jobs
                    .get(id)
                    .is_some_and(|j| now.since(j.waiting_since) > limit)
            })
            .collect();
        if expired.is_empty() {
            return;
        }
        let (kind, message) = if self.thermal == ThermalLevel::Critical {
            (
                ErrorKind::TooHot,
                format!(
                    "the board is too hot to start a generation and did not cool down within {}s",
                    limit.as_secs()
                ),
            )
        } else {
            (
                ErrorKind::NoWorker,
                format!(
                    "no worker could take the request within {}s ({})",
                    limit.as_secs(),
                    self.no_worker_message()
                ),
            )
        };
        self.queue.retain(|id| !expired.contains(id));
        for id in expired {
            if let Some(job) = self.jobs.remove(&id) {
                fail(&mut self.out, &job, kind, message.clone());
            }
        }
    }

    /// The health probe: when the active worker has produced nothing for
    /// `probe_interval_s` and nothing waits, ask it for a few tokens, so
    /// /health reflects whether inference works, not just whether a process
    /// answers pings.
    pub(super) fn maybe_probe(&mut self) {
        let interval = self.cfg.http.probe_interval_s;
        if interval <= 0.0 || self.shutting_down || !self.queue.is_empty() {
            return;
        }
        let Some(i) = self.active else { return };
        let due = self
            .last_tokens_at
            .is_none_or(|t| self.now.since(t) >= secs(interval));
        if !due || !self.slots[i].can_take() || self.jobs.values().any(|j| j.probe) {
            return;
        }
        let messages = vec![ChatMessage::new(Role::User, "Reply with OK.")];
        let params = GenParams {
            max_tokens: 4,
            ..GenParams::default()
        };
        let id = self.new_job(0, 0, messages, params, true);
        self.queue.push_back(id);
    }
}
