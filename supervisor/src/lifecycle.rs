//! The worker slot lifecycle: states, the allowed transitions, and the pure
//! decisions of what to do when something happens to a worker.
//!
//! Nothing here spawns, signals or sleeps: [`decide`] maps (state,
//! observation, policy, restart history, now) to a next state and a list of
//! [`Action`]s, and the supervisor loop carries them out. That keeps every
//! restart, backoff and circuit-breaker rule testable without processes.
//!
//! ```text
//!  Idle ──spawn──> Starting ──connected──> Loading ──ready──> Ready <──> Busy
//!   ^                 │                       │                 │         │
//!   │                 └───────── exit / stop ─┴─────────────────┴─────────┤
//!   │                                                                     v
//!   └──shutdown── Stopping <──stop── (any live state)          exit observed
//!                                                                         │
//!       Unavailable <── "will never work" exit code ──────────────────────┤
//!       Failed <── too many restarts in the window ───────────────────────┤
//!       BackingOff <── otherwise ─────────────────────────────────────────┘
//!       BackingOff / Failed ──timer──> Starting   (Failed: a single probe)
//!       Starting ──spawn failed──> BackingOff (EMFILE...) / Unavailable (no binary)
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::core::Millis;

use proto::admin::SlotState;
use proto::worker::ExitCode;

/// Every transition the supervisor may make. Anything else is a bug: the
/// core refuses to apply it, logs it and records it (the simulation fails).
pub const TRANSITIONS: &[(SlotState, SlotState)] = {
    use SlotState::{
        BackingOff, Busy, Failed, Idle, Loading, Ready, Starting, Stopping, Unavailable,
    };
    &[
        (Idle, Starting),
        (Starting, Loading),
        (Loading, Ready),
        (Ready, Busy),
        (Busy, Ready),
        // A reload (profile switch) goes back to loading.
        (Ready, Loading),
        // Stops: for a hang, memory, an admin restart or shutdown.
        (Starting, Stopping),
        (Loading, Stopping),
        (Ready, Stopping),
        (Busy, Stopping),
        // Exits, expected or not.
        (Starting, BackingOff),
        (Loading, BackingOff),
        (Ready, BackingOff),
        (Busy, BackingOff),
        (Stopping, BackingOff),
        (Starting, Failed),
        (Loading, Failed),
        (Ready, Failed),
        (Busy, Failed),
        (Stopping, Failed),
        (Starting, Unavailable),
        (Loading, Unavailable),
        (Ready, Unavailable),
        (Busy, Unavailable),
        (Stopping, Unavailable),
        (Stopping, Idle),
        (Stopping, Starting),
        // Timers.
        (BackingOff, Starting),
        (Failed, Starting),
        // Shutdown while waiting.
        (BackingOff, Idle),
        (Failed, Idle),
        (Unavailable, Idle),
    ]
};

/// Whether `from -> to` is in [`TRANSITIONS`] (staying put is always allowed).
pub fn check_transition(from: SlotState, to: SlotState) -> bool {
    from == to || TRANSITIONS.contains(&(from, to))
}

/// Why a worker was stopped or restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Exited or died on a signal on its own.
    Crash,
    /// No token (or heartbeat) within its limit.
    Hang,
    /// RssAnon above the hard ceiling.
    Memory,
    /// Killed by the kernel's OOM killer (its counters rose).
    Oom,
    /// Killed by a signal nobody here sent, without the OOM counters rising
    /// (an operator's `kill -9`, or a kernel too old to count OOM kills).
    Killed,
    /// The worker could not be started (a transient error such as EMFILE).
    SpawnFailed,
    /// `supctl restart`.
    Admin,
    /// Did not become ready within the load timeout.
    LoadTimeout,
    /// The supervisor is shutting down.
    Shutdown,
}

impl Reason {
    /// Word used in status, logs and failover events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Hang => "hang",
            Self::Memory => "memory",
            Self::Oom => "oom",
            Self::Killed => "killed",
            Self::SpawnFailed => "spawn-failed",
            Self::Admin => "admin",
            Self::LoadTimeout => "load-timeout",
            Self::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Exit status, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal ended it.
    pub signal: Option<i32>,
    /// The reason we stopped it, if we did.
    pub stopped_for: Option<Reason>,
    /// The kernel's OOM-kill counters rose while it ran.
    pub oom_counter_rose: bool,
    /// The worker's own explanation (`LoadFailed`), if it sent one.
    pub message: Option<String>,
}

/// Restart timing and limits (from `[policy]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First backoff delay.
    pub backoff_initial: Duration,
    /// Cap of the backoff delay.
    pub backoff_max: Duration,
    /// More restarts than this within `period` => failed.
    pub intensity: u32,
    /// Window for `intensity`.
    pub period: Duration,
    /// Wait before probing a failed slot.
    pub cooldown: Duration,
}

/// Recent restarts of one slot, for backoff and intensity.
#[derive(Debug, Clone, Default)]
pub struct RestartHistory {
    recent: VecDeque<Millis>,
    /// The current process is a circuit-breaker probe.
    pub probing: bool,
}

impl RestartHistory {
    fn prune(&mut self, now: Millis, period: Duration) {
        while self.recent.front().is_some_and(|t| now.since(*t) > period) {
            self.recent.pop_front();
        }
    }

    /// Restarts counted within the window ending `now`.
    pub fn count(&self) -> usize {
        self.recent.len()
    }

    /// Forgets past restarts (after a successful probe).
    pub fn clear(&mut self) {
        self.recent.clear();
        self.probing = false;
    }
}

/// Something that happened to a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The process ended.
    Exited(Exit),
    /// A backoff or cooldown timer ran out.
    TimerDue,
    /// The worker reported ready.
    Ready,
    /// The process could not be started at all (no exit will follow).
    SpawnFailed {
        /// The error will not go away by retrying (binary missing or not
        /// executable).
        permanent: bool,
        /// What the OS said.
        message: String,
    },
}

/// What the supervisor loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn a new worker process.
    Spawn,
    /// Wake the slot at this time (a `TimerDue` observation).
    WakeAt(Millis),
    /// The request being served must go to another worker.
    RescueRequest(Reason),
    /// Count a restart for status and metrics.
    CountRestart(Reason),
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// State to enter.
    pub next: SlotState,
    /// Why the slot is in that state (for status), if worth saying.
    pub reason: Option<String>,
    /// Things to do, in order.
    pub actions: Vec<Action>,
}

/// SIGKILL's number on Linux (the core names no OS crate).
pub const SIGKILL: i32 = 9;

/// Classifies an exit: permanent failure, or a restart reason.
///
/// # Errors
/// `Err(why)` when the exit code says the worker will never work as configured.
pub fn classify(exit: &Exit) -> Result<Reason, String> {
    if let Some(code) = exit.code.and_then(ExitCode::from_code) {
        return Err(exit
            .message
            .clone()
            .unwrap_or_else(|| code.describe().to_owned()));
    }
    if let Some(reason) = exit.stopped_for {
        return Ok(reason);
    }
    // Only the kernel's counters make a kill an OOM kill: an operator's
    // `kill -9` must not show up as memory trouble in status and metrics.
    if exit.oom_counter_rose {
        return Ok(Reason::Oom);
    }
    if exit.signal == Some(SIGKILL) {
        return Ok(Reason::Killed);
    }
    Ok(Reason::Crash)
}

/// The pure lifecycle decision.
pub fn decide(
    state: SlotState,
    obs: &Observation,
    policy: &RestartPolicy,
    history: &mut RestartHistory,
    shutting_down: bool,
    now: Millis,
) -> Decision {
    let stay = Decision {
        next: state,
        reason: None,
        actions: Vec::new(),
    };
    match obs {
        Observation::Ready => {
            if matches!(state, SlotState::Loading) {
                // A probe that reaches ready closes the circuit again.
                if history.probing {
                    history.clear();
                }
                Decision {
                    next: SlotState::Ready,
                    reason: None,
                    actions: Vec::new(),
                }
            } else {
                stay
            }
        }
        Observation::TimerDue => match state {
            SlotState::BackingOff | SlotState::Failed if !shutting_down => {
                history.probing = state == SlotState::Failed;
                Decision {
                    next: SlotState::Starting,
                    reason: None,
                    actions: vec![Action::Spawn],
                }
            }
            _ => stay,
        },
        Observation::Exited(exit) => {
            let mut actions = Vec::new();
            if state == SlotState::Busy
                || (state == SlotState::Stopping && exit.stopped_for.is_some())
            {
                // Whatever it was doing must be finished elsewhere; the loop
                // knows whether a request was actually in flight.
                let why = classify(exit).unwrap_or(Reason::Crash);
                actions.push(Action::RescueRequest(why));
            }
            if shutting_down || exit.stopped_for == Some(Reason::Shutdown) {
                return Decision {
                    next: SlotState::Idle,
                    reason: None,
                    actions,
                };
            }
            after_exit(classify(exit), actions, policy, history, now)
        }
        Observation::SpawnFailed { permanent, message } => {
            if shutting_down {
                return Decision {
                    next: SlotState::Idle,
                    reason: None,
                    actions: Vec::new(),
                };
            }
            // Only a missing or unusable binary is for ever; EMFILE, EAGAIN
            // or ENOMEM pass, so they go through backoff like a crash.
            let classified = if *permanent {
                Err(format!("cannot start the worker: {message}"))
            } else {
                Ok(Reason::SpawnFailed)
            };
            after_exit(classified, Vec::new(), policy, history, now)
        }
    }
}

/// The restart decision once a process is gone (or never started).
fn after_exit(
    classified: Result<Reason, String>,
    mut actions: Vec<Action>,
    policy: &RestartPolicy,
    history: &mut RestartHistory,
    now: Millis,
) -> Decision {
    let reason = match classified {
        Err(permanent) => {
            return Decision {
                next: SlotState::Unavailable,
                reason: Some(permanent),
                actions,
            }
        }
        Ok(reason) => reason,
    };
    actions.push(Action::CountRestart(reason));
    if reason == Reason::Admin {
        // An operator's restart is immediate and does not count
        // towards the restart intensity.
        actions.push(Action::Spawn);
        return Decision {
            next: SlotState::Starting,
            reason: None,
            actions,
        };
    }
    history.prune(now, policy.period);
    history.recent.push_back(now);
    let failed_probe = history.probing;
    let count = u32::try_from(history.count()).unwrap_or(u32::MAX);
    if failed_probe || count > policy.intensity {
        history.probing = false;
        actions.push(Action::WakeAt(now + policy.cooldown));
        let why = if failed_probe {
            format!(
                "probe failed ({reason}); next probe in {}s",
                policy.cooldown.as_secs()
            )
        } else {
            format!(
                "{count} restarts within {}s (last: {reason}); next probe in {}s",
                policy.period.as_secs(),
                policy.cooldown.as_secs()
            )
        };
        return Decision {
            next: SlotState::Failed,
            reason: Some(why),
            actions,
        };
    }
    let delay = backoff(policy, count);
    actions.push(Action::WakeAt(now + delay));
    Decision {
        next: SlotState::BackingOff,
        reason: Some(format!("{reason}; restart in {:.1}s", delay.as_secs_f64())),
        actions,
    }
}

/// Delay before the `n`th restart within the window (n >= 1): doubling from
/// the initial delay, capped.
pub fn backoff(policy: &RestartPolicy, n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(20));
    policy
        .backoff_initial
        .saturating_mul(factor)
        .min(policy.backoff_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            intensity: 3,
            period: Duration::from_secs(60),
            cooldown: Duration::from_secs(120),
        }
    }

    fn crash() -> Observation {
        Observation::Exited(Exit {
            code: None,
            signal: Some(6),
            stopped_for: None,
            oom_counter_rose: false,
            message: None,
        })
    }

    #[test]
    fn every_decision_follows_the_transition_table() {
        let states = [
            SlotState::Idle,
            SlotState::Starting,
            SlotState::Loading,
            SlotState::Ready,
            SlotState::Busy,
            SlotState::Stopping,
            SlotState::BackingOff,
            SlotState::Failed,
            SlotState::Unavailable,
        ];
        let observations = [
            crash(),
            Observation::TimerDue,
            Observation::Ready,
            Observation::Exited(Exit {
                code: Some(ExitCode::ModelTruncated.code()),
                signal: None,
                stopped_for: None,
                oom_counter_rose: false,
                message: None,
            }),
        ];
        let live = [
            SlotState::Starting,
            SlotState::Loading,
            SlotState::Ready,
            SlotState::Busy,
            SlotState::Stopping,
        ];
        for state in states {
            for obs in &observations {
                if matches!(obs, Observation::Exited(_)) && !live.contains(&state) {
                    continue; // no process to exit
                }
                let d = decide(
                    state,
                    obs,
                    &policy(),
                    &mut RestartHistory::default(),
                    false,
                    Millis(1_000_000),
                );
                assert!(
                    check_transition(state, d.next),
                    "{state:?} --{obs:?}--> {:?}",
                    d.next
                );
            }
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        let delays: Vec<u64> = (1..=6).map(|n| backoff(&p, n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn crashes_back_off_then_fail_after_the_intensity() {
        let p = policy();
        let mut h = RestartHistory::default();
        let t0 = Millis(1_000_000);
        for n in 1..=3u32 {
            let d = decide(SlotState::Ready, &crash(), &p, &mut h, false, t0);
            assert_eq!(d.next, SlotState::BackingOff, "restart {n}");
            assert!(d.actions.contains(&Action::WakeAt(t0 + backoff(&p, n))));
            assert!(d.actions.contains(&Action::CountRestart(Reason::Crash)));
        }
        let d = decide(SlotState::Loading, &crash(), &p, &mut h, false, t0);
        assert_eq!(d.next, SlotState::Failed);
        assert!(d.reason.unwrap().contains("4 restarts within 60s"));
        assert!(d.actions.contains(&Action::WakeAt(t0 + p.cooldown)));
    }

    #[test]
    fn restarts_outside_the_window_are_forgotten() {
        let p = policy();
        let mut h = RestartHistory::default();
        let t0 = Millis(1_000_000);
        for i in 0..10 {
            let d = decide(
                SlotState::Ready,
                &crash(),
                &p,
                &mut h,
                false,
                t0 + Duration::from_secs(61 * i),
            );
            assert_eq!(d.next, SlotState::BackingOff);
        }
    }

    #[test]
    fn failed_slot_is_probed_once_and_a_good_probe_closes_the_circuit() {
        let p = policy();
        let mut h = RestartHistory::default();
        let t0 = Millis(1_000_000);
        let d = decide(
            SlotState::Failed,
            &Observation::TimerDue,
            &p,
            &mut h,
            false,
            t0,
        );
        assert_eq!(
            (d.next, d.actions),
            (SlotState::Starting, vec![Action::Spawn])
        );
        assert!(h.probing);
        // The probe crashes: straight back to failed.
        let d = decide(SlotState::Loading, &crash(), &p, &mut h, false, t0);
        assert_eq!(d.next, SlotState::Failed);
        assert!(d.reason.unwrap().starts_with("probe failed"));
        // Next probe reaches ready: history is cleared.
        decide(
            SlotState::Failed,
            &Observation::TimerDue,
            &p,
            &mut h,
            false,
            t0,
        );
        let d = decide(
            SlotState::Loading,
            &Observation::Ready,
            &p,
            &mut h,
            false,
            t0,
        );
        assert_eq!(d.next, SlotState::Ready);
        assert_eq!(h.count(), 0);
        assert!(!h.probing);
    }

    #[test]
    fn never_works_exit_codes_make_the_slot_unavailable_with_the_message() {
        let exit = Exit {
            code: Some(ExitCode::ModelEmpty.code()),
            signal: None,
            stopped_for: None,
            oom_counter_rose: false,
            message: Some("model file /m.gguf is empty (0 bytes)".into()),
        };
        let d = decide(
            SlotState::Loading,
            &Observation::Exited(exit.clone()),
            &policy(),
            &mut RestartHistory::default(),
            false,
            Millis(1_000_000),
        );
        assert_eq!(d.next, SlotState::Unavailable);
        assert_eq!(
            d.reason.as_deref(),
            Some("model file /m.gguf is empty (0 bytes)")
        );
        assert!(!d
            .actions
            .iter()
            .any(|a| matches!(a, Action::Spawn | Action::WakeAt(_))));
        let d = decide(
            SlotState::Loading,
            &Observation::Exited(Exit {
                message: None,
                ..exit
            }),
            &policy(),
            &mut RestartHistory::default(),
            false,
            Millis(1_000_000),
        );
        assert_eq!(d.reason.as_deref(), Some("model file is empty (0 bytes)"));
    }

    #[test]
    fn exit_reasons_are_classified() {
        let base = Exit {
            code: None,
            signal: Some(9),
            stopped_for: None,
            oom_counter_rose: false,
            message: None,
        };
        // A SIGKILL nobody here sent, without the OOM counters rising, is an
        // operator's (or unknown) kill, not the OOM killer.
        assert_eq!(classify(&base), Ok(Reason::Killed));
        assert_eq!(
            classify(&Exit {
                oom_counter_rose: true,
                ..base.clone()
            }),
            Ok(Reason::Oom)
        );
        assert_eq!(
            classify(&Exit {
                stopped_for: Some(Reason::Hang),
                ..base.clone()
            }),
            Ok(Reason::Hang)
        );
        assert_eq!(
            classify(&Exit {
                signal: Some(11),
                ..base.clone()
            }),
            Ok(Reason::Crash)
        );
        assert_eq!(
            classify(&Exit {
                signal: None,
                code: Some(1),
                ..base.clone()
            }),
            Ok(Reason::Crash)
        );
        assert_eq!(
            classify(&Exit {
                signal: Some(11),
                oom_counter_rose: true,
                ..base
            }),
            Ok(Reason::Oom)
        );
    }

    #[test]
    fn a_busy_worker_that_dies_has_its_request_rescued() {
        let d = decide(
            SlotState::Busy,
            &crash(),
            &policy(),
            &mut RestartHistory::default(),
            false,
            Millis(1_000_000),
        );
        assert_eq!(d.actions[0], Action::RescueRequest(Reason::Crash));
    }

    #[test]
    fn admin_restarts_are_immediate_and_not_counted_towards_failure() {
        let mut h = RestartHistory::default();
        let exit = Observation::Exited(Exit {
            code: None,
            signal: Some(15),
            stopped_for: Some(Reason::Admin),
            oom_counter_rose: false,
            message: None,
        });
        for _ in 0..10 {
            let d = decide(
                SlotState::Stopping,
                &exit,
                &policy(),
                &mut h,
                false,
                Millis(1_000_000),
            );
            assert_eq!(d.next, SlotState::Starting);
            assert!(d.actions.contains(&Action::Spawn));
        }
        assert_eq!(h.count(), 0);
    }

    #[test]
    fn shutdown_ends_in_idle_without_restart() {
        let d = decide(
            SlotState::Ready,
            &crash(),
            &policy(),
            &mut RestartHistory::default(),
            true,
            Millis(1_000_000),
        );
        assert_eq!(d.next, SlotState::Idle);
        let d = decide(
            SlotState::BackingOff,
            &Observation::TimerDue,
            &policy(),
            &mut RestartHistory::default(),
            true,
            Millis(1_000_000),
        );
        assert_eq!(d.next, SlotState::BackingOff);
    }

    #[test]
    fn transient_spawn_failures_back_off_and_permanent_ones_do_not() {
        let mut h = RestartHistory::default();
        let t0 = Millis(1_000_000);
        let transient = Observation::SpawnFailed {
            permanent: false,
            message: "Too many open files (os error 24)".into(),
        };
        let d = decide(
            SlotState::Starting,
            &transient,
            &policy(),
            &mut h,
            false,
            t0,
        );
        assert_eq!(d.next, SlotState::BackingOff);
        assert!(d
            .actions
            .contains(&Action::CountRestart(Reason::SpawnFailed)));
        assert!(d
            .actions
            .contains(&Action::WakeAt(t0 + backoff(&policy(), 1))));
        let permanent = Observation::SpawnFailed {
            permanent: true,
            message: "No such file or directory (os error 2)".into(),
        };
        let d = decide(
            SlotState::Starting,
            &permanent,
            &policy(),
            &mut h,
            false,
            t0,
        );
        assert_eq!(d.next, SlotState::Unavailable);
        assert!(d.reason.unwrap().contains("No such file"));
    }
}
