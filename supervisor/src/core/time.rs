//! Time as a value: a monotonic millisecond count the driver (or the
//! simulator) passes into every event, so the core never reads a clock and a
//! seeded schedule replays exactly.

use std::ops::Add;
use std::time::Duration;

/// Milliseconds since the driver started (monotonic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// Time elapsed since `earlier` (zero if `earlier` is later).
    #[must_use]
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// `self - d`, or zero.
    #[must_use]
    pub fn minus(self, d: Duration) -> Millis {
        Millis(self.0.saturating_sub(ms(d)))
    }
}

impl Add<Duration> for Millis {
    type Output = Millis;
    fn add(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(ms(d)))
    }
}

/// A duration in whole milliseconds, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Millis(1_000);
        assert_eq!(t + Duration::from_millis(500), Millis(1_500));
        assert_eq!(t.since(Millis(400)), Duration::from_millis(600));
        assert_eq!(Millis(10).since(t), Duration::ZERO);
        assert_eq!(Millis(10).minus(Duration::from_secs(1)), Millis(0));
    }
}
