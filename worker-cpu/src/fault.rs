//! Fault injection for exercising the supervisor against real worker
//! processes: crashes, slow tokens and real anonymous-memory growth.
//!
//! Enabled only by the `ROCKSTEADY_WORKER_FAULTS` environment variable, which
//! the supervisor passes only when a slot's `worker_env` sets it (the
//! supervision tests do; a production config never should). The value is a
//! comma-separated list:
//!
//! - `crash-on-load`: abort while loading (a worker that crashes on every start);
//! - `crash-on-load-while=PATH`: the same, but only while PATH exists, so a
//!   test can "repair" the worker by deleting the file;
//! - `token-delay-ms=N`: sleep N ms after each generated token (a slow
//!   backend, so a test can act mid-stream);
//! - `grow-mib-per-s=N`: once ready, allocate and touch N MiB of anonymous
//!   memory per second, forever (a leak the supervisor must notice).

use std::path::PathBuf;
use std::time::Duration;

/// Environment variable holding the fault list.
pub const ENV: &str = "ROCKSTEADY_WORKER_FAULTS";

/// Parsed fault settings; the default injects nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Abort during load.
    pub crash_on_load: bool,
    /// Abort during load while this file exists.
    pub crash_on_load_while: Option<PathBuf>,
    /// Delay after each token.
    pub token_delay: Option<Duration>,
    /// Anonymous memory growth once ready.
    pub grow_mib_per_s: Option<u64>,
}

/// A fault list that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{ENV}: cannot understand {item:?} (expected crash-on-load, crash-on-load-while=PATH, token-delay-ms=N or grow-mib-per-s=N)")]
pub struct FaultSpecError {
    /// The offending item.
    pub item: String,
}

impl Faults {
    /// Reads [`ENV`].
    ///
    /// # Errors
    /// [`FaultSpecError`] when the variable is set to something unknown.
    pub fn from_env() -> Result<Self, FaultSpecError> {
        std::env::var(ENV).map_or_else(|_| Ok(Self::default()), |v| Self::parse(&v))
    }

    /// Parses a fault list.
    ///
    /// # Errors
    /// [`FaultSpecError`] naming the first item not understood.
    pub fn parse(spec: &str) -> Result<Self, FaultSpecError> {
        let mut faults = Self::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || FaultSpecError {
                item: item.to_owned(),
            };
            match item.split_once('=') {
                None if item == "crash-on-load" => faults.crash_on_load = true,
                Some(("crash-on-load-while", path)) => {
                    faults.crash_on_load_while = Some(PathBuf::from(path));
                }
                Some(("token-delay-ms", n)) => {
                    faults.token_delay = Some(Duration::from_millis(n.parse().map_err(|_| bad())?));
                }
                Some(("grow-mib-per-s", n)) => {
                    faults.grow_mib_per_s = Some(n.parse().map_err(|_| bad())?);
                }
                _ => return Err(bad()),
            }
        }
        Ok(faults)
    }

    /// Aborts the process if a load-time crash is configured.
    pub fn at_load(&self) {
        let crash = self.crash_on_load
            || self
                .crash_on_load_while
                .as_ref()
                .is_some_and(|p| p.exists());
        if crash {
            tracing::error!("fault injection: crashing during load");
            std::process::abort();
        }
    }

    /// Starts the memory-growth thread if configured.
    pub fn start_growth(&self) {
        let Some(rate) = self.grow_mib_per_s else {
            return;
        };
        tracing::warn!(
            mib_per_s = rate,
            "fault injection: growing anonymous memory"
        );
        std::thread::Builder::new()
            .name("fault-grow".into())
            .spawn(move || {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Ten steps a second; writing every byte makes the pages
                    // resident, so they show up in RssAnon.
                    let step = usize::try_from(rate << 20).unwrap_or(usize::MAX) / 10;
                    hoard.push(vec![0x5a; step]);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_fault_and_refuses_unknown_ones() {
        let f = Faults::parse("crash-on-load-while=/tmp/x, token-delay-ms=20,grow-mib-per-s=64")
            .unwrap();
        assert_eq!(f.crash_on_load_while, Some(PathBuf::from("/tmp/x")));
        assert_eq!(f.token_delay, Some(Duration::from_millis(20)));
        assert_eq!(f.grow_mib_per_s, Some(64));
        assert!(!f.crash_on_load);
        assert!(Faults::parse("crash-on-load").unwrap().crash_on_load);
        assert_eq!(Faults::parse("").unwrap(), Faults::default());
        let err = Faults::parse("token-delay-ms=soon").unwrap_err();
        assert!(err.to_string().contains("token-delay-ms=soon"));
        assert!(Faults::parse("explode").is_err());
    }
}
