//! The NPU worker as a [`worker_kit::Engine`]: the conversation, the token
//! stream, the figures and the exit codes are the worker runtime's; this
//! module loads an RKLLM model on the runtime's engine thread, renders
//! requests into the runtime's prompt, and tears the model down before the
//! next one (one model per process: the NPU memory it holds may be needed).

use std::time::{Duration, Instant};

use model_check::rkllm::Platform;
use proto::chat::{Backend, ChatMessage, FinishReason, Role};
use proto::worker::{CacheReport, Load, PromptCacheFile, WorkerErrorKind};
use worker_kit::{Finish, GenFailure, Job, LoadFailure, Model, Serve, Served, TokenStream};

use crate::chat;
use crate::config::LoadSettings;
use crate::engine::{self, Engine, RunInput};
use crate::history::{self, Counters, Held, Plan};
use crate::prompt_cache::{self, PromptCacheError};

/// How long the end of a model waits for the runtime to let go of it (its
/// last run and abort calls to return) before leaving it alone.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// RKLLM as a worker engine.
#[derive(Debug)]
pub struct NpuEngine {
    board: Option<Platform>,
    /// Cache figures since the process started (they outlive model loads).
    counters: Counters,
}

impl NpuEngine {
    /// An engine for a machine whose SoC is `board` (when known), which the
    /// model file's target platform is checked against.
    pub fn new(board: Option<Platform>) -> Self {
        Self {
            board,
            counters: Counters::default(),
        }
    }
}

impl worker_kit::Engine for NpuEngine {
    fn backend(&self) -> Backend {
        Backend::Npu
    }

    fn load(&mut self, load: &Load, serve: Serve<'_>) -> Result<Served, LoadFailure> {
        let started = Instant::now();
        let failure = |err: engine::LoadError| LoadFailure {
            exit_code: err.exit_code(),
            message: err.to_string(),
        };
        let settings =
            LoadSettings::from_load(load).map_err(|e| failure(engine::LoadError::from(e)))?;
        let (engine, report) = engine::load(&settings, self.board).map_err(failure)?;
        tracing::info!(
            model = %report.model.name,
            abi = %report.abi,
            runtime = report.init.runtime_version.as_deref().unwrap_or("unknown"),
            family = %engine.settings().family,
            cpu_mask = format_args!("{:#x}", engine.settings().init.enabled_cpus_mask),
            init_ms = started.elapsed().as_millis(),
            "NPU model initialised"
        );
        let prompt_cache = prepare_prompt_cache(&engine, &report);
        let mut model = NpuModel {
            engine,
            held: None,
            dirty: false,
            counters: self.counters,
            prompt_cache,
        };
        let served = serve.serve(report.model, &mut model);
        // A new model (a profile switch) starts with an empty cache.
        if model.held.is_some() {
            model.counters.dropped += 1;
        }
        self.counters = model.counters;
        // Only the runtime's last references remain (a returning run, an
        // abort call); a model still in use by a run that never ends is left
        // alone: destroying it could hang.
        if let Err(stuck) = model.engine.destroy(RELEASE_WAIT) {
            std::mem::forget(stuck);
            return Err(LoadFailure::transient(
                "the previous model is still in use by a run that does not end; restart the worker",
            ));
        }
        Ok(served)
    }
}

/// Loads (or first saves) the prompt-cache file of the slot's system
/// prompt, when the slot has a directory for it. Without one the worker
/// serves as before: the cache only saves prefill time.
fn prepare_prompt_cache(engine: &Engine, report: &engine::LoadReport) -> Option<PromptCacheFile> {
    let settings = engine.settings();
    let dir = settings.prompt_cache_dir.as_ref()?;
    let started = Instant::now();
    // The slot's template around an empty user turn: what every request
    // without a system message of its own starts with.
    let prompt = chat::render(
        settings.family,
        &settings.overrides,
        &[ChatMessage::new(Role::User, "")],
        "",
    )
    .ok()?;
    let meta = std::fs::metadata(&settings.model_path).ok();
    // The version the runtime logged, else the one read from the library.
    let version = report.init.runtime_version.clone().or_else(|| {
        report
            .runtime_version
            .as_ref()
            .map(std::string::ToString::to_string)
    });
    let runtime = format!(
        "{} ({})",
        report.abi,
        version.as_deref().unwrap_or("version unknown")
    );
    let id = prompt_cache::Identity {
        model: &settings.model_path,
        model_size: meta.as_ref().map_or(0, std::fs::Metadata::len),
        model_mtime: meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs()),
        runtime: &runtime,
        context: settings.context_size(),
        prompt: &prompt,
    };
    match prompt_cache::prepare(engine, dir, &id) {
        Ok(file) => {
            tracing::info!(
                file = %file.path,
                tokens = file.tokens,
                saved_now = file.built,
                elapsed_ms = started.elapsed().as_millis(),
                "system prompt loaded from its prompt-cache file"
            );
            Some(file)
        }
        Err(err @ PromptCacheError::Unsupported) => {
            tracing::info!("{err}; serving without a prompt cache");
            None
        }
        Err(err) => {
            tracing::warn!("{err}; serving without a prompt cache");
            None
        }
    }
}

struct NpuModel {
    engine: Engine,
    /// The conversation the runtime's KV cache holds.
    held: Option<Held>,
    /// The runtime holds history no `held` describes (a run that kept its
    /// history but did not end cleanly): cleared before the next run.
    dirty: bool,
    counters: Counters,
    /// The system prompt's prompt-cache file the runtime loaded.
    prompt_cache: Option<PromptCacheFile>,
}

impl Model for NpuModel {
    fn generate(&mut self, job: &Job, out: &TokenStream) -> Result<Finish, GenFailure> {
        let settings = self.engine.settings();
        let g = &job.generate;
        let prompt = chat::render(
            settings.family,
            &settings.overrides,
            &g.messages,
            &g.assistant_prefix,
        )
        .map_err(|err| GenFailure::new(WorkerErrorKind::BadRequest, err.to_string()))?;
        let key = g.conversation.as_deref();
        let plan = history::plan(
            self.held.as_ref(),
            self.dirty,
            key,
            &g.messages,
            &g.assistant_prefix,
            &prompt.template,
        );
        tracing::debug!(
            request_id = g.request_id,
            limit = job.limit,
            continues = matches!(plan, Plan::Continue { .. }),
            "generation starts"
        );
        let run = match &plan {
            Plan::Continue { input, reused } => {
                self.counters.hits += 1;
                self.counters.reused_tokens += u64::from(*reused);
                RunInput {
                    input,
                    keep_history: true,
                    reused: *reused,
                }
            }
            Plan::Fresh { clear, keep } => {
                if key.is_some() {
                    self.counters.misses += 1;
                }
                if *clear {
                    if self.held.is_some() {
                        self.counters.evictions += 1;
                    }
                    self.held = None;
                    self.engine.clear_kv_cache()?;
                    self.dirty = false;
                }
                RunInput {
                    input: &prompt.input,
                    keep_history: *keep,
                    reused: 0,
                }
            }
        };
        // Until the run ends cleanly, the cache holds something unknown.
        self.held = None;
        self.dirty = run.keep_history;
        let (finish, ran) = self.engine.run(&prompt, run, job.limit, out)?;
        if let (Some(p), Some(ms)) = (finish.prompt_tokens, finish.prefill_ms) {
            out.prompt_cached(p, run.reused, ms);
        }
        // Kept only after a whole answer: a stopped run left tokens in the
        // cache that the client may never see.
        let whole = finish.reason == FinishReason::EndOfTurn && !out.is_stopped();
        if let (Some(key), true, true) = (key, run.keep_history, whole) {
            let mut messages = g.messages.clone();
            messages.push(ChatMessage::new(Role::Assistant, ran.answer));
            self.held = Some(Held {
                key: key.to_owned(),
                messages,
                template: prompt.template.clone(),
                tokens: ran.tokens.unwrap_or(0),
            });
            self.dirty = false;
        }
        out.cache(self.cache());
        Ok(finish)
    }

    fn cache(&self) -> CacheReport {
        CacheReport {
            prompt_cache: self.prompt_cache.clone(),
            ..history::report(self.held.as_ref(), &self.counters)
        }
    }
}
