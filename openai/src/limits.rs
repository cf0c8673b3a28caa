//! Per-key admission: how many requests a key may have running, and how many
//! it may start in a sliding window. Pure: the caller passes the clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The key has its most requests running.
    Concurrency,
    /// The key started its most requests in the window; retry after this.
    Rate(Duration),
}

#[derive(Debug, Default)]
struct PerKey {
    running: usize,
    started: VecDeque<Instant>,
}

/// The limits of every key.
#[derive(Debug)]
pub struct Limits {
    max_concurrent: usize,
    rate: usize,
    window: Duration,
    keys: HashMap<String, PerKey>,
}

impl Limits {
    /// `max_concurrent` running and `rate` started per `window`, per key.
    pub fn new(max_concurrent: usize, rate: usize, window: Duration) -> Self {
        Self {
            max_concurrent,
            rate,
            window,
            keys: HashMap::new(),
        }
    }

    /// Admits a request of `key` at `now` (counting it as running), or says why not.
    ///
    /// # Errors
    /// The [`Refusal`].
    pub fn admit(&mut self, key: &str, now: Instant) -> Result<(), Refusal> {
        let entry = self.keys.entry(key.to_owned()).or_default();
        while entry
            .started
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            entry.started.pop_front();
        }
        if entry.running >= self.max_concurrent {
            return Err(Refusal::Concurrency);
        }
        if entry.started.len() >= self.rate {
            let oldest = entry.started.front().copied().unwrap_or(now);
            let wait = self.window.saturating_sub(now.duration_since(oldest));
            return Err(Refusal::Rate(wait.max(Duration::from_secs(1))));
        }
        entry.running += 1;
        entry.started.push_back(now);
        Ok(())
    }

    /// A request of `key` ended.
    pub fn release(&mut self, key: &str) {
        if let Some(entry) = self.keys.get_mut(key) {
            entry.running = entry.running.saturating_sub(1);
            if entry.running == 0 && entry.started.is_empty() {
                self.keys.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_per_key_and_released() {
        let now = Instant::now();
        let mut l = Limits::new(1, 100, Duration::from_secs(60));
        assert_eq!(l.admit("a", now), Ok(()));
        assert_eq!(l.admit("a", now), Err(Refusal::Concurrency));
        assert_eq!(l.admit("b", now), Ok(()));
        l.release("a");
        assert_eq!(l.admit("a", now), Ok(()));
    }

    #[test]
    fn rate_window_slides_and_says_when() {
        let t0 = Instant::now();
        let mut l = Limits::new(10, 2, Duration::from_secs(60));
        l.admit("a", t0).unwrap();
        l.admit("a", t0 + Duration::from_secs(10)).unwrap();
        l.release("a");
        l.release("a");
        assert_eq!(
            l.admit("a", t0 + Duration::from_secs(20)),
            Err(Refusal::Rate(Duration::from_secs(40)))
        );
        assert_eq!(l.admit("a", t0 + Duration::from_secs(60)), Ok(()));
    }
}
