//! The figures of one generation ([`GenStats`]), computed the same way for
//! every backend from the arrival times of its tokens.
//!
//! One formula for decode speed: the tokens after the first over the time
//! from the first to the last (`(n - 1) / (last - first)`). The first token
//! is left out because its time is prefill, which `ttft_ms` shows.

use std::time::{Duration, Instant};

use proto::chat::GenStats;

/// What is known about one generation while it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tally {
    /// When the worker received the `Generate`.
    pub received: Instant,
    /// When the first token was decoded.
    pub first_token: Option<Instant>,
    /// When the latest token was decoded.
    pub last_token: Option<Instant>,
    /// Tokens decoded so far.
    pub tokens: u32,
    /// Prompt tokens, when the engine said.
    pub prompt_tokens: Option<u32>,
    /// Prompt processing time, when the engine said.
    pub prefill_ms: Option<f64>,
    /// Prompt tokens reused from the KV cache, when the engine said.
    pub cached_tokens: Option<u32>,
}

impl Tally {
    /// A generation received at `received`, nothing decoded yet.
    pub fn new(received: Instant) -> Self {
        Self {
            received,
            first_token: None,
            last_token: None,
            tokens: 0,
            prompt_tokens: None,
            prefill_ms: None,
            cached_tokens: None,
        }
    }

    /// Counts `tokens` more tokens decoded at `at`.
    pub fn decoded(&mut self, tokens: u32, at: Instant) {
        if tokens == 0 {
            return;
        }
        self.first_token.get_or_insert(at);
        self.last_token = Some(at);
        self.tokens = self.tokens.saturating_add(tokens);
    }

    /// The figures so far.
    pub fn stats(&self) -> GenStats {
        let ttft_ms = self
            .first_token
            .map_or(0.0, |f| millis(f.saturating_duration_since(self.received)));
        let decode = match (self.first_token, self.last_token) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            _ => Duration::ZERO,
        };
        GenStats {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            generated_tokens: self.tokens,
            ttft_ms,
            prefill_ms: self.prefill_ms.unwrap_or(0.0),
            decode_ms: millis(decode),
            decode_tps: decode_tps(self.tokens, decode),
            cached_tokens: self.cached_tokens.unwrap_or(0),
        }
    }
}

/// Decode speed: the tokens after the first over the time they took; 0 when
/// there is no such time (fewer than two tokens).
pub fn decode_tps(tokens: u32, first_to_last: Duration) -> f64 {
    let secs = first_to_last.as_secs_f64();
    if tokens > 1 && secs > 0.0 {
        f64::from(tokens - 1) / secs
    } else {
        0.0
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_speed_leaves_the_first_token_out() {
        let t0 = Instant::now();
        let mut tally = Tally::new(t0);
        tally.decoded(1, t0 + Duration::from_millis(100));
        // 10 more tokens over one second after the first.
        for i in 1..=10u64 {
            tally.decoded(1, t0 + Duration::from_millis(100 + 100 * i));
        }
        let s = tally.stats();
        assert_eq!(s.generated_tokens, 11);
        assert!((s.ttft_ms - 100.0).abs() < 1e-6);
        assert!((s.decode_ms - 1000.0).abs() < 1e-6);
        assert!((s.decode_tps - 10.0).abs() < 1e-9);
    }

    #[test]
    fn a_frame_covering_several_tokens_counts_them_all() {
        let t0 = Instant::now();
        let mut tally = Tally::new(t0);
        tally.decoded(1, t0);
        tally.decoded(0, t0 + Duration::from_secs(5));
        tally.decoded(3, t0 + Duration::from_secs(1));
        let s = tally.stats();
        assert_eq!(s.generated_tokens, 4);
        assert!((s.decode_tps - 3.0).abs() < 1e-9);
    }

    #[test]
    fn nothing_or_one_token_has_no_speed() {
        let t0 = Instant::now();
        let mut tally = Tally::new(t0);
        assert!(tally.stats().decode_tps.abs() < 1e-12);
        assert!(tally.stats().ttft_ms.abs() < 1e-12);
        tally.decoded(1, t0 + Duration::from_millis(5));
        assert!(tally.stats().decode_tps.abs() < 1e-12);
        tally.prompt_tokens = Some(12);
        tally.prefill_ms = Some(3.5);
        let s = tally.stats();
        assert_eq!(s.prompt_tokens, 12);
        assert!((s.prefill_ms - 3.5).abs() < 1e-12);
    }
}
