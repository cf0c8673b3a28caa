//! The model behind the worker: loading it (file checks, runtime library,
//! layout, `rkllm_init` with its log captured and classified) and running
//! generations, with the text handed to the worker runtime's stream.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use model_check::rkllm::{self, Platform, RkllmError};
use proto::chat::FinishReason;
use proto::worker::{ExitCode, ModelFacts, WorkerErrorKind};
use thiserror::Error;
use worker_kit::{Finish, GenFailure, StopReason, TokenStream};

use crate::abi::{self, Abi, AbiError, AbiSetting, RuntimeVersion};
use crate::capture::OutputCapture;
use crate::chat::RenderedPrompt;
use crate::classify::{self, InitCause, InitFacts};
use crate::config::{LoadSettings, SettingsError};
use crate::ffi::{raw::RKLLMPerfStat, FfiError, Model, RunEvent, RunSink, Runtime};

/// Why a load failed; each kind has its own exit code and says what to do.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The settings cannot work.
    #[error("unusable NPU settings: {0}")]
    Settings(#[from] SettingsError),
    /// The model file is missing or broken (checked before the runtime, and
    /// the runtime's absence noted beside it, so one look shows both fixes).
    #[error("{source}{}", .runtime_missing.as_ref().map(|p| format!("; the NPU runtime is not installed at {} either: install librkllmrt.so there, or point runtime_path of the NPU slot at it", p.display())).unwrap_or_default())]
    Artifact {
        /// What is wrong with the file.
        #[source]
        source: RkllmError,
        /// The configured runtime path, when nothing is there either.
        runtime_missing: Option<PathBuf>,
    },
    /// No runtime library at the configured path.
    #[error("NPU runtime not installed at {}: install librkllmrt.so there (RKLLM runtime 1.2.1 to 1.2.3 or 1.3.0), or point runtime_path of the NPU slot at it", .path.display())]
    RuntimeMissing {
        /// The configured path.
        path: PathBuf,
    },
    /// The runtime's version could not be established or is not supported.
    #[error(transparent)]
    Abi(#[from] AbiError),
    /// The runtime library could not be loaded or lacks functions.
    #[error(
        "{0} (the NPU worker needs librkllmrt.so for aarch64, release 1.2.1 to 1.2.3 or 1.3.0)"
    )]
    Runtime(#[source] FfiError),
    /// The runtime refused the model or the machine.
    #[error("{message}")]
    Init {
        /// The classified cause.
        cause: InitCause,
        /// What happened and what to do.
        message: String,
    },
    /// The worker could not set up the capture of the runtime's log.
    #[error("cannot capture the NPU runtime's log during init: {0}")]
    Capture(#[source] std::io::Error),
    /// The load itself panicked (a bug in the worker).
    #[error("internal error while loading the model: {message}")]
    Internal {
        /// The panic message.
        message: String,
    },
}

impl LoadError {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Settings(_) => ExitCode::BadSettings.code(),
            Self::Artifact { source, .. } => source.exit_code().code(),
            Self::RuntimeMissing { .. } => ExitCode::RuntimeMissing.code(),
            Self::Abi(_) | Self::Runtime(_) => ExitCode::RuntimeUnsupported.code(),
            Self::Init { cause, .. } => cause.exit_code(),
            Self::Capture(_) | Self::Internal { .. } => 1,
        }
    }
}

/// A loaded model, ready for generations.
#[derive(Debug)]
pub struct Engine {
    model: Arc<Model>,
    abi: Abi,
    settings: LoadSettings,
    facts: InitFacts,
}

/// What a load reports besides the engine.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// For the Ready message.
    pub model: ModelFacts,
    /// What the runtime logged about itself and the model.
    pub init: InitFacts,
    /// The layout used.
    pub abi: Abi,
    /// The runtime version read from the library (auto only).
    pub runtime_version: Option<RuntimeVersion>,
}

/// Loads the model of `settings`. `board` is this machine's SoC when known.
/// Blocks for as long as the runtime takes (seconds to minutes): call it on
/// a thread of its own.
///
/// # Errors
/// [`LoadError`], each kind with its exit code.
pub fn load(
    settings: &LoadSettings,
    board: Option<Platform>,
) -> Result<(Engine, LoadReport), LoadError> {
    // The model file first: a broken download must be fetched again whatever
    // else is wrong, it is the most common cause of NPU failures, and its
    // check reads no library. Loading the runtime comes after.
    let info = rkllm::check(&settings.model_path, board).map_err(|source| LoadError::Artifact {
        source,
        runtime_missing: (!settings.runtime_path.is_file()).then(|| settings.runtime_path.clone()),
    })?;
    for warning in &info.warnings {
        tracing::warn!(model = %settings.model_path.display(), "{warning}");
    }
    let (runtime, runtime_version) = open_runtime(&settings.runtime_path, settings.abi)?;
    let abi = runtime.abi();

    let capture = OutputCapture::start().map_err(LoadError::Capture)?;
    let outcome = Model::init(&runtime, &settings.init);
    let lines = capture.finish();
    let outcome = outcome.map_err(LoadError::Runtime)?;

    let facts = classify::facts(&lines);
    if let Some(failure) = classify::classify(outcome.code, &lines, settings.context_size()) {
        // A model whose init failed is never destroyed: runtimes have crashed
        // tearing down half-initialised models, and the worker exits next.
        if let Some(model) = outcome.model {
            model.abandon();
        }
        let message = init_message(failure.cause, &failure.evidence, settings, &facts, board);
        return Err(LoadError::Init {
            cause: failure.cause,
            message,
        });
    }
    let Some(model) = outcome.model else {
        return Err(LoadError::Init {
            cause: InitCause::Unrecognised,
            message: "rkllm_init reported success but returned no model handle; check the runtime's log above".into(),
        });
    };
    let file_name = settings
        .model_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let report = LoadReport {
        model: ModelFacts {
            name: file_name,
            file_size: info.file_size,
            architecture: String::new(),
            train_context: facts.max_context_limit.unwrap_or(0),
            context_size: settings.context_size(),
            parameters: 0,
            chat_template: npu_template(settings),
        },
        init: facts.clone(),
        abi,
        runtime_version,
    };
    Ok((
        Engine {
            model: Arc::new(model),
            abi,
            settings: settings.clone(),
            facts,
        },
        report,
    ))
}

/// The NPU worker's chat format for the Ready message: the family its file
/// name points to, and whether the slot overrides parts of it.
fn npu_template(settings: &LoadSettings) -> String {
    let o = &settings.overrides;
    let overridden = [
        (o.system_prompt.is_some(), "system_prompt"),
        (o.prompt_prefix.is_some(), "prompt_prefix"),
        (o.prompt_postfix.is_some(), "prompt_postfix"),
    ]
    .into_iter()
    .filter_map(|(set, key)| set.then_some(key))
    .collect::<Vec<_>>();
    let family = settings.family.name();
    if overridden.is_empty() {
        format!("{family} (from the model's file name)")
    } else {
        format!(
            "{family} (from the model's file name; {} set in the config)",
            overridden.join(", ")
        )
    }
}

/// Finds, identifies and loads the runtime library.
fn open_runtime(
    path: &Path,
    setting: AbiSetting,
) -> Result<(Arc<Runtime>, Option<RuntimeVersion>), LoadError> {
    if !path.is_file() {
        return Err(LoadError::RuntimeMissing {
            path: path.to_owned(),
        });
    }
    // dlopen searches the library path for names without a slash; the
    // configured file is meant, so hand it an absolute path.
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let (abi, version) = match setting {
        AbiSetting::Fixed(abi) => (abi, None),
        AbiSetting::Auto => {
            let (version, abi) = abi::detect(&path)?;
            (abi, Some(version))
        }
    };
    tracing::info!(
        runtime = %path.display(),
        version = version.map(|v| v.to_string()).as_deref().unwrap_or("not read (abi set explicitly)"),
        %abi,
        "loading the NPU runtime"
    );
    let runtime = Runtime::open(&path, abi).map_err(LoadError::Runtime)?;
    Ok((runtime, version))
}

/// The operator-facing message for a failed init.
fn init_message(
    cause: InitCause,
    evidence: &str,
    settings: &LoadSettings,
    facts: &InitFacts,
    board: Option<Platform>,
) -> String {
    let model = settings.model_path.display();
    let soc = board.map_or_else(|| "this board's SoC".to_owned(), |b| b.to_string());
    match cause {
        InitCause::ModelInvalid => format!(
            "the NPU runtime rejected model {model} (runtime said: {evidence}): the file is corrupt or truncated, or was converted by an rkllm-toolkit release that does not match the runtime{}; re-download it, or re-convert it for {soc} with the toolkit of the runtime's release",
            facts
                .runtime_version
                .as_ref()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default()
        ),
        InitCause::PlatformMismatch => format!(
            "model {model} was converted for another SoC{} (runtime said: {evidence}); get the {soc} build or re-convert it with target_platform={soc}",
            facts
                .target_platform
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        ),
        InitCause::AcceleratorMemory => format!(
            "NPU memory exhausted while loading {model} (runtime said: {evidence}): make sure no other process uses the NPU, or use a smaller model, a shorter context_size (now {}), or another base_domain_id (now {})",
            settings.context_size(),
            settings.init.base_domain_id
        ),
        InitCause::UnsupportedPlatform => format!(
            "the RKLLM runtime does not support this machine (runtime said: {evidence}): the NPU worker needs an RK3588, RK3576 or RK3562 board with the rknpu driver loaded; use the CPU backend here"
        ),
        InitCause::ContextTooLong => format!(
            "context_size {} of profile {:?} is above what model {model} supports ({evidence}); lower context_size to at most {}",
            settings.context_size(),
            settings.profile,
            facts
                .max_context_limit
                .map_or_else(|| "the model's max_context_limit".to_owned(), |l| l.to_string())
        ),
        InitCause::Unrecognised => format!(
            "the NPU runtime failed to load model {model} (runtime said: {evidence}); see the worker log for the runtime's full output"
        ),
    }
}

/// What one run sends the runtime.
#[derive(Debug, Clone, Copy)]
pub struct RunInput<'a> {
    /// The prompt text (the whole conversation, or only the new user turn
    /// when the runtime's history holds the rest).
    pub input: &'a str,
    /// Keep this run in the runtime's KV cache for the next.
    pub keep_history: bool,
    /// Tokens of the conversation already in the runtime's cache.
    pub reused: u32,
}

/// What a run left in the runtime, for the next turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// The answer as the runtime produced it.
    pub answer: String,
    /// Tokens of the conversation in the cache after the run (reused,
    /// prefilled and generated), when the runtime reported its figures.
    pub tokens: Option<u32>,
}

/// What the runtime's callbacks left behind for the end of a run.
#[derive(Default)]
struct SinkState {
    perf: Option<RKLLMPerfStat>,
    error: bool,
    /// The answer's bytes as the runtime gave them (what its KV cache now
    /// holds after the prompt, for a run that keeps its history).
    answer: Vec<u8>,
}

/// Receives the runtime's callbacks for one generation and puts the text
/// into the worker runtime's stream (which reassembles characters, counts
/// tokens and enforces the cap).
struct GenSink {
    out: TokenStream,
    state: Mutex<SinkState>,
}

impl GenSink {
    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RunSink for GenSink {
    fn on_event(&self, event: RunEvent<'_>) {
        match event {
            RunEvent::Text { bytes, .. } => {
                // Text after an error belongs to no answer.
                let mut state = self.lock();
                if !state.error {
                    state.answer.extend_from_slice(bytes);
                    drop(state);
                    self.out.token(bytes);
                }
            }
            RunEvent::Finish(perf) => self.lock().perf = Some(perf),
            RunEvent::Error => self.lock().error = true,
            RunEvent::Unknown(state) => {
                tracing::warn!(state, "NPU runtime callback with an unknown state; ignored");
            }
        }
    }

    fn on_panic(&self) {
        self.lock().error = true;
    }
}

/// Receives the callbacks of the run that saves the prompt cache: its
/// answer is not wanted, so the first token stops it (on 1.2.x, which has
/// no per-run cap, with `rkllm_abort` from a thread of its own: the
/// callback runs on the runtime's thread).
struct PrimeSink {
    /// The model to abort, where the run has no cap of its own.
    model: Option<Arc<Model>>,
    state: Mutex<PrimeState>,
}

#[derive(Default)]
struct PrimeState {
    perf: Option<RKLLMPerfStat>,
    error: bool,
    /// The first token came (and the run was stopped where needed).
    stopped: bool,
    /// The thread calling `rkllm_abort`: joined before the next run can
    /// start, so a late abort never stops a request's run.
    aborting: Option<std::thread::JoinHandle<()>>,
}

impl RunSink for PrimeSink {
    fn on_event(&self, event: RunEvent<'_>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            RunEvent::Text { .. } => {
                if !state.stopped {
                    state.stopped = true;
                    if let Some(model) = self.model.clone() {
                        state.aborting = Some(std::thread::spawn(move || {
                            if let Err(err) = model.abort() {
                                tracing::warn!(%err, "rkllm_abort failed");
                            }
                        }));
                    }
                }
            }
            RunEvent::Finish(perf) => state.perf = Some(perf),
            RunEvent::Error => state.error = true,
            RunEvent::Unknown(_) => {}
        }
    }

    fn on_panic(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .error = true;
    }
}

impl Engine {
    /// The layout in use.
    pub fn abi(&self) -> Abi {
        self.abi
    }

    /// The settings it was loaded with.
    pub fn settings(&self) -> &LoadSettings {
        &self.settings
    }

    /// What the runtime logged at init.
    pub fn facts(&self) -> &InitFacts {
        &self.facts
    }

    /// Destroys the model (`rkllm_destroy`) as soon as no generation or
    /// abort thread holds it any more, waiting at most `within`. Blocks.
    ///
    /// # Errors
    /// Gives the engine back when it is still in use after `within` (a run
    /// that does not return): the caller decides whether to leak it.
    pub fn destroy(self, within: Duration) -> Result<(), Box<Self>> {
        let deadline = Instant::now() + within;
        let mut model = self.model;
        loop {
            match Arc::try_unwrap(model) {
                Ok(unique) => {
                    drop(unique);
                    return Ok(());
                }
                Err(shared) if Instant::now() >= deadline => {
                    return Err(Box::new(Self {
                        model: shared,
                        abi: self.abi,
                        settings: self.settings,
                        facts: self.facts,
                    }))
                }
                Err(shared) => {
                    model = shared;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// Empties the runtime's KV cache.
    ///
    /// # Errors
    /// [`GenFailure`] (`Engine`) when the runtime refuses.
    pub fn clear_kv_cache(&self) -> Result<(), GenFailure> {
        self.model
            .clear_kv_cache()
            .map_err(|e| GenFailure::new(WorkerErrorKind::Engine, e.to_string()))
    }

    /// Whether the runtime can save and load prompt-cache files.
    pub fn has_prompt_cache(&self) -> bool {
        self.model.runtime().has_prompt_cache()
    }

    /// Runs `prompt` (the slot's template around an empty user turn) once,
    /// with the runtime saving the prompt's KV to `path`, and stops at the
    /// first token: the file then holds the system prompt and the user
    /// turn's opening, which every request in this template starts with.
    /// Keeps no history.
    /// Returns the tokens the runtime prefilled, when it reported them
    /// (1.3.0 ends the run at its one-token cap with its figures; 1.2.x is
    /// aborted, which reports none).
    ///
    /// # Errors
    /// The runtime's failure, as text.
    pub fn save_prompt_cache(
        &self,
        prompt: &RenderedPrompt,
        path: &Path,
    ) -> Result<Option<u32>, String> {
        let template = &prompt.template;
        self.model
            .set_chat_template(
                &template.system_prompt,
                &template.prompt_prefix,
                &template.prompt_postfix,
            )
            .map_err(|e| e.to_string())?;
        let sink = Arc::new(PrimeSink {
            model: (!self.caps_tokens_per_run()).then(|| Arc::clone(&self.model)),
            state: Mutex::new(PrimeState::default()),
        });
        let code = self
            .model
            .run(
                &prompt.input,
                1,
                false,
                Some(path),
                Arc::clone(&sink) as Arc<dyn RunSink>,
            )
            .map_err(|e| e.to_string())?;
        let mut state = sink.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(aborting) = state.aborting.take() {
            let _ = aborting.join();
        }
        if state.error {
            return Err("the runtime reported an error (RKLLM_RUN_ERROR)".into());
        }
        if code != 0 {
            return Err(format!("rkllm_run failed with code {code}"));
        }
        Ok(state
            .perf
            .and_then(|p| u32::try_from(p.prefill_tokens).ok())
            .filter(|t| *t > 0))
    }

    /// Loads the prompt-cache file at `path` into the runtime.
    ///
    /// # Errors
    /// The runtime's refusal (or its lack of the function), as text.
    pub fn load_prompt_cache(&self, path: &Path) -> Result<(), String> {
        self.model
            .load_prompt_cache(path)
            .map_err(|e| e.to_string())
    }

    /// Whether the runtime enforces the per-request token cap itself (1.3.0).
    pub fn caps_tokens_per_run(&self) -> bool {
        self.abi == Abi::V1_3
    }

    /// Runs one generation on the calling thread (the worker runtime's
    /// engine thread), putting the text into `out`; returns when
    /// `rkllm_run` does. A stop of `out` (cancel, shutdown, the cap on
    /// 1.2.x, which has no per-run cap) calls `rkllm_abort` from a thread of
    /// its own.
    ///
    /// # Errors
    /// [`GenFailure`] (`Engine`) when the runtime reports an error or the
    /// run cannot start.
    pub fn run(
        &self,
        prompt: &RenderedPrompt,
        run: RunInput<'_>,
        limit: u32,
        out: &TokenStream,
    ) -> Result<(Finish, Ran), GenFailure> {
        let engine_failure = |message: String| GenFailure::new(WorkerErrorKind::Engine, message);
        let caps_itself = self.caps_tokens_per_run();
        let model = Arc::clone(&self.model);
        out.on_stop(move |why| {
            // 1.3.0 stops at the per-run cap by itself and reports FINISH.
            if why == StopReason::Limit && caps_itself {
                return;
            }
            if let Err(err) = model.abort() {
                tracing::warn!(%err, "rkllm_abort failed");
            }
        });
        let per_run_cap = if caps_itself {
            i32::try_from(limit).unwrap_or(i32::MAX)
        } else {
            0
        };
        let sink = Arc::new(GenSink {
            out: out.clone(),
            state: Mutex::new(SinkState::default()),
        });
        let started = Instant::now();
        let t = &prompt.template;
        self.model
            .set_chat_template(&t.system_prompt, &t.prompt_prefix, &t.prompt_postfix)
            .map_err(|e| engine_failure(e.to_string()))?;
        let result = self.model.run(
            run.input,
            per_run_cap,
            run.keep_history,
            None,
            Arc::clone(&sink) as Arc<dyn RunSink>,
        );
        tracing::debug!(
            request_id = out.request_id(),
            elapsed_ms = started.elapsed().as_millis(),
            ?result,
            "rkllm_run returned"
        );
        let code = result.map_err(|e| engine_failure(e.to_string()))?;
        let state = sink.lock();
        if state.error {
            return Err(engine_failure("the NPU runtime reported an error during generation (RKLLM_RUN_ERROR); the prompt may not fit the context window".into()));
        }
        if code != 0 {
            return Err(engine_failure(format!("rkllm_run failed with code {code}")));
        }
        let context = i64::from(self.settings.context_size());
        let mut finish = Finish::new(FinishReason::EndOfTurn);
        let mut ran = Ran {
            answer: String::from_utf8_lossy(&state.answer).into_owned(),
            tokens: None,
        };
        if let Some(p) = state
            .perf
            .filter(|p| p.prefill_tokens > 0 || p.generate_tokens > 0)
        {
            let run_tokens = i64::from(p.prefill_tokens) + i64::from(p.generate_tokens);
            if i64::from(run.reused) + run_tokens >= context {
                finish.reason = FinishReason::ContextFull;
            }
            let prefilled = u32::try_from(p.prefill_tokens).unwrap_or(0);
            finish.prompt_tokens = Some(prefilled.saturating_add(run.reused));
            finish.prefill_ms = Some(f64::from(p.prefill_time_ms));
            ran.tokens = u32::try_from(run_tokens)
                .ok()
                .map(|t| t.saturating_add(run.reused));
        }
        Ok((finish, ran))
    }
}
