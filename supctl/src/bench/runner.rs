//! The benchmark run from start to end: plan the targets, preflight, load,
//! measure, relay overhead, put routing and governors back, write and
//! report the result.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::admin::{
    AdminToSupervisor, Routing, SlotState, SlotStatus, StatusReport, SupervisorToAdmin,
};
use proto::chat::{Backend, ChatMessage, GenParams, Role};
use tokio_util::sync::CancellationToken;

use super::compare::{self, Comparison};
use super::measure::{self, Peaks, Request, Sampler};
use super::preflight::{self, CheckItem, CheckStatus, GovernorGuard, PreflightInput};
use super::profile::{model_backend, BenchConfig, BenchProfile, PromptSpec};
use super::quality::{self, Quality};
use super::result::{
    self, BenchResult, HostInfo, PromptResult, RelayResult, RunFigures, Settings, Skipped, Summary,
    TargetResult,
};
use super::{relay, report, stats, svg, BenchError, BenchOptions, Progress};
use crate::cli::{self, AdminFailure};
use crate::client::{AdminClient, ChatClient};
use supervisor::config::{secs, Config, SlotConfig};

/// What a finished run produced.
#[derive(Debug)]
pub struct BenchOutcome {
    /// Every figure.
    pub result: BenchResult,
    /// The comparison with the earlier result, if there was one.
    pub comparison: Option<Comparison>,
    /// Where the result was written.
    pub json_path: PathBuf,
    /// Where the chart was written.
    pub svg_path: PathBuf,
}

impl BenchOutcome {
    /// A known answer was not given, a figure regressed or an output drifted.
    pub fn flagged(&self) -> bool {
        self.result
            .targets
            .iter()
            .flat_map(|t| &t.prompts)
            .any(|p| p.quality == Quality::Fail)
            || self.comparison.as_ref().is_some_and(Comparison::flagged)
    }
}

/// One backend and model to measure.
#[derive(Debug, Clone)]
struct Plan {
    backend: Backend,
    /// Slot name in the supervisor that serves it.
    slot: String,
    /// That slot's settings (model replaced for `--spawn` comparisons).
    cfg: SlotConfig,
    /// Runs on a private supervisor.
    private: bool,
}

/// Where to reach the supervisor serving a plan.
#[derive(Debug, Clone)]
pub(super) struct Sockets {
    pub(super) client: PathBuf,
    pub(super) admin: PathBuf,
}

/// How the worker came to be ready.
#[derive(Debug, Clone, Copy, Default)]
struct LoadInfo {
    load_ms: Option<f64>,
    restart_to_ready_ms: Option<f64>,
    cold: bool,
    caches_dropped: bool,
}

/// A supervisor started in-process for `--spawn`.
pub(super) struct PrivateSup {
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), supervisor::StartError>>,
}

impl PrivateSup {
    pub(super) async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

struct Ctx<'a> {
    config: &'a Config,
    bench: &'a BenchConfig,
    profile: &'a BenchProfile,
    opts: &'a BenchOptions,
    progress: &'a Progress,
    is_root: bool,
    notes: Vec<String>,
}

fn note(ctx: &mut Ctx<'_>, text: String) {
    if !ctx.notes.contains(&text) {
        ctx.notes.push(text);
    }
}

/// Where a run's JSON figures and SVG chart go (`--output`, `--svg`, else
/// `<bench dir>/<stem>.json` and the same name in `.svg`), with their
/// directories created, so an unwritable place fails before measuring.
///
/// # Errors
/// [`BenchError::Write`] naming the directory.
pub(super) fn output_paths(
    config: &Config,
    bench: &BenchConfig,
    opts: &BenchOptions,
    stem: &str,
) -> Result<(PathBuf, PathBuf), BenchError> {
    let json_path = opts.output.clone().unwrap_or_else(|| {
        bench
            .output_dir
            .clone()
            .unwrap_or_else(|| config.supervisor.state_dir.join("bench"))
            .join(format!("{stem}.json"))
    });
    let svg_path = opts
        .svg
        .clone()
        .unwrap_or_else(|| json_path.with_extension("svg"));
    for path in [&json_path, &svg_path] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| BenchError::Write {
                path: dir.to_owned(),
                source,
            })?;
        }
    }
    Ok((json_path, svg_path))
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn greedy(max_tokens: u32) -> GenParams {
    GenParams {
        max_tokens,
        temperature: 0.0,
        ..GenParams::default()
    }
}

fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new(Role::User, text)]
}

async fn status(admin: &Path) -> Result<StatusReport, BenchError> {
    let mut client = AdminClient::connect(admin).await?;
    match client.request(&AdminToSupervisor::Status).await? {
        SupervisorToAdmin::Status(report) => Ok(*report),
        _ => Err(BenchError::Admin(AdminFailure::Unexpected)),
    }
}

pub(super) async fn slot_status(admin: &Path, slot: &str) -> Result<SlotStatus, BenchError> {
    status(admin)
        .await?
        .slots
        .into_iter()
        .find(|s| s.name == slot)
        .ok_or_else(|| BenchError::SlotDown {
            slot: slot.to_owned(),
            state: "missing".into(),
            reason: "the supervisor has no such slot".into(),
        })
}

/// Runs the benchmark; writes the preflight checklist to `out` as soon as
/// it is known, and the rest of the report at the end.
///
/// # Errors
/// [`BenchError`]: a refused preflight, a supervisor that is not running,
/// nothing measurable, files that cannot be read or written.
#[allow(clippy::too_many_lines)] // the run's steps in order, in one place
pub async fn run(
    config: &Config,
    bench: &BenchConfig,
    opts: &BenchOptions,
    progress: &Progress,
    out: &mut dyn Write,
) -> Result<BenchOutcome, BenchError> {
    let started = SystemTime::now();
    let wall = Instant::now();
    let name = opts
        .profile
        .clone()
        .unwrap_or_else(|| bench.default_profile.clone());
    let mut profile = bench
        .profile(&name)
        .ok_or_else(|| BenchError::UnknownProfile {
            name: name.clone(),
            known: bench.profile_names().join(", "),
        })?;
    if let Some(r) = opts.repetitions {
        profile.repetitions = r.max(1);
    }
    if !opts.backends.is_empty() {
        profile.backends = opts
            .backends
            .iter()
            .map(|b| b.as_str().to_owned())
            .collect();
    }
    if opts.warm {
        profile.cold_load = false;
    }
    if opts.no_relay {
        profile.relay = false;
    }
    let threshold = opts.threshold_pct.unwrap_or(bench.regression_pct);

    // Files first: a bad --compare or an unwritable place fails now, not
    // after an hour of measuring.
    let (json_path, svg_path) = output_paths(
        config,
        bench,
        opts,
        &format!("bench-{name}-{}", unix_ms(started)),
    )?;
    let explicit_previous = match &opts.compare {
        Some(p) => Some((p.clone(), result::BenchResult::load(p)?)),
        None => None,
    };

    let sup = &config.supervisor;
    let live = if opts.spawn {
        None
    } else {
        Some(status(&sup.admin_socket()).await?)
    };
    let (plans, mut skipped) = plan(config, &profile, live.as_ref(), opts.spawn);
    if opts.spawn
        && plans.iter().any(|p| p.backend == Backend::Npu)
        && AdminClient::connect(&sup.admin_socket()).await.is_ok()
    {
        return Err(BenchError::LiveNpu {
            socket: sup.admin_socket(),
        });
    }

    let is_root = nix::unistd::geteuid().is_root();
    let t = &config.telemetry;
    let largest_model_mib = plans
        .iter()
        .filter_map(|p| std::fs::metadata(&p.cfg.model).ok())
        .map(|m| m.len().div_ceil(1 << 20))
        .max()
        .unwrap_or(0);
    let mut items = preflight::run_checks(&PreflightInput {
        proc_root: t.proc_root.clone(),
        sysfs_root: t.sysfs_root.clone(),
        debugfs_root: t.debugfs_root.clone(),
        need_mib: largest_model_mib + bench.memory_margin_mib,
        max_start_c: bench.max_start_c,
        cool_to_c: bench.cool_to_c,
        drop_caches: opts.drop_caches,
        is_root,
        npu: plans.iter().any(|p| p.backend == Backend::Npu),
    });
    if let Some(st) = &live {
        items.push(supervisor_item(st));
    }
    let mut governors = None;
    if opts.tune {
        let (guard, tuned) = GovernorGuard::tune(&t.sysfs_root);
        items.extend(tuned);
        governors = Some(guard);
    }
    let _ = out.write_all(report::preflight(&items).as_bytes());
    let _ = writeln!(out);
    let _ = out.flush();
    if let Some(bad) = preflight::refusal(&items) {
        return Err(BenchError::Refused {
            item: bad.name.clone(),
            value: bad.value.clone(),
        });
    }
    if plans.is_empty() {
        let reasons = skipped
            .iter()
            .map(|s| format!("{} {}", s.backend, s.model).trim().to_owned() + ": " + &s.reason)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(BenchError::NothingToMeasure {
            reasons: if reasons.is_empty() {
                "the profile names no backend the config has".into()
            } else {
                reasons
            },
        });
    }

    let per_target = 1
        + u64::from(profile.warmup)
        + u64::from(profile.repetitions) * profile.prompts.len() as u64;
    let relay_steps = u64::from(profile.relay_repetitions) * 2;
    progress.set_len(
        plans
            .iter()
            .map(|p| {
                per_target
                    + if profile.relay && p.backend == Backend::Cpu {
                        relay_steps
                    } else {
                        0
                    }
            })
            .sum(),
    );

    let mut ctx = Ctx {
        config,
        bench,
        profile: &profile,
        opts,
        progress,
        is_root,
        notes: Vec::new(),
    };
    let original_routing = live.as_ref().map(|s| s.routing);
    let mut privates: Vec<PrivateSup> = Vec::new();
    let measured = tokio::select! {
        r = measure_all(&mut ctx, &plans, &mut privates) => r,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    for p in privates.drain(..) {
        p.stop().await;
    }
    if let Some(routing) = original_routing {
        let to = match routing {
            Routing::Auto => None,
            Routing::Pinned(b) => Some(b),
        };
        if let Err(e) = cli::failover::failover(&sup.admin_socket(), to).await {
            note(&mut ctx, format!("could not put routing back: {e}"));
        }
    }
    if let Some(mut guard) = governors.take() {
        for problem in guard.restore() {
            note(&mut ctx, problem);
        }
    }
    progress.finish();
    let (mut targets, relays, more_skipped) = measured?;
    skipped.extend(more_skipped);
    let slowest = targets
        .iter()
        .map(|t| t.summary.decode_tps)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    for t in &mut targets {
        t.summary.speedup = if slowest.is_finite() && t.summary.decode_tps > 0.0 {
            t.summary.decode_tps / slowest
        } else {
            0.0
        };
    }

    let result = BenchResult {
        schema: result::SCHEMA,
        profile: name.clone(),
        started_unix_ms: unix_ms(started),
        duration_s: wall.elapsed().as_secs_f64(),
        host: host_info(&t.proc_root),
        mode: if opts.spawn { "private" } else { "live" }.into(),
        supervisor_version: live.as_ref().map_or_else(
            || env!("CARGO_PKG_VERSION").to_owned(),
            |s| s.version.clone(),
        ),
        settings: Settings {
            repetitions: profile.repetitions,
            warmup: profile.warmup,
            cold_load: profile.cold_load,
            drop_caches: opts.drop_caches && is_root,
            tuned: opts.tune,
            regression_pct: threshold,
        },
        preflight: items,
        targets,
        skipped,
        relay: relays,
        notes: ctx.notes,
    };
    let json = serde_json::to_string_pretty(&result).unwrap_or_default() + "\n";
    std::fs::write(&json_path, json).map_err(|source| BenchError::Write {
        path: json_path.clone(),
        source,
    })?;
    std::fs::write(&svg_path, svg::chart(&result)).map_err(|source| BenchError::Write {
        path: svg_path.clone(),
        source,
    })?;

    let previous = explicit_previous.or_else(|| {
        json_path
            .parent()
            .and_then(|dir| result::latest_in(dir, &name, &json_path))
    });
    let comparison = previous.map(|(path, prev)| {
        compare::compare(&prev, &path.display().to_string(), &result, threshold)
    });
    let _ = out.write_all(report::results(&result).as_bytes());
    if let Some(c) = &comparison {
        let _ = out.write_all(compare::render(c).as_bytes());
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "Result: `{}`  \nChart: `{}`",
        json_path.display(),
        svg_path.display()
    );
    let _ = out.flush();
    Ok(BenchOutcome {
        result,
        comparison,
        json_path,
        svg_path,
    })
}

/// Compares two result files without running anything.
///
/// # Errors
/// Either file cannot be read as a result.
pub fn compare_files(
    previous: &Path,
    current: &Path,
    threshold_pct: f64,
) -> Result<Comparison, BenchError> {
    let prev = BenchResult::load(previous)?;
    let cur = BenchResult::load(current)?;
    Ok(compare::compare(
        &prev,
        &previous.display().to_string(),
        &cur,
        threshold_pct,
    ))
}

fn supervisor_item(st: &StatusReport) -> CheckItem {
    let routing = match st.routing {
        Routing::Auto => "auto".to_owned(),
        Routing::Pinned(b) => format!("pinned to {b}"),
    };
    let value = format!(
        "version {}, pid {}, {} slot(s), routing {routing}",
        st.version,
        st.pid,
        st.slots.len()
    );
    let busy = st.in_flight + st.queue_depth;
    let (status, value) = if busy > 0 {
        (
            CheckStatus::Warn,
            format!(
                "{value}; {busy} request(s) in flight or queued share the workers with the run"
            ),
        )
    } else {
        (CheckStatus::Pass, value)
    };
    CheckItem {
        name: "supervisor".into(),
        status,
        value,
    }
}

fn host_info(proc_root: &Path) -> HostInfo {
    let read = |p: &str| {
        std::fs::read_to_string(proc_root.join(p))
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
    };
    HostInfo {
        hostname: read("sys/kernel/hostname"),
        kernel: read("sys/kernel/osrelease"),
        arch: std::env::consts::ARCH.into(),
        cpus: std::thread::available_parallelism()
            .map_or(0, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
    }
}

/// The targets of `profile`: the live supervisor's slots of its backends,
/// or (`--spawn`) one private run per backend and model.
fn plan(
    config: &Config,
    profile: &BenchProfile,
    live: Option<&StatusReport>,
    spawn: bool,
) -> (Vec<Plan>, Vec<Skipped>) {
    let mut plans = Vec::new();
    let mut skipped = Vec::new();
    let file_name = |p: &Path| {
        p.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    for backend in profile.backend_list() {
        let Some((slot_name, slot_cfg)) = config
            .slot_list()
            .into_iter()
            .find(|(_, s)| s.backend == backend)
        else {
            skipped.push(Skipped {
                backend: backend.as_str().into(),
                model: String::new(),
                reason: "no slot of this backend in the config".into(),
            });
            continue;
        };
        let extra: Vec<&PathBuf> = profile
            .models
            .iter()
            .filter(|m| model_backend(m) == Some(backend) && **m != slot_cfg.model)
            .collect();
        if spawn {
            for model in std::iter::once(&slot_cfg.model).chain(extra) {
                let mut cfg = slot_cfg.clone();
                cfg.model.clone_from(model);
                plans.push(Plan {
                    backend,
                    slot: "primary".into(),
                    cfg,
                    private: true,
                });
            }
            continue;
        }
        for model in extra {
            skipped.push(Skipped {
                backend: backend.as_str().into(),
                model: file_name(model),
                reason: "not loaded by the running supervisor; compare it with --spawn".into(),
            });
        }
        let state = live.and_then(|st| st.slots.iter().find(|s| s.name == slot_name));
        match state {
            None => skipped.push(Skipped {
                backend: backend.as_str().into(),
                model: file_name(&slot_cfg.model),
                reason: format!("the running supervisor has no slot {slot_name}"),
            }),
            Some(s) if s.state == SlotState::Unavailable => skipped.push(Skipped {
                backend: backend.as_str().into(),
                model: s.model.clone(),
                reason: format!("slot {slot_name} is unavailable: {}", s.reason),
            }),
            Some(_) => plans.push(Plan {
                backend,
                slot: slot_name.into(),
                cfg: slot_cfg.clone(),
                private: false,
            }),
        }
    }
    (plans, skipped)
}

type Measured = (Vec<TargetResult>, Vec<RelayResult>, Vec<Skipped>);

async fn measure_all(
    ctx: &mut Ctx<'_>,
    plans: &[Plan],
    privates: &mut Vec<PrivateSup>,
) -> Result<Measured, BenchError> {
    let mut targets = Vec::new();
    let mut relays = Vec::new();
    let mut skipped = Vec::new();
    for plan in plans {
        let outcome = if plan.private {
            match start_private(ctx.config, &plan.cfg).await {
                Ok((sup, sockets)) => {
                    privates.push(sup);
                    let r = measure_target(ctx, plan, &sockets, true).await;
                    if let Some(sup) = privates.pop() {
                        sup.stop().await;
                    }
                    r
                }
                Err(e) => Err(e),
            }
        } else {
            let sockets = Sockets {
                client: ctx.config.supervisor.client_socket(),
                admin: ctx.config.supervisor.admin_socket(),
            };
            measure_target(ctx, plan, &sockets, false).await
        };
        match outcome {
            Ok((target, relay)) => {
                targets.push(target);
                relays.extend(relay);
            }
            Err(e) if e.is_fatal() && !plan.private => return Err(e),
            Err(BenchError::Interrupted) => return Err(BenchError::Interrupted),
            Err(e) => skipped.push(Skipped {
                backend: plan.backend.as_str().into(),
                model: plan
                    .cfg
                    .model
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                reason: e.to_string(),
            }),
        }
    }
    Ok((targets, relays, skipped))
}

/// Starts a supervisor in-process on a private runtime directory with
/// `slot` as its only slot.
pub(super) async fn start_private(
    config: &Config,
    slot: &SlotConfig,
) -> Result<(PrivateSup, Sockets), BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("rocksteady-bench-")
        .tempdir()
        .map_err(|source| BenchError::TempDir { source })?;
    let mut cfg = config.clone();
    cfg.supervisor.runtime_dir = dir.path().join("run");
    cfg.supervisor.state_dir = dir.path().join("state");
    cfg.slots.primary = slot.clone();
    cfg.slots.fallback = None;
    // The live service may hold the HTTP port; the private one needs none.
    cfg.http.listen = String::new();
    let sockets = Sockets {
        client: cfg.supervisor.client_socket(),
        admin: cfg.supervisor.admin_socket(),
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(supervisor::run(cfg, shutdown.clone(), None));
    let sup = PrivateSup {
        _dir: dir,
        shutdown,
        task,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if sup.task.is_finished() {
            let PrivateSup { task, .. } = sup;
            return Err(match task.await {
                Ok(Err(source)) => BenchError::Private { source },
                _ => BenchError::Timeout {
                    what: "starting the private supervisor".into(),
                    seconds: 0.0,
                },
            });
        }
        if AdminClient::connect(&sockets.admin).await.is_ok() {
            return Ok((sup, sockets));
        }
        if Instant::now() > deadline {
            sup.stop().await;
            return Err(BenchError::Timeout {
                what: "starting the private supervisor".into(),
                seconds: 15.0,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drops page caches when asked and allowed; notes why not otherwise.
fn maybe_drop_caches(ctx: &mut Ctx<'_>) -> bool {
    if !ctx.opts.drop_caches || !ctx.is_root {
        return false;
    }
    match preflight::drop_caches(&ctx.config.telemetry.proc_root) {
        Ok(()) => true,
        Err(e) => {
            note(ctx, format!("could not drop page caches: {e}"));
            false
        }
    }
}

/// Waits until `slot` is ready, following a restart when `old_pid` is set
/// (a new process must be the ready one). The load time is the span of
/// the Loading state by the supervisor's own clock (`state_ms`), so it does
/// not depend on how often we look.
async fn wait_ready(
    ctx: &mut Ctx<'_>,
    admin: &Path,
    slot: &str,
    since: Instant,
    old_pid: Option<u32>,
    drop_again: bool,
) -> Result<LoadInfo, BenchError> {
    let limit = secs(ctx.profile.load_timeout_s);
    let mut loading_at: Option<Instant> = None;
    let mut dropped = !drop_again;
    loop {
        let s = slot_status(admin, slot).await?;
        let now = Instant::now();
        let entered = now
            .checked_sub(Duration::from_millis(s.state_ms))
            .unwrap_or(since);
        if !dropped && old_pid.is_some() && s.pid != old_pid {
            // The old worker is gone: drop what it left in the page cache
            // before the new one reads the model (best effort: it races
            // the new worker's start).
            dropped = true;
            maybe_drop_caches(ctx);
        }
        let new_process = old_pid.is_none() || s.pid != old_pid;
        match s.state {
            SlotState::Loading if new_process => loading_at = Some(entered),
            SlotState::Ready if new_process => {
                let ready_at = entered.max(since);
                return Ok(LoadInfo {
                    load_ms: loading_at.map(|l| ms(ready_at.saturating_duration_since(l))),
                    restart_to_ready_ms: Some(ms(ready_at.saturating_duration_since(since))),
                    cold: true,
                    caches_dropped: false,
                });
            }
            SlotState::Unavailable | SlotState::Failed => {
                return Err(BenchError::SlotDown {
                    slot: slot.to_owned(),
                    state: s.state.as_str().into(),
                    reason: s.reason,
                })
            }
            _ => {}
        }
        if since.elapsed() > limit {
            return Err(BenchError::Timeout {
                what: format!("loading the {slot} worker"),
                seconds: limit.as_secs_f64(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Makes the live slot ready: restarted for a cold load, or as it is.
async fn live_load(ctx: &mut Ctx<'_>, plan: &Plan, admin: &Path) -> Result<LoadInfo, BenchError> {
    let s = slot_status(admin, &plan.slot).await?;
    let idle = matches!(
        s.state,
        SlotState::Idle | SlotState::Failed | SlotState::BackingOff
    );
    if !ctx.profile.cold_load && !idle {
        if !matches!(s.state, SlotState::Ready | SlotState::Busy) {
            wait_ready(ctx, admin, &plan.slot, Instant::now(), None, false).await?;
        }
        return Ok(LoadInfo::default());
    }
    let dropped = maybe_drop_caches(ctx);
    let since = Instant::now();
    cli::restart::restart(admin, &plan.slot, false).await?;
    let mut info = wait_ready(ctx, admin, &plan.slot, since, s.pid, dropped).await?;
    info.caches_dropped = dropped;
    Ok(info)
}

fn filler(n: usize) -> String {
    // Plain prose of similar length per paragraph, so the token count grows
    // evenly with the paragraphs.
    const PARAGRAPHS: [&str; 4] = [
        "Station log. The lamp was cleaned at dawn and the lens polished until no salt remained. Wind from the north-west, steady, with a long swell breaking on the outer rocks. Two fishing boats passed close to the reef before noon and turned south when the fog came in.",
        "Supplies arrived on the afternoon tide: lamp oil, flour, tinned fish, two coils of rope and a crate of glass chimneys. The keeper checked each item against the list, stored the oil in the cold room and noted a cracked chimney to be returned on the next boat.",
        "In the evening the clockwork that turns the lens was wound three times. The weights ran smoothly and the beam kept its period of ten seconds. A gull nested on the gallery rail again; the keeper left it alone and moved the paint pots inside instead.",
        "Night watch. Visibility good until two in the morning, then rain squalls from the west. The fog signal was sounded for forty minutes. At first light the barometer was rising, the sea had calmed, and a bottle with a paper inside was found among the kelp on the landing.",
    ];
    (0..n)
        .map(|i| PARAGRAPHS[i % PARAGRAPHS.len()])
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn long_prompt(n: usize, question: &str) -> String {
    format!("{}\n\n{question}", filler(n))
}

/// Builds the long-prompt text for `spec` on this target: measures how
/// many tokens a paragraph of filler is (two one-token requests), then
/// takes as many paragraphs as fit in `fill` of the context with room for
/// the answer.
async fn fill_prompt(
    ctx: &mut Ctx<'_>,
    client: &mut ChatClient,
    spec: &PromptSpec,
    fill: f64,
    context_size: u32,
) -> Result<String, BenchError> {
    let limit = secs(ctx.profile.request_timeout_s);
    let max_new = spec.max_tokens(ctx.profile);
    ctx.progress.say(format!("sizing the {} prompt", spec.name));
    let one = measure::request(client, user(&long_prompt(1, &spec.text)), greedy(1), limit).await?;
    let three =
        measure::request(client, user(&long_prompt(3, &spec.text)), greedy(1), limit).await?;
    let (p1, p3) = (
        f64::from(one.stats.prompt_tokens),
        f64::from(three.stats.prompt_tokens),
    );
    #[allow(clippy::cast_precision_loss)] // short texts
    let (per_para, base) = if p3 > p1 && p1 > 0.0 {
        let per = (p3 - p1) / 2.0;
        (per, p1 - per)
    } else {
        // The worker does not count prompt tokens (some NPU runtimes):
        // about 3.5 characters per token for English prose.
        let chars = long_prompt(1, &spec.text).chars().count() as f64;
        note(
            ctx,
            format!(
                "{}: prompt tokens not reported; sized by characters",
                spec.name
            ),
        );
        (chars / 3.5, 16.0)
    };
    let ctx_tokens = f64::from(context_size);
    let target = (fill * ctx_tokens).min(ctx_tokens - f64::from(max_new) - 16.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped below
    let mut n = ((target - base) / per_para).floor().max(1.0) as usize;
    let max_chars = ctx.config.supervisor.max_prompt_chars;
    let wanted = n;
    while n > 1 && long_prompt(n, &spec.text).chars().count() > max_chars {
        n -= 1;
    }
    if n < wanted {
        note(
            ctx,
            format!(
                "{}: prompt limited by supervisor.max_prompt_chars ({max_chars})",
                spec.name
            ),
        );
    }
    Ok(long_prompt(n, &spec.text))
}

/// One measured request with cooling, sampling and checks.
async fn measured_request(
    ctx: &mut Ctx<'_>,
    client: &mut ChatClient,
    admin: &Path,
    plan: &Plan,
    pid: Option<u32>,
    text: &str,
    max_tokens: u32,
) -> Result<(Request, RunFigures), BenchError> {
    let bench = ctx.bench;
    let t = &ctx.config.telemetry;
    let cool =
        preflight::wait_until_cool(&t.sysfs_root, bench.cool_to_c, secs(bench.cool_timeout_s))
            .await;
    if cool.timed_out {
        note(
            ctx,
            format!(
                "the board did not cool to {:.0} °C within {:.0} s; some requests ran hotter",
                bench.cool_to_c, bench.cool_timeout_s
            ),
        );
    }
    let sampler = Sampler::start(
        t.proc_root.clone(),
        t.sysfs_root.clone(),
        pid,
        Duration::from_millis(50),
    );
    let outcome = measure::request(
        client,
        user(text),
        greedy(max_tokens),
        secs(ctx.profile.request_timeout_s),
    )
    .await;
    let mut peaks = sampler.finish();
    let req = outcome?;
    if req.backend != plan.backend {
        return Err(BenchError::WrongBackend {
            expected: plan.backend,
            got: req.backend,
        });
    }
    if req.failed_over {
        return Err(BenchError::FailedOver {
            backend: plan.backend,
        });
    }
    if peaks.rss_anon_kb.is_none() {
        // /proc of the worker not readable from here: the supervisor's
        // own samples (taken every policy.memory_interval_s) instead.
        if let Ok(s) = slot_status(admin, &plan.slot).await {
            peaks = peaks.max(Peaks {
                rss_anon_kb: s.rss_anon_kb,
                vm_hwm_kb: s.vm_hwm_kb,
                hottest_c: None,
            });
        }
    }
    let figures = RunFigures {
        ttft_ms: req.ttft_ms().unwrap_or(req.done_ms),
        decode_tps: req.decode_tps().unwrap_or(0.0),
        e2e_ms: req.done_ms,
        generated_tokens: req.stats.generated_tokens,
        token_events: u32::try_from(req.token_ms.len()).unwrap_or(u32::MAX),
        worker_ttft_ms: req.stats.ttft_ms,
        worker_decode_tps: req.stats.decode_tps,
        peak_rss_anon_kb: peaks.rss_anon_kb,
        vm_hwm_kb: peaks.vm_hwm_kb,
        hottest_c: peaks.hottest_c,
        cooled_ms: ms(cool.waited),
    };
    Ok((req, figures))
}

fn prompt_result(
    spec: &PromptSpec,
    text: &str,
    max_new_tokens: u32,
    runs: &[(Request, RunFigures)],
) -> PromptResult {
    let figures: Vec<RunFigures> = runs.iter().map(|(_, f)| f.clone()).collect();
    let pick = |f: fn(&RunFigures) -> f64| figures.iter().map(f).collect::<Vec<f64>>();
    let decode: Vec<f64> = pick(|f| f.decode_tps)
        .into_iter()
        .filter(|v| *v > 0.0)
        .collect();
    let gaps: Vec<f64> = runs.iter().flat_map(|(r, _)| r.gaps_ms()).collect();
    let output = runs
        .first()
        .map(|(r, _)| r.text.clone())
        .unwrap_or_default();
    let tokens: Vec<f64> = figures
        .iter()
        .map(|f| f64::from(f.generated_tokens))
        .collect();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // token counts
    let generated_tokens = stats::median(&tokens).unwrap_or(0.0).round() as u32;
    PromptResult {
        name: spec.name.clone(),
        prompt_hash: quality::hash(text),
        prompt_chars: text.chars().count(),
        prompt_tokens: runs.first().map_or(0, |(r, _)| r.stats.prompt_tokens),
        max_new_tokens,
        expect: spec.expect.clone(),
        ttft_ms: stats::median(&pick(|f| f.ttft_ms)).unwrap_or(0.0),
        decode_tps: stats::median(&decode).unwrap_or(0.0),
        decode_tps_cv: stats::coefficient_of_variation(&decode).unwrap_or(0.0),
        e2e_ms: stats::median(&pick(|f| f.e2e_ms)).unwrap_or(0.0),
        generated_tokens,
        token_ms_p50: stats::percentile(&gaps, 50.0).unwrap_or(0.0),
        token_ms_p99: stats::percentile(&gaps, 99.0).unwrap_or(0.0),
        outputs_consistent: runs.iter().all(|(r, _)| r.text == output),
        quality: quality::check(&output, spec.expect.as_deref()),
        output_hash: quality::hash(&output),
        output,
        runs: figures,
    }
}

fn summary(profile: &BenchProfile, prompts: &[PromptResult]) -> Summary {
    let head = &prompts[profile.headline_index().min(prompts.len() - 1)];
    let peaks = prompts
        .iter()
        .flat_map(|p| &p.runs)
        .fold(Peaks::default(), |acc, r| {
            acc.max(Peaks {
                rss_anon_kb: r.peak_rss_anon_kb,
                vm_hwm_kb: r.vm_hwm_kb,
                hottest_c: r.hottest_c,
            })
        });
    let checked = prompts.iter().filter(|p| p.quality != Quality::Unchecked);
    Summary {
        headline_prompt: head.name.clone(),
        ttft_ms: head.ttft_ms,
        decode_tps: head.decode_tps,
        e2e_s: head.e2e_ms / 1000.0,
        decode_tps_cv: head.decode_tps_cv,
        token_ms_p50: head.token_ms_p50,
        token_ms_p99: head.token_ms_p99,
        peak_rss_anon_kb: peaks.rss_anon_kb,
        vm_hwm_kb: peaks.vm_hwm_kb,
        hottest_c: peaks.hottest_c,
        quality_passed: u32::try_from(
            checked
                .clone()
                .filter(|p| p.quality == Quality::Pass)
                .count(),
        )
        .unwrap_or(0),
        quality_checked: u32::try_from(checked.count()).unwrap_or(0),
        speedup: 1.0,
    }
}

#[allow(clippy::too_many_lines)] // load, warm-up, prompts, relay: in order
async fn measure_target(
    ctx: &mut Ctx<'_>,
    plan: &Plan,
    sockets: &Sockets,
    private: bool,
) -> Result<(TargetResult, Option<RelayResult>), BenchError> {
    let label = format!("{} {}", plan.backend, plan.slot);
    ctx.progress.say(format!("{label}: loading"));
    let load = if private {
        let dropped = maybe_drop_caches(ctx);
        let since = Instant::now();
        let mut info = wait_ready(ctx, &sockets.admin, &plan.slot, since, None, false).await?;
        info.caches_dropped = dropped;
        info
    } else {
        cli::failover::failover(&sockets.admin, Some(plan.backend)).await?;
        live_load(ctx, plan, &sockets.admin).await?
    };
    ctx.progress.step(format!("{label}: loaded"));
    let slot = slot_status(&sockets.admin, &plan.slot).await?;
    let pid = slot.pid;
    let model = slot.model.clone();
    let mut client = ChatClient::connect(&sockets.client).await?;
    let limit = secs(ctx.profile.request_timeout_s);

    let warm_text = ctx
        .profile
        .prompts
        .iter()
        .find(|p| p.fill_context.is_none())
        .map_or_else(|| "Hello.".to_owned(), |p| p.text.clone());
    for i in 0..ctx.profile.warmup {
        measure::request(&mut client, user(&warm_text), greedy(8), limit).await?;
        ctx.progress.step(format!("{label}: warm-up {}", i + 1));
    }

    let mut prompts = Vec::new();
    let mut texts = Vec::new();
    for spec in &ctx.profile.prompts.clone() {
        let text = match spec.fill_context {
            Some(fill) => {
                fill_prompt(ctx, &mut client, spec, fill, plan.cfg.profile.context_size).await?
            }
            None => spec.text.clone(),
        };
        let max_tokens = spec.max_tokens(ctx.profile);
        let mut runs = Vec::new();
        for rep in 0..ctx.profile.repetitions {
            ctx.progress.say(format!(
                "{label}: {} ({}/{})",
                spec.name,
                rep + 1,
                ctx.profile.repetitions
            ));
            let run = measured_request(
                ctx,
                &mut client,
                &sockets.admin,
                plan,
                pid,
                &text,
                max_tokens,
            )
            .await?;
            runs.push(run);
            ctx.progress.step(format!("{label}: {}", spec.name));
        }
        prompts.push(prompt_result(spec, &text, max_tokens, &runs));
        texts.push(text);
    }
    let summary = summary(ctx.profile, &prompts);

    let worker = plan.cfg.worker_binary();
    let relay_possible = relay::runnable(&worker);
    if ctx.profile.relay && plan.backend == Backend::Cpu && !relay_possible {
        note(
            ctx,
            format!(
                "relay overhead not measured: {} is not an executable",
                worker.display()
            ),
        );
    }
    let relay = if ctx.profile.relay && plan.backend == Backend::Cpu && relay_possible {
        let i = ctx.profile.headline_index();
        let spec = ctx.profile.prompts[i].clone();
        Some(relay_overhead(ctx, &mut client, plan, &model, &spec, &texts[i]).await?)
    } else {
        None
    };
    Ok((
        TargetResult {
            backend: plan.backend.as_str().into(),
            model,
            model_path: plan.cfg.model.display().to_string(),
            slot: plan.slot.clone(),
            load_ms: load.load_ms,
            restart_to_ready_ms: load.restart_to_ready_ms,
            cold: load.cold,
            caches_dropped: load.caches_dropped,
            context_size: plan.cfg.profile.context_size,
            slot_settings: slot_settings(&plan.cfg),
            prompts,
            summary,
        },
        relay,
    ))
}

fn slot_settings(cfg: &SlotConfig) -> String {
    let p = &cfg.profile;
    format!(
        "profile {}: context {}, batch {}, threads {}, KV cache {}{}",
        p.name,
        p.context_size,
        p.batch_size,
        if p.threads == 0 {
            "all".to_owned()
        } else {
            p.threads.to_string()
        },
        p.kv_cache_type,
        if p.flash_attention {
            ", flash attention"
        } else {
            ""
        }
    )
}

/// The same prompt decoded in-process and through the stack, alternating
/// which goes first so drift of the machine's speed hits both alike.
async fn relay_overhead(
    ctx: &mut Ctx<'_>,
    client: &mut ChatClient,
    plan: &Plan,
    model: &str,
    spec: &PromptSpec,
    text: &str,
) -> Result<RelayResult, BenchError> {
    let max_tokens = spec.max_tokens(ctx.profile);
    let limit = secs(ctx.profile.request_timeout_s);
    let bench = ctx.bench;
    let sysfs = ctx.config.telemetry.sysfs_root.clone();
    let cool = || preflight::wait_until_cool(&sysfs, bench.cool_to_c, secs(bench.cool_timeout_s));
    let mut inproc = Vec::new();
    let mut stack: Vec<Request> = Vec::new();
    let reps = ctx.profile.relay_repetitions;
    for rep in 0..reps {
        for in_process_turn in [rep % 2 == 0, rep % 2 == 1] {
            cool().await;
            if in_process_turn {
                ctx.progress
                    .say(format!("relay: in-process {}/{reps}", rep + 1));
                inproc.push(
                    relay::in_process(&plan.cfg, relay::Prompt::Text(text), max_tokens, limit)
                        .await?,
                );
            } else {
                ctx.progress.say(format!("relay: stack {}/{reps}", rep + 1));
                stack.push(measure::request(client, user(text), greedy(max_tokens), limit).await?);
            }
            ctx.progress.step("relay".into());
        }
    }
    let in_runs: Vec<f64> = inproc
        .iter()
        .map(|r| measure::decode_rate(&r.token_ms).unwrap_or(0.0))
        .collect();
    let st_runs: Vec<f64> = stack
        .iter()
        .map(|r| r.decode_tps().unwrap_or(0.0))
        .collect();
    let positive = |v: &[f64]| v.iter().copied().filter(|x| *x > 0.0).collect::<Vec<_>>();
    let pair_ratios: Vec<f64> = in_runs
        .iter()
        .zip(&st_runs)
        .filter(|(i, s)| **i > 0.0 && **s > 0.0)
        .map(|(i, s)| s / i)
        .collect();
    let relay_only: Vec<f64> = stack
        .iter()
        .filter(|r| r.stats.decode_tps > 0.0)
        .filter_map(|r| Some(r.decode_tps()? / r.stats.decode_tps))
        .collect();
    let best = |v: &[f64]| v.iter().copied().fold(0.0_f64, f64::max);
    let gap_ms = |v: &[f64]| {
        let per_run: Vec<f64> = positive(v).iter().map(|tps| 1000.0 / tps).collect();
        stats::median(&per_run).unwrap_or(0.0)
    };
    let in_process_token_ms = gap_ms(&in_runs);
    let stack_token_ms = gap_ms(&st_runs);
    Ok(RelayResult {
        model: model.to_owned(),
        prompt: spec.name.clone(),
        max_new_tokens: max_tokens,
        repetitions: reps,
        in_process_tps: stats::median(&positive(&in_runs)).unwrap_or(0.0),
        stack_tps: stats::median(&positive(&st_runs)).unwrap_or(0.0),
        ratio: stats::median(&pair_ratios).unwrap_or(0.0),
        best_ratio: if best(&in_runs) > 0.0 {
            best(&st_runs) / best(&in_runs)
        } else {
            0.0
        },
        in_process_token_ms,
        stack_token_ms,
        added_token_ms: stack_token_ms - in_process_token_ms,
        relay_only_ratio: stats::median(&relay_only).unwrap_or(0.0),
        in_process_runs_tps: in_runs,
        stack_runs_tps: st_runs,
        same_output: match (inproc.first(), stack.first()) {
            (Some(a), Some(b)) => a.text == b.text,
            _ => false,
        },
        differences: relay::differences(&plan.cfg),
    })
}
