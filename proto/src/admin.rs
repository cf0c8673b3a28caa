//! Admin conversation: `supctl` and the supervisor, on the admin socket.
//!
//! 1. Handshake with role [`PeerRole::Admin`](crate::PeerRole::Admin).
//! 2. Any number of request/answer pairs: `supctl` sends one
//!    [`AdminToSupervisor`], the supervisor answers with one [`SupervisorToAdmin`].
//! 3. `supctl` closes the connection.

use serde::{Deserialize, Serialize};

use crate::chat::Backend;
use crate::cpus::CpuSet;
use crate::worker::CacheReport;

/// supctl to supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminToSupervisor {
    /// Report everything.
    Status,
    /// Pin traffic to one backend, or back to automatic choice (`to: None`).
    Failover(FailoverCommand),
    /// Restart one worker.
    Restart(RestartCommand),
    /// Change a slot's memory ceilings at run time (until the next start;
    /// `supctl validate` uses it to simulate pressure).
    SetMemoryCeiling(MemoryCeiling),
}

/// Body of [`AdminToSupervisor::SetMemoryCeiling`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryCeiling {
    /// Slot name or backend.
    pub slot: String,
    /// New soft ceiling on RssAnon in MiB (0 = off).
    pub soft_mib: u64,
    /// New hard ceiling on RssAnon in MiB (0 = off).
    pub hard_mib: u64,
}

/// Body of [`AdminToSupervisor::Failover`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverCommand {
    /// Backend to pin, or `None` for automatic routing.
    pub to: Option<Backend>,
}

/// Body of [`AdminToSupervisor::Restart`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartCommand {
    /// Slot name ("primary", "fallback") or backend name.
    pub slot: String,
    /// Stop at once instead of after the current request.
    pub now: bool,
}

/// Supervisor to supctl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SupervisorToAdmin {
    /// Answer to `Status`.
    Status(Box<StatusReport>),
    /// The command was carried out (or scheduled); the text says what happened.
    Ok(AdminOk),
    /// The command was refused; the text says why.
    Error(AdminError),
}

/// Body of [`SupervisorToAdmin::Ok`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminOk {
    /// What happened.
    pub message: String,
}

/// Body of [`SupervisorToAdmin::Error`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminError {
    /// Why not.
    pub message: String,
}

/// The supervisor's whole state as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Supervisor version string.
    pub version: String,
    /// Supervisor pid.
    pub pid: u32,
    /// Milliseconds since the supervisor started.
    pub uptime_ms: u64,
    /// One entry per worker slot.
    pub slots: Vec<SlotStatus>,
    /// Backend new requests go to now, if any can serve.
    pub active_backend: Option<Backend>,
    /// How traffic is routed.
    pub routing: Routing,
    /// Why traffic goes where it goes, in words.
    pub routing_reason: String,
    /// Requests waiting for a worker.
    pub queue_depth: u32,
    /// Requests being generated.
    pub in_flight: u32,
    /// Board temperatures.
    pub thermal: ThermalStatus,
    /// The system's MemAvailable in KiB, when readable.
    pub mem_available_kb: Option<u64>,
    /// What telemetry could not be trusted, and what the supervisor did.
    pub telemetry: TelemetryStatus,
    /// Shadowing stopped because the warms slowed the serving slot, and
    /// the pairs of slots backing off from shadowing since. (Last: bincode
    /// reads fields in order.)
    pub shadow: ShadowSummary,
}

/// Shadowing stopped for slowing the serving slot, since the supervisor
/// started, and the back-offs in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowSummary {
    /// Requests whose shadow stopped warming because the serving slot's
    /// time per token grew past `policy.shadow_max_slowdown` meanwhile.
    pub stops_for_slowdown: u64,
    /// Pairs of slots that do not shadow for a while after such a stop.
    pub backoffs: Vec<ShadowBackoff>,
}

/// One pair of slots backing off from shadowing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowBackoff {
    /// The slot that was slowed while serving.
    pub serving: String,
    /// The slot whose warms slowed it.
    pub shadow: String,
    /// Requests starting on `serving` that get no shadow from `shadow` yet.
    pub requests_left: u32,
}

/// A slot shadowing a request another slot serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowStatus {
    /// The request (the supervisor's id, as in its logs).
    pub request_id: u64,
    /// The slot serving it.
    pub serving: String,
    /// Answer tokens streamed so far.
    pub streamed_tokens: u32,
    /// Answer tokens the last finished warm covered.
    pub warmed_answer_tokens: u32,
    /// Tokens (prompt and answer) the shadow's KV cache held for it after
    /// its last finished warm; 0 before the first.
    pub warmed_tokens: u32,
    /// A warm is in progress on the shadow.
    pub warming: bool,
    /// Warming stopped because it slowed the serving slot; what was warmed
    /// stays for a failover.
    pub stopped: bool,
}

/// Telemetry the supervisor could not read or does not trust. The rules:
/// an unreadable or stuck zone is left out; with no readable zone at all the
/// thermal level stays where it was (unknown is not cool); an unreadable
/// worker memory sample keeps the last one (it is not 0 MiB).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryStatus {
    /// Zones whose temperature could not be read at the last reading.
    pub unreadable_zones: Vec<String>,
    /// Zones left out because their reading has not changed for minutes
    /// while other zones' did.
    pub stuck_zones: Vec<String>,
    /// Milliseconds since no zone at all could be read (the thermal level
    /// is held meanwhile), if so.
    pub blind_ms: Option<u64>,
    /// Worker memory reads that failed since the supervisor started.
    pub memory_read_failures: u64,
}

/// How traffic is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Routing {
    /// Primary when ready, else fallback.
    Auto,
    /// Pinned by `supctl failover --to`.
    Pinned(Backend),
}

/// Lifecycle state of a worker slot, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotState {
    /// Not started (cold standby) or stopped.
    Idle,
    /// Process spawned, waiting for it to connect.
    Starting,
    /// Model loading.
    Loading,
    /// Ready for a request.
    Ready,
    /// Generating.
    Busy,
    /// Being stopped.
    Stopping,
    /// Waiting before a restart.
    BackingOff,
    /// Restarted too often; waiting for the cooldown probe.
    Failed,
    /// Will never work with this configuration (see the reason).
    Unavailable,
}

impl SlotState {
    /// Lower-case name for tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Starting => "starting",
            Self::Loading => "loading",
            Self::Ready => "ready",
            Self::Busy => "busy",
            Self::Stopping => "stopping",
            Self::BackingOff => "backing-off",
            Self::Failed => "failed",
            Self::Unavailable => "unavailable",
        }
    }
}

/// One worker slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// Slot name ("primary", "fallback").
    pub name: String,
    /// Backend of the slot.
    pub backend: Backend,
    /// Lifecycle state.
    pub state: SlotState,
    /// Milliseconds in that state.
    pub state_ms: u64,
    /// Why the slot is in its state (unavailable, failed, backing off), or empty.
    pub reason: String,
    /// Worker pid when a process exists.
    pub pid: Option<u32>,
    /// Model name (or file name before the first load).
    pub model: String,
    /// Serving profile in force.
    pub profile: String,
    /// Why that profile (e.g. "memory pressure"), or empty.
    pub profile_reason: String,
    /// Resident anonymous memory in KiB.
    pub rss_anon_kb: Option<u64>,
    /// Resident file-backed memory in KiB (mmap'd weights).
    pub rss_file_kb: Option<u64>,
    /// Peak resident memory in KiB.
    pub vm_hwm_kb: Option<u64>,
    /// Above the soft memory ceiling.
    pub memory_pressure: bool,
    /// Milliseconds since the current process was spawned.
    pub uptime_ms: Option<u64>,
    /// Requests completed by this slot since the supervisor started.
    pub requests_served: u64,
    /// Decode tokens/s of the last generation.
    pub last_decode_tps: Option<f64>,
    /// Restarts since the supervisor started.
    pub restarts: u32,
    /// Reason of the last restart ("crash", "hang", "memory", "oom", "admin").
    pub last_restart_reason: Option<String>,
    /// The chat template the worker uses and where it came from (empty until
    /// the worker has loaded).
    pub chat_template: String,
    /// The CPUs the slot's work runs on: the CPU worker's threads are pinned
    /// to them; the NPU runtime's own threads use them (`enabled_cpus_mask`).
    /// The two slots' sets never overlap. (A CPU worker on a machine without
    /// some of them uses the part that exists and logs so.)
    pub cpus: Option<CpuSet>,
    /// Where that set comes from ("configured", or which default and why).
    pub cpus_reason: String,
    /// The slot's KV-cache conversations: what its worker holds now, and
    /// hits, misses, reused tokens, evictions and drops added up since the
    /// supervisor started (across the worker's restarts).
    pub cache: CacheReport,
    /// The request of another slot this slot shadows (prefills for a
    /// failover), if any. (Last fields: bincode reads them in order.)
    pub shadowing: Option<ShadowStatus>,
    /// The slot shadowing the request this slot serves, if any.
    pub shadowed_by: Option<String>,
}

/// Board temperatures and the admission state they cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThermalStatus {
    /// Every zone read.
    pub zones: Vec<ZoneTemp>,
    /// Admission state.
    pub level: ThermalLevel,
}

/// One thermal zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneTemp {
    /// Zone type, e.g. "soc-thermal".
    pub kind: String,
    /// Degrees Celsius.
    pub celsius: f64,
}

/// Admission state from temperatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThermalLevel {
    /// Normal service.
    Normal,
    /// Above `throttle`: max tokens capped.
    Throttle,
    /// Above `critical`: no new generations until below `resume`.
    Critical,
}
