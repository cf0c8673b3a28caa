//! Worker conversation: the supervisor and one worker process, over a socket
//! the supervisor created for that worker alone.
//!
//! 1. The worker connects (path given on its command line) and sends the
//!    hello with role [`PeerRole::Worker`](crate::PeerRole::Worker); the
//!    supervisor checks the peer's pid is the child it spawned.
//! 2. The supervisor sends [`SupervisorToWorker::Load`]; the worker checks the
//!    model file, loads it and answers `Ready` with the model's facts, or
//!    `LoadFailed` and exits with the matching [`ExitCode`].
//! 3. `Generate` -> `Token`* -> `Done` | `Error`; at most one generation at a
//!    time. `Cancel` ends the current one early (it still ends with `Done`).
//! 4. `Ping` -> `Heartbeat`, at any time, also during a generation.
//! 5. `Warm` (between generations): prefill a conversation into the KV
//!    cache -> `Warmed` once the warm is over (finished, stopped by a
//!    `Generate`, which preempts it, or ignored), so the supervisor knows
//!    while the warm competes with the serving worker.
//! 6. `Load` again (between generations) switches profile; `Shutdown` or EOF
//!    on the socket makes the worker exit: a worker never outlives its supervisor.

use serde::{Deserialize, Serialize};

use crate::chat::{Backend, ChatMessage, FinishReason, GenParams, GenStats};

/// Supervisor to worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SupervisorToWorker {
    /// Load (or reload) a model with a profile.
    Load(Load),
    /// Start a generation.
    Generate(Generate),
    /// Stop the current generation.
    Cancel(CancelGeneration),
    /// Liveness probe; answered by `Heartbeat`.
    Ping(Ping),
    /// Exit cleanly.
    Shutdown,
    /// Prefill a conversation into the KV cache under a key and generate
    /// nothing (the standby shadowing a request another worker serves, so a
    /// failover to it decodes only the tail). Low priority: a worker busy
    /// with a generation ignores it, and a `Generate` arriving while it runs
    /// stops it. Nothing is answered; the cache report shows the result.
    Warm(Warm),
}

/// Body of [`SupervisorToWorker::Load`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Model file on disk.
    pub model_path: String,
    /// Settings common to all backends.
    pub profile: Profile,
    /// Settings of one backend.
    pub backend: BackendOptions,
}

/// Settings of a serving profile that every backend understands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Profile name, for status and logs.
    pub name: String,
    /// Context window in tokens.
    pub context_size: u32,
    /// Prompt batch size in tokens.
    pub batch_size: u32,
    /// Threads for inference; 0 = the backend's choice.
    pub threads: u32,
    /// Element type of the KV cache.
    pub kv_cache_type: KvCacheType,
    /// Flash attention (llama.cpp needs it for a quantised V cache).
    pub flash_attention: bool,
    /// Cap on generated tokens per request.
    pub max_new_tokens: u32,
}

/// Element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCacheType {
    /// 16-bit floats (2 bytes per element).
    F16,
    /// 8-bit blocks (~1.06 bytes per element).
    Q8_0,
    /// 4-bit blocks (~0.56 bytes per element).
    Q4_0,
}

impl KvCacheType {
    /// Config-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
        }
    }
}

/// Backend-specific settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BackendOptions {
    /// llama.cpp.
    Cpu(CpuOptions),
    /// RKLLM.
    Npu(NpuOptions),
}

/// llama.cpp settings beyond the profile.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CpuOptions {
    /// Use mmap for the weights (they then count as RssFile, not RssAnon).
    pub use_mmap: bool,
    /// The slot's `chat_template`: a llama.cpp built-in template name, or
    /// the path of a template file (a value with a `/`); `None` = the model
    /// file's own template, else its architecture's default (see
    /// `model_check::template`).
    pub chat_template: Option<String>,
    /// Conversations whose KV cache the worker keeps between requests, each
    /// in a sequence of its own of `context_size` tokens (0 = none: every
    /// request is prefilled cold). The KV cache is this plus one (the
    /// scratch sequence of requests without a conversation) times one
    /// sequence's size.
    pub cache_sequences: u32,
}

/// RKLLM settings beyond the profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NpuOptions {
    /// Path of `librkllmrt.so`.
    pub runtime_path: String,
    /// Runtime ABI: "auto", "1.2" or "1.3".
    pub abi: String,
    /// CPU cores the runtime may use (bit n = CPU n).
    pub enabled_cpus_mask: u32,
    /// NPU memory domain.
    pub base_domain_id: i32,
    /// Chat template system prompt; `None` = the default for the model family.
    pub system_prompt: Option<String>,
    /// Chat template text before the user's prompt; `None` = default.
    pub prompt_prefix: Option<String>,
    /// Chat template text after the user's prompt; `None` = default.
    pub prompt_postfix: Option<String>,
    /// Directory of the prompt-cache file that holds the configured system
    /// prompt's KV (`rkllm_load_prompt_cache`), built at the first load and
    /// loaded at every later one; `None` = no prompt cache.
    pub prompt_cache_dir: Option<String>,
}

/// Body of [`SupervisorToWorker::Generate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generate {
    /// Supervisor-chosen id, echoed in the answers.
    pub request_id: u64,
    /// Conversation, ending with the user's turn.
    pub messages: Vec<ChatMessage>,
    /// Sampling and limits.
    pub params: GenParams,
    /// Text the assistant's answer must start with (already shown to the
    /// user when another worker failed mid-answer); the worker continues
    /// after it and does not send it back.
    pub assistant_prefix: String,
    /// The conversation this request continues, if the client named one: a
    /// worker that keeps KV caches keeps this conversation's under the key
    /// and reuses the common prefix on its next turn. `None` = a one-off.
    pub conversation: Option<String>,
}

/// Body of [`SupervisorToWorker::Warm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warm {
    /// The key the prefilled tokens are kept under; the failover `Generate`
    /// names it as its `conversation`.
    pub key: String,
    /// The conversation, ending with the user's turn, as the `Generate`.
    pub messages: Vec<ChatMessage>,
    /// The answer streamed so far, rendered after the prompt exactly as a
    /// failover `Generate` would render its `assistant_prefix`.
    pub assistant_prefix: String,
}

/// Body of [`SupervisorToWorker::Cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelGeneration {
    /// The generation to cancel.
    pub request_id: u64,
}

/// Body of [`SupervisorToWorker::Ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed in the heartbeat.
    pub seq: u64,
}

/// Worker to supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerToSupervisor {
    /// Model loaded, ready for `Generate`.
    Ready(Ready),
    /// Model could not be loaded; the worker exits with `exit_code` next.
    LoadFailed(LoadFailed),
    /// A piece of generated text (complete UTF-8).
    Token(WorkerToken),
    /// A generation ended.
    Done(WorkerDone),
    /// A generation failed (the worker stays usable).
    Error(WorkerError),
    /// Answer to `Ping`.
    Heartbeat(Heartbeat),
    /// A `Warm` is over (finished, stopped or ignored). Added last: bincode
    /// numbers variants by position.
    Warmed(Warmed),
}

/// Body of [`WorkerToSupervisor::Warmed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warmed {
    /// The warm's key.
    pub key: String,
    /// Tokens the KV cache holds under that key now (prompt and answer;
    /// 0 when the warm was ignored or nothing is held).
    pub tokens: u32,
}

/// Body of [`WorkerToSupervisor::Ready`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// The worker's backend.
    pub backend: Backend,
    /// What was loaded.
    pub model: ModelFacts,
    /// The profile now in force.
    pub profile: String,
    /// Milliseconds from `Load` to ready.
    pub load_ms: f64,
    /// The worker process's own pid (for pid files and checks).
    pub pid: u32,
}

/// Facts about a loaded model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFacts {
    /// Display name (from metadata, else the file name).
    pub name: String,
    /// File size in bytes.
    pub file_size: u64,
    /// Architecture, e.g. "llama" (empty when unknown).
    pub architecture: String,
    /// Context length the model was trained for (0 when unknown).
    pub train_context: u32,
    /// Context window in use.
    pub context_size: u32,
    /// Parameter count (0 when unknown).
    pub parameters: u64,
    /// The chat template prompts are rendered with and where it came from,
    /// e.g. "chatml (embedded in the model file)" or "gemma (default for
    /// architecture gemma3; the model file has no template)".
    pub chat_template: String,
}

/// Body of [`WorkerToSupervisor::LoadFailed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadFailed {
    /// Exit status the worker is about to exit with.
    pub exit_code: i32,
    /// What is wrong and what to do about it.
    pub message: String,
}

/// Body of [`WorkerToSupervisor::Token`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerToken {
    /// The generation.
    pub request_id: u64,
    /// Text, never a partial UTF-8 sequence.
    pub text: String,
    /// How many model tokens this text covers: a token that ends inside a
    /// UTF-8 sequence is held back and sent with the next, so one frame can
    /// carry several tokens (and the supervisor counts tokens, not frames).
    pub tokens: u32,
}

/// Body of [`WorkerToSupervisor::Done`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerDone {
    /// The generation.
    pub request_id: u64,
    /// Why it stopped.
    pub finish: FinishReason,
    /// Its figures.
    pub stats: GenStats,
    /// What the worker holds in its KV caches after this generation.
    pub cache: CacheReport,
}

/// Body of [`WorkerToSupervisor::Error`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerError {
    /// The generation.
    pub request_id: u64,
    /// Kind of failure.
    pub kind: WorkerErrorKind,
    /// Details.
    pub message: String,
}

/// Kinds of generation failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerErrorKind {
    /// The prompt does not fit the context window.
    PromptTooLong,
    /// The request is unusable (no messages, template failure).
    BadRequest,
    /// The engine failed mid-generation.
    Engine,
    /// A `Generate` arrived while another was running.
    Busy,
    /// No model is loaded.
    NotLoaded,
}

/// Body of [`WorkerToSupervisor::Heartbeat`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The ping's sequence number.
    pub seq: u64,
    /// The generation in progress, if any.
    pub busy_with: Option<u64>,
    /// Tokens generated since start.
    pub tokens_total: u64,
    /// Generations finished since start.
    pub requests_total: u64,
    /// What the worker holds in its KV caches now.
    pub cache: CacheReport,
}

/// The conversations a worker holds in its KV caches, and its cache figures
/// since the process started (the supervisor adds up across restarts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheReport {
    /// Conversations held, most recently used first.
    pub held: Vec<HeldConversation>,
    /// Conversations the worker can hold at once (0 = it keeps none).
    pub capacity: u32,
    /// KV cache bytes of one sequence at the full context size.
    pub kv_bytes_per_sequence: u64,
    /// Requests with a conversation key whose cached prefix was reused.
    pub hits: u64,
    /// Requests with a conversation key that found nothing to reuse.
    pub misses: u64,
    /// Prompt tokens not prefilled again because their KV was cached.
    pub reused_tokens: u64,
    /// Conversations evicted (least recently used) to make room for another.
    pub evictions: u64,
    /// Conversations dropped because a profile switch changed the context size.
    pub dropped: u64,
    /// The prompt-cache file the worker loaded for the system prompt every
    /// request without one of its own starts with (the NPU worker); `None`
    /// = none.
    pub prompt_cache: Option<PromptCacheFile>,
}

impl CacheReport {
    /// Whether the conversation `key` is held.
    pub fn holds(&self, key: &str) -> bool {
        self.held.iter().any(|h| h.key == key)
    }
}

/// A prompt-cache file in use: the KV of the system prompt, saved by the
/// runtime once and loaded at every start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptCacheFile {
    /// Where it is.
    pub path: String,
    /// Tokens it holds, when the runtime reported them while saving it.
    pub tokens: Option<u32>,
    /// Whether this load saved it (`false`: an earlier load did).
    pub built: bool,
}

/// One conversation in a worker's KV cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldConversation {
    /// The client's conversation key.
    pub key: String,
    /// Tokens of it the cache holds (prompt and answer so far).
    pub tokens: u32,
}

/// Exit codes of worker processes. Codes from 64 up mean "will never work
/// with this configuration": the supervisor marks the slot unavailable and
/// does not restart it. Anything else (crash, signal, code 1) may work after a
/// restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitCode {
    /// The settings given are unusable (bad value the config check missed).
    BadSettings = 64,
    /// Model file not found.
    ModelMissing = 65,
    /// Model file is empty.
    ModelEmpty = 66,
    /// Model file exists but cannot be read.
    ModelUnreadable = 67,
    /// Not a model of the expected format (bad magic).
    ModelBadFormat = 68,
    /// Format version this worker does not support.
    ModelBadVersion = 69,
    /// File ends before the data it declares (incomplete download).
    ModelTruncated = 70,
    /// The engine refused the model (corrupt, or converted by an incompatible toolkit).
    ModelInvalid = 71,
    /// Model converted for another platform.
    PlatformMismatch = 72,
    /// The runtime library is not installed.
    RuntimeMissing = 73,
    /// The runtime library is of a version this worker does not know.
    RuntimeUnsupported = 74,
    /// This machine is not a platform the runtime supports.
    UnsupportedPlatform = 75,
    /// Accelerator memory exhausted at load.
    AcceleratorMemory = 76,
    /// Context length above what the model supports.
    ContextTooLong = 77,
    /// The supervisor speaks another protocol version.
    ProtocolMismatch = 78,
}

impl ExitCode {
    /// Every code, for lookups and tests.
    pub const ALL: [Self; 15] = [
        Self::BadSettings,
        Self::ModelMissing,
        Self::ModelEmpty,
        Self::ModelUnreadable,
        Self::ModelBadFormat,
        Self::ModelBadVersion,
        Self::ModelTruncated,
        Self::ModelInvalid,
        Self::PlatformMismatch,
        Self::RuntimeMissing,
        Self::RuntimeUnsupported,
        Self::UnsupportedPlatform,
        Self::AcceleratorMemory,
        Self::ContextTooLong,
        Self::ProtocolMismatch,
    ];

    /// The numeric process exit status.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The code for an exit status, if it is one of ours.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Short description used when the worker's own message did not arrive.
    pub fn describe(self) -> &'static str {
        match self {
            Self::BadSettings => "unusable worker settings",
            Self::ModelMissing => "model file not found",
            Self::ModelEmpty => "model file is empty (0 bytes)",
            Self::ModelUnreadable => "model file is not readable",
            Self::ModelBadFormat => "model file is not in the expected format",
            Self::ModelBadVersion => "model file format version is not supported",
            Self::ModelTruncated => "model file is truncated",
            Self::ModelInvalid => "model rejected by the runtime",
            Self::PlatformMismatch => "model converted for another platform",
            Self::RuntimeMissing => "runtime library not installed",
            Self::RuntimeUnsupported => "runtime library version not supported",
            Self::UnsupportedPlatform => "unsupported platform",
            Self::AcceleratorMemory => "accelerator memory exhausted",
            Self::ContextTooLong => "context length above the model's limit",
            Self::ProtocolMismatch => "protocol version mismatch with the supervisor",
        }
    }
}
