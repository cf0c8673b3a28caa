//! The fake worker's script: what it does and when, read from
//! [`ENV`] as comma-separated items (an unknown item is an error, so a typo
//! never turns a fault test into a test of nothing).
//!
//! | item | meaning |
//! |---|---|
//! | `load-ms=N` | a load takes N ms (default 0) |
//! | `token-ms=N` | N ms per token (default 5) |
//! | `tokens=N` | the answer ends its turn after N tokens (default: only the request's cap ends it) |
//! | `slow-at-token=K` + `slow-ms=N` | from token K on, N ms per token |
//! | `crash-at-token=K` | abort (SIGABRT) when about to send token K |
//! | `hang-at-token=K` | stop at token K for good (still answers pings: a stuck engine) |
//! | `exit-at-token=K:CODE` | exit with CODE when about to send token K |
//! | `grow-mib-per-s=N` | allocate and touch N MiB of anonymous memory per second, forever |
//! | `grow-at-token=K` | start the growth at token K (default: once the model is ready) |
//! | `crash-on-load` | abort while loading |
//! | `crash-on-load-while=PATH` | abort while loading as long as PATH exists (a test "repairs" the worker by deleting it) |
//! | `hang-on-load` | never finish loading |
//! | `exit-on-load=CODE` | the load fails with CODE (64-78: a broken model, the slot becomes unavailable; else a failure that may pass with a restart) |
//! | `refuse=busy` / `refuse=not-loaded` | every request is refused with that error |
//!
//! Tokens count from 1.

use std::path::PathBuf;
use std::time::Duration;

/// Environment variable holding the script.
pub const ENV: &str = "ROCKSTEADY_FAKE_WORKER";

/// What the fake worker does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Time a load takes.
    pub load: Duration,
    /// Time per token.
    pub token: Duration,
    /// End of turn after this many tokens.
    pub tokens: Option<u32>,
    /// From this token on, `slow` per token.
    pub slow_at: Option<u32>,
    /// Time per token once slow.
    pub slow: Duration,
    /// Abort at this token.
    pub crash_at: Option<u32>,
    /// Hang at this token.
    pub hang_at: Option<u32>,
    /// Exit at this token with this code.
    pub exit_at: Option<(u32, i32)>,
    /// Anonymous memory growth in MiB per second.
    pub grow_mib_per_s: Option<u64>,
    /// The token the growth starts at (none: at ready).
    pub grow_at: Option<u32>,
    /// Abort while loading.
    pub crash_on_load: bool,
    /// Abort while loading while this file exists.
    pub crash_on_load_while: Option<PathBuf>,
    /// Never finish loading.
    pub hang_on_load: bool,
    /// Fail the load with this exit code.
    pub exit_on_load: Option<i32>,
    /// Refuse every request with this error.
    pub refuse: Option<Refusal>,
}

/// How requests are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `WorkerErrorKind::Busy`.
    Busy,
    /// `WorkerErrorKind::NotLoaded`.
    NotLoaded,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            load: Duration::ZERO,
            token: Duration::from_millis(5),
            tokens: None,
            slow_at: None,
            slow: Duration::ZERO,
            crash_at: None,
            hang_at: None,
            exit_at: None,
            grow_mib_per_s: None,
            grow_at: None,
            crash_on_load: false,
            crash_on_load_while: None,
            hang_on_load: false,
            exit_on_load: None,
            refuse: None,
        }
    }
}

/// A script that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{ENV}: cannot understand {item:?}: {why} (items are listed in test-kit/src/script.rs)")]
pub struct ScriptError {
    /// The offending item.
    pub item: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl Script {
    /// Reads [`ENV`]; unset is the default script.
    ///
    /// # Errors
    /// [`ScriptError`] naming the first item not understood.
    pub fn from_env() -> Result<Self, ScriptError> {
        std::env::var(ENV).map_or_else(|_| Ok(Self::default()), |v| Self::parse(&v))
    }

    /// Parses a script.
    ///
    /// # Errors
    /// [`ScriptError`] naming the first item not understood.
    pub fn parse(spec: &str) -> Result<Self, ScriptError> {
        let mut s = Self::default();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let err = |why| ScriptError {
                item: item.to_owned(),
                why,
            };
            let number = |v: &str| v.parse::<u64>().map_err(|_| err("expected a number"));
            let token = |v: &str| match v.parse::<u32>() {
                Ok(0) | Err(_) => Err(err("expected a token number from 1")),
                Ok(n) => Ok(n),
            };
            let code = |v: &str| v.parse::<i32>().map_err(|_| err("expected an exit code"));
            match item.split_once('=') {
                None if item == "crash-on-load" => s.crash_on_load = true,
                None if item == "hang-on-load" => s.hang_on_load = true,
                Some(("load-ms", v)) => s.load = Duration::from_millis(number(v)?),
                Some(("token-ms", v)) => s.token = Duration::from_millis(number(v)?),
                Some(("tokens", v)) => s.tokens = Some(token(v)?),
                Some(("slow-at-token", v)) => s.slow_at = Some(token(v)?),
                Some(("slow-ms", v)) => s.slow = Duration::from_millis(number(v)?),
                Some(("crash-at-token", v)) => s.crash_at = Some(token(v)?),
                Some(("hang-at-token", v)) => s.hang_at = Some(token(v)?),
                Some(("exit-at-token", v)) => {
                    let (k, c) = v
                        .split_once(':')
                        .ok_or_else(|| err("expected TOKEN:CODE"))?;
                    s.exit_at = Some((token(k)?, code(c)?));
                }
                Some(("grow-mib-per-s", v)) => s.grow_mib_per_s = Some(number(v)?),
                Some(("grow-at-token", v)) => s.grow_at = Some(token(v)?),
                Some(("crash-on-load-while", v)) if !v.is_empty() => {
                    s.crash_on_load_while = Some(PathBuf::from(v));
                }
                Some(("exit-on-load", v)) => s.exit_on_load = Some(code(v)?),
                Some(("refuse", "busy")) => s.refuse = Some(Refusal::Busy),
                Some(("refuse", "not-loaded")) => s.refuse = Some(Refusal::NotLoaded),
                Some(("refuse", _)) => return Err(err("expected busy or not-loaded")),
                _ => return Err(err("unknown item")),
            }
        }
        if s.slow_at.is_some() && s.slow.is_zero() {
            return Err(ScriptError {
                item: "slow-at-token".into(),
                why: "needs slow-ms=N too",
            });
        }
        Ok(s)
    }

    /// Time to wait before sending token `k` (from 1).
    pub fn delay_before(&self, k: u32) -> Duration {
        match self.slow_at {
            Some(at) if k >= at => self.slow,
            _ => self.token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_parses() {
        let s = Script::parse(
            "load-ms=1500, token-ms=40,tokens=12,slow-at-token=3,slow-ms=900,crash-at-token=4,hang-at-token=5,exit-at-token=6:3,grow-mib-per-s=300,grow-at-token=2,crash-on-load,crash-on-load-while=/tmp/flag,hang-on-load,exit-on-load=70,refuse=busy",
        )
        .unwrap();
        assert_eq!(s.load, Duration::from_millis(1500));
        assert_eq!(s.token, Duration::from_millis(40));
        assert_eq!(s.tokens, Some(12));
        assert_eq!((s.slow_at, s.slow), (Some(3), Duration::from_millis(900)));
        assert_eq!(
            (s.crash_at, s.hang_at, s.exit_at),
            (Some(4), Some(5), Some((6, 3)))
        );
        assert_eq!((s.grow_mib_per_s, s.grow_at), (Some(300), Some(2)));
        assert!(s.crash_on_load && s.hang_on_load);
        assert_eq!(s.crash_on_load_while, Some(PathBuf::from("/tmp/flag")));
        assert_eq!(s.exit_on_load, Some(70));
        assert_eq!(s.refuse, Some(Refusal::Busy));
        assert_eq!(s.delay_before(2), Duration::from_millis(40));
        assert_eq!(s.delay_before(3), Duration::from_millis(900));
        assert_eq!(Script::parse("").unwrap(), Script::default());
        assert_eq!(
            Script::parse("refuse=not-loaded").unwrap().refuse,
            Some(Refusal::NotLoaded)
        );
    }

    #[test]
    fn mistakes_are_refused_by_name() {
        for bad in [
            "explode",
            "token-ms=soon",
            "crash-at-token=0",
            "exit-at-token=3",
            "refuse=maybe",
            "slow-at-token=2",
            "crash-on-load-while=",
            // The old worker-cpu fault switch is not understood.
            "token-delay-ms=40",
        ] {
            let err = Script::parse(bad).unwrap_err();
            assert!(err.to_string().contains(ENV), "{err}");
        }
        let err = Script::parse("load-ms=1,explode").unwrap_err();
        assert_eq!(err.item, "explode");
    }
}
