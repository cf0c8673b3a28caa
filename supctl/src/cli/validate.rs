//! `supctl validate`: the validation matrix on the live system, each row
//! pass/fail with its figures: memory at peak context under the planned
//! ceiling, decode speed stable across runs, and the fallback profile
//! activating cleanly under (simulated) pressure while requests complete.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use proto::admin::{AdminToSupervisor, MemoryCeiling, SlotState, SlotStatus, SupervisorToAdmin};
use proto::chat::{ChatMessage, GenParams, GenStats, Role};
use proto::client::SupervisorToClient;

use super::AdminFailure;
use crate::client::{AdminClient, ChatClient, ClientError};
use supervisor::config::Config;

/// One row of the matrix.
#[derive(Debug, Clone)]
pub struct Row {
    /// Short name.
    pub check: &'static str,
    /// Passed (or not applicable).
    pub pass: bool,
    /// Figures and explanation.
    pub detail: String,
}

/// Failures that stop the validation itself.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// Talking to the supervisor failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An admin command failed.
    #[error(transparent)]
    Admin(#[from] AdminFailure),
    /// No worker is serving.
    #[error("no worker is ready to validate: check `supctl status`")]
    NoWorker,
    /// A request failed.
    #[error("a validation request failed: {0}")]
    Request(String),
}

async fn status(admin: &mut AdminClient) -> Result<proto::admin::StatusReport, ValidateError> {
    match admin.request(&AdminToSupervisor::Status).await? {
        SupervisorToAdmin::Status(r) => Ok(*r),
        _ => Err(AdminFailure::Unexpected.into()),
    }
}

async fn active_slot(admin: &mut AdminClient) -> Result<SlotStatus, ValidateError> {
    let report = status(admin).await?;
    let backend = report.active_backend.ok_or(ValidateError::NoWorker)?;
    report
        .slots
        .into_iter()
        .find(|s| s.backend == backend && matches!(s.state, SlotState::Ready | SlotState::Busy))
        .ok_or(ValidateError::NoWorker)
}

/// Runs one request; returns its stats and the peak RssAnon (KiB) of `slot` seen meanwhile.
async fn run(
    chat: &mut ChatClient,
    admin: &mut AdminClient,
    slot: &str,
    prompt: String,
    max_tokens: u32,
) -> Result<(GenStats, u64), ValidateError> {
    let params = GenParams {
        max_tokens,
        ..GenParams::default()
    };
    chat.submit(vec![ChatMessage::new(Role::User, prompt)], params)
        .await?;
    let mut peak = 0;
    let mut last_poll = Instant::now();
    loop {
        let event = tokio::time::timeout(Duration::from_millis(100), chat.next_event()).await;
        if last_poll.elapsed() >= Duration::from_millis(100) {
            last_poll = Instant::now();
            if let Some(s) = status(admin).await?.slots.iter().find(|s| s.name == slot) {
                peak = peak.max(s.rss_anon_kb.unwrap_or(0));
            }
        }
        match event {
            Ok(Ok(SupervisorToClient::Done(done))) => return Ok((done.stats, peak)),
            Ok(Ok(SupervisorToClient::Error(e))) => return Err(ValidateError::Request(e.message)),
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Runs the matrix against the supervisor of `config`.
///
/// # Errors
/// [`ValidateError`] when the supervisor cannot be reached or a request fails.
#[allow(clippy::too_many_lines)] // three checks in sequence, each with its report
pub async fn validate(config: &Config, cv_limit: f64) -> Result<Vec<Row>, ValidateError> {
    let sup = &config.supervisor;
    let mut admin = AdminClient::connect(&sup.admin_socket()).await?;
    let mut chat = ChatClient::connect(&sup.client_socket()).await?;
    let slot = active_slot(&mut admin).await?;
    let slot_cfg = config
        .slot_list()
        .into_iter()
        .find(|(name, _)| *name == slot.name)
        .map(|(_, c)| c.clone())
        .ok_or(ValidateError::NoWorker)?;
    let mut rows = Vec::new();

    // 1. Peak context: a prompt filling about 60% of the window.
    let ctx = slot_cfg.profile.context_size as usize;
    let long_prompt = format!(
        "Summarise the following notes in one sentence.\n{}",
        "The supervisor keeps replies streaming whatever the board does. "
            .repeat(ctx * 6 / 10 / 12)
    );
    let (stats, peak_kb) = run(&mut chat, &mut admin, &slot.name, long_prompt, 32).await?;
    let ceiling = [slot_cfg.memory_hard_mib, slot_cfg.memory_soft_mib]
        .into_iter()
        .find(|c| *c > 0);
    let peak_mib = peak_kb / 1024;
    rows.push(match ceiling {
        Some(c) => Row {
            check: "memory at peak context",
            pass: peak_mib < c,
            detail: format!(
                "{} prompt tokens; peak RssAnon {peak_mib} MiB vs planned ceiling {c} MiB",
                stats.prompt_tokens
            ),
        },
        None => Row {
            check: "memory at peak context",
            pass: true,
            detail: format!(
                "{} prompt tokens; peak RssAnon {peak_mib} MiB (n/a: no ceiling configured for {})",
                stats.prompt_tokens, slot.name
            ),
        },
    });

    // 2. Decode stability across repeated runs.
    let mut speeds = Vec::new();
    for _ in 0..5 {
        let (stats, _) = run(
            &mut chat,
            &mut admin,
            &slot.name,
            "Count from one to twenty in words.".into(),
            48,
        )
        .await?;
        speeds.push(stats.decode_tps);
    }
    #[allow(clippy::cast_precision_loss)]
    let n = speeds.len() as f64;
    let mean = speeds.iter().sum::<f64>() / n;
    let sd = (speeds.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
    let cv = if mean > 0.0 { sd / mean } else { f64::INFINITY };
    rows.push(Row {
        check: "decode latency stable",
        pass: cv <= cv_limit,
        detail: format!("5 runs: mean {mean:.1} tok/s, CV {cv:.3} (limit {cv_limit})"),
    });

    // 3. Fallback profile under simulated pressure.
    if let Some(fallback) = &slot_cfg.fallback_profile {
        let set = |soft_mib, hard_mib| {
            AdminToSupervisor::SetMemoryCeiling(MemoryCeiling {
                slot: slot.name.clone(),
                soft_mib,
                hard_mib,
            })
        };
        let before = slot_status(&mut admin, &slot.name).await?;
        admin.request(&set(1, 0)).await?;
        let started = Instant::now();
        let mut switched = None;
        while started.elapsed() < Duration::from_secs(60) {
            let now = status(&mut admin).await?;
            if let Some(s) = now.slots.iter().find(|s| s.name == slot.name) {
                if s.profile == fallback.name && s.state == SlotState::Ready {
                    switched = Some(started.elapsed());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let completed = match switched {
            Some(_) => run(&mut chat, &mut admin, &slot.name, "What is 2+2?".into(), 16)
                .await
                .is_ok(),
            None => false,
        };
        let after = slot_status(&mut admin, &slot.name).await?;
        admin
            .request(&set(slot_cfg.memory_soft_mib, slot_cfg.memory_hard_mib))
            .await?;
        rows.push(fallback_row(
            &fallback.name,
            &before,
            &after,
            switched,
            completed,
            config.policy.profile_hold_s,
        ));
    } else {
        rows.push(Row {
            check: "fallback profile under pressure",
            pass: true,
            detail: format!("n/a: slot {} has no fallback_profile", slot.name),
        });
    }
    Ok(rows)
}

async fn slot_status(admin: &mut AdminClient, name: &str) -> Result<SlotStatus, ValidateError> {
    status(admin)
        .await?
        .slots
        .into_iter()
        .find(|s| s.name == name)
        .ok_or(ValidateError::NoWorker)
}

/// The fallback-profile row: it passes only if the slot switched, a request
/// completed on the new profile, and the worker was neither stopped nor
/// restarted on the way (same pid, same restart count): a switch that kills
/// its worker is the failure this row exists to catch.
pub fn fallback_row(
    profile: &str,
    before: &SlotStatus,
    after: &SlotStatus,
    switched: Option<Duration>,
    completed: bool,
    hold_s: f64,
) -> Row {
    let mut detail = String::new();
    match switched {
        Some(t) => {
            let _ = write!(
                detail,
                "switched to profile {profile:?} {:.1}s after pressure; ",
                t.as_secs_f64()
            );
        }
        None => detail.push_str("did not switch within 60s; "),
    }
    let kept = before.pid.is_some() && after.pid == before.pid && after.restarts == before.restarts;
    if !kept {
        let _ = write!(
            detail,
            "the worker was stopped during the switch (pid {:?} -> {:?}, restarts {} -> {}{}); ",
            before.pid,
            after.pid,
            before.restarts,
            after.restarts,
            after
                .last_restart_reason
                .as_deref()
                .map(|r| format!(", last: {r}"))
                .unwrap_or_default()
        );
    }
    let _ = write!(
        detail,
        "request on it {}; ceilings restored (switches back after {hold_s}s calm)",
        if completed { "completed" } else { "FAILED" },
    );
    Row {
        check: "fallback profile under pressure",
        pass: switched.is_some() && completed && kept,
        detail,
    }
}

/// Renders the rows as the printed matrix.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows {
        let _ = writeln!(
            out,
            "{} {:<32} {}",
            if row.pass { "PASS" } else { "FAIL" },
            row.check,
            row.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::chat::Backend;

    fn slot(pid: u32, restarts: u32, reason: Option<&str>) -> SlotStatus {
        SlotStatus {
            name: "primary".into(),
            backend: Backend::Cpu,
            state: SlotState::Ready,
            state_ms: 0,
            reason: String::new(),
            pid: Some(pid),
            model: "m".into(),
            profile: "small".into(),
            profile_reason: String::new(),
            rss_anon_kb: None,
            rss_file_kb: None,
            vm_hwm_kb: None,
            memory_pressure: true,
            uptime_ms: None,
            requests_served: 0,
            last_decode_tps: None,
            restarts,
            last_restart_reason: reason.map(str::to_owned),
            chat_template: String::new(),
            cpus: None,
            cpus_reason: String::new(),
            cache: proto::worker::CacheReport::default(),
            shadowing: None,
            shadowed_by: None,
        }
    }

    #[test]
    fn the_fallback_row_fails_when_the_worker_was_restarted_during_the_switch() {
        let t = Some(Duration::from_millis(900));
        let ok = fallback_row(
            "small",
            &slot(10, 0, None),
            &slot(10, 0, None),
            t,
            true,
            60.0,
        );
        assert!(ok.pass, "{}", ok.detail);
        let restarted = fallback_row(
            "small",
            &slot(10, 0, None),
            &slot(11, 1, Some("load-timeout")),
            t,
            true,
            60.0,
        );
        assert!(!restarted.pass);
        assert!(
            restarted.detail.contains("stopped during the switch"),
            "{}",
            restarted.detail
        );
        assert!(
            restarted.detail.contains("load-timeout"),
            "{}",
            restarted.detail
        );
        let counted = fallback_row(
            "small",
            &slot(10, 0, None),
            &slot(10, 1, None),
            t,
            true,
            60.0,
        );
        assert!(!counted.pass);
    }
}
