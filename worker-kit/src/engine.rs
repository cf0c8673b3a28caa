//! What a backend implements ([`Engine`], [`Model`]) and what it is handed:
//! a [`TokenStream`] to put each decoded token's bytes into, and a
//! [`Serve`] that runs generations on a model it has loaded.
//!
//! Everything here runs on the engine thread, which the runtime starts and
//! which alone touches the inference engine: a backend's calls may block for
//! seconds (a load, a decode, a stuck accelerator) without ever holding up
//! the socket.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use proto::chat::{Backend, FinishReason};
use proto::worker::{CacheReport, ExitCode, Generate, Load, ModelFacts, WorkerErrorKind};
use tokio::sync::mpsc::UnboundedSender;

use crate::utf8::Utf8Assembler;

/// An inference backend: loads models. Owned by the engine thread.
pub trait Engine: Send + 'static {
    /// The backend named in `Ready`.
    fn backend(&self) -> Backend;

    /// Loads the model of `load` (blocking as long as it takes), then hands
    /// it to [`Serve::serve`], which runs generations until the runtime
    /// wants another model or the worker ends; the model is dropped when
    /// this returns. One model per process: the previous one is gone before
    /// this is called again.
    ///
    /// # Errors
    /// [`LoadFailure`] with the exit code the worker ends with.
    fn load(&mut self, load: &Load, serve: Serve<'_>) -> Result<Served, LoadFailure>;
}

/// A loaded model: runs one generation at a time.
pub trait Model {
    /// Generates the answer to `job`, putting each decoded token's bytes
    /// into `out`, until the model ends its turn, the context is full, or
    /// `out` says stop (cancel, the token cap, shutdown). Blocks.
    ///
    /// # Errors
    /// [`GenFailure`]: a request the model cannot serve, or an engine failure.
    fn generate(&mut self, job: &Job, out: &TokenStream) -> Result<Finish, GenFailure>;

    /// What the model holds in its KV caches (conversations, figures), sent
    /// with every `Done` and heartbeat. A model that keeps no cache between
    /// generations reports nothing.
    fn cache(&self) -> CacheReport {
        CacheReport::default()
    }

    /// Prefills `job`'s prompt (and assistant prefix) into the KV cache
    /// under its conversation key and generates nothing, stopping early
    /// when `out` is stopped (a generation is waiting). A model that keeps
    /// no cache between generations does nothing.
    ///
    /// # Errors
    /// [`GenFailure`]: the prompt cannot be rendered, or the engine failed.
    fn warm(&mut self, job: &Job, out: &TokenStream) -> Result<(), GenFailure> {
        let _ = (job, out);
        Ok(())
    }
}

/// One generation as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The supervisor's request.
    pub generate: Generate,
    /// Tokens to generate at most (the request's cap within the profile's);
    /// the [`TokenStream`] says stop when it is reached.
    pub limit: u32,
    /// A warm: prefill only ([`Model::warm`]), nothing is answered.
    pub warm: bool,
}

/// How a generation ended, as the engine saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finish {
    /// Why it stopped (ignored when the runtime already answered the
    /// request, e.g. after a cancel).
    pub reason: FinishReason,
    /// Tokens in the prompt, when the engine knows.
    pub prompt_tokens: Option<u32>,
    /// Time spent on the prompt, when the engine knows.
    pub prefill_ms: Option<f64>,
}

impl Finish {
    /// An end without figures.
    pub fn new(reason: FinishReason) -> Self {
        Self {
            reason,
            prompt_tokens: None,
            prefill_ms: None,
        }
    }
}

/// A generation that failed; the worker stays usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GenFailure {
    /// What kind of failure (`BadRequest`, `PromptTooLong`, `Engine`).
    pub kind: WorkerErrorKind,
    /// What happened, for the operator (never the prompt itself).
    pub message: String,
}

impl GenFailure {
    /// A failure of `kind`.
    pub fn new(kind: WorkerErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A load that failed; the worker reports it and exits with `exit_code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LoadFailure {
    /// Process exit status: 64-78 ([`ExitCode`]) for "will never work with
    /// this configuration", 1 for "may work after a restart".
    pub exit_code: i32,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl LoadFailure {
    /// A failure that no restart fixes (bad model file, missing runtime...).
    pub fn broken(code: ExitCode, message: impl Into<String>) -> Self {
        Self {
            exit_code: code.code(),
            message: message.into(),
        }
    }

    /// A failure a restart may cure (exit status 1).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            exit_code: 1,
            message: message.into(),
        }
    }
}

/// Whether the engine should go on decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Decode the next token.
    Continue,
    /// Stop: the answer is complete or no longer wanted.
    Stop,
}

/// Why a generation is being stopped from outside the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The supervisor cancelled it.
    Cancel,
    /// The request's token cap was reached.
    Limit,
    /// Another model is to be loaded.
    Reload,
    /// The worker is ending.
    Shutdown,
}

/// What the engine thread tells the runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// The load ended: the model's facts, or why it failed.
    Loaded(Result<ModelFacts, LoadFailure>),
    /// Complete text of one or more tokens decoded at `at`.
    Text {
        /// The generation.
        request_id: u64,
        /// Whole characters (never empty).
        text: String,
        /// Tokens this text covers.
        tokens: u32,
        /// When the latest of them was decoded.
        at: Instant,
    },
    /// The engine's figures for the prompt.
    Prompt {
        /// The generation.
        request_id: u64,
        /// Tokens in the prompt.
        tokens: u32,
        /// Time spent on it.
        prefill_ms: f64,
        /// Of its tokens, those whose KV was reused from the cache.
        cached: u32,
    },
    /// What the model holds in its KV caches now.
    Cache(CacheReport),
    /// The token cap was reached; the stream has stopped itself.
    LimitReached {
        /// The generation.
        request_id: u64,
    },
    /// `Model::generate` returned (the engine is free for the next job).
    Finished {
        /// The generation.
        request_id: u64,
        /// What it returned.
        result: Result<Finish, GenFailure>,
        /// Tokens the stream counted in all.
        tokens: u32,
    },
}

/// A hook that stops a running generation from outside (e.g. the RKLLM
/// runtime's abort); called on a thread of its own, never the socket's.
type StopHook = Box<dyn FnOnce(StopReason) + Send>;

struct StreamState {
    utf8: Utf8Assembler,
    tokens: u32,
    /// Tokens decoded since the last frame (their bytes were held back).
    unsent: u32,
    stopped: Option<StopReason>,
    hook: Option<StopHook>,
}

struct StreamInner {
    request_id: u64,
    limit: u32,
    events: UnboundedSender<EngineEvent>,
    stopped: AtomicBool,
    state: Mutex<StreamState>,
}

/// Where an engine puts the tokens of one generation: reassembles whole
/// characters, counts tokens, enforces the cap, and carries the runtime's
/// stop request back to the engine. Cheap to clone; usable from any thread
/// (a runtime's callback thread too).
#[derive(Clone)]
pub struct TokenStream {
    inner: Arc<StreamInner>,
}

impl std::fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The held-back bytes belong to an answer: left out.
        f.debug_struct("TokenStream")
            .field("request_id", &self.inner.request_id)
            .field("limit", &self.inner.limit)
            .field("stopped", &self.is_stopped())
            .finish_non_exhaustive()
    }
}

impl TokenStream {
    /// A stream for generation `request_id`, stopping after `limit` tokens.
    pub fn new(request_id: u64, limit: u32, events: UnboundedSender<EngineEvent>) -> Self {
        Self {
            inner: Arc::new(StreamInner {
                request_id,
                limit: limit.max(1),
                events,
                stopped: AtomicBool::new(false),
                state: Mutex::new(StreamState {
                    utf8: Utf8Assembler::new(),
                    tokens: 0,
                    unsent: 0,
                    stopped: None,
                    hook: None,
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        // A panicking engine callback must not take the stream down with it.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, event: EngineEvent) {
        // The receiver is gone only when the worker is exiting.
        let _ = self.inner.events.send(event);
    }

    /// The generation this stream belongs to.
    pub fn request_id(&self) -> u64 {
        self.inner.request_id
    }

    /// One decoded token's bytes. Whole characters go out at once; a token
    /// ending inside a character is held back and goes out with the next.
    /// Returns [`Flow::Stop`] once the generation is stopped or the cap is
    /// reached (later tokens are dropped).
    pub fn token(&self, bytes: &[u8]) -> Flow {
        let at = Instant::now();
        let mut st = self.lock();
        if st.stopped.is_some() {
            return Flow::Stop;
        }
        st.tokens += 1;
        st.unsent += 1;
        let text = st.utf8.push(bytes);
        if !text.is_empty() {
            let tokens = std::mem::take(&mut st.unsent);
            self.send(EngineEvent::Text {
                request_id: self.inner.request_id,
                text,
                tokens,
                at,
            });
        }
        if st.tokens >= self.inner.limit {
            // Bytes of a character cut off by the cap can never complete.
            st.utf8.discard();
            self.stop_locked(&mut st, StopReason::Limit);
            self.send(EngineEvent::LimitReached {
                request_id: self.inner.request_id,
            });
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// Reports the prompt's size and processing time, when the engine knows
    /// them (before the first token, or at the end).
    pub fn prompt(&self, tokens: u32, prefill_ms: f64) {
        self.prompt_cached(tokens, 0, prefill_ms);
    }

    /// Like [`prompt`](Self::prompt), for an engine that reused the KV of
    /// `cached` of the prompt's `tokens` and prefilled only the rest.
    pub fn prompt_cached(&self, tokens: u32, cached: u32, prefill_ms: f64) {
        self.send(EngineEvent::Prompt {
            request_id: self.inner.request_id,
            tokens,
            prefill_ms,
            cached,
        });
    }

    /// Reports what the model holds in its KV caches now (an engine calls
    /// it after the prompt, so the `Done` of a generation stopped by its
    /// cap already names the conversation).
    pub fn cache(&self, report: CacheReport) {
        self.send(EngineEvent::Cache(report));
    }

    /// Whether the generation should stop (engines that decode in a loop
    /// check this between tokens).
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// Tokens counted so far.
    pub fn tokens(&self) -> u32 {
        self.lock().tokens
    }

    /// Registers how to stop this generation from outside (for engines that
    /// block inside a runtime call). Called once, on a thread of its own,
    /// when the stream is stopped; at once if it already is.
    pub fn on_stop(&self, hook: impl FnOnce(StopReason) + Send + 'static) {
        let mut st = self.lock();
        match st.stopped {
            Some(reason) => {
                drop(st);
                call_hook(Box::new(hook), reason);
            }
            None => st.hook = Some(Box::new(hook)),
        }
    }

    /// Stops the generation: later tokens are dropped and the engine's stop
    /// hook runs. Used by the runtime (cancel, reload, shutdown).
    pub(crate) fn stop(&self, reason: StopReason) {
        let mut st = self.lock();
        if st.stopped.is_none() {
            st.utf8.discard();
            self.stop_locked(&mut st, reason);
        }
    }

    fn stop_locked(&self, st: &mut StreamState, reason: StopReason) {
        st.stopped = Some(reason);
        self.inner.stopped.store(true, Ordering::Release);
        if let Some(hook) = st.hook.take() {
            call_hook(hook, reason);
        }
    }

    /// Ends a generation that ran its course: held-back bytes go out (as
    /// U+FFFD: they can no longer complete). Returns the token count.
    fn close(&self) -> u32 {
        let mut st = self.lock();
        // Nothing left to stop; the hook may hold the engine's model, which
        // must be free to be dropped.
        st.hook = None;
        if st.stopped.is_none() {
            let text = st.utf8.finish();
            if !text.is_empty() {
                let tokens = std::mem::take(&mut st.unsent);
                self.send(EngineEvent::Text {
                    request_id: self.inner.request_id,
                    text,
                    tokens,
                    at: Instant::now(),
                });
            }
        }
        st.tokens
    }
}

fn call_hook(hook: StopHook, reason: StopReason) {
    // A hook may block (an accelerator's abort call): never on the caller's
    // thread, which may be the socket task or the engine's own callback.
    let spawned = std::thread::Builder::new()
        .name("engine-stop".into())
        .spawn(move || hook(reason));
    if let Err(err) = spawned {
        tracing::error!(%err, "cannot start a thread to stop the generation");
    }
}

/// What the runtime asks of the engine thread.
#[derive(Debug)]
pub(crate) enum Command {
    Load(Load),
    Generate(Job, TokenStream),
}

/// Proof that [`Serve::serve`] ran (an engine cannot skip it).
#[derive(Debug)]
pub struct Served(());

/// Runs generations on a loaded model; handed to [`Engine::load`].
pub struct Serve<'a> {
    commands: &'a Receiver<Command>,
    events: &'a UnboundedSender<EngineEvent>,
    next_load: &'a mut Option<Load>,
}

impl std::fmt::Debug for Serve<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve").finish_non_exhaustive()
    }
}

impl Serve<'_> {
    /// Reports the model ready with `facts`, then runs the generations the
    /// runtime hands over until it wants another model or the worker ends.
    pub fn serve(self, facts: ModelFacts, model: &mut dyn Model) -> Served {
        // The cache first: the Ready that follows must not find a report of
        // the previous model.
        let _ = self.events.send(EngineEvent::Cache(model.cache()));
        let _ = self.events.send(EngineEvent::Loaded(Ok(facts)));
        loop {
            match self.commands.recv() {
                Ok(Command::Generate(job, stream)) => run_job(model, &job, &stream, self.events),
                Ok(Command::Load(load)) => {
                    *self.next_load = Some(load);
                    break;
                }
                Err(_) => break,
            }
        }
        Served(())
    }
}

fn run_job(
    model: &mut dyn Model,
    job: &Job,
    stream: &TokenStream,
    events: &UnboundedSender<EngineEvent>,
) {
    let request_id = job.generate.request_id;
    let result = if stream.is_stopped() {
        // Cancelled while it waited for the engine: never started.
        Ok(Finish::new(FinishReason::Cancelled))
    } else if job.warm {
        panic::catch_unwind(AssertUnwindSafe(|| model.warm(job, stream)))
            .unwrap_or_else(|panic| {
                Err(GenFailure::new(
                    WorkerErrorKind::Engine,
                    format!("internal error in the engine: {}", panic_text(&*panic)),
                ))
            })
            .map(|()| Finish::new(FinishReason::EndOfTurn))
    } else {
        panic::catch_unwind(AssertUnwindSafe(|| model.generate(job, stream))).unwrap_or_else(
            |panic| {
                Err(GenFailure::new(
                    WorkerErrorKind::Engine,
                    format!("internal error in the engine: {}", panic_text(&*panic)),
                ))
            },
        )
    };
    let tokens = stream.close();
    let _ = events.send(EngineEvent::Cache(model.cache()));
    let _ = events.send(EngineEvent::Finished {
        request_id,
        result,
        tokens,
    });
}

/// The engine thread: loads, serves, reloads, until the runtime hangs up or
/// a load fails; then drops the engine.
pub(crate) fn engine_thread<E: Engine>(
    mut engine: E,
    commands: &Receiver<Command>,
    events: &UnboundedSender<EngineEvent>,
) {
    let mut next: Option<Load> = None;
    loop {
        let load = match next.take() {
            Some(load) => load,
            None => match commands.recv() {
                Ok(Command::Load(load)) => load,
                Ok(Command::Generate(job, stream)) => {
                    // The runtime refuses generations before a Ready; a job
                    // that got here anyway is answered, not lost.
                    stream.stop(StopReason::Reload);
                    let _ = events.send(EngineEvent::Finished {
                        request_id: job.generate.request_id,
                        result: Err(GenFailure::new(
                            WorkerErrorKind::NotLoaded,
                            "no model is loaded",
                        )),
                        tokens: 0,
                    });
                    continue;
                }
                Err(_) => break,
            },
        };
        let serve = Serve {
            commands,
            events,
            next_load: &mut next,
        };
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| engine.load(&load, serve)))
            .unwrap_or_else(|panic| {
                Err(LoadFailure::transient(format!(
                    "internal error while loading the model: {}",
                    panic_text(&*panic)
                )))
            });
        if let Err(failure) = outcome {
            let _ = events.send(EngineEvent::Loaded(Err(failure)));
            // The worker exits after a failed load; nothing more to serve.
            break;
        }
    }
    drop(engine);
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::unbounded_channel;

    fn texts(rx: &mut tokio::sync::mpsc::UnboundedReceiver<EngineEvent>) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            if let EngineEvent::Text { text, tokens, .. } = e {
                out.push((text, tokens));
            }
        }
        out
    }

    #[test]
    fn a_frame_covers_the_tokens_whose_bytes_it_carries() {
        let (tx, mut rx) = unbounded_channel();
        let s = TokenStream::new(1, 100, tx);
        let euro = "€".as_bytes();
        assert_eq!(s.token(b"a"), Flow::Continue);
        s.token(&euro[..1]);
        s.token(&euro[1..2]);
        s.token(&euro[2..]);
        assert_eq!(s.close(), 4);
        assert_eq!(texts(&mut rx), vec![("a".into(), 1), ("€".into(), 3)]);
    }

    #[test]
    fn the_cap_stops_the_stream_and_drops_a_half_character() {
        let (tx, mut rx) = unbounded_channel();
        let s = TokenStream::new(1, 2, tx);
        let (hook_tx, hook_rx) = std::sync::mpsc::channel();
        s.on_stop(move |why| hook_tx.send(why).unwrap());
        assert_eq!(s.token(b"ok"), Flow::Continue);
        assert_eq!(s.token(&"€".as_bytes()[..2]), Flow::Stop);
        assert!(s.is_stopped());
        assert_eq!(s.token(b"late"), Flow::Stop);
        assert_eq!(s.close(), 2);
        let events: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(matches!(&events[0], EngineEvent::Text { text, .. } if text == "ok"));
        assert!(matches!(
            events[1],
            EngineEvent::LimitReached { request_id: 1 }
        ));
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            hook_rx.recv_timeout(std::time::Duration::from_secs(5)),
            Ok(StopReason::Limit)
        );
    }

    #[test]
    fn a_hook_registered_after_the_stop_runs_at_once() {
        let (tx, _rx) = unbounded_channel();
        let s = TokenStream::new(1, 10, tx);
        s.stop(StopReason::Cancel);
        let (hook_tx, hook_rx) = std::sync::mpsc::channel();
        s.on_stop(move |why| hook_tx.send(why).unwrap());
        assert_eq!(
            hook_rx.recv_timeout(std::time::Duration::from_secs(5)),
            Ok(StopReason::Cancel)
        );
    }

    #[test]
    fn held_back_bytes_come_out_as_replacement_at_a_natural_end() {
        let (tx, mut rx) = unbounded_channel();
        let s = TokenStream::new(1, 10, tx);
        s.token(&[0xe2, 0x82]);
        assert_eq!(s.close(), 1);
        assert_eq!(texts(&mut rx), vec![("\u{fffd}".into(), 1)]);
    }
}
