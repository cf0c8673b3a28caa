//! What both workers count about their conversation caches (the CPU
//! worker's llama.cpp sequences, the NPU worker's runtime history), and the
//! report the supervisor gets from those counts and what is held now.

use proto::worker::{CacheReport, HeldConversation};

/// Cache figures since the worker process started (they survive profile
/// switches; the supervisor adds them up across restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Keyed requests that continued a held conversation.
    pub hits: u64,
    /// Keyed requests that started over.
    pub misses: u64,
    /// Prompt tokens not prefilled again.
    pub reused_tokens: u64,
    /// Held conversations given up for another.
    pub evictions: u64,
    /// Held conversations lost to a profile switch (a new load).
    pub dropped: u64,
}

impl CacheCounters {
    /// The report for the supervisor: the conversations `held` now (most
    /// recent first), how many the worker can hold, the KV bytes one takes
    /// (0 where the runtime does not say), and these counters.
    pub fn report(
        &self,
        held: Vec<HeldConversation>,
        capacity: u32,
        kv_bytes_per_sequence: u64,
    ) -> CacheReport {
        CacheReport {
            held,
            capacity,
            kv_bytes_per_sequence,
            hits: self.hits,
            misses: self.misses,
            reused_tokens: self.reused_tokens,
            evictions: self.evictions,
            dropped: self.dropped,
            prompt_cache: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_carries_what_is_held_and_every_counter() {
        let c = CacheCounters {
            hits: 1,
            misses: 2,
            reused_tokens: 3,
            evictions: 4,
            dropped: 5,
        };
        let held = vec![HeldConversation {
            key: "k".into(),
            tokens: 9,
        }];
        let r = c.report(held.clone(), 2, 100);
        assert_eq!(
            (r.held, r.capacity, r.kv_bytes_per_sequence),
            (held, 2, 100)
        );
        assert_eq!(
            (r.hits, r.misses, r.reused_tokens, r.evictions, r.dropped),
            (1, 2, 3, 4, 5)
        );
    }
}
