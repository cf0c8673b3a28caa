//! The supervisor's TOML configuration: every key, its default, and the
//! checks that turn a bad value into an error naming the key.
//!
//! One file serves the whole installation (`/etc/rocksteady/config.toml`);
//! the `[gateway]` and `[openai]` sections belong to the front-door processes,
//! `[bridge]` to the cluster bridge and `[bench]` to `supctl`; all are passed
//! over here. Relative paths are resolved against the config file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use model_check::template;
use proto::chat::Backend;
use proto::cpus::CpuSet;
use proto::worker::{BackendOptions, CpuOptions, KvCacheType, Load, NpuOptions, Profile};
use serde::Deserialize;
use thiserror::Error;

use crate::pinning::{self, Placement};

/// Default location of the config file.
pub const DEFAULT_PATH: &str = "/etc/rocksteady/config.toml";

/// A config file that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML.
    #[error("config is not valid TOML: {source}")]
    Syntax {
        /// Parser error (with line and column).
        #[source]
        source: toml::de::Error,
    },
    /// A key is unknown or its value has the wrong type.
    #[error("config key `{key}`: {message}")]
    Key {
        /// Dotted path of the key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value has the right type but is not acceptable.
    #[error("config key `{key}`: {problem}")]
    Invalid {
        /// Dotted path of the key.
        key: String,
        /// What is wrong and what is allowed.
        problem: String,
    },
}

/// A [`ConfigError::Invalid`] for `key` (also used for supctl's `[bench]`).
pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub supervisor: SupervisorSection,
    /// Worker slots.
    pub slots: Slots,
    /// Supervision policy: timeouts, backoff, restart limits.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Temperature thresholds.
    #[serde(default)]
    pub thermal: ThermalConfig,
    /// Where board and process telemetry is read from.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The local HTTP endpoint (/health, /metrics).
    #[serde(default)]
    pub http: HttpConfig,
    /// `supctl bench`'s section: read by supctl, ignored here.
    #[serde(default)]
    pub bench: Option<toml::Table>,
    /// The gateway's section: read by the gateway, ignored here.
    #[serde(default)]
    pub gateway: Option<toml::Table>,
    /// The OpenAI-compatible API's section: read by rocksteady-openai, ignored here.
    #[serde(default)]
    pub openai: Option<toml::Table>,
    /// The cluster bridge's section: read by rocksteady-bridge, ignored here.
    #[serde(default)]
    pub bridge: Option<toml::Table>,
}

/// `[supervisor]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSection {
    /// Directory of the sockets (created mode 0750 if missing).
    pub runtime_dir: PathBuf,
    /// Directory of pid files and results.
    pub state_dir: PathBuf,
    /// Requests that may wait for a worker; more are refused as busy.
    pub queue_capacity: usize,
    /// Longest accepted conversation, in characters over all messages.
    pub max_prompt_chars: usize,
    /// Longest a request may wait for a worker before it fails (seconds).
    pub queue_timeout_s: f64,
    /// Permission bits of the client socket (octal string).
    pub client_socket_mode: String,
    /// Permission bits of the admin socket (octal string).
    pub admin_socket_mode: String,
    /// Run each worker in its own cgroup v2 group with `memory.max` from
    /// its hard ceiling, where the cgroup tree is delegated to us.
    pub worker_cgroups: bool,
    /// Users allowed on the client socket besides root, the supervisor's
    /// own user and members of its group.
    pub client_allowed_uids: Vec<u32>,
    /// Groups allowed on the client socket (primary or supplementary).
    pub client_allowed_gids: Vec<u32>,
    /// Users allowed on the admin socket besides root and the supervisor's own user.
    pub admin_allowed_uids: Vec<u32>,
    /// Groups allowed on the admin socket.
    pub admin_allowed_gids: Vec<u32>,
    /// Client connections open at once, all users together; more are refused.
    pub max_client_connections: usize,
    /// Client connections one user (uid) may hold open at once.
    pub max_client_connections_per_user: usize,
    /// A client connection with nothing received or sent for this long is
    /// closed (seconds); must exceed `queue_timeout_s`.
    pub client_idle_timeout_s: f64,
    /// Events waiting for one client's writer; a client that falls this far
    /// behind is disconnected and its requests cancelled.
    pub client_event_backlog: usize,
    /// Longest one write to a client may take before it is disconnected (seconds).
    pub client_write_timeout_s: f64,
    /// User the workers run as (a name from the password database); unset:
    /// the supervisor's own user. Another user needs the supervisor to run
    /// as root or with CAP_SETUID and CAP_SETGID.
    pub worker_user: Option<String>,
}

impl Default for SupervisorSection {
    fn default() -> Self {
        Self {
            runtime_dir: PathBuf::from("/run/rocksteady"),
            state_dir: PathBuf::from("/var/lib/rocksteady"),
            queue_capacity: 16,
            max_prompt_chars: 16_000,
            queue_timeout_s: 120.0,
            client_socket_mode: "0660".into(),
            admin_socket_mode: "0600".into(),
            worker_cgroups: true,
            client_allowed_uids: Vec::new(),
            client_allowed_gids: Vec::new(),
            admin_allowed_uids: Vec::new(),
            admin_allowed_gids: Vec::new(),
            max_client_connections: 256,
            max_client_connections_per_user: 64,
            client_idle_timeout_s: 600.0,
            client_event_backlog: 4096,
            client_write_timeout_s: 10.0,
            worker_user: None,
        }
    }
}

impl SupervisorSection {
    /// Path of the client socket.
    pub fn client_socket(&self) -> PathBuf {
        self.runtime_dir.join("client.sock")
    }

    /// Path of the admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.runtime_dir.join("admin.sock")
    }

    /// Directory of the per-worker sockets.
    pub fn worker_socket_dir(&self) -> PathBuf {
        self.runtime_dir.join("workers")
    }
}

/// `[slots]`: the primary worker and the optional fallback.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slots {
    /// Preferred worker (the NPU on the board).
    pub primary: SlotConfig,
    /// Worker that serves when the primary cannot (the CPU on the board).
    pub fallback: Option<SlotConfig>,
}

/// One worker slot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// "npu" or "cpu".
    #[serde(deserialize_with = "de_backend")]
    pub backend: Backend,
    /// Model file.
    pub model: PathBuf,
    /// Worker binary; default: `worker-<backend>` next to the supervisor's binary.
    #[serde(default)]
    pub worker: Option<PathBuf>,
    /// Keep the worker loaded while it is not needed (warm standby).
    #[serde(default = "yes")]
    pub warm: bool,
    /// Extra environment for the worker (its environment is otherwise cleaned).
    #[serde(default)]
    pub worker_env: BTreeMap<String, String>,
    /// Serving profile.
    #[serde(default)]
    pub profile: ProfileConfig,
    /// llama.cpp options (backend "cpu").
    #[serde(default)]
    pub cpu: CpuConfig,
    /// RKLLM options (backend "npu").
    #[serde(default)]
    pub npu: NpuConfig,
    /// RssAnon above which the slot is under memory pressure (MiB; 0 = off).
    #[serde(default)]
    pub memory_soft_mib: u64,
    /// RssAnon above which the worker is stopped (MiB; 0 = off).
    #[serde(default)]
    pub memory_hard_mib: u64,
    /// Profile to switch to under memory pressure (smaller context, a
    /// quantised KV cache...); none = no switching.
    #[serde(default)]
    pub fallback_profile: Option<ProfileConfig>,
    /// Model for the fallback profile (default: the slot's model).
    #[serde(default)]
    pub fallback_model: Option<PathBuf>,
    /// Where the slot's work runs: decided from the whole config when it is
    /// loaded (`crate::pinning`), not a key of the file.
    #[serde(skip)]
    pub placement: Option<Placement>,
}

fn yes() -> bool {
    true
}

fn de_backend<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Backend, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// A serving profile.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    /// Name shown in status.
    pub name: String,
    /// Context window (tokens).
    pub context_size: u32,
    /// Prompt batch (tokens).
    pub batch_size: u32,
    /// Inference threads (0 = all cores).
    pub threads: u32,
    /// "f16", "q8_0" or "q4_0".
    pub kv_cache_type: String,
    /// Flash attention (forced on for quantised KV caches).
    pub flash_attention: bool,
    /// Cap on tokens generated per request.
    pub max_new_tokens: u32,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            context_size: 2048,
            batch_size: 512,
            threads: 0,
            kv_cache_type: "f16".into(),
            flash_attention: false,
            max_new_tokens: 512,
        }
    }
}

/// `[slots.<name>.cpu]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    /// mmap the weights (they then count as RssFile, shared page cache).
    pub use_mmap: bool,
    /// Chat template: a llama.cpp built-in name ("gemma"), or the path of a
    /// template file (a value with a `/`). Unset: the model file's own
    /// template, else the default for its architecture.
    pub chat_template: Option<String>,
    /// CPUs the worker's threads are pinned to, in the kernel's list syntax
    /// ("4-7", "0-3,6"). Unset: the board's A76 cores 4-7 without an NPU
    /// slot, the cores the NPU's `enabled_cpus_mask` leaves free with one
    /// (see `crate::pinning`).
    pub cpus: Option<CpuSet>,
    /// Conversations whose KV cache the worker keeps between turns (0 =
    /// none). Each takes a sequence of the profile's context size, so the
    /// KV cache is `cache_sequences + 1` times one sequence (status shows
    /// its bytes): keep it within the slot's memory ceilings.
    pub cache_sequences: u32,
}

/// Most conversation sequences a CPU worker may keep (llama.cpp allows 256
/// sequences; far fewer fit any board's memory).
pub const MAX_CACHE_SEQUENCES: u32 = 64;

impl Default for CpuConfig {
    fn default() -> Self {
        Self {
            use_mmap: true,
            chat_template: None,
            cpus: None,
            cache_sequences: 2,
        }
    }
}

/// `[slots.<name>.npu]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NpuConfig {
    /// Path of the RKLLM runtime library.
    pub runtime_path: PathBuf,
    /// "auto", "1.2" or "1.3".
    pub abi: String,
    /// CPU cores the runtime may use (bit n = CPU n); RK3588's A76 cores are 4-7.
    pub enabled_cpus_mask: u32,
    /// NPU memory domain.
    pub base_domain_id: i32,
    /// Chat template system prompt (unset = model family default).
    pub system_prompt: Option<String>,
    /// Chat template prefix (unset = model family default).
    pub prompt_prefix: Option<String>,
    /// Chat template postfix (unset = model family default).
    pub prompt_postfix: Option<String>,
    /// Keep the configured system prompt's KV in a prompt-cache file, saved
    /// by the runtime at the first load and loaded at every later one, so
    /// no request prefills it.
    pub prompt_cache: bool,
    /// Where that file lives (default `<state_dir>/prompt-cache`); the
    /// worker creates the directory.
    pub prompt_cache_dir: Option<PathBuf>,
}

impl Default for NpuConfig {
    fn default() -> Self {
        Self {
            runtime_path: PathBuf::from("/usr/lib/librkllmrt.so"),
            abi: "auto".into(),
            enabled_cpus_mask: 0xF0,
            base_domain_id: 0,
            system_prompt: None,
            prompt_prefix: None,
            prompt_postfix: None,
            prompt_cache: true,
            prompt_cache_dir: None,
        }
    }
}

/// `[policy]`: supervision timing and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Ping interval for idle workers (s).
    pub heartbeat_interval_s: f64,
    /// An idle worker that has not answered a ping for this long is hung (s).
    pub heartbeat_timeout_s: f64,
    /// A generating worker that produced no token for this long is hung (s).
    pub stall_timeout_s: f64,
    /// Limit for the first token of a generation (s); the prompt's own
    /// processing time at the worker's learned prefill rate is added.
    pub first_token_timeout_s: f64,
    /// Limit from spawn, or from the start of a reload (profile switch), to ready (s).
    pub load_timeout_s: f64,
    /// Time between SIGTERM and SIGKILL when stopping a worker (s).
    pub stop_grace_s: f64,
    /// First restart delay (s); doubles per restart up to `backoff_max_s`.
    pub backoff_initial_s: f64,
    /// Longest restart delay (s).
    pub backoff_max_s: f64,
    /// More than this many restarts within `restart_period_s` marks the slot failed.
    pub restart_intensity: u32,
    /// Window of the restart count (s).
    pub restart_period_s: f64,
    /// A failed slot is probed again after this long (s).
    pub failed_cooldown_s: f64,
    /// The primary must be healthy this long before traffic fails back to it (s).
    pub failback_hold_s: f64,
    /// Memory sampling interval (s).
    pub memory_interval_s: f64,
    /// System MemAvailable below which workers are under memory pressure (MiB; 0 = off).
    pub mem_available_floor_mib: u64,
    /// oom_score_adj given to workers, so the kernel picks them before the supervisor.
    pub worker_oom_score_adj: i32,
    /// Memory pressure lasting this long switches a slot to its fallback profile (s).
    pub profile_switch_after_s: f64,
    /// Pressure gone this long switches it back (s).
    pub profile_hold_s: f64,
    /// A request that lost this many workers mid-answer fails instead of
    /// moving again.
    pub max_failovers: u32,
    /// With the primary busy and requests waiting, a ready fallback takes
    /// the next one (two conversations at once instead of one).
    pub spill_over: bool,
    /// While one slot serves a request, the other (ready, idle) slot
    /// prefills the same prompt and the answer so far into its KV cache, so
    /// a failover to it decodes only the last tokens (CPU workers; others
    /// ignore it).
    pub shadow: bool,
    /// The shadowing slot is sent the answer so far every this many
    /// streamed tokens (at least 1).
    pub shadow_every_tokens: u32,
    /// A request stops being shadowed when the serving slot's time per
    /// token while a warm runs exceeds its time per token without one by
    /// more than this factor (at least 1.0; e.g. 1.25 = 25 % slower).
    pub shadow_max_slowdown: f64,
    /// After such a stop, the next this many requests on the slowed slot
    /// get no shadow from the same slot (at least 1); doubled after each
    /// further stop (up to 16 times this), back to this after a shadowed
    /// request that did not slow.
    pub shadow_backoff_requests: u32,
    /// On SIGTERM, running replies get this long to finish before the
    /// workers are stopped (s). Keep it plus `stop_grace_s` below the
    /// unit's TimeoutStopSec (45 s).
    pub drain_timeout_s: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_s: 2.0,
            heartbeat_timeout_s: 10.0,
            stall_timeout_s: 15.0,
            first_token_timeout_s: 60.0,
            load_timeout_s: 180.0,
            // The NPU worker gives a running generation 3 s to abort before
            // it exits on its own; SIGKILL only after that.
            stop_grace_s: 5.0,
            backoff_initial_s: 1.0,
            backoff_max_s: 60.0,
            restart_intensity: 5,
            restart_period_s: 300.0,
            failed_cooldown_s: 300.0,
            failback_hold_s: 30.0,
            memory_interval_s: 1.0,
            mem_available_floor_mib: 0,
            worker_oom_score_adj: 500,
            profile_switch_after_s: 5.0,
            profile_hold_s: 60.0,
            max_failovers: 3,
            spill_over: true,
            shadow: true,
            shadow_every_tokens: 8,
            shadow_max_slowdown: 1.25,
            shadow_backoff_requests: 4,
            drain_timeout_s: 30.0,
        }
    }
}

impl PolicyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let p = self;
        for (key, v) in [
            ("heartbeat_interval_s", p.heartbeat_interval_s),
            ("heartbeat_timeout_s", p.heartbeat_timeout_s),
            ("stall_timeout_s", p.stall_timeout_s),
            ("first_token_timeout_s", p.first_token_timeout_s),
            ("load_timeout_s", p.load_timeout_s),
            ("stop_grace_s", p.stop_grace_s),
            ("backoff_initial_s", p.backoff_initial_s),
            ("backoff_max_s", p.backoff_max_s),
            ("restart_period_s", p.restart_period_s),
            ("failed_cooldown_s", p.failed_cooldown_s),
            ("failback_hold_s", p.failback_hold_s),
            ("memory_interval_s", p.memory_interval_s),
            ("profile_switch_after_s", p.profile_switch_after_s),
            ("profile_hold_s", p.profile_hold_s),
            ("drain_timeout_s", p.drain_timeout_s),
        ] {
            positive(&format!("policy.{key}"), v)?;
        }
        if p.heartbeat_timeout_s <= p.heartbeat_interval_s {
            return Err(invalid(
                "policy.heartbeat_timeout_s",
                "must be longer than policy.heartbeat_interval_s",
            ));
        }
        if p.shadow_every_tokens == 0 {
            return Err(invalid(
                "policy.shadow_every_tokens",
                "must be at least 1 (set policy.shadow = false to turn shadowing off)",
            ));
        }
        if !(p.shadow_max_slowdown.is_finite() && (1.0..=100.0).contains(&p.shadow_max_slowdown)) {
            return Err(invalid(
                "policy.shadow_max_slowdown",
                format!(
                    "must be a factor from 1.0 to 100 (1.25 = the serving slot may be 25 % slower while a warm runs), not {}",
                    p.shadow_max_slowdown
                ),
            ));
        }
        if p.shadow_backoff_requests == 0 {
            return Err(invalid(
                "policy.shadow_backoff_requests",
                "must be at least 1 (set policy.shadow = false to turn shadowing off)",
            ));
        }
        if p.backoff_max_s < p.backoff_initial_s {
            return Err(invalid(
                "policy.backoff_max_s",
                "must not be below policy.backoff_initial_s",
            ));
        }
        if !(-1000..=1000).contains(&p.worker_oom_score_adj) {
            return Err(invalid(
                "policy.worker_oom_score_adj",
                "must be between -1000 and 1000",
            ));
        }
        Ok(())
    }
}

/// Converts a validated number of seconds.
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// `[thermal]`: thresholds in degrees Celsius, on the hottest matching zone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThermalConfig {
    /// Zone types that count (empty = all zones).
    pub zones: Vec<String>,
    /// Above this, new generations' max tokens are capped.
    pub throttle_c: f64,
    /// Above this, no new generations start.
    pub critical_c: f64,
    /// Admission resumes below this.
    pub resume_c: f64,
    /// Max tokens while throttled.
    pub throttle_max_tokens: u32,
    /// While throttled, prefer the backend whose zone is cooler.
    pub prefer_cooler: bool,
}

impl Default for ThermalConfig {
    fn default() -> Self {
        Self {
            zones: Vec::new(),
            throttle_c: 80.0,
            critical_c: 90.0,
            resume_c: 75.0,
            throttle_max_tokens: 128,
            prefer_cooler: false,
        }
    }
}

/// `[http]`: the operator's `curl localhost:PORT/health`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to serve on; empty = no HTTP endpoint. Keep it local.
    pub listen: String,
    /// When idle this long, run a probe generation of a few tokens (s; 0 = never).
    pub probe_interval_s: f64,
    /// /health needs tokens (or a worker becoming ready) within this many seconds.
    pub healthy_within_s: f64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            probe_interval_s: 300.0,
            healthy_within_s: 600.0,
        }
    }
}

impl HttpConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let h = self;
        if !h.listen.is_empty() && h.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                format!(
                    "{:?} is not an address such as \"127.0.0.1:9464\"",
                    h.listen
                ),
            ));
        }
        if !(h.probe_interval_s.is_finite() && h.probe_interval_s >= 0.0) {
            return Err(invalid(
                "http.probe_interval_s",
                "must be 0 (off) or a positive number of seconds",
            ));
        }
        positive("http.healthy_within_s", h.healthy_within_s)?;
        if h.probe_interval_s > 0.0 && h.healthy_within_s <= h.probe_interval_s {
            return Err(invalid(
                "http.healthy_within_s",
                "must be longer than http.probe_interval_s",
            ));
        }
        Ok(())
    }
}

/// `[telemetry]`: roots of the files read, settable so tests can fake them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// procfs mount.
    pub proc_root: PathBuf,
    /// sysfs mount.
    pub sysfs_root: PathBuf,
    /// debugfs mount (NPU load).
    pub debugfs_root: PathBuf,
    /// cgroup v2 mount.
    pub cgroup_root: PathBuf,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            sysfs_root: PathBuf::from("/sys"),
            debugfs_root: PathBuf::from("/sys/kernel/debug"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// Reads the config file at `path`: its text, and the directory its
/// relative paths are taken from. (Shared with `supctl`, which reads its own
/// `[bench]` section of the same file.)
///
/// # Errors
/// [`ConfigError::Read`] naming the file.
pub fn read_file(path: &Path) -> Result<(String, PathBuf), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().map(Path::to_owned).unwrap_or_default();
    Ok((text, base))
}

/// Deserializes a whole config file's TOML text into `T`; an error names the
/// dotted key at fault.
///
/// # Errors
/// [`ConfigError::Syntax`] or [`ConfigError::Key`].
pub fn deserialize<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|source| ConfigError::Syntax { source })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let message = e.inner().message().to_owned();
        ConfigError::Key { key, message }
    })
}

impl Config {
    /// Reads, parses and checks the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, base) = read_file(path)?;
        Self::from_toml(&text, &base)
    }

    /// Parses and checks TOML text; relative paths are taken from `base`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key at fault.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = deserialize(text)?;
        config.resolve_paths(base);
        let default_dir = config.supervisor.state_dir.join("prompt-cache");
        for slot in config.slot_configs_mut() {
            slot.npu
                .prompt_cache_dir
                .get_or_insert_with(|| default_dir.clone());
        }
        config.validate()?;
        config.place_cpus()?;
        config.check_kv_budget()?;
        Ok(config)
    }

    /// A CPU slot's KV cache (its conversation sequences and the scratch
    /// one, each of the profile's context) must fit under the slot's hard
    /// ceiling: it is anonymous memory, which the ceiling counts, and a
    /// worker over it is stopped on every load. The shape comes from the
    /// model file's header; a file that cannot be read is left to the
    /// worker, which says what is wrong with it.
    fn check_kv_budget(&self) -> Result<(), ConfigError> {
        for (name, slot) in self.slot_list() {
            if slot.backend != Backend::Cpu || slot.memory_hard_mib == 0 {
                continue;
            }
            let profiles = [
                ("profile", &slot.model, Some(&slot.profile)),
                (
                    "fallback_profile",
                    slot.fallback_model.as_ref().unwrap_or(&slot.model),
                    slot.fallback_profile.as_ref(),
                ),
            ];
            for (which, model, profile) in profiles {
                let Some(profile) = profile else { continue };
                let Some(shape) = model_check::gguf::check(model).ok().and_then(|i| i.kv) else {
                    continue;
                };
                let kv = parse_kv(&profile.kv_cache_type).unwrap_or(KvCacheType::F16);
                let per_sequence = shape.sequence_bytes(u64::from(profile.context_size), kv);
                kv_cache_fits(per_sequence, slot.cpu.cache_sequences, slot.memory_hard_mib)
                    .map_err(|problem| {
                        invalid(
                            format!("slots.{name}.cpu.cache_sequences"),
                            format!(
                                "{problem} (with {which} context_size = {}, kv_cache_type = {}): \
                             lower cache_sequences or context_size, use a quantised \
                             kv_cache_type, or raise memory_hard_mib",
                                profile.context_size, profile.kv_cache_type
                            ),
                        )
                    })?;
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.supervisor.runtime_dir);
        fix(&mut self.supervisor.state_dir);
        for slot in self.slot_configs_mut() {
            fix(&mut slot.model);
            if let Some(w) = &mut slot.worker {
                fix(w);
            }
            if let Some(m) = &mut slot.fallback_model {
                fix(m);
            }
            if let Some(d) = &mut slot.npu.prompt_cache_dir {
                fix(d);
            }
            if let Some(t) = &mut slot.cpu.chat_template {
                if let template::Setting::File(path) = template::Setting::parse(t) {
                    if path.is_relative() {
                        *t = base.join(path).to_string_lossy().into_owned();
                    }
                }
            }
        }
    }

    /// Decides each slot's CPUs (after `validate`: at most one NPU slot).
    fn place_cpus(&mut self) -> Result<(), ConfigError> {
        let wanted: Vec<_> = self
            .slot_list()
            .into_iter()
            .map(|(name, cfg)| pinning::SlotCpuConfig::of(name, cfg))
            .collect();
        let placements = pinning::place(&wanted)?;
        for (slot, placement) in self.slot_configs_mut().zip(placements) {
            slot.placement = Some(placement);
        }
        Ok(())
    }

    fn slot_configs_mut(&mut self) -> impl Iterator<Item = &mut SlotConfig> {
        std::iter::once(&mut self.slots.primary).chain(self.slots.fallback.as_mut())
    }

    /// The slots in order, with their names.
    pub fn slot_list(&self) -> Vec<(&'static str, &SlotConfig)> {
        let mut v = vec![("primary", &self.slots.primary)];
        if let Some(f) = &self.slots.fallback {
            v.push(("fallback", f));
        }
        v
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.supervisor;
        if s.queue_capacity == 0 {
            return Err(invalid("supervisor.queue_capacity", "must be at least 1"));
        }
        if s.max_prompt_chars == 0 {
            return Err(invalid("supervisor.max_prompt_chars", "must be at least 1"));
        }
        positive("supervisor.queue_timeout_s", s.queue_timeout_s)?;
        for (key, v) in [
            (
                "supervisor.max_client_connections",
                s.max_client_connections,
            ),
            (
                "supervisor.max_client_connections_per_user",
                s.max_client_connections_per_user,
            ),
            ("supervisor.client_event_backlog", s.client_event_backlog),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        positive(
            "supervisor.client_write_timeout_s",
            s.client_write_timeout_s,
        )?;
        positive("supervisor.client_idle_timeout_s", s.client_idle_timeout_s)?;
        if s.client_idle_timeout_s <= s.queue_timeout_s {
            return Err(invalid(
                "supervisor.client_idle_timeout_s",
                format!(
                    "must exceed supervisor.queue_timeout_s ({} s): a request waiting in the queue sends nothing",
                    s.queue_timeout_s
                ),
            ));
        }
        validate_access(s)?;
        for (name, slot) in self.slot_list() {
            slot.validate(&format!("slots.{name}"))?;
        }
        if let Some(fallback) = &self.slots.fallback {
            // Two processes on the RK3588 NPU at once can hang the board.
            if fallback.backend == Backend::Npu && self.slots.primary.backend == Backend::Npu {
                return Err(invalid(
                    "slots.fallback.backend",
                    "only one slot may use the NPU (two NPU clients at once can hang the board)",
                ));
            }
        }
        self.policy.validate()?;
        self.http.validate()?;
        let t = &self.thermal;
        for (key, v) in [
            ("throttle_c", t.throttle_c),
            ("critical_c", t.critical_c),
            ("resume_c", t.resume_c),
        ] {
            if !v.is_finite() {
                return Err(invalid(
                    format!("thermal.{key}"),
                    "must be a number of degrees",
                ));
            }
        }
        if t.critical_c <= t.resume_c {
            return Err(invalid(
                "thermal.resume_c",
                "must be below thermal.critical_c (hysteresis)",
            ));
        }
        if t.throttle_c > t.critical_c {
            return Err(invalid(
                "thermal.throttle_c",
                "must not be above thermal.critical_c",
            ));
        }
        if t.throttle_max_tokens == 0 {
            return Err(invalid("thermal.throttle_max_tokens", "must be at least 1"));
        }
        Ok(())
    }
}

/// The sockets' modes and the worker user.
fn validate_access(s: &SupervisorSection) -> Result<(), ConfigError> {
    parse_mode(&s.client_socket_mode).ok_or_else(|| {
        invalid(
            "supervisor.client_socket_mode",
            format!(
                "{:?} is not an octal permission such as \"0660\"",
                s.client_socket_mode
            ),
        )
    })?;
    parse_mode(&s.admin_socket_mode).ok_or_else(|| {
        invalid(
            "supervisor.admin_socket_mode",
            format!(
                "{:?} is not an octal permission such as \"0600\"",
                s.admin_socket_mode
            ),
        )
    })?;
    if let Some(user) = &s.worker_user {
        crate::identity::lookup(user)
            .map_err(|e| invalid("supervisor.worker_user", e.to_string()))?;
    }
    Ok(())
}

/// Checks a number of seconds: finite, above 0 and below 1e9.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `key`.
pub fn positive(key: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be a positive number of seconds, not {v}"),
        ))
    }
}

/// Parses an octal permission string such as "0660".
pub fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
}

/// Whether a CPU worker's KV cache, `cache_sequences` conversations plus the
/// scratch sequence of `per_sequence` bytes each, fits under a hard ceiling
/// of `hard_mib` (it must leave room for the weights' working buffers too,
/// so it may take at most half). The problem, in figures, when not.
///
/// # Errors
/// The arithmetic that does not fit.
#[allow(clippy::cast_precision_loss)] // MiB with one decimal, for a message
pub fn kv_cache_fits(per_sequence: u64, cache_sequences: u32, hard_mib: u64) -> Result<(), String> {
    const MIB: u64 = 1 << 20;
    let sequences = u64::from(cache_sequences) + 1;
    let total = per_sequence.saturating_mul(sequences);
    if total.saturating_mul(2) <= hard_mib.saturating_mul(MIB) {
        return Ok(());
    }
    Err(format!(
        "the KV cache takes {sequences} sequences x {:.1} MiB = {:.1} MiB of anonymous memory, \
         more than half of memory_hard_mib = {hard_mib}",
        per_sequence as f64 / MIB as f64,
        total as f64 / MIB as f64,
    ))
}

/// Parses a KV cache type name (`f16`, `q8_0`, `q4_0`).
pub fn parse_kv(s: &str) -> Option<KvCacheType> {
    match s {
        "f16" => Some(KvCacheType::F16),
        "q8_0" => Some(KvCacheType::Q8_0),
        "q4_0" => Some(KvCacheType::Q4_0),
        _ => None,
    }
}

impl ProfileConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !(64..=1 << 20).contains(&self.context_size) {
            return Err(invalid(
                format!("{key}.context_size"),
                "must be between 64 and 1048576 tokens",
            ));
        }
        if self.batch_size == 0 || self.batch_size > self.context_size {
            return Err(invalid(
                format!("{key}.batch_size"),
                "must be between 1 and context_size",
            ));
        }
        if self.max_new_tokens == 0 || self.max_new_tokens >= self.context_size {
            return Err(invalid(
                format!("{key}.max_new_tokens"),
                "must be between 1 and context_size - 1",
            ));
        }
        if self.threads > 256 {
            return Err(invalid(
                format!("{key}.threads"),
                "must be at most 256 (0 = all cores)",
            ));
        }
        if parse_kv(&self.kv_cache_type).is_none() {
            return Err(invalid(
                format!("{key}.kv_cache_type"),
                format!(
                    "{:?} is not one of \"f16\", \"q8_0\", \"q4_0\"",
                    self.kv_cache_type
                ),
            ));
        }
        if self.name.is_empty() {
            return Err(invalid(format!("{key}.name"), "must not be empty"));
        }
        Ok(())
    }

    /// The profile as sent to a worker.
    pub fn to_proto(&self) -> Profile {
        Profile {
            name: self.name.clone(),
            context_size: self.context_size,
            batch_size: self.batch_size,
            threads: self.threads,
            // Checked by validate().
            kv_cache_type: parse_kv(&self.kv_cache_type).unwrap_or(KvCacheType::F16),
            flash_attention: self.flash_attention,
            max_new_tokens: self.max_new_tokens,
        }
    }
}

impl SlotConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.model.as_os_str().is_empty() {
            return Err(invalid(format!("{key}.model"), "must name a model file"));
        }
        self.profile.validate(&format!("{key}.profile"))?;
        if let Some(fallback) = &self.fallback_profile {
            fallback.validate(&format!("{key}.fallback_profile"))?;
            if fallback.name == self.profile.name {
                return Err(invalid(
                    format!("{key}.fallback_profile.name"),
                    "must differ from the normal profile's name (status shows which is active)",
                ));
            }
        }
        if self.memory_hard_mib != 0 && self.memory_soft_mib > self.memory_hard_mib {
            return Err(invalid(
                format!("{key}.memory_soft_mib"),
                "must not be above memory_hard_mib",
            ));
        }
        if !["auto", "1.2", "1.3"].contains(&self.npu.abi.as_str()) {
            return Err(invalid(
                format!("{key}.npu.abi"),
                format!(
                    "{:?} is not one of \"auto\", \"1.2\", \"1.3\"",
                    self.npu.abi
                ),
            ));
        }
        if self.npu.enabled_cpus_mask == 0 {
            return Err(invalid(
                format!("{key}.npu.enabled_cpus_mask"),
                "must enable at least one CPU",
            ));
        }
        if self.cpu.cache_sequences > MAX_CACHE_SEQUENCES {
            return Err(invalid(
                format!("{key}.cpu.cache_sequences"),
                format!("must be at most {MAX_CACHE_SEQUENCES} (each is a KV cache of the context size)"),
            ));
        }
        if let Some(t) = &self.cpu.chat_template {
            let key = format!("{key}.cpu.chat_template");
            if t.is_empty() || t.contains('\0') {
                return Err(invalid(key, "must be a template name or a file path"));
            }
            if let template::Setting::Named(name) = template::Setting::parse(t) {
                if !template::is_builtin(&name) {
                    let e = template::TemplateError::UnknownName { name };
                    return Err(invalid(key, e.to_string()));
                }
            }
        }
        for name in self.worker_env.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(invalid(
                    format!("{key}.worker_env"),
                    format!("{name:?} is not a variable name"),
                ));
            }
        }
        Ok(())
    }

    /// The `Load` message for this slot: its normal profile, or its
    /// fallback profile (when it has one) with `fallback` set.
    pub fn load_message_for(&self, fallback: bool) -> Load {
        let mut load = self.load_message();
        if let (true, Some(profile)) = (fallback, &self.fallback_profile) {
            load.profile = profile.to_proto();
            if let Some(model) = &self.fallback_model {
                load.model_path = model.to_string_lossy().into_owned();
            }
        }
        load
    }

    /// The `Load` message for this slot's normal profile.
    pub fn load_message(&self) -> Load {
        let backend = match self.backend {
            Backend::Cpu => BackendOptions::Cpu(CpuOptions {
                use_mmap: self.cpu.use_mmap,
                chat_template: self.cpu.chat_template.clone(),
                cache_sequences: self.cpu.cache_sequences,
            }),
            Backend::Npu => BackendOptions::Npu(NpuOptions {
                runtime_path: self.npu.runtime_path.to_string_lossy().into_owned(),
                abi: self.npu.abi.clone(),
                enabled_cpus_mask: self.npu.enabled_cpus_mask,
                base_domain_id: self.npu.base_domain_id,
                system_prompt: self.npu.system_prompt.clone(),
                prompt_prefix: self.npu.prompt_prefix.clone(),
                prompt_postfix: self.npu.prompt_postfix.clone(),
                prompt_cache_dir: self
                    .npu
                    .prompt_cache_dir
                    .as_ref()
                    .filter(|_| self.npu.prompt_cache)
                    .map(|d| d.to_string_lossy().into_owned()),
            }),
        };
        Load {
            model_path: self.model.to_string_lossy().into_owned(),
            profile: self.profile.to_proto(),
            backend,
        }
    }

    /// The worker binary to run.
    pub fn worker_binary(&self) -> PathBuf {
        self.worker.clone().unwrap_or_else(|| {
            let name = format!("worker-{}", self.backend);
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join(&name)))
                .unwrap_or_else(|| PathBuf::from(name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_is_valid() {
        let text = include_str!("../../deploy/config.example.toml");
        let c = Config::from_toml(text, Path::new("/etc/rocksteady")).unwrap();
        assert_eq!(c.slots.primary.backend, Backend::Npu);
        assert_eq!(c.slots.fallback.as_ref().unwrap().backend, Backend::Cpu);
    }

    const MINIMAL: &str = "[slots.primary]\nbackend = \"cpu\"\nmodel = \"m.gguf\"\n";

    fn err(text: &str) -> String {
        Config::from_toml(text, Path::new("/etc/rocksteady"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_npu_prompt_cache_lives_in_the_state_directory_unless_moved_or_off() {
        let npu = |extra: &str| {
            let text = format!(
                "[supervisor]\nstate_dir = \"/srv/rs\"\n[slots.primary]\nbackend = \"npu\"\nmodel = \"q.rkllm\"\n[slots.primary.npu]\n{extra}"
            );
            let c = Config::from_toml(&text, Path::new("/etc/rocksteady")).unwrap();
            let BackendOptions::Npu(o) = c.slots.primary.load_message().backend else {
                panic!()
            };
            o.prompt_cache_dir
        };
        assert_eq!(npu("").as_deref(), Some("/srv/rs/prompt-cache"));
        assert_eq!(
            npu("prompt_cache_dir = \"pc\"\n").as_deref(),
            Some("/etc/rocksteady/pc")
        );
        assert_eq!(npu("prompt_cache = false\n"), None);
        let e = err("[slots.primary]\nbackend = \"npu\"\nmodel = \"q\"\n[slots.primary.npu]\nprompt_cache = \"yes\"\n");
        assert!(e.contains("prompt_cache"), "{e}");
    }

    #[test]
    fn the_kv_cache_must_fit_under_the_hard_ceiling() {
        const MIB: u64 = 1 << 20;
        // Three sequences of 10 MiB take 30 MiB: fine under 60, not under 59.
        assert!(kv_cache_fits(10 * MIB, 2, 60).is_ok());
        let e = kv_cache_fits(10 * MIB, 2, 59).unwrap_err();
        assert!(e.contains("3 sequences x 10.0 MiB = 30.0 MiB"), "{e}");
        // No conversations: the scratch sequence alone.
        assert!(kv_cache_fits(10 * MIB, 0, 20).is_ok());
        assert!(kv_cache_fits(u64::MAX, 64, u64::MAX / MIB).is_err());
    }

    #[test]
    fn a_slot_whose_kv_cache_cannot_fit_is_a_config_error_naming_the_figures() {
        // The real model's header: 30 layers, 3 KV heads of 64, so a 4096
        // context in f16 takes 90 MiB per sequence.
        let model =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(model.exists(), "run deploy/fetch-model.sh");
        let slot = |extra: &str| {
            format!(
                "[slots.primary]\nbackend = \"cpu\"\nmodel = \"{}\"\nmemory_hard_mib = 400\n{extra}\n[slots.primary.profile]\ncontext_size = 4096\n",
                model.display()
            )
        };
        let e = err(&slot("[slots.primary.cpu]\ncache_sequences = 2"));
        assert!(e.contains("slots.primary.cpu.cache_sequences"), "{e}");
        assert!(e.contains("3 sequences x 90.0 MiB = 270.0 MiB"), "{e}");
        // One conversation fits (180 MiB of 400); so does no ceiling at all.
        let fits = |text: &str| Config::from_toml(text, Path::new("/")).is_ok();
        assert!(fits(&slot("[slots.primary.cpu]\ncache_sequences = 1")));
        assert!(fits(
            &slot("").replace("memory_hard_mib = 400", "memory_hard_mib = 0")
        ));
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let c = Config::from_toml(MINIMAL, Path::new("/etc/rocksteady")).unwrap();
        assert_eq!(
            c.slots.primary.model,
            PathBuf::from("/etc/rocksteady/m.gguf")
        );
        assert_eq!(c.slots.primary.profile.context_size, 2048);
        assert!(c.slots.fallback.is_none());
        assert_eq!(
            c.supervisor.client_socket(),
            PathBuf::from("/run/rocksteady/client.sock")
        );
    }

    #[test]
    fn the_worker_user_must_exist() {
        let e = err(&format!(
            "[supervisor]\nworker_user = \"no-such-user-rocksteady\"\n{MINIMAL}"
        ));
        assert!(
            e.contains("supervisor.worker_user") && e.contains("no user named"),
            "{e}"
        );
        let e = err(&format!("[supervisor]\nworker_user = \"\"\n{MINIMAL}"));
        assert!(e.contains("supervisor.worker_user"), "{e}");
        let c = Config::from_toml(
            &format!("[supervisor]\nworker_user = \"nobody\"\n{MINIMAL}"),
            Path::new("/etc/rocksteady"),
        )
        .unwrap();
        assert_eq!(c.supervisor.worker_user.as_deref(), Some("nobody"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&format!("{MINIMAL}context = 4096\n"));
        assert!(e.contains("slots.primary") && e.contains("context"), "{e}");
        let e = err(&format!("[policy]\nstall_timeout = 3\n{MINIMAL}"));
        assert!(e.contains("policy") && e.contains("stall_timeout"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                "backend = \"gpu\"",
                "slots.primary.backend",
                "unknown backend",
            ),
            (
                "profile.context_size = 10",
                "slots.primary.profile.context_size",
                "between 64",
            ),
            (
                "profile.kv_cache_type = \"q2\"",
                "slots.primary.profile.kv_cache_type",
                "q8_0",
            ),
            (
                "profile.context_size = \"big\"",
                "slots.primary.profile.context_size",
                "invalid type",
            ),
            ("npu.abi = \"2.0\"", "slots.primary.npu.abi", "auto"),
        ];
        for (line, key, words) in cases {
            let text = format!(
                "[slots.primary]\nmodel = \"m.gguf\"\n{}{line}\n",
                if line.starts_with("backend") {
                    ""
                } else {
                    "backend = \"cpu\"\n"
                }
            );
            let e = err(&text);
            assert!(e.contains(key) && e.contains(words), "{line}: {e}");
        }
        let e = err(&format!("[policy]\nstall_timeout_s = -1\n{MINIMAL}"));
        assert!(e.contains("policy.stall_timeout_s"), "{e}");
        let e = err(&format!("[policy]\nshadow_every_tokens = 0\n{MINIMAL}"));
        assert!(e.contains("policy.shadow_every_tokens"), "{e}");
        for bad in ["0.9", "-1.0", "nan", "inf"] {
            let e = err(&format!("[policy]\nshadow_max_slowdown = {bad}\n{MINIMAL}"));
            assert!(e.contains("policy.shadow_max_slowdown"), "{bad}: {e}");
        }
        let e = err(&format!("[policy]\nshadow_backoff_requests = 0\n{MINIMAL}"));
        assert!(e.contains("policy.shadow_backoff_requests"), "{e}");
        let e = err(&format!(
            "[thermal]\ncritical_c = 70\nresume_c = 75\n{MINIMAL}"
        ));
        assert!(e.contains("thermal.resume_c"), "{e}");
        let e = err(&format!(
            "[supervisor]\nclient_socket_mode = \"rw\"\n{MINIMAL}"
        ));
        assert!(e.contains("supervisor.client_socket_mode"), "{e}");
        let e = err("[slots.primary]\nbackend = \"npu\"\nmodel = \"a\"\n[slots.fallback]\nbackend = \"npu\"\nmodel = \"b\"\n");
        assert!(
            e.contains("slots.fallback.backend") && e.contains("only one slot may use the NPU"),
            "{e}"
        );
        let e = err("[slots.fallback]\nbackend = \"cpu\"\nmodel = \"m\"\n");
        assert!(e.contains("primary"), "{e}");
    }

    #[test]
    fn chat_template_is_a_builtin_name_or_a_file_path() {
        let load = |line: &str| {
            let text = format!("{MINIMAL}[slots.primary.cpu]\nchat_template = {line}\n");
            Config::from_toml(&text, Path::new("/etc/rocksteady"))
                .map(|c| match c.slots.primary.load_message().backend {
                    BackendOptions::Cpu(cpu) => cpu.chat_template,
                    BackendOptions::Npu(_) => unreachable!(),
                })
                .map_err(|e| e.to_string())
        };
        assert_eq!(load("\"gemma\""), Ok(Some("gemma".into())));
        // A relative file is taken from the config's directory.
        assert_eq!(
            load("\"./templates/t.jinja\""),
            Ok(Some("/etc/rocksteady/./templates/t.jinja".into()))
        );
        assert_eq!(load("\"/srv/t.jinja\""), Ok(Some("/srv/t.jinja".into())));
        // A typo is named with the choices, at config time.
        let e = load("\"gema\"").unwrap_err();
        assert!(
            e.contains("slots.primary.cpu.chat_template") && e.contains("chatml, llama3, gemma"),
            "{e}"
        );
        assert!(load("\"\"").is_err());
        let c = Config::from_toml(MINIMAL, Path::new("/")).unwrap();
        assert_eq!(c.slots.primary.cpu.chat_template, None);
    }

    #[test]
    fn cpus_are_placed_when_the_file_is_loaded() {
        let place = |c: &Config| -> Vec<String> {
            c.slot_list()
                .iter()
                .map(|(_, s)| s.placement.as_ref().unwrap().cpus.to_string())
                .collect()
        };
        // The board's shape: the NPU runtime on the A76s, llama.cpp on the rest.
        let text = include_str!("../../deploy/config.example.toml");
        let c = Config::from_toml(text, Path::new("/etc/rocksteady")).unwrap();
        assert_eq!(place(&c), ["4-7", "0-3"]);
        let c = Config::from_toml(MINIMAL, Path::new("/")).unwrap();
        assert_eq!(place(&c), ["4-7"]);
        let c = Config::from_toml(
            &format!("{MINIMAL}[slots.primary.cpu]\ncpus = \"1, 3-4\"\n"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(place(&c), ["1,3-4"]);
        assert_eq!(
            crate::process::worker_cpus_arg(&c.slots.primary).as_deref(),
            Some("1,3-4")
        );
    }

    #[test]
    fn a_bad_cpu_list_or_an_overlap_is_named() {
        let e = err(&format!("{MINIMAL}[slots.primary.cpu]\ncpus = \"7-4\"\n"));
        assert!(
            e.contains("slots.primary.cpu.cpus") && e.contains("backwards"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}[slots.primary.cpu]\ncpus = \"\"\n"));
        assert!(
            e.contains("slots.primary.cpu.cpus") && e.contains("no CPU"),
            "{e}"
        );
        let e = err("[slots.primary]\nbackend = \"npu\"\nmodel = \"a\"\n\
             [slots.fallback]\nbackend = \"cpu\"\nmodel = \"b\"\n\
             [slots.fallback.cpu]\ncpus = \"0-4\"\n");
        assert!(
            e.contains("slots.fallback.cpu.cpus")
                && e.contains("CPUs 4 are also the NPU runtime's")
                && e.contains("slots.primary.npu.enabled_cpus_mask"),
            "{e}"
        );
    }

    #[test]
    fn the_gateway_section_is_left_to_the_gateway() {
        let c = Config::from_toml(
            &format!("[gateway]\nanything = 1\n{MINIMAL}"),
            Path::new("/"),
        )
        .unwrap();
        assert!(c.gateway.is_some());
    }

    #[test]
    fn the_bench_section_is_left_to_supctl() {
        // Keys the daemon knows nothing of, and a value supctl would refuse:
        // neither is the daemon's business.
        let c = Config::from_toml(
            &format!(
                "[bench]
regression_pct = -1
anything = 1
{MINIMAL}"
            ),
            Path::new("/"),
        )
        .unwrap();
        assert!(c.bench.is_some());
    }
}
