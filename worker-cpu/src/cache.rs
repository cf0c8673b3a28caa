//! Which KV-cache sequence a request uses and how much of it is reused: the
//! decisions of the conversation cache, without llama.cpp (the engine carries
//! them out on its context).
//!
//! The context holds `capacity` conversation sequences (ids `1..=capacity`)
//! and a scratch sequence (id 0) for requests without a conversation key,
//! which are prefilled cold as before. A request with a key takes the
//! sequence that holds its conversation (a hit), else a free one, else the
//! least recently used one (an eviction). Either way it keeps the longest
//! common token prefix of what that sequence holds and its new prompt, so a
//! new conversation placed in an evicted sequence still reuses the system
//! prompt and the template's header: that is how the system prompt is shared,
//! without copying cells between sequences (llama.cpp copies whole buffers
//! between sequences of separate streams, which costs more than it saves).

use proto::worker::{CacheReport, HeldConversation};

/// The scratch sequence: requests without a conversation key.
pub const SCRATCH: u32 = 0;

/// One conversation held in a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The client's conversation key.
    pub key: String,
    /// Token ids whose KV the sequence holds, from position 0.
    pub tokens: Vec<i32>,
    /// Logical time of the last use (larger = more recent).
    pub last_used: u64,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The sequence id.
    pub seq: u32,
    /// Whether the sequence already held this conversation.
    pub hit: bool,
    /// The conversation evicted to make room, if any.
    pub evicted: Option<String>,
}

/// Counters since the process started (they survive profile switches).
pub use worker_kit::cache::CacheCounters as Counters;

/// The conversation sequences of one context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Index `i` is sequence `i + 1`.
    slots: Vec<Option<Entry>>,
    /// Logical clock of uses, for least-recently-used eviction.
    clock: u64,
}

impl Table {
    /// A table of `capacity` empty conversation sequences.
    pub fn new(capacity: u32) -> Self {
        Self {
            slots: vec![None; capacity as usize],
            clock: 0,
        }
    }

    /// Conversation sequences (the scratch one not counted).
    pub fn capacity(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
    }

    /// What sequence `seq` holds.
    pub fn entry(&self, seq: u32) -> Option<&Entry> {
        let i = (seq as usize).checked_sub(1)?;
        self.slots.get(i)?.as_ref()
    }

    /// Chooses the sequence for conversation `key` and marks it used: the
    /// one holding it, else the first free one, else the least recently used
    /// (whose conversation is evicted; its tokens stay, for the common
    /// prefix). `None` when the table has no sequences at all.
    pub fn place(&mut self, key: &str) -> Option<Placement> {
        self.clock += 1;
        let now = self.clock;
        let held = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|e| e.key == key));
        let (i, hit, evicted) = if let Some(i) = held {
            (i, true, None)
        } else if let Some(i) = self.slots.iter().position(Option::is_none) {
            (i, false, None)
        } else {
            let i = lru(&self.slots)?;
            let old = self.slots[i].as_ref().map(|e| e.key.clone());
            (i, false, old)
        };
        let slot = &mut self.slots[i];
        match slot {
            Some(e) => {
                key.clone_into(&mut e.key);
                e.last_used = now;
            }
            None => {
                *slot = Some(Entry {
                    key: key.to_owned(),
                    tokens: Vec::new(),
                    last_used: now,
                });
            }
        }
        Some(Placement {
            seq: u32::try_from(i + 1).unwrap_or(u32::MAX),
            hit,
            evicted,
        })
    }

    /// Records what sequence `seq` now holds.
    pub fn set_tokens(&mut self, seq: u32, tokens: Vec<i32>) {
        if let Some(Some(e)) = (seq as usize)
            .checked_sub(1)
            .and_then(|i| self.slots.get_mut(i))
        {
            e.tokens = tokens;
        }
    }

    /// Puts `entry` back into sequence `seq` (its cells were restored after
    /// a profile switch), as recent as it was relative to the others.
    pub fn restore(&mut self, seq: u32, entry: Entry) {
        if let Some(slot) = (seq as usize)
            .checked_sub(1)
            .and_then(|i| self.slots.get_mut(i))
        {
            self.clock = self.clock.max(entry.last_used);
            *slot = Some(entry);
        }
    }

    /// Forgets what sequence `seq` holds (its cells were cleared).
    pub fn forget(&mut self, seq: u32) {
        if let Some(slot) = (seq as usize)
            .checked_sub(1)
            .and_then(|i| self.slots.get_mut(i))
        {
            *slot = None;
        }
    }

    /// The held conversations with their sequence ids, most recent first.
    pub fn held(&self) -> Vec<(u32, &Entry)> {
        let mut out: Vec<(u32, &Entry)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|e| !e.tokens.is_empty())
                    .map(|e| (u32::try_from(i + 1).unwrap_or(u32::MAX), e))
            })
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.1.last_used));
        out
    }

    /// The report for the supervisor.
    pub fn report(&self, counters: Counters, kv_bytes_per_sequence: u64) -> CacheReport {
        let held = self
            .held()
            .into_iter()
            .map(|(_, e)| HeldConversation {
                key: e.key.clone(),
                tokens: u32::try_from(e.tokens.len()).unwrap_or(u32::MAX),
            })
            .collect();
        counters.report(held, self.capacity(), kv_bytes_per_sequence)
    }
}

/// The least recently used occupied slot.
fn lru(slots: &[Option<Entry>]) -> Option<usize> {
    slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().map(|e| (i, e.last_used)))
        .min_by_key(|&(_, t)| t)
        .map(|(i, _)| i)
}

/// Length of the longest common prefix of `a` and `b`.
pub fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Tokens of `prompt` whose KV can be kept from `cached`: the common prefix,
/// but never the whole prompt, since the first token is sampled from the
/// logits of the prompt's last token, which must be decoded again.
pub fn reusable<T: PartialEq>(cached: &[T], prompt: &[T]) -> usize {
    common_prefix(cached, prompt).min(prompt.len().saturating_sub(1))
}

/// Whether cached conversations can be carried into a context loaded for
/// another profile: only when the model and the context size stay (a
/// sequence's cells are laid out for its context size; a different KV type
/// is caught when the state is restored, and counted as dropped then).
pub fn survives_switch(old_model: &str, old_ctx: u32, new_model: &str, new_ctx: u32) -> bool {
    old_model == new_model && old_ctx == new_ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_prefix_stops_at_the_first_difference() {
        assert_eq!(common_prefix(&[1, 2, 3, 4], &[1, 2, 9, 4]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix::<i32>(&[], &[1]), 0);
        assert_eq!(common_prefix(&[5], &[6]), 0);
    }

    #[test]
    fn the_last_prompt_token_is_always_decoded_again() {
        // The new prompt extends what is cached: all of the cache is kept.
        assert_eq!(reusable(&[1, 2, 3], &[1, 2, 3, 4, 5]), 3);
        // The same prompt again: its last token is decoded for the logits.
        assert_eq!(reusable(&[1, 2, 3], &[1, 2, 3]), 2);
        // The cache ran past the prompt (an answer that was retokenised
        // differently): the divergent tail goes.
        assert_eq!(reusable(&[1, 2, 3, 7, 8], &[1, 2, 3, 4]), 3);
        assert_eq!(reusable::<i32>(&[], &[1]), 0);
        assert_eq!(reusable::<i32>(&[1], &[]), 0);
    }

    #[test]
    fn a_held_conversation_is_a_hit_in_its_own_sequence() {
        let mut t = Table::new(2);
        let a = t.place("a").unwrap();
        assert_eq!(
            a,
            Placement {
                seq: 1,
                hit: false,
                evicted: None
            }
        );
        t.set_tokens(1, vec![1, 2, 3]);
        let b = t.place("b").unwrap();
        assert_eq!((b.seq, b.hit), (2, false));
        t.set_tokens(2, vec![1, 2, 9]);
        let again = t.place("a").unwrap();
        assert_eq!(
            again,
            Placement {
                seq: 1,
                hit: true,
                evicted: None
            }
        );
        assert_eq!(t.entry(1).unwrap().tokens, vec![1, 2, 3]);
    }

    #[test]
    fn a_third_conversation_evicts_the_least_recently_used() {
        let mut t = Table::new(2);
        t.place("a");
        t.set_tokens(1, vec![1, 2, 3]);
        t.place("b");
        t.set_tokens(2, vec![1, 2, 4]);
        // a is used again, so b is now the least recent.
        t.place("a");
        let c = t.place("c").unwrap();
        assert_eq!(
            c,
            Placement {
                seq: 2,
                hit: false,
                evicted: Some("b".into())
            }
        );
        // The evicted tokens stay for the common prefix (the system prompt).
        assert_eq!(t.entry(2).unwrap().tokens, vec![1, 2, 4]);
        assert_eq!(t.entry(2).unwrap().key, "c");
        let held: Vec<&str> = t.held().iter().map(|(_, e)| e.key.as_str()).collect();
        assert_eq!(held, vec!["c", "a"]);
    }

    #[test]
    fn a_forgotten_sequence_is_free_again() {
        let mut t = Table::new(1);
        t.place("a");
        t.set_tokens(1, vec![1]);
        t.forget(1);
        assert!(t.held().is_empty());
        assert_eq!(t.place("b").unwrap().evicted, None);
    }

    #[test]
    fn no_sequences_no_placement() {
        assert_eq!(Table::new(0).place("a"), None);
    }

    #[test]
    fn the_report_lists_what_is_held_most_recent_first() {
        let mut t = Table::new(3);
        t.place("a");
        t.set_tokens(1, vec![1, 2]);
        t.place("b");
        t.set_tokens(2, vec![1, 2, 3]);
        // Placed but nothing decoded yet: not held.
        t.place("c");
        let counters = Counters {
            hits: 1,
            ..Counters::default()
        };
        let r = t.report(counters, 100);
        let held: Vec<(&str, u32)> = r.held.iter().map(|h| (h.key.as_str(), h.tokens)).collect();
        assert_eq!(held, vec![("b", 3), ("a", 2)]);
        assert_eq!((r.capacity, r.kv_bytes_per_sequence, r.hits), (3, 100, 1));
    }

    #[test]
    fn only_the_same_model_and_context_size_keep_their_caches() {
        assert!(survives_switch("m.gguf", 2048, "m.gguf", 2048));
        assert!(!survives_switch("m.gguf", 2048, "m.gguf", 1024));
        assert!(!survives_switch("m.gguf", 2048, "n.gguf", 2048));
    }
}
