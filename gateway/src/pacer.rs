//! Per-channel pacing of message writes.
//!
//! Discord rate-limits message edits per channel (about five in five seconds),
//! and twilight learns its buckets per message: a bot that paces per message
//! runs into 429s as soon as two of its messages in one channel change at
//! once (a follow-up after 2000 characters, two users' answers). So every
//! create and edit in a channel goes through one lane: one write at a time,
//! each starting at least `interval` after the previous one *finished*. That
//! also guarantees that the requests arrive at least `interval` apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

type Lane = Arc<tokio::sync::Mutex<Option<Instant>>>;

/// The lanes of all channels.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    lanes: Mutex<HashMap<u64, Lane>>,
}

/// The right to write once in a channel; dropping it (after the write
/// completed) starts the interval before the next write.
#[derive(Debug)]
pub struct PacerPermit {
    guard: OwnedMutexGuard<Option<Instant>>,
}

impl Drop for PacerPermit {
    fn drop(&mut self) {
        *self.guard = Some(Instant::now());
    }
}

impl Pacer {
    /// Writes in one channel at least `interval` apart.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            lanes: Mutex::new(HashMap::new()),
        }
    }

    /// The spacing in force.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Waits for this channel's turn. Waiters are served in arrival order.
    pub async fn acquire(&self, channel: u64) -> PacerPermit {
        let lane = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            if lanes.len() > 1024 {
                // Drop idle lanes (nobody holds or waits on them) to bound memory.
                lanes.retain(|_, lane| Arc::strong_count(lane) > 1);
            }
            Arc::clone(lanes.entry(channel).or_default())
        };
        let guard = lane.lock_owned().await;
        if let Some(last) = *guard {
            tokio::time::sleep_until(last + self.interval).await;
        }
        PacerPermit { guard }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn writes_in_one_channel_are_spaced() {
        let pacer = Arc::new(Pacer::new(Duration::from_secs(1)));
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..3 {
            let permit = pacer.acquire(5).await;
            times.push(start.elapsed());
            drop(permit);
        }
        assert_eq!(times[0], Duration::ZERO);
        assert_eq!(times[1], Duration::from_secs(1));
        assert_eq!(times[2], Duration::from_secs(2));
        // Another channel is independent.
        let before = Instant::now();
        drop(pacer.acquire(6).await);
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn interval_counts_from_the_end_of_a_write() {
        let pacer = Pacer::new(Duration::from_millis(500));
        let permit = pacer.acquire(1).await;
        tokio::time::sleep(Duration::from_millis(300)).await; // a slow request
        drop(permit);
        let before = Instant::now();
        drop(pacer.acquire(1).await);
        assert_eq!(before.elapsed(), Duration::from_millis(500));
    }
}
