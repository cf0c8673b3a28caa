//! The bound on work in flight: every message or slash command the bot takes
//! on runs in its own task, and at most `max_in_flight` of them run at once.
//! When all are taken, a new one is dropped without an answer and counted, so
//! a flood of mentions costs a log line, not memory.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Least time between two log lines about dropped events.
pub const OVERLOAD_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts dropped events and decides when to log them: the first drop at
/// once, then at most one line per [`OVERLOAD_LOG_EVERY`] with the count
/// since the last line. Pure: the caller gives the time.
#[derive(Debug, Default)]
pub struct Overload {
    total: u64,
    unlogged: u64,
    last_log: Option<Instant>,
}

/// What to log about dropped events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropReport {
    /// Dropped since the last line (this one included).
    pub since_last: u64,
    /// Dropped since start.
    pub total: u64,
}

impl Overload {
    /// Counts one dropped event at `now`; `Some` when a line is due.
    pub fn dropped(&mut self, now: Instant) -> Option<DropReport> {
        self.total += 1;
        self.unlogged += 1;
        let due = self
            .last_log
            .is_none_or(|last| now.saturating_duration_since(last) >= OVERLOAD_LOG_EVERY);
        due.then(|| {
            self.last_log = Some(now);
            DropReport {
                since_last: std::mem::take(&mut self.unlogged),
                total: self.total,
            }
        })
    }

    /// Events dropped since start.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// The slots for events being handled.
#[derive(Debug)]
pub struct InFlight {
    limit: usize,
    slots: Arc<Semaphore>,
    overload: Mutex<Overload>,
}

impl InFlight {
    /// At most `limit` (at least 1) events handled at once.
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            limit,
            slots: Arc::new(Semaphore::new(limit)),
            overload: Mutex::default(),
        }
    }

    /// A slot for one event, held by its task until it ends; `None` when all
    /// are taken (the event is then counted, and logged now and then).
    pub fn try_start(&self, what: &'static str) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(permit);
        }
        let report = self
            .overload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dropped(Instant::now());
        if let Some(report) = report {
            tracing::warn!(
                limit = self.limit,
                dropped = report.since_last,
                dropped_total = report.total,
                what,
                "too many requests in flight (gateway.max_in_flight): dropped without an answer"
            );
        }
        None
    }

    /// Events dropped since start.
    pub fn dropped(&self) -> u64 {
        self.overload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total()
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_and_logged_now_and_then() {
        let mut overload = Overload::default();
        let t0 = Instant::now();
        assert_eq!(
            overload.dropped(t0),
            Some(DropReport {
                since_last: 1,
                total: 1
            })
        );
        for ms in 1..100 {
            assert_eq!(overload.dropped(t0 + Duration::from_millis(ms * 50)), None);
        }
        assert_eq!(
            overload.dropped(t0 + OVERLOAD_LOG_EVERY),
            Some(DropReport {
                since_last: 100,
                total: 101
            })
        );
        assert_eq!(overload.total(), 101);
    }

    #[test]
    fn at_most_limit_in_flight() {
        let in_flight = InFlight::new(2);
        let a = in_flight.try_start("message").unwrap();
        let b = in_flight.try_start("message").unwrap();
        for _ in 0..1000 {
            assert!(in_flight.try_start("message").is_none());
        }
        assert_eq!(in_flight.dropped(), 1000);
        drop(a);
        let c = in_flight.try_start("interaction");
        assert!(c.is_some());
        assert!(in_flight.try_start("message").is_none());
        drop((b, c));
        assert_eq!(in_flight.available(), 2);
        assert_eq!(InFlight::new(0).available(), 1);
    }
}
