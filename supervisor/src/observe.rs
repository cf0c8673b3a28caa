//! What the supervisor shows the outside world besides `supctl`: a snapshot
//! the loop publishes every tick, counters the connection tasks bump,
//! latency histograms filled from the loop's observations, the health
//! verdict, and their `/metrics` exposition through the Prometheus project's
//! client (`prometheus-client`): OpenMetrics for a scraper that asks for it,
//! the Prometheus text format otherwise (curl, `promtool check metrics`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use proto::admin::{SlotState, StatusReport, ThermalLevel};
use proto::chat::Backend;

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
    /// Restarts by (slot, reason).
    pub restarts: BTreeMap<(String, &'static str), u64>,
    /// Requests moved to another worker mid-answer.
    pub failovers: u64,
    /// Requests whose shadow stopped warming because the serving slot
    /// slowed past `policy.shadow_max_slowdown`.
    pub shadow_stops: u64,
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
    /// Latency histograms, filled from the loop's [`Latency`] observations.
    pub latencies: Latencies,
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

/// A latency the loop measured (its [`crate::core::Effect::Observe`]): only
/// observation, nothing decides on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// From admission to the answer's first token (queue wait included):
    /// what the user waits before text appears.
    FirstToken,
    /// Between two token frames of one answer on one worker, per token the
    /// later frame carries.
    Token,
    /// In the queue, each time a request waits for a worker (again after a
    /// failover or a refusal).
    QueueWait,
    /// From the start of a load (a spawn or a profile switch) to ready.
    Load,
}

/// Label set of the metric families: (name, value) pairs in a fixed order.
type Labels = Vec<(&'static str, String)>;

/// Builds a histogram with fixed bucket bounds (a plain function pointer, as
/// [`Family`] wants a constructor).
type Ctor = fn() -> Histogram;

fn first_token_buckets() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0])
}

fn token_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

fn queue_buckets() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0])
}

fn load_buckets() -> Histogram {
    Histogram::new([0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0])
}

/// The latency histograms, by backend. Cheap to clone (the families share
/// their data), so each scrape registers clones.
#[derive(Debug, Clone)]
pub struct Latencies {
    first_token: Family<Labels, Histogram, Ctor>,
    token: Family<Labels, Histogram, Ctor>,
    queue_wait: Family<Labels, Histogram, Ctor>,
    load: Family<Labels, Histogram, Ctor>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            first_token: Family::new_with_constructor(first_token_buckets),
            token: Family::new_with_constructor(token_buckets),
            queue_wait: Family::new_with_constructor(queue_buckets),
            load: Family::new_with_constructor(load_buckets),
        }
    }
}

impl Latencies {
    /// Records one observation of `latency` on `backend`.
    pub fn observe(&self, latency: Latency, backend: Backend, seconds: f64) {
        let family = match latency {
            Latency::FirstToken => &self.first_token,
            Latency::Token => &self.token,
            Latency::QueueWait => &self.queue_wait,
            Latency::Load => &self.load,
        };
        family
            .get_or_create(&vec![("backend", backend.as_str().to_owned())])
            .observe(seconds);
    }

    fn register(&self, reg: &mut Registry) {
        reg.register_with_unit(
            "time_to_first_token",
            "Time from admission to a request's first token (queue wait included), by backend",
            Unit::Seconds,
            self.first_token.clone(),
        );
        reg.register_with_unit(
            "time_per_output_token",
            "Time between tokens of one answer, by backend",
            Unit::Seconds,
            self.token.clone(),
        );
        reg.register_with_unit(
            "queue_wait",
            "Time a request waited in the queue for a worker, by the backend that took it",
            Unit::Seconds,
            self.queue_wait.clone(),
        );
        reg.register_with_unit(
            "model_load",
            "Time from the start of a model load to the worker being ready, by backend",
            Unit::Seconds,
            self.load.clone(),
        );
    }
}

pub use client::service::MetricsFormat as Format;

/// A counter family filled with values kept elsewhere (the atomics the
/// connection tasks bump, the loop's counters in the snapshot).
fn counters(
    reg: &mut Registry,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (labels, v) in samples {
        family.get_or_create(&labels).inc_by(v);
    }
    reg.register(name, help, family);
}

/// A gauge family of whole numbers.
fn gauges(
    reg: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: impl IntoIterator<Item = (Labels, i64)>,
) {
    let family = Family::<Labels, Gauge>::default();
    for (labels, v) in samples {
        family.get_or_create(&labels).set(v);
    }
    match unit {
        Some(unit) => reg.register_with_unit(name, help, unit, family),
        None => reg.register(name, help, family),
    }
}

fn cause(name: &'static str, v: &AtomicU64) -> (Labels, u64) {
    (vec![("cause", name.to_owned())], v.load(Ordering::Relaxed))
}

/// Renders `/metrics`: the counters and histograms always, the loop's
/// snapshot (workers, thermal, queue, health) once it has published one.
pub fn render_metrics(snap: Option<&Snapshot>, observed: &Observed, format: Format) -> String {
    let mut reg = Registry::with_prefix("rocksteady");
    let reqs = &observed.requests;
    let conns = &observed.connections;
    counters(
        &mut reg,
        "tokens_generated",
        "Tokens relayed to clients",
        [(Vec::new(), reqs.tokens.load(Ordering::Relaxed))],
    );
    counters(
        &mut reg,
        "requests",
        "Requests ended, by outcome",
        [
            ("done", &reqs.done),
            ("error", &reqs.error),
            ("cancelled", &reqs.cancelled),
            ("refused", &reqs.refused),
        ]
        .map(|(o, v)| (vec![("outcome", o.to_owned())], v.load(Ordering::Relaxed))),
    );
    counters(
        &mut reg,
        "connections_refused",
        "Connections refused, by cause",
        [
            cause("peer_credentials", &conns.refused_peers),
            cause("worker_peer", &conns.worker_peers),
            cause("oversized_frame", &conns.oversized_frames),
            cause("malformed", &conns.malformed_frames),
            cause("version_mismatch", &conns.version_mismatches),
            cause("connection_cap_total", &conns.over_total_cap),
            cause("connection_cap_user", &conns.over_uid_cap),
        ],
    );
    counters(
        &mut reg,
        "connections_closed",
        "Connections the supervisor closed, by cause",
        [
            cause("idle", &conns.idle),
            cause("too_slow", &conns.too_slow),
            cause("write_timeout", &conns.write_timeouts),
        ],
    );
    counters(
        &mut reg,
        "prompts_refused",
        "Requests refused by the connection task because the conversation was too long",
        [(Vec::new(), conns.prompts_too_long.load(Ordering::Relaxed))],
    );
    observed.latencies.register(&mut reg);
    if let Some(snap) = snap {
        register_snapshot(&mut reg, snap);
    }
    format.encode(&reg)
}

/// The KV-cache conversation figures, from the status report's per-slot
/// counters (the workers report them; the supervisor adds them up).
fn register_kv_cache(
    reg: &mut Registry,
    slots: &[proto::admin::SlotStatus],
    slot: &dyn Fn(&proto::admin::SlotStatus) -> Labels,
) {
    counters(
        reg,
        "kv_cache_events",
        "Conversation KV-cache hits, misses, evictions and drops by profile switches, per slot",
        slots.iter().flat_map(|s| {
            let c = &s.cache;
            [
                ("hit", c.hits),
                ("miss", c.misses),
                ("eviction", c.evictions),
                ("dropped", c.dropped),
            ]
            .map(|(event, v)| {
                let mut l = slot(s);
                l.push(("event", event.to_owned()));
                (l, v)
            })
        }),
    );
    counters(
        reg,
        "kv_cache_reused_tokens",
        "Prompt tokens taken from a worker's KV cache instead of prefilled",
        slots.iter().map(|s| (slot(s), s.cache.reused_tokens)),
    );
    gauges(
        reg,
        "kv_cache_conversations",
        "Conversations a slot's worker holds in its KV cache",
        None,
        slots.iter().map(|s| {
            (
                slot(s),
                i64::try_from(s.cache.held.len()).unwrap_or(i64::MAX),
            )
        }),
    );
    gauges(
        reg,
        "kv_cache_prompt_cache_loaded",
        "1 when a slot's worker loaded a prompt-cache file with the system prompt's KV",
        None,
        slots
            .iter()
            .map(|s| (slot(s), i64::from(s.cache.prompt_cache.is_some()))),
    );
}

fn register_snapshot(reg: &mut Registry, snap: &Snapshot) {
    let c = &snap.counters;
    counters(
        reg,
        "restarts",
        "Worker restarts by slot and reason",
        c.restarts.iter().map(|((slot, reason), v)| {
            (
                vec![("slot", slot.clone()), ("reason", (*reason).to_owned())],
                *v,
            )
        }),
    );
    counters(
        reg,
        "failovers",
        "Requests moved to another worker mid-answer",
        [(Vec::new(), c.failovers)],
    );
    counters(
        reg,
        "shadow_stops",
        "Requests whose shadowing slot stopped warming, by reason (slowdown: the serving slot's time per token grew past policy.shadow_max_slowdown)",
        [(vec![("reason", "slowdown".to_owned())], c.shadow_stops)],
    );
    let slot = |s: &proto::admin::SlotStatus| -> Labels {
        vec![
            ("slot", s.name.clone()),
            ("backend", s.backend.as_str().to_owned()),
        ]
    };
    let bytes = |kb: u64| i64::try_from(kb.saturating_mul(1024)).unwrap_or(i64::MAX);
    let slots = &snap.status.slots;
    gauges(
        reg,
        "worker_rss_anon",
        "Worker resident anonymous memory",
        Some(Unit::Bytes),
        slots
            .iter()
            .filter_map(|s| s.rss_anon_kb.map(|kb| (slot(s), bytes(kb)))),
    );
    gauges(
        reg,
        "worker_rss_file",
        "Worker resident file-backed memory",
        Some(Unit::Bytes),
        slots
            .iter()
            .filter_map(|s| s.rss_file_kb.map(|kb| (slot(s), bytes(kb)))),
    );
    gauges(
        reg,
        "worker_ready",
        "1 when the slot's worker is ready or busy",
        None,
        slots.iter().map(|s| {
            let ready = matches!(s.state, SlotState::Ready | SlotState::Busy);
            (slot(s), i64::from(ready))
        }),
    );
    gauges(
        reg,
        "active_profile",
        "Serving profile in force per slot (value 1)",
        None,
        slots.iter().map(|s| {
            let mut l = slot(s);
            l.push(("profile", s.profile.clone()));
            (l, 1)
        }),
    );
    register_kv_cache(reg, slots, &slot);
    let temps = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for z in &snap.status.thermal.zones {
        temps
            .get_or_create(&vec![("zone", z.kind.clone())])
            .set(z.celsius);
    }
    reg.register_with_unit(
        "temperature",
        "Thermal zone temperature",
        Unit::Celsius,
        temps,
    );
    gauges(
        reg,
        "queue_depth",
        "Requests waiting for a worker",
        None,
        [(Vec::new(), i64::from(snap.status.queue_depth))],
    );
    gauges(
        reg,
        "healthy",
        "1 when /health answers 200",
        None,
        [(Vec::new(), i64::from(snap.health == Health::Ok))],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no line {prefix} in\n{text}"))
    }

    #[test]
    fn a_histogram_counts_known_observations_in_its_buckets() {
        let observed = Observed::default();
        // Two tokens 30 ms apart, one 200 ms, one 3 s (a stall).
        for s in [0.03, 0.03, 0.2, 3.0] {
            observed.latencies.observe(Latency::Token, Backend::Cpu, s);
        }
        observed
            .latencies
            .observe(Latency::FirstToken, Backend::Npu, 0.7);
        let text = render_metrics(None, &observed, Format::Text);
        let name = "rocksteady_time_per_output_token_seconds";
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("{name}_bucket{{backend=\"cpu\",le=\"{le}\"}}"),
            )
        };
        // Buckets are cumulative.
        assert_eq!(bucket("0.025"), "0");
        assert_eq!(bucket("0.05"), "2");
        assert_eq!(bucket("0.25"), "3");
        assert_eq!(bucket("2.5"), "3");
        assert_eq!(bucket("5"), "4");
        assert_eq!(bucket("+Inf"), "4");
        assert_eq!(
            sample(&text, &format!("{name}_count{{backend=\"cpu\"}}")),
            "4"
        );
        let sum: f64 = sample(&text, &format!("{name}_sum{{backend=\"cpu\"}}"))
            .parse()
            .unwrap();
        assert!((sum - 3.26).abs() < 1e-9, "{sum}");
        assert_eq!(
            sample(
                &text,
                "rocksteady_time_to_first_token_seconds_bucket{backend=\"npu\",le=\"1\"}"
            ),
            "1"
        );
        // A histogram nothing was observed in has no series yet.
        assert!(!text.contains("rocksteady_queue_wait_seconds_count"));
    }

    #[test]
    fn counters_end_in_total_and_no_name_has_an_abbreviated_unit() {
        let observed = Observed::default();
        observed
            .connections
            .worker_peers
            .fetch_add(2, Ordering::Relaxed);
        observed.requests.done.fetch_add(1, Ordering::Relaxed);
        let text = render_metrics(None, &observed, Format::Text);
        assert_eq!(
            sample(
                &text,
                "rocksteady_connections_refused_total{cause=\"worker_peer\"}"
            ),
            "2"
        );
        assert_eq!(
            sample(&text, "rocksteady_requests_total{outcome=\"done\"}"),
            "1"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut words = line.split_whitespace().skip(2);
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            assert!(!name.contains("_ms") && !name.ends_with("_avg"), "{line}");
        }
    }

    #[test]
    fn the_snapshot_adds_workers_thermal_queue_and_health() {
        use proto::admin::{Routing, SlotStatus, TelemetryStatus, ThermalStatus, ZoneTemp};
        let observed = Observed::default();
        let mut counters = LoopCounters::default();
        counters.restarts.insert(("primary".into(), "hang"), 2);
        let status = StatusReport {
            version: "0.1.0".into(),
            pid: 1,
            uptime_ms: 1,
            slots: vec![SlotStatus {
                name: "primary".into(),
                backend: Backend::Npu,
                state: SlotState::Busy,
                state_ms: 1,
                reason: String::new(),
                pid: Some(2),
                model: "m".into(),
                profile: "full".into(),
                profile_reason: String::new(),
                rss_anon_kb: Some(2),
                rss_file_kb: None,
                vm_hwm_kb: None,
                memory_pressure: false,
                uptime_ms: None,
                requests_served: 0,
                last_decode_tps: None,
                restarts: 2,
                last_restart_reason: None,
                chat_template: String::new(),
                cpus: None,
                cpus_reason: String::new(),
                cache: proto::worker::CacheReport::default(),
                shadowing: None,
                shadowed_by: None,
            }],
            active_backend: Some(Backend::Npu),
            routing: Routing::Auto,
            routing_reason: String::new(),
            queue_depth: 3,
            in_flight: 1,
            thermal: ThermalStatus {
                zones: vec![ZoneTemp {
                    kind: "soc-thermal".into(),
                    celsius: 61.5,
                }],
                level: ThermalLevel::Normal,
            },
            mem_available_kb: None,
            telemetry: TelemetryStatus::default(),
            shadow: proto::admin::ShadowSummary::default(),
        };
        counters.shadow_stops = 4;
        let snap = Snapshot {
            status,
            counters,
            health: Health::Ok,
        };
        let text = render_metrics(Some(&snap), &observed, Format::Text);
        let slot = "{slot=\"primary\",backend=\"npu\"}";
        assert_eq!(
            sample(&text, &format!("rocksteady_worker_rss_anon_bytes{slot}")),
            "2048"
        );
        assert_eq!(
            sample(&text, &format!("rocksteady_worker_ready{slot}")),
            "1"
        );
        assert_eq!(
            sample(
                &text,
                "rocksteady_restarts_total{slot=\"primary\",reason=\"hang\"}"
            ),
            "2"
        );
        assert_eq!(
            sample(
                &text,
                "rocksteady_temperature_celsius{zone=\"soc-thermal\"}"
            ),
            "61.5"
        );
        assert_eq!(sample(&text, "rocksteady_queue_depth"), "3");
        assert_eq!(
            sample(&text, "rocksteady_shadow_stops_total{reason=\"slowdown\"}"),
            "4"
        );
        assert_eq!(sample(&text, "rocksteady_healthy"), "1");
        // OpenMetrics when asked: same data, families named without _total, EOF.
        let om = render_metrics(Some(&snap), &observed, Format::OpenMetrics);
        assert!(om.contains("# TYPE rocksteady_restarts counter"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }
}
