//! What the supervisor shows the outside world besides `supctl`: a snapshot
//! the loop publishes every tick, counters the connection tasks bump, the
//! health verdict, and their Prometheus text rendering for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use proto::admin::{SlotState, StatusReport, ThermalLevel};

/// Counters of what clients were sent, bumped as events go out.
#[derive(Debug, Default)]
pub struct RequestCounters {
    /// Tokens relayed to clients.
    pub tokens: AtomicU64,
    /// Requests answered in full.
    pub done: AtomicU64,
    /// Requests that ended in an error after admission.
    pub error: AtomicU64,
    /// Requests cancelled.
    pub cancelled: AtomicU64,
    /// Requests refused at admission (busy, bad request, no worker).
    pub refused: AtomicU64,
}

impl RequestCounters {
    /// Counts one event sent to a client.
    pub fn count(&self, event: &proto::client::SupervisorToClient, admitted: bool) {
        use proto::client::{ErrorKind, SupervisorToClient as E};
        let counter = match event {
            E::Token(_) => &self.tokens,
            E::Done(_) => &self.done,
            E::Error(e) if e.kind == ErrorKind::Cancelled => &self.cancelled,
            E::Error(_) if admitted => &self.error,
            E::Error(_) => &self.refused,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of the loop (generations, restarts, failovers).
#[derive(Debug, Clone, Default)]
pub struct LoopCounters {
    /// Per backend: (sum of TTFT ms, sum of decode tok/s, generations counted).
    pub generation: BTreeMap<&'static str, (f64, f64, u64)>,
    /// Restarts by (slot, reason).
    pub restarts: BTreeMap<(String, &'static str), u64>,
    /// Requests moved to another worker mid-answer.
    pub failovers: u64,
}

/// Counters of the connection tasks: bad peers never reach the loop.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Peers refused by their credentials.
    pub refused_peers: AtomicU64,
    /// Worker processes (or their children) refused on the client or admin socket.
    pub worker_peers: AtomicU64,
    /// Frames above the size limit.
    pub oversized_frames: AtomicU64,
    /// Bytes that were not a valid frame or message.
    pub malformed_frames: AtomicU64,
    /// Handshakes with another protocol version.
    pub version_mismatches: AtomicU64,
    /// Connections refused because the socket held its total cap.
    pub over_total_cap: AtomicU64,
    /// Connections refused because the peer's user held its cap.
    pub over_uid_cap: AtomicU64,
    /// Requests refused in the connection task for their prompt's size.
    pub prompts_too_long: AtomicU64,
    /// Connections closed after the idle timeout.
    pub idle: AtomicU64,
    /// Clients disconnected because their event backlog was full.
    pub too_slow: AtomicU64,
    /// Clients disconnected because a write did not finish in time.
    pub write_timeouts: AtomicU64,
}

impl ConnectionCounters {
    /// Counts a failed connection by what went wrong.
    pub fn count(&self, err: &proto::ProtoError) {
        use proto::ProtoError as E;
        let counter = match err {
            E::FrameTooLarge { .. } => &self.oversized_frames,
            E::Decode { .. } | E::NotRocksteady | E::WrongRole { .. } => &self.malformed_frames,
            E::VersionMismatch { .. } => &self.version_mismatches,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether the service is answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// A worker is ready and produced tokens recently.
    Ok,
    /// Why not ("loading", "all workers failed", "board too hot", ...).
    Unhealthy(String),
}

/// What the loop publishes each tick.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The status report `supctl status` would get.
    pub status: StatusReport,
    /// Loop counters.
    pub counters: LoopCounters,
    /// Health verdict.
    pub health: Health,
}

/// Shared between the loop, the connection tasks and the HTTP server.
#[derive(Debug, Default)]
pub struct Observed {
    /// Latest snapshot (none before the first tick).
    pub snapshot: Mutex<Option<Snapshot>>,
    /// Connection-level counters.
    pub connections: ConnectionCounters,
    /// Request-level counters.
    pub requests: RequestCounters,
}

impl Observed {
    /// The latest snapshot.
    pub fn latest(&self) -> Option<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The health verdict from a status report and how long ago tokens (or a
/// worker becoming ready) were last seen.
pub fn health(status: &StatusReport, since_tokens_s: Option<f64>, window_s: f64) -> Health {
    let serving = status
        .slots
        .iter()
        .any(|s| matches!(s.state, SlotState::Ready | SlotState::Busy));
    if !serving {
        let loading = status.slots.iter().any(|s| {
            matches!(
                s.state,
                SlotState::Starting
                    | SlotState::Loading
                    | SlotState::BackingOff
                    | SlotState::Stopping
            )
        });
        return Health::Unhealthy(
            if loading {
                "loading"
            } else {
                "all workers failed"
            }
            .into(),
        );
    }
    if status.thermal.level == ThermalLevel::Critical {
        return Health::Unhealthy("board too hot".into());
    }
    match since_tokens_s {
        Some(s) if s <= window_s => Health::Ok,
        Some(s) => Health::Unhealthy(format!("no tokens produced for {s:.0}s")),
        None => Health::Unhealthy("no generation yet".into()),
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the Prometheus text exposition format.
#[allow(clippy::too_many_lines)] // one metric after another
pub fn render_metrics(snap: &Snapshot, observed: &Observed) -> String {
    let conns = &observed.connections;
    let reqs = &observed.requests;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.to_owned()
    };
    let c = &snap.counters;
    let mut lines = Vec::new();
    let n = family(
        "rocksteady_tokens_generated_total",
        "counter",
        "Tokens relayed to clients.",
    );
    lines.push((
        n.clone(),
        format!("{n} {}", reqs.tokens.load(Ordering::Relaxed)),
    ));
    let n = family(
        "rocksteady_requests_total",
        "counter",
        "Requests ended, by outcome.",
    );
    for (outcome, v) in [
        ("done", &reqs.done),
        ("error", &reqs.error),
        ("cancelled", &reqs.cancelled),
        ("refused", &reqs.refused),
    ] {
        lines.push((
            n.clone(),
            format!("{n}{{outcome=\"{outcome}\"}} {}", v.load(Ordering::Relaxed)),
        ));
    }
    let ttft = family(
        "rocksteady_ttft_ms_avg",
        "gauge",
        "Average time to first token per backend (ms).",
    );
    let tps = family(
        "rocksteady_decode_tokens_per_second_avg",
        "gauge",
        "Average decode speed per backend.",
    );
    for (backend, (ttft_sum, tps_sum, count)) in &c.generation {
        #[allow(clippy::cast_precision_loss)]
        let count = (*count).max(1) as f64;
        lines.push((
            ttft.clone(),
            format!("{ttft}{{backend=\"{backend}\"}} {:.3}", ttft_sum / count),
        ));
        lines.push((
            tps.clone(),
            format!("{tps}{{backend=\"{backend}\"}} {:.3}", tps_sum / count),
        ));
    }
    let n = family(
        "rocksteady_restarts_total",
        "counter",
        "Worker restarts by slot and reason.",
    );
    for ((slot, reason), v) in &c.restarts {
        lines.push((
            n.clone(),
            format!("{n}{{slot=\"{}\",reason=\"{reason}\"}} {v}", label(slot)),
        ));
    }
    let n = family(
        "rocksteady_failovers_total",
        "counter",
        "Requests moved to another worker mid-answer.",
    );
    lines.push((n.clone(), format!("{n} {}", c.failovers)));
    let anon = family(
        "rocksteady_worker_rss_anon_bytes",
        "gauge",
        "Worker resident anonymous memory.",
    );
    let file = family(
        "rocksteady_worker_rss_file_bytes",
        "gauge",
        "Worker resident file-backed memory.",
    );
    let up = family(
        "rocksteady_worker_ready",
        "gauge",
        "1 when the slot's worker is ready or busy.",
    );
    let prof = family(
        "rocksteady_active_profile",
        "gauge",
        "Serving profile in force per slot (value 1).",
    );
    for s in &snap.status.slots {
        let l = format!("slot=\"{}\",backend=\"{}\"", label(&s.name), s.backend);
        if let Some(kb) = s.rss_anon_kb {
            lines.push((anon.clone(), format!("{anon}{{{l}}} {}", kb * 1024)));
        }
        if let Some(kb) = s.rss_file_kb {
            lines.push((file.clone(), format!("{file}{{{l}}} {}", kb * 1024)));
        }
        let ready = u8::from(matches!(s.state, SlotState::Ready | SlotState::Busy));
        lines.push((up.clone(), format!("{up}{{{l}}} {ready}")));
        lines.push((
            prof.clone(),
            format!("{prof}{{{l},profile=\"{}\"}} 1", label(&s.profile)),
        ));
    }
    // KV-cache conversations (issue 13), from the status report's counters.
    let events = family(
        "rocksteady_kv_cache_events_total",
        "counter",
        "Conversation KV-cache hits, misses, evictions and drops by profile switches, per slot.",
    );
    let reused = family(
        "rocksteady_kv_cache_reused_tokens_total",
        "counter",
        "Prompt tokens taken from a worker's KV cache instead of prefilled.",
    );
    let held = family(
        "rocksteady_kv_cache_conversations",
        "gauge",
        "Conversations a slot's worker holds in its KV cache.",
    );
    for s in &snap.status.slots {
        let l = format!("slot=\"{}\",backend=\"{}\"", label(&s.name), s.backend);
        let c = &s.cache;
        for (event, v) in [
            ("hit", c.hits),
            ("miss", c.misses),
            ("eviction", c.evictions),
            ("dropped", c.dropped),
        ] {
            lines.push((
                events.clone(),
                format!("{events}{{{l},event=\"{event}\"}} {v}"),
            ));
        }
        lines.push((
            reused.clone(),
            format!("{reused}{{{l}}} {}", c.reused_tokens),
        ));
        lines.push((held.clone(), format!("{held}{{{l}}} {}", c.held.len())));
    }
    let n = family(
        "rocksteady_temperature_celsius",
        "gauge",
        "Thermal zone temperature.",
    );
    for z in &snap.status.thermal.zones {
        lines.push((
            n.clone(),
            format!("{n}{{zone=\"{}\"}} {:.3}", label(&z.kind), z.celsius),
        ));
    }
    let n = family(
        "rocksteady_queue_depth",
        "gauge",
        "Requests waiting for a worker.",
    );
    lines.push((n.clone(), format!("{n} {}", snap.status.queue_depth)));
    let n = family("rocksteady_healthy", "gauge", "1 when /health answers 200.");
    lines.push((
        n.clone(),
        format!("{n} {}", u8::from(snap.health == Health::Ok)),
    ));
    let n = family(
        "rocksteady_connections_refused_total",
        "counter",
        "Connections refused, by cause.",
    );
    for (cause, v) in [
        ("peer_credentials", &conns.refused_peers),
        ("worker_peer", &conns.worker_peers),
        ("oversized_frame", &conns.oversized_frames),
        ("malformed", &conns.malformed_frames),
        ("version_mismatch", &conns.version_mismatches),
        ("connection_cap_total", &conns.over_total_cap),
        ("connection_cap_user", &conns.over_uid_cap),
    ] {
        lines.push((
            n.clone(),
            format!("{n}{{cause=\"{cause}\"}} {}", v.load(Ordering::Relaxed)),
        ));
    }
    let n = family(
        "rocksteady_connections_closed_total",
        "counter",
        "Connections the supervisor closed, by cause.",
    );
    for (cause, v) in [
        ("idle", &conns.idle),
        ("too_slow", &conns.too_slow),
        ("write_timeout", &conns.write_timeouts),
    ] {
        lines.push((
            n.clone(),
            format!("{n}{{cause=\"{cause}\"}} {}", v.load(Ordering::Relaxed)),
        ));
    }
    let n = family(
        "rocksteady_prompts_refused_total",
        "counter",
        "Requests refused by the connection task because the conversation was too long.",
    );
    lines.push((
        n.clone(),
        format!("{n} {}", conns.prompts_too_long.load(Ordering::Relaxed)),
    ));
    // Samples of a family must follow its HELP/TYPE lines: group them.
    let mut body = String::new();
    for header in out.split("# HELP ").filter(|h| !h.is_empty()) {
        let name = header.split_whitespace().next().unwrap_or_default();
        let _ = write!(body, "# HELP {header}");
        for (family_name, line) in &lines {
            if family_name == name {
                let _ = writeln!(body, "{line}");
            }
        }
    }
    body
}
