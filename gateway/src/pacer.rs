//! Per-channel pacing of message writes, answers before notices.
//!
//! Discord rate-limits message edits per channel (about five in five seconds),
//! and twilight learns its buckets per message: a bot that paces per message
//! runs into 429s as soon as two of its messages in one channel change at
//! once (a follow-up after 2000 characters, two users' answers). So every
//! create and edit in a channel goes through one lane: one write at a time,
//! each starting at least `interval` after the previous one *finished*. That
//! also guarantees that the requests arrive at least `interval` apart.
//!
//! Answers are what the channel is for; notices (a refusal, a hint) are not.
//! A notice takes the lane only when no answer write is waiting for it, and
//! gives its turn back if one starts waiting while the notice sits out the
//! interval: a user posting once a second delays nobody's streaming edits by
//! more than the one notice already on the wire.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::time::Instant;

/// Lanes kept before idle ones are dropped.
const MAX_IDLE_LANES: usize = 1024;

/// One channel's lane.
#[derive(Debug, Default)]
struct Lane {
    /// The turn to write, handed out in arrival order; holds when the last
    /// write ended.
    turn: Arc<tokio::sync::Mutex<Option<Instant>>>,
    /// Answer writes waiting for their turn.
    answers_waiting: AtomicUsize,
    /// Signalled when an answer write stops waiting (got its turn or gave up).
    answer_moved: Notify,
}

/// Counts an answer write as waiting until dropped (also when its future is
/// cancelled), then wakes notices that stood back for it.
struct Waiting<'a>(&'a Lane);

impl<'a> Waiting<'a> {
    fn new(lane: &'a Lane) -> Self {
        lane.answers_waiting.fetch_add(1, Ordering::SeqCst);
        Self(lane)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.answers_waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.answer_moved.notify_waiters();
    }
}

/// The lanes of all channels.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    lanes: Mutex<HashMap<u64, Arc<Lane>>>,
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

    fn lane(&self, channel: u64) -> Arc<Lane> {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        if lanes.len() > MAX_IDLE_LANES {
            // Drop idle lanes (nobody holds, waits on or writes through them)
            // to bound memory.
            lanes
                .retain(|_, lane| Arc::strong_count(lane) > 1 || Arc::strong_count(&lane.turn) > 1);
        }
        Arc::clone(lanes.entry(channel).or_default())
    }

    async fn sit_out_interval(&self, guard: &OwnedMutexGuard<Option<Instant>>) {
        if let Some(last) = **guard {
            tokio::time::sleep_until(last + self.interval).await;
        }
    }

    /// Waits for this channel's turn to write part of an answer. Answer
    /// writes are served in arrival order, ahead of any notice.
    pub async fn acquire(&self, channel: u64) -> PacerPermit {
        let lane = self.lane(channel);
        let guard = {
            let _waiting = Waiting::new(&lane);
            Arc::clone(&lane.turn).lock_owned().await
        };
        self.sit_out_interval(&guard).await;
        PacerPermit { guard }
    }

    /// Waits for a turn to write a notice: only when no answer write waits
    /// for the lane, from the moment the notice asks until it may write.
    pub async fn acquire_notice(&self, channel: u64) -> PacerPermit {
        let lane = self.lane(channel);
        loop {
            loop {
                let moved = lane.answer_moved.notified();
                tokio::pin!(moved);
                // Registered before the check, so a change in between is not missed.
                moved.as_mut().enable();
                if lane.answers_waiting.load(Ordering::SeqCst) == 0 {
                    break;
                }
                moved.await;
            }
            let guard = Arc::clone(&lane.turn).lock_owned().await;
            self.sit_out_interval(&guard).await;
            if lane.answers_waiting.load(Ordering::SeqCst) == 0 {
                return PacerPermit { guard };
            }
            // An answer write queued up meanwhile: hand the turn on without
            // writing (the time of the last write stays as it was).
            drop(guard);
        }
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

    /// Runs writes of the given kinds, each asking for the lane `ask_at`
    /// after the start and holding it for `hold`; returns the order in which
    /// they got it.
    async fn order(pacer: Arc<Pacer>, writes: &[(&'static str, u64, u64)]) -> Vec<&'static str> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for &(name, ask_at, hold) in writes {
            let (pacer, log) = (Arc::clone(&pacer), Arc::clone(&log));
            tasks.spawn(async move {
                tokio::time::sleep_until(start + Duration::from_millis(ask_at)).await;
                let permit = if name.starts_with("notice") {
                    pacer.acquire_notice(1).await
                } else {
                    pacer.acquire(1).await
                };
                log.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(hold)).await;
                drop(permit);
            });
        }
        while tasks.join_next().await.is_some() {}
        Arc::try_unwrap(log).unwrap().into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_edit_goes_before_a_notice_that_asked_first() {
        let pacer = Arc::new(Pacer::new(Duration::from_millis(100)));
        // A write holds the lane; a notice asks, then an answer edit asks.
        let got = order(
            pacer,
            &[
                ("answer-1", 0, 50),
                ("notice", 10, 10),
                ("answer-2", 20, 10),
            ],
        )
        .await;
        assert_eq!(got, ["answer-1", "answer-2", "notice"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_notice_sitting_out_the_interval_stands_back_for_an_answer() {
        let pacer = Arc::new(Pacer::new(Duration::from_millis(100)));
        // The notice gets the turn at 50 ms and waits out the interval until
        // 150 ms; the answer edit asks at 100 ms and still goes first.
        let got = order(
            pacer,
            &[
                ("answer-1", 0, 50),
                ("notice", 40, 10),
                ("answer-2", 100, 10),
            ],
        )
        .await;
        assert_eq!(got, ["answer-1", "answer-2", "notice"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_notice_on_an_idle_lane_is_paced_like_any_write() {
        let pacer = Arc::new(Pacer::new(Duration::from_millis(100)));
        let start = Instant::now();
        drop(pacer.acquire(1).await);
        drop(pacer.acquire_notice(1).await);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        let got = order(pacer, &[("notice-1", 0, 10), ("notice-2", 1, 10)]).await;
        assert_eq!(got, ["notice-1", "notice-2"]);
    }
}
