//! The worker side of the worker conversation as a state machine without IO:
//! [`Core::handle`] takes one input (a supervisor message, an engine event,
//! a hang-up, SIGTERM) and the time, and returns what to do ([`Effect`]s).
//! The driver in [`crate::run`](mod@crate::run) owns the socket, the engine
//! thread and the clock; every decision about the conversation is made here.

use std::collections::BTreeMap;
use std::time::Instant;

use proto::chat::GenParams;
use proto::chat::{Backend, FinishReason};
use proto::worker::{
    CacheReport, Generate, Heartbeat, Load, LoadFailed, Ready, SupervisorToWorker, Warm, Warmed,
    WorkerDone, WorkerError, WorkerErrorKind, WorkerToSupervisor, WorkerToken,
};

use crate::engine::{EngineEvent, Finish, GenFailure, Job, StopReason};
use crate::stats::Tally;

/// One thing that happened to the worker.
#[derive(Debug)]
pub enum Input {
    /// A message from the supervisor.
    Message(SupervisorToWorker),
    /// A frame arrived whole but did not decode (the framing is intact).
    Undecodable,
    /// The supervisor closed the socket, or it failed.
    Hangup,
    /// SIGTERM.
    Terminate,
    /// The engine thread reported.
    Engine(EngineEvent),
}

/// What the driver must do, in order.
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// Send a message to the supervisor.
    Send(WorkerToSupervisor),
    /// Hand a load to the engine thread (after whatever it is doing).
    Load(Load),
    /// Hand a generation to the engine thread.
    Generate(Job),
    /// Stop a generation's stream (and so the engine's work on it).
    Stop {
        /// The generation.
        request_id: u64,
        /// Why.
        reason: StopReason,
    },
    /// End the process.
    Exit(ExitPlan),
}

/// How the worker ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitPlan {
    /// Exit status.
    pub code: i32,
    /// Whether to give the engine thread a grace period to finish and drop
    /// the model first (false during a load: a load cannot be interrupted,
    /// and waiting for it would only delay the exit).
    pub drain_engine: bool,
}

#[derive(Debug)]
enum ModelState {
    /// No Load yet.
    Empty,
    /// A load is on the engine thread.
    Loading {
        since: Instant,
        profile: String,
        max_new_tokens: u32,
    },
    /// A model serves.
    Ready { max_new_tokens: u32 },
}

#[derive(Debug)]
struct Current {
    request_id: u64,
    tally: Tally,
}

/// The conversation's state.
#[derive(Debug)]
pub struct Core {
    backend: Backend,
    pid: u32,
    model: ModelState,
    /// A Load that arrived during a load: the newest settings win.
    pending_load: Option<(Load, Instant)>,
    /// The generation accepted and not answered yet.
    current: Option<Current>,
    /// The warm (a prefill without answer) handed to the engine and not
    /// finished yet: a generation arriving stops it.
    warming: Option<u64>,
    /// Warms started, for their engine-side ids.
    warms: u64,
    /// The keys of the warms handed to the engine whose end has not come:
    /// each end is answered with `Warmed`.
    warm_keys: BTreeMap<u64, String>,
    tokens_total: u64,
    requests_total: u64,
    /// The engine's latest report of its KV caches.
    cache: CacheReport,
    exiting: bool,
}

impl Core {
    /// A worker of `backend` in process `pid`, before any Load.
    pub fn new(backend: Backend, pid: u32) -> Self {
        Self {
            backend,
            pid,
            model: ModelState::Empty,
            pending_load: None,
            current: None,
            warming: None,
            warms: 0,
            warm_keys: BTreeMap::new(),
            tokens_total: 0,
            requests_total: 0,
            cache: CacheReport::default(),
            exiting: false,
        }
    }

    /// The generation in progress (accepted, not answered), if any.
    pub fn busy_with(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.request_id)
    }

    /// Handles one input at time `now`.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        if self.exiting {
            return Vec::new();
        }
        let mut out = Vec::new();
        match input {
            Input::Message(msg) => self.on_message(msg, now, &mut out),
            Input::Undecodable => {
                // One bad message does not end the conversation: the frame
                // boundary is intact, and what it meant to ask is answered by
                // the supervisor's own timeouts.
                tracing::error!("ignoring a message from the supervisor that does not decode");
            }
            Input::Hangup => {
                tracing::info!("the supervisor went away; exiting");
                self.shutdown(&mut out);
            }
            Input::Terminate => {
                tracing::info!("SIGTERM: shutting down");
                self.shutdown(&mut out);
            }
            Input::Engine(event) => self.on_engine(event, now, &mut out),
        }
        out
    }

    fn on_message(&mut self, msg: SupervisorToWorker, now: Instant, out: &mut Vec<Effect>) {
        match msg {
            SupervisorToWorker::Load(load) => {
                if matches!(self.model, ModelState::Loading { .. }) {
                    tracing::info!(profile = %load.profile.name, "load queued behind the one in progress");
                    self.pending_load = Some((load, now));
                } else {
                    self.start_load(load, now, out);
                }
            }
            SupervisorToWorker::Generate(generate) => self.on_generate(generate, now, out),
            SupervisorToWorker::Cancel(cancel) => {
                if self.busy_with() == Some(cancel.request_id) {
                    tracing::info!(request_id = cancel.request_id, "cancelling");
                    self.answer_done(FinishReason::Cancelled, out);
                    out.push(Effect::Stop {
                        request_id: cancel.request_id,
                        reason: StopReason::Cancel,
                    });
                } else {
                    tracing::debug!(
                        request_id = cancel.request_id,
                        "cancel for a generation that is not running; ignored"
                    );
                }
            }
            SupervisorToWorker::Ping(ping) => {
                out.push(Effect::Send(WorkerToSupervisor::Heartbeat(Heartbeat {
                    seq: ping.seq,
                    busy_with: self.busy_with(),
                    tokens_total: self.tokens_total,
                    requests_total: self.requests_total,
                    cache: self.cache.clone(),
                })));
            }
            SupervisorToWorker::Shutdown => {
                tracing::info!("shutdown requested");
                self.shutdown(out);
            }
            SupervisorToWorker::Warm(warm) => self.on_warm(warm, out),
        }
    }

    /// A warm runs only on an idle, loaded worker; a newer one replaces the
    /// one in progress (it covers the same prompt and more of the answer).
    /// Every warm is answered with `Warmed` once over, an ignored one at
    /// once: the supervisor measures the serving worker while a warm runs.
    fn on_warm(&mut self, warm: Warm, out: &mut Vec<Effect>) {
        if !matches!(self.model, ModelState::Ready { .. }) || self.current.is_some() {
            tracing::debug!("warm while busy or not loaded; ignored");
            out.push(self.warmed(warm.key));
            return;
        }
        if warm.messages.is_empty() {
            tracing::debug!("warm without messages; ignored");
            out.push(self.warmed(warm.key));
            return;
        }
        self.stop_warm(StopReason::Cancel, out);
        self.warms += 1;
        // Ids from the top down: the supervisor's own count up from 1, so
        // the engine's events of a warm never match a generation.
        let id = u64::MAX - self.warms;
        self.warming = Some(id);
        self.warm_keys.insert(id, warm.key.clone());
        out.push(Effect::Generate(Job {
            generate: Generate {
                request_id: id,
                messages: warm.messages,
                params: GenParams::default(),
                assistant_prefix: warm.assistant_prefix,
                conversation: Some(warm.key),
            },
            limit: 1,
            warm: true,
        }));
    }

    /// The answer to a warm that is over: what the cache holds of its key.
    fn warmed(&self, key: String) -> Effect {
        let tokens = self
            .cache
            .held
            .iter()
            .find(|h| h.key == key)
            .map_or(0, |h| h.tokens);
        Effect::Send(WorkerToSupervisor::Warmed(Warmed { key, tokens }))
    }

    /// Stops the warm in progress, if any (its engine event still comes).
    fn stop_warm(&mut self, reason: StopReason, out: &mut Vec<Effect>) {
        if let Some(id) = self.warming.take() {
            out.push(Effect::Stop {
                request_id: id,
                reason,
            });
        }
    }

    fn start_load(&mut self, load: Load, now: Instant, out: &mut Vec<Effect>) {
        self.stop_warm(StopReason::Reload, out);
        // One model per process: a generation in progress ends now.
        if let Some(id) = self.busy_with() {
            tracing::info!(request_id = id, "a new model was asked for; cancelling");
            self.answer_done(FinishReason::Cancelled, out);
            out.push(Effect::Stop {
                request_id: id,
                reason: StopReason::Reload,
            });
        }
        tracing::info!(model = %load.model_path, profile = %load.profile.name, "loading");
        self.model = ModelState::Loading {
            since: now,
            profile: load.profile.name.clone(),
            max_new_tokens: load.profile.max_new_tokens,
        };
        out.push(Effect::Load(load));
    }

    fn on_generate(&mut self, generate: Generate, now: Instant, out: &mut Vec<Effect>) {
        let id = generate.request_id;
        let refuse = |kind, message: String| {
            Effect::Send(WorkerToSupervisor::Error(WorkerError {
                request_id: id,
                kind,
                message,
            }))
        };
        let max_new_tokens = match self.model {
            ModelState::Ready { max_new_tokens } => max_new_tokens,
            ModelState::Loading { .. } => {
                out.push(refuse(
                    WorkerErrorKind::NotLoaded,
                    "the model is still loading".into(),
                ));
                return;
            }
            ModelState::Empty => {
                out.push(refuse(
                    WorkerErrorKind::NotLoaded,
                    "no model is loaded".into(),
                ));
                return;
            }
        };
        if let Some(running) = self.busy_with() {
            out.push(refuse(
                WorkerErrorKind::Busy,
                format!("generation {running} is still running"),
            ));
            return;
        }
        if generate.messages.is_empty() {
            out.push(refuse(
                WorkerErrorKind::BadRequest,
                "the request has no messages".into(),
            ));
            return;
        }
        // A generation never waits behind a whole warm: the warm stops at
        // its next prefill chunk and the generation reuses what it cached.
        self.stop_warm(StopReason::Cancel, out);
        let limit = request_limit(generate.params.max_tokens, max_new_tokens);
        self.current = Some(Current {
            request_id: id,
            tally: Tally::new(now),
        });
        out.push(Effect::Generate(Job {
            generate,
            limit,
            warm: false,
        }));
    }

    fn on_engine(&mut self, event: EngineEvent, now: Instant, out: &mut Vec<Effect>) {
        match event {
            EngineEvent::Loaded(Ok(facts)) => {
                let ModelState::Loading {
                    since,
                    profile,
                    max_new_tokens,
                } = &self.model
                else {
                    // An engine bug; the state stays as it was.
                    tracing::warn!(
                        "the engine reported a loaded model while none was loading; ignored"
                    );
                    return;
                };
                let (since, profile, max_new_tokens) = (*since, profile.clone(), *max_new_tokens);
                let load_ms = now.saturating_duration_since(since).as_secs_f64() * 1000.0;
                tracing::info!(model = %facts.name, %profile, load_ms, "model ready");
                self.model = ModelState::Ready { max_new_tokens };
                out.push(Effect::Send(WorkerToSupervisor::Ready(Ready {
                    backend: self.backend,
                    model: facts,
                    profile,
                    load_ms,
                    pid: self.pid,
                })));
                if let Some((load, since)) = self.pending_load.take() {
                    self.start_load(load, since, out);
                }
            }
            EngineEvent::Loaded(Err(failure)) => {
                // The supervisor logs it and shows it in status; here it is
                // only the worker's side of the story.
                tracing::info!(
                    exit_code = failure.exit_code,
                    "load failed: {}",
                    failure.message
                );
                out.push(Effect::Send(WorkerToSupervisor::LoadFailed(LoadFailed {
                    exit_code: failure.exit_code,
                    message: failure.message,
                })));
                self.exiting = true;
                out.push(Effect::Exit(ExitPlan {
                    code: failure.exit_code,
                    drain_engine: false,
                }));
            }
            EngineEvent::Text {
                request_id,
                text,
                tokens,
                at,
            } => {
                let Some(cur) = self.current_for(request_id) else {
                    return;
                };
                cur.tally.decoded(tokens, at);
                self.tokens_total += u64::from(tokens);
                out.push(Effect::Send(WorkerToSupervisor::Token(WorkerToken {
                    request_id,
                    text,
                    tokens,
                })));
            }
            EngineEvent::Prompt {
                request_id,
                tokens,
                prefill_ms,
                cached,
            } => {
                if let Some(cur) = self.current_for(request_id) {
                    cur.tally.prompt_tokens = Some(tokens);
                    cur.tally.prefill_ms = Some(prefill_ms);
                    cur.tally.cached_tokens = Some(cached);
                }
            }
            EngineEvent::Cache(report) => self.cache = report,
            EngineEvent::LimitReached { request_id } => {
                if self.current_for(request_id).is_some() {
                    self.answer_done(FinishReason::MaxTokens, out);
                }
            }
            EngineEvent::Finished {
                request_id,
                result,
                tokens,
            } => self.on_finished(request_id, result, tokens, out),
        }
    }

    fn on_finished(
        &mut self,
        request_id: u64,
        result: Result<Finish, GenFailure>,
        tokens: u32,
        out: &mut Vec<Effect>,
    ) {
        if self.warming == Some(request_id) {
            self.warming = None;
        }
        if let Some(key) = self.warm_keys.remove(&request_id) {
            // A warm: no client to answer; the supervisor hears it is over
            // (the engine reported its cache just before).
            if let Err(failure) = result {
                tracing::debug!(message = %failure.message, "warm failed");
            }
            out.push(self.warmed(key));
            return;
        }
        let Some(cur) = self.current_for(request_id) else {
            return;
        };
        // Tokens whose bytes never made a frame still count.
        let unseen = tokens.saturating_sub(cur.tally.tokens);
        cur.tally.tokens += unseen;
        if let Ok(finish) = &result {
            if let Some(n) = finish.prompt_tokens {
                cur.tally.prompt_tokens = Some(n);
            }
            if let Some(ms) = finish.prefill_ms {
                cur.tally.prefill_ms = Some(ms);
            }
        }
        self.tokens_total += u64::from(unseen);
        match result {
            Ok(finish) => {
                self.answer_done(finish.reason, out);
            }
            Err(failure) => {
                self.current = None;
                self.requests_total += 1;
                out.push(Effect::Send(WorkerToSupervisor::Error(WorkerError {
                    request_id,
                    kind: failure.kind,
                    message: failure.message,
                })));
            }
        }
    }

    fn current_for(&mut self, request_id: u64) -> Option<&mut Current> {
        self.current.as_mut().filter(|c| c.request_id == request_id)
    }

    /// Answers the current generation with Done; later events for it are dropped.
    fn answer_done(&mut self, finish: FinishReason, out: &mut Vec<Effect>) {
        let Some(cur) = self.current.take() else {
            return;
        };
        self.requests_total += 1;
        out.push(Effect::Send(WorkerToSupervisor::Done(WorkerDone {
            request_id: cur.request_id,
            finish,
            stats: cur.tally.stats(),
            cache: self.cache.clone(),
        })));
    }

    fn shutdown(&mut self, out: &mut Vec<Effect>) {
        self.exiting = true;
        if let ModelState::Loading { .. } = self.model {
            out.push(Effect::Exit(ExitPlan {
                code: 0,
                drain_engine: false,
            }));
            return;
        }
        if let Some(cur) = self.current.take() {
            out.push(Effect::Stop {
                request_id: cur.request_id,
                reason: StopReason::Shutdown,
            });
        }
        self.stop_warm(StopReason::Shutdown, out);
        out.push(Effect::Exit(ExitPlan {
            code: 0,
            drain_engine: true,
        }));
    }
}

/// Tokens a request may generate: its own cap within the profile's (0 asks
/// for the profile's), at least one.
pub fn request_limit(requested: u32, profile_max: u32) -> u32 {
    let profile_max = profile_max.max(1);
    match requested {
        0 => profile_max,
        n => n.min(profile_max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::chat::{ChatMessage, GenParams, Role};
    use proto::worker::{
        BackendOptions, CancelGeneration, CpuOptions, KvCacheType, ModelFacts, Ping, Profile,
    };

    fn load(profile: &str) -> Load {
        Load {
            model_path: "m.gguf".into(),
            profile: Profile {
                name: profile.into(),
                context_size: 256,
                batch_size: 64,
                threads: 1,
                kv_cache_type: KvCacheType::F16,
                flash_attention: false,
                max_new_tokens: 50,
            },
            backend: BackendOptions::Cpu(CpuOptions::default()),
        }
    }

    fn facts() -> ModelFacts {
        ModelFacts {
            name: "m".into(),
            file_size: 1,
            architecture: String::new(),
            train_context: 0,
            context_size: 256,
            parameters: 0,
            chat_template: String::new(),
        }
    }

    fn msg(m: SupervisorToWorker) -> Input {
        Input::Message(m)
    }

    fn ready_core(now: Instant) -> Core {
        let mut core = Core::new(Backend::Cpu, 7);
        core.handle(msg(SupervisorToWorker::Load(load("a"))), now);
        core.handle(Input::Engine(EngineEvent::Loaded(Ok(facts()))), now);
        core
    }

    fn generate(id: u64, max_tokens: u32) -> Input {
        msg(SupervisorToWorker::Generate(Generate {
            request_id: id,
            messages: vec![ChatMessage::new(Role::User, "hi")],
            params: GenParams {
                max_tokens,
                ..GenParams::default()
            },
            assistant_prefix: String::new(),
            conversation: None,
        }))
    }

    #[test]
    fn loads_during_a_load_wait_and_the_newest_wins() {
        let now = Instant::now();
        let mut core = Core::new(Backend::Cpu, 7);
        let first = core.handle(msg(SupervisorToWorker::Load(load("a"))), now);
        assert_eq!(first, vec![Effect::Load(load("a"))]);
        assert!(core
            .handle(msg(SupervisorToWorker::Load(load("b"))), now)
            .is_empty());
        assert!(core
            .handle(msg(SupervisorToWorker::Load(load("c"))), now)
            .is_empty());
        let out = core.handle(Input::Engine(EngineEvent::Loaded(Ok(facts()))), now);
        assert!(
            matches!(&out[0], Effect::Send(WorkerToSupervisor::Ready(r)) if r.profile == "a" && r.pid == 7)
        );
        assert_eq!(out[1], Effect::Load(load("c")));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn the_cap_is_the_requests_within_the_profiles() {
        let now = Instant::now();
        let mut core = ready_core(now);
        let out = core.handle(generate(1, 0), now);
        assert!(matches!(&out[0], Effect::Generate(job) if job.limit == 50));
    }

    #[test]
    fn events_of_an_answered_generation_are_dropped() {
        let now = Instant::now();
        let mut core = ready_core(now);
        core.handle(generate(1, 10), now);
        let out = core.handle(
            msg(SupervisorToWorker::Cancel(CancelGeneration {
                request_id: 1,
            })),
            now,
        );
        assert!(matches!(
            &out[0],
            Effect::Send(WorkerToSupervisor::Done(d)) if d.finish == FinishReason::Cancelled
        ));
        assert_eq!(
            out[1],
            Effect::Stop {
                request_id: 1,
                reason: StopReason::Cancel
            }
        );
        let late = EngineEvent::Text {
            request_id: 1,
            text: "late".into(),
            tokens: 1,
            at: now,
        };
        assert!(core.handle(Input::Engine(late), now).is_empty());
        let finished = EngineEvent::Finished {
            request_id: 1,
            result: Ok(Finish::new(FinishReason::EndOfTurn)),
            tokens: 3,
        };
        assert!(core.handle(Input::Engine(finished), now).is_empty());
        let out = core.handle(msg(SupervisorToWorker::Ping(Ping { seq: 1 })), now);
        let Effect::Send(WorkerToSupervisor::Heartbeat(hb)) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (hb.busy_with, hb.requests_total, hb.tokens_total),
            (None, 1, 0)
        );
    }

    #[test]
    fn after_the_exit_nothing_more_happens() {
        let now = Instant::now();
        let mut core = ready_core(now);
        core.handle(generate(1, 10), now);
        let out = core.handle(Input::Terminate, now);
        assert_eq!(
            out,
            vec![
                Effect::Stop {
                    request_id: 1,
                    reason: StopReason::Shutdown
                },
                Effect::Exit(ExitPlan {
                    code: 0,
                    drain_engine: true
                })
            ]
        );
        assert!(core.handle(Input::Hangup, now).is_empty());
        assert!(core
            .handle(msg(SupervisorToWorker::Ping(Ping { seq: 2 })), now)
            .is_empty());
    }

    #[test]
    fn done_and_heartbeat_carry_the_engines_cache_report() {
        let now = Instant::now();
        let mut core = ready_core(now);
        core.handle(generate(1, 10), now);
        let report = CacheReport {
            held: vec![proto::worker::HeldConversation {
                key: "k".into(),
                tokens: 30,
            }],
            capacity: 2,
            hits: 1,
            reused_tokens: 25,
            ..CacheReport::default()
        };
        let prompt = EngineEvent::Prompt {
            request_id: 1,
            tokens: 30,
            prefill_ms: 2.0,
            cached: 25,
        };
        assert!(core.handle(Input::Engine(prompt), now).is_empty());
        assert!(core
            .handle(Input::Engine(EngineEvent::Cache(report.clone())), now)
            .is_empty());
        let out = core.handle(
            Input::Engine(EngineEvent::LimitReached { request_id: 1 }),
            now,
        );
        let Effect::Send(WorkerToSupervisor::Done(done)) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(done.cache, report);
        assert_eq!(
            (done.stats.prompt_tokens, done.stats.cached_tokens),
            (30, 25)
        );
        let out = core.handle(msg(SupervisorToWorker::Ping(Ping { seq: 1 })), now);
        let Effect::Send(WorkerToSupervisor::Heartbeat(hb)) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(hb.cache, report);
    }

    #[test]
    fn a_request_cap_stays_within_the_profile() {
        assert_eq!(request_limit(10, 256), 10);
        assert_eq!(request_limit(1000, 256), 256);
        assert_eq!(request_limit(0, 256), 256);
        assert_eq!(request_limit(0, 0), 1);
    }
}

#[cfg(test)]
mod warm_tests {
    use super::*;
    use proto::chat::{ChatMessage, Role};
    use proto::worker::{BackendOptions, CpuOptions, KvCacheType, ModelFacts, Ping, Profile};

    fn ready_core(now: Instant) -> Core {
        let mut core = Core::new(Backend::Cpu, 7);
        let load = Load {
            model_path: "m.gguf".into(),
            profile: Profile {
                name: "a".into(),
                context_size: 256,
                batch_size: 64,
                threads: 1,
                kv_cache_type: KvCacheType::F16,
                flash_attention: false,
                max_new_tokens: 50,
            },
            backend: BackendOptions::Cpu(CpuOptions::default()),
        };
        core.handle(Input::Message(SupervisorToWorker::Load(load)), now);
        let facts = ModelFacts {
            name: "m".into(),
            file_size: 1,
            architecture: String::new(),
            train_context: 0,
            context_size: 256,
            parameters: 0,
            chat_template: String::new(),
        };
        core.handle(Input::Engine(EngineEvent::Loaded(Ok(facts))), now);
        core
    }

    fn warm(prefix: &str) -> Input {
        Input::Message(SupervisorToWorker::Warm(Warm {
            key: "shadow:5".into(),
            messages: vec![ChatMessage::new(Role::User, "hi")],
            assistant_prefix: prefix.into(),
        }))
    }

    fn generate(id: u64) -> Input {
        Input::Message(SupervisorToWorker::Generate(Generate {
            request_id: id,
            messages: vec![ChatMessage::new(Role::User, "hi")],
            params: GenParams::default(),
            assistant_prefix: "Hel".into(),
            conversation: Some("shadow:5".into()),
        }))
    }

    fn warm_job(effects: &[Effect]) -> Option<&Job> {
        effects.iter().find_map(|e| match e {
            Effect::Generate(job) if job.warm => Some(job),
            _ => None,
        })
    }

    #[test]
    fn an_idle_worker_warms_under_the_key_and_answers_nothing() {
        let now = Instant::now();
        let mut core = ready_core(now);
        let out = core.handle(warm("Hel"), now);
        let job = warm_job(&out).expect("a warm job");
        assert_eq!(job.generate.conversation.as_deref(), Some("shadow:5"));
        assert_eq!(job.generate.assistant_prefix, "Hel");
        assert!(!out.iter().any(|e| matches!(e, Effect::Send(_))));
        // Not busy: the supervisor may send it a generation at any time.
        assert_eq!(core.busy_with(), None);
        let id = job.generate.request_id;
        let finished = core.handle(
            Input::Engine(EngineEvent::Finished {
                request_id: id,
                result: Ok(Finish::new(FinishReason::EndOfTurn)),
                tokens: 0,
            }),
            now,
        );
        assert_eq!(
            finished,
            vec![Effect::Send(WorkerToSupervisor::Warmed(Warmed {
                key: "shadow:5".into(),
                tokens: 0,
            }))],
            "a warm's end is answered with Warmed only"
        );
        let hb = core.handle(
            Input::Message(SupervisorToWorker::Ping(Ping { seq: 1 })),
            now,
        );
        assert!(matches!(
            &hb[..],
            [Effect::Send(WorkerToSupervisor::Heartbeat(Heartbeat {
                busy_with: None,
                ..
            }))]
        ));
    }

    #[test]
    fn a_generation_stops_the_warm_and_starts_at_once() {
        let now = Instant::now();
        let mut core = ready_core(now);
        let out = core.handle(warm("Hel"), now);
        let warm_id = warm_job(&out).expect("a warm job").generate.request_id;
        let out = core.handle(generate(5), now);
        assert_eq!(
            out.first(),
            Some(&Effect::Stop {
                request_id: warm_id,
                reason: StopReason::Cancel
            })
        );
        assert!(
            matches!(out.get(1), Some(Effect::Generate(j)) if !j.warm && j.generate.request_id == 5)
        );
        // The stopped warm's end does not end the generation.
        let late = core.handle(
            Input::Engine(EngineEvent::Finished {
                request_id: warm_id,
                result: Ok(Finish::new(FinishReason::EndOfTurn)),
                tokens: 0,
            }),
            now,
        );
        assert!(
            matches!(&late[..], [Effect::Send(WorkerToSupervisor::Warmed(w))] if w.key == "shadow:5"),
            "{late:?}"
        );
        assert_eq!(core.busy_with(), Some(5));
    }

    #[test]
    fn a_busy_or_unloaded_worker_ignores_a_warm() {
        let now = Instant::now();
        let mut core = ready_core(now);
        core.handle(generate(5), now);
        let ignored = |out: Vec<Effect>| matches!(&out[..], [Effect::Send(WorkerToSupervisor::Warmed(w))] if w.key == "shadow:5" && w.tokens == 0);
        assert!(ignored(core.handle(warm("Hel"), now)), "answered at once");
        let mut empty = Core::new(Backend::Cpu, 7);
        assert!(ignored(empty.handle(warm("Hel"), now)));
    }

    #[test]
    fn warmed_says_what_the_cache_holds_of_the_key_after_the_warm() {
        let now = Instant::now();
        let mut core = ready_core(now);
        let out = core.handle(warm("Hel"), now);
        let id = warm_job(&out).expect("a warm job").generate.request_id;
        // The engine reports its cache just before the warm's end.
        let report = CacheReport {
            held: vec![proto::worker::HeldConversation {
                key: "shadow:5".into(),
                tokens: 42,
            }],
            capacity: 2,
            ..CacheReport::default()
        };
        core.handle(Input::Engine(EngineEvent::Cache(report)), now);
        let end = core.handle(
            Input::Engine(EngineEvent::Finished {
                request_id: id,
                result: Ok(Finish::new(FinishReason::EndOfTurn)),
                tokens: 0,
            }),
            now,
        );
        assert_eq!(
            end,
            vec![Effect::Send(WorkerToSupervisor::Warmed(Warmed {
                key: "shadow:5".into(),
                tokens: 42,
            }))]
        );
    }

    #[test]
    fn a_newer_warm_replaces_the_one_in_progress() {
        let now = Instant::now();
        let mut core = ready_core(now);
        let first = core.handle(warm("Hel"), now);
        let first_id = warm_job(&first).expect("a warm job").generate.request_id;
        let out = core.handle(warm("Hello there"), now);
        assert_eq!(
            out.first(),
            Some(&Effect::Stop {
                request_id: first_id,
                reason: StopReason::Cancel
            })
        );
        let second = warm_job(&out).expect("a second warm job");
        assert_ne!(second.generate.request_id, first_id);
        assert_eq!(second.generate.assistant_prefix, "Hello there");
    }
}
