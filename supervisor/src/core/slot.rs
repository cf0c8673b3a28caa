//! A slot (one worker process at a time, its lifecycle state and health
//! evidence) and a job (one client request); every state change of a slot
//! goes through [`Core::set_state`] and the transition table.

use proto::admin::SlotState;
use proto::chat::{Backend, ChatMessage, GenParams};
use proto::client::{ErrorEvent, ErrorKind, SupervisorToClient};
use proto::worker::CacheReport;

use super::{Core, Effect, Level, MemSample, Millis, OomCounters};
use crate::config::SlotConfig;
use crate::lifecycle::{check_transition, Reason, RestartHistory};
use crate::routing::SlotView;

/// One worker slot.
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)] // independent facts, not a state in disguise
pub struct Slot {
    /// `primary` or `fallback`.
    pub name: &'static str,
    /// Its configuration (ceilings may change at run time).
    pub cfg: SlotConfig,
    /// Lifecycle state.
    pub state: SlotState,
    /// When it entered that state.
    pub since: Millis,
    /// Why it is in that state, for status.
    pub reason: String,
    /// Counts the processes started for the slot; events of older ones are stale.
    pub incarnation: u64,
    /// The live process.
    pub pid: Option<u32>,
    /// A spawn was asked for and its answer has not come yet.
    pub spawning: bool,
    /// When the current process started.
    pub spawned_at: Option<Millis>,
    /// When the current load (first, or a profile switch) began.
    pub loading_since: Option<Millis>,
    /// Its connection is up.
    pub connected: bool,
    /// Why we are stopping it, if we are.
    pub stopped_for: Option<Reason>,
    /// The worker's `LoadFailed` message.
    pub load_failure: Option<String>,
    /// The request it serves.
    pub job: Option<u64>,
    /// When that request was sent.
    pub generate_sent_at: Option<Millis>,
    /// Its first-token limit (scaled with the prompt).
    pub first_token_limit: std::time::Duration,
    /// When its last token came.
    pub last_token_at: Option<Millis>,
    /// Ping counter.
    pub ping_seq: u64,
    /// Last ping sent.
    pub last_ping: Millis,
    /// Last sign of life while idle.
    pub last_heartbeat: Millis,
    /// Restarts, for backoff and the circuit breaker.
    pub history: RestartHistory,
    /// Backoff or cooldown timer.
    pub wake_at: Option<Millis>,
    /// Since when it has been ready or busy without a break.
    pub healthy_since: Option<Millis>,
    /// An operator asked for a restart once the current request ends.
    pub restart_after_job: bool,
    /// Model name (file name until the worker says).
    pub model: String,
    /// Chat template in use, as the worker reported it when ready.
    pub chat_template: String,
    /// Requests answered.
    pub requests_served: u64,
    /// Decode rate of its last generation.
    pub last_decode_tps: Option<f64>,
    /// Prompt tokens per second, learned from its `Done` statistics.
    pub prefill_tps: Option<f64>,
    /// Restarts counted (crashes, hangs, ...; never switches or shutdowns).
    pub restarts: u32,
    /// Why it last restarted.
    pub last_restart_reason: Option<Reason>,
    /// Last memory sample.
    pub mem: Option<MemSample>,
    /// `/proc/<pid>/status` reads that failed in a row.
    pub mem_read_failures: u32,
    /// Under memory pressure.
    pub memory_pressure: bool,
    /// OOM counters when the process started.
    pub oom_at_spawn: OomCounters,
    /// When its connection dropped while the process lived on.
    pub disconnected_at: Option<Millis>,
    /// An exit seen before the connection was drained: handled when the
    /// connection ends (its last messages, such as `LoadFailed`, explain the
    /// exit) or after a short wait.
    pub pending_exit: Option<(Option<i32>, Option<i32>, OomCounters, Millis)>,
    /// Serving its fallback profile.
    pub on_fallback_profile: bool,
    /// Why, for status.
    pub profile_reason: String,
    /// Pressure began.
    pub pressure_since: Option<Millis>,
    /// Pressure ended.
    pub calm_since: Option<Millis>,
    /// The worker refused a request (Busy/NotLoaded): not offered another
    /// until then (cleared by the tick, so routing changes only on events
    /// that run dispatch).
    pub refused_until: Option<Millis>,
    /// What the current process holds in its KV caches and its cache
    /// figures, as its latest heartbeat or `Done` said.
    pub cache: CacheReport,
    /// Cache figures of the slot's earlier processes, added up.
    pub cache_before: CacheReport,
    /// Its time per token (ms) while serving with no warm running, from
    /// its last request that had enough such tokens: the baseline of the
    /// shadowing rule until the request in flight has its own.
    pub calm_ms_per_token: Option<f64>,
}

impl Slot {
    pub(super) fn new(name: &'static str, cfg: SlotConfig, now: Millis) -> Self {
        Self {
            name,
            chat_template: String::new(),
            model: cfg
                .model
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            cfg,
            state: SlotState::Idle,
            since: now,
            reason: String::new(),
            incarnation: 0,
            pid: None,
            spawning: false,
            spawned_at: None,
            loading_since: None,
            connected: false,
            stopped_for: None,
            load_failure: None,
            job: None,
            generate_sent_at: None,
            first_token_limit: std::time::Duration::ZERO,
            last_token_at: None,
            ping_seq: 0,
            last_ping: now,
            last_heartbeat: now,
            history: RestartHistory::default(),
            wake_at: None,
            healthy_since: None,
            restart_after_job: false,
            requests_served: 0,
            last_decode_tps: None,
            prefill_tps: None,
            restarts: 0,
            last_restart_reason: None,
            mem: None,
            mem_read_failures: 0,
            memory_pressure: false,
            oom_at_spawn: OomCounters::default(),
            disconnected_at: None,
            pending_exit: None,
            on_fallback_profile: false,
            profile_reason: String::new(),
            pressure_since: None,
            calm_since: None,
            refused_until: None,
            cache: CacheReport::default(),
            cache_before: CacheReport::default(),
            calm_ms_per_token: None,
        }
    }

    /// Whether the current process holds conversation `key` in its KV cache.
    pub fn holds(&self, key: &str) -> bool {
        self.pid.is_some() && self.cache.holds(key)
    }

    /// The slot's cache for status: what its process holds now, figures
    /// added up over its processes.
    pub fn cache_status(&self) -> CacheReport {
        let (now, before) = (&self.cache, &self.cache_before);
        CacheReport {
            held: now.held.clone(),
            capacity: now.capacity,
            kv_bytes_per_sequence: now.kv_bytes_per_sequence,
            hits: before.hits + now.hits,
            misses: before.misses + now.misses,
            reused_tokens: before.reused_tokens + now.reused_tokens,
            evictions: before.evictions + now.evictions,
            dropped: before.dropped + now.dropped,
            prompt_cache: now.prompt_cache.clone(),
        }
    }

    /// A new process starts with an empty cache: the figures of the old
    /// one are kept, what it held is gone.
    pub fn cache_new_process(&mut self) {
        let mut total = self.cache_status();
        total.held.clear();
        self.cache_before = total;
        self.cache = CacheReport::default();
    }

    /// The profile it serves.
    pub fn profile_name(&self) -> String {
        match (&self.cfg.fallback_profile, self.on_fallback_profile) {
            (Some(f), true) => f.name.clone(),
            _ => self.cfg.profile.name.clone(),
        }
    }

    /// What routing sees.
    pub fn view(&self) -> SlotView {
        SlotView {
            backend: self.cfg.backend,
            state: self.state,
            healthy_since: self.healthy_since,
            recovering: self.restarts > 0,
        }
    }

    /// Ready and not sulking after a refusal: a request may start on it.
    pub fn can_take(&self) -> bool {
        self.state == SlotState::Ready
            && self.connected
            && self.job.is_none()
            && self.refused_until.is_none()
    }

    /// Whether a request for `model` may run here: any model when empty,
    /// else the reported model name, the model file's name or its stem.
    pub fn serves(&self, model: &str) -> bool {
        let file = self.cfg.model.file_name().map(|n| n.to_string_lossy());
        let stem = self.cfg.model.file_stem().map(|n| n.to_string_lossy());
        model.is_empty()
            || model == self.model
            || file.is_some_and(|f| f == model)
            || stem.is_some_and(|f| f == model)
    }
}

/// One admitted request (or the supervisor's own health probe).
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)] // independent facts about one request
pub struct Job {
    /// Client connection.
    pub conn: u64,
    /// The client's id for it.
    pub client_id: u64,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling parameters.
    pub params: GenParams,
    /// Text streamed so far (across failovers).
    pub text: String,
    /// Model tokens streamed so far.
    pub tokens: u32,
    /// When it was admitted.
    pub admitted_at: Millis,
    /// Since when it waits in the queue.
    pub waiting_since: Millis,
    /// The slot serving it.
    pub slot: Option<usize>,
    /// The failover to announce when it starts again.
    pub failover: Option<(Backend, Reason)>,
    /// Queue position last told.
    pub last_position: u32,
    /// Reason last told with the position.
    pub last_reason: String,
    /// The client cancelled it.
    pub cancelled: bool,
    /// The client is gone: nothing more is sent.
    pub silent: bool,
    /// A health probe of the supervisor's own.
    pub probe: bool,
    /// Workers it lost mid-answer.
    pub failovers: u32,
    /// Times a worker refused it (Busy/NotLoaded).
    pub refusals: u32,
    /// The model asked for; empty = any (the supervisor routes).
    pub model: String,
    /// Ended early by the client's `Stop` (a stop string): a cancel whose
    /// answer still ends with `Done` and its figures.
    pub stopped: bool,
    /// The conversation it continues (the client's key), if any.
    pub conversation: Option<String>,
    /// The idle slot prefilling it in its KV cache while another serves it.
    pub shadow: Option<Shadow>,
    /// Streamed tokens when a shadow was last looked for.
    pub shadow_tried_at: u32,
    /// The shadow waits for the generation's first token: the shadowing
    /// slot shares CPUs with the serving one, whose prefill it would slow.
    pub shadow_deferred: bool,
    /// Its serving slot was backing off from shadowing when it started:
    /// no shadow is looked for later either.
    pub shadow_backing_off: bool,
    /// The serving slot's time per token with and without a warm running,
    /// since the current generation started (for the shadowing rule).
    pub pace: Pace,
}

/// Time between token frames of the serving slot, per token, split by
/// whether a warm ran on the shadow meanwhile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pace {
    /// Intervals during which a warm ran (at least partly).
    pub warm: PaceSum,
    /// Intervals with no warm running.
    pub calm: PaceSum,
    /// A warm ran at some point since the last frame.
    pub overlap: bool,
}

/// Milliseconds and the tokens they produced.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PaceSum {
    /// Milliseconds between frames, added up.
    pub ms: f64,
    /// Tokens those frames carried.
    pub tokens: u32,
}

impl PaceSum {
    /// Adds one interval of `ms` that produced `tokens`.
    pub fn add(&mut self, ms: f64, tokens: u32) {
        self.ms += ms;
        self.tokens = self.tokens.saturating_add(tokens);
    }

    /// Milliseconds per token, once at least `min_tokens` were counted.
    pub fn per_token(&self, min_tokens: u32) -> Option<f64> {
        (self.tokens >= min_tokens.max(1)).then(|| self.ms / f64::from(self.tokens))
    }
}

/// A slot shadowing a request: what it was last sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// The shadowing slot.
    pub slot: usize,
    /// Its worker process (a restarted one holds nothing).
    pub incarnation: u64,
    /// The KV cache key: the request's conversation, else `shadow:<id>`.
    pub key: String,
    /// The request's streamed tokens when the last `Warm` was sent.
    pub at_tokens: u32,
    /// A `Warm` was sent and its `Warmed` has not come: the shadow's
    /// prefill may compete with the serving slot now. No other is sent
    /// meanwhile (the next covers everything streamed until then).
    pub warming: bool,
    /// Answer tokens the last finished warm covered.
    pub warmed_at_tokens: u32,
    /// Tokens the shadow's cache held under `key` after its last warm.
    pub warmed_tokens: u32,
    /// Warming stopped because it slowed the serving slot; the key is kept
    /// (what was warmed is still reused by a failover).
    pub stopped: bool,
}

impl Job {
    /// Characters of the conversation.
    pub fn prompt_chars(&self) -> usize {
        self.messages.iter().map(|m| m.content.len()).sum()
    }
}

/// Sends `event` to the job's client (nothing for probes or gone clients).
pub(super) fn send(out: &mut Vec<Effect>, job: &Job, event: SupervisorToClient) {
    if job.probe || job.silent {
        return;
    }
    out.push(Effect::ToClient {
        conn: job.conn,
        event,
        admitted: true,
    });
}

/// Ends the job with an error.
pub(super) fn fail(out: &mut Vec<Effect>, job: &Job, kind: ErrorKind, message: impl Into<String>) {
    send(
        out,
        job,
        SupervisorToClient::Error(ErrorEvent {
            request_id: job.client_id,
            kind,
            message: message.into(),
        }),
    );
}

impl Core {
    /// The only way a slot changes state: checked against the table.
    pub(super) fn set_state(
        &mut self,
        i: usize,
        next: proto::admin::SlotState,
        reason: Option<String>,
    ) {
        let now = self.now;
        let from = self.slots[i].state;
        if !check_transition(from, next) {
            let what = format!(
                "illegal transition of {}: {} -> {}",
                self.slots[i].name,
                from.as_str(),
                next.as_str()
            );
            self.violation(what);
            return;
        }
        if from != next {
            let name = self.slots[i].name;
            let why = reason.clone().unwrap_or_default();
            self.log(
                Level::Info,
                "slot state",
                &[
                    ("slot", &name),
                    ("from", &from.as_str()),
                    ("to", &next.as_str()),
                    ("reason", &why),
                ],
            );
            self.slots[i].since = now;
        }
        let s = &mut self.slots[i];
        let healthy = matches!(next, SlotState::Ready | SlotState::Busy);
        if !healthy {
            s.healthy_since = None;
        } else if s.healthy_since.is_none() {
            s.healthy_since = Some(now);
        }
        if next == SlotState::Loading && from != SlotState::Loading {
            s.loading_since = Some(now);
        }
        s.state = next;
        s.reason = reason.unwrap_or_default();
    }
}
