//! The model behind the worker: loading it (file checks, runtime library,
//! layout, `rkllm_init` with its log captured and classified) and running
//! generations on a thread of their own, with the text handed to the async
//! side through a channel.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use proto::artifact::rkllm::{self, Platform, RkllmError};
use proto::worker::{ExitCode, ModelFacts};
use thiserror::Error;
use tokio::sync::mpsc::UnboundedSender;

use crate::abi::{self, Abi, AbiError, AbiSetting, RuntimeVersion};
use crate::capture::OutputCapture;
use crate::chat::RenderedPrompt;
use crate::classify::{self, InitCause, InitFacts};
use crate::config::{LoadSettings, SettingsError};
use crate::ffi::{raw::RKLLMPerfStat, FfiError, Model, RunEvent, RunSink, Runtime};
use crate::utf8::Utf8Assembler;

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

/// What the runtime thread tells the worker's async side. `Debug` leaves
/// the generated text out (it answers a user's prompt).
#[derive(Clone, PartialEq)]
pub enum EngineEvent {
    /// Complete text; `tokens` counts the runtime's pieces so far.
    Text {
        /// The generation.
        request_id: u64,
        /// The text.
        text: String,
        /// Tokens so far.
        tokens: u32,
    },
    /// The request's token cap was reached; later pieces are dropped.
    LimitReached {
        /// The generation.
        request_id: u64,
    },
    /// `RKLLM_RUN_FINISH` with the runtime's figures.
    Finished {
        /// The generation.
        request_id: u64,
        /// The runtime's figures.
        perf: RKLLMPerfStat,
        /// Tokens counted by the worker.
        tokens: u32,
    },
    /// The generation failed (`RKLLM_RUN_ERROR`, or the callback failed).
    Failed {
        /// The generation.
        request_id: u64,
        /// What happened.
        message: String,
    },
    /// `rkllm_run` returned: the model is free for the next run.
    Returned {
        /// The generation.
        request_id: u64,
        /// Its return code, or why it could not run.
        result: Result<i32, String>,
        /// Tokens counted by the worker.
        tokens: u32,
    },
}

impl std::fmt::Debug for EngineEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text {
                request_id,
                text,
                tokens,
            } => f
                .debug_struct("Text")
                .field("request_id", request_id)
                .field("bytes", &text.len())
                .field("tokens", tokens)
                .finish(),
            Self::LimitReached { request_id } => f
                .debug_struct("LimitReached")
                .field("request_id", request_id)
                .finish(),
            Self::Finished {
                request_id,
                perf,
                tokens,
            } => f
                .debug_struct("Finished")
                .field("request_id", request_id)
                .field("perf", perf)
                .field("tokens", tokens)
                .finish(),
            Self::Failed {
                request_id,
                message,
            } => f
                .debug_struct("Failed")
                .field("request_id", request_id)
                .field("message", message)
                .finish(),
            Self::Returned {
                request_id,
                result,
                tokens,
            } => f
                .debug_struct("Returned")
                .field("request_id", request_id)
                .field("result", result)
                .field("tokens", tokens)
                .finish(),
        }
    }
}

/// Per-run state shared with the runtime's callback.
struct SinkState {
    assembler: Utf8Assembler,
    tokens: u32,
    stopped: bool,
}

/// Receives the runtime's callbacks for one generation.
struct GenSink {
    request_id: u64,
    limit: u32,
    tx: UnboundedSender<EngineEvent>,
    state: Mutex<SinkState>,
}

impl GenSink {
    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, event: EngineEvent) {
        // The receiver is gone only when the worker is exiting.
        let _ = self.tx.send(event);
    }

    fn stop(&self) {
        self.lock().stopped = true;
    }

    fn tokens(&self) -> u32 {
        self.lock().tokens
    }
}

impl RunSink for GenSink {
    fn on_event(&self, event: RunEvent<'_>) {
        let id = self.request_id;
        let mut st = self.lock();
        match event {
            RunEvent::Text { bytes, .. } => {
                if st.stopped {
                    return;
                }
                st.tokens += 1;
                let tokens = st.tokens;
                if let Some(text) = st.assembler.push(bytes) {
                    self.send(EngineEvent::Text {
                        request_id: id,
                        text,
                        tokens,
                    });
                }
                if tokens >= self.limit {
                    // Bytes of a character cut off by the cap can never complete.
                    st.stopped = true;
                    self.send(EngineEvent::LimitReached { request_id: id });
                }
            }
            RunEvent::Finish(perf) => {
                if !st.stopped {
                    if let Some(text) = st.assembler.finish() {
                        let tokens = st.tokens;
                        self.send(EngineEvent::Text {
                            request_id: id,
                            text,
                            tokens,
                        });
                    }
                }
                let tokens = st.tokens;
                self.send(EngineEvent::Finished {
                    request_id: id,
                    perf,
                    tokens,
                });
            }
            RunEvent::Error => self.send(EngineEvent::Failed {
                request_id: id,
                message: "the NPU runtime reported an error during generation (RKLLM_RUN_ERROR); the prompt may not fit the context window".into(),
            }),
            RunEvent::Unknown(state) => {
                tracing::warn!(state, "NPU runtime callback with an unknown state; ignored");
            }
        }
    }

    fn on_panic(&self) {
        self.send(EngineEvent::Failed {
            request_id: self.request_id,
            message: "internal error in the worker's token callback".into(),
        });
    }
}

/// A generation whose `rkllm_run` has not returned yet.
pub struct Running {
    sink: Arc<GenSink>,
    model: Arc<Model>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("request_id", &self.sink.request_id)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Stops forwarding text at once and asks the runtime to abort. The
    /// abort call is made on a thread of its own: it must never hold up the
    /// socket.
    pub fn stop(&self) {
        self.sink.stop();
        self.abort();
    }

    /// Asks the runtime to abort the run (text keeps flowing until it does).
    pub fn abort(&self) {
        let model = Arc::clone(&self.model);
        let spawned = std::thread::Builder::new()
            .name("rkllm-abort".into())
            .spawn(move || {
                if let Err(err) = model.abort() {
                    tracing::warn!(%err, "rkllm_abort failed");
                }
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "cannot start a thread to abort the NPU run");
        }
    }

    /// Tokens counted so far.
    pub fn tokens(&self) -> u32 {
        self.sink.tokens()
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

    /// Whether the runtime enforces the per-request token cap itself (1.3.0).
    pub fn caps_tokens_per_run(&self) -> bool {
        self.abi == Abi::V1_3
    }

    /// Starts a generation on a thread of its own. Events arrive on `tx`;
    /// the last one is always [`EngineEvent::Returned`].
    ///
    /// # Errors
    /// The OS error when the thread cannot be started.
    pub fn start(
        &self,
        request_id: u64,
        prompt: RenderedPrompt,
        limit: u32,
        tx: UnboundedSender<EngineEvent>,
    ) -> std::io::Result<Running> {
        let sink = Arc::new(GenSink {
            request_id,
            limit: limit.max(1),
            tx,
            state: Mutex::new(SinkState {
                assembler: Utf8Assembler::new(),
                tokens: 0,
                stopped: false,
            }),
        });
        let model = Arc::clone(&self.model);
        let per_run_cap = if self.caps_tokens_per_run() {
            i32::try_from(limit).unwrap_or(i32::MAX)
        } else {
            0
        };
        let thread_sink = Arc::clone(&sink);
        let thread_model = Arc::clone(&model);
        std::thread::Builder::new()
            .name("rkllm-run".into())
            .spawn(move || {
                let started = Instant::now();
                let result = panic::catch_unwind(AssertUnwindSafe(|| {
                    let t = &prompt.template;
                    thread_model.set_chat_template(
                        &t.system_prompt,
                        &t.prompt_prefix,
                        &t.prompt_postfix,
                    )?;
                    let sink: Arc<dyn RunSink> = Arc::clone(&thread_sink) as Arc<dyn RunSink>;
                    thread_model.run(&prompt.input, per_run_cap, sink)
                }));
                let result = match result {
                    Ok(Ok(code)) => Ok(code),
                    Ok(Err(err)) => Err(err.to_string()),
                    Err(_) => Err("internal error while running the generation".to_owned()),
                };
                tracing::debug!(
                    request_id,
                    elapsed_ms = started.elapsed().as_millis(),
                    ?result,
                    "rkllm_run returned"
                );
                // Let go of the model before saying so: after Returned the
                // worker may destroy it, which needs the last reference.
                drop(thread_model);
                let tokens = thread_sink.tokens();
                thread_sink.send(EngineEvent::Returned {
                    request_id,
                    result,
                    tokens,
                });
            })?;
        Ok(Running { sink, model })
    }
}
