//! Whether a request continues the conversation whose KV cache the RKLLM
//! runtime holds (run with `keep_history`, sending only the new user turn)
//! or starts over (`rkllm_clear_kv_cache`, then the whole prompt): pure
//! decisions, carried out by [`crate::worker`].
//!
//! The runtime keeps one history per model, so the NPU worker holds one
//! conversation. A request continues it only when it has the same key, the
//! same chat template, no assistant prefix (a failover's continuation is
//! always prefilled whole), and its messages are exactly the held ones
//! (the previous prompt and the answer as streamed) followed by user turns:
//! a conversation that only grows. Anything else clears the cache.

use proto::chat::{ChatMessage, Role};
use proto::worker::{CacheReport, HeldConversation};

use crate::chat::ChatTemplate;

/// The conversation in the runtime's KV cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its key.
    pub key: String,
    /// The messages it holds: the last prompt and the answer.
    pub messages: Vec<ChatMessage>,
    /// The chat template it was run with.
    pub template: ChatTemplate,
    /// Tokens the runtime holds for it (prefilled and generated).
    pub tokens: u32,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Continue the held conversation: run only `input` (the new user
    /// turns, merged) with `keep_history`.
    Continue {
        /// The new user text.
        input: String,
        /// Tokens reused from the cache.
        reused: u32,
    },
    /// Start over: clear the cache first if it holds anything, then run the
    /// whole prompt, with `keep_history` when the request has a key (so the
    /// next turn can continue it).
    Fresh {
        /// Whether the cache must be cleared first.
        clear: bool,
        /// Whether to keep the history after the run.
        keep: bool,
    },
}

/// The plan for a request of conversation `key` with `messages`, rendered
/// with `template`. `dirty` says the runtime holds history that no
/// [`Held`] describes (a run with `keep_history` that did not end cleanly).
pub fn plan(
    held: Option<&Held>,
    dirty: bool,
    key: Option<&str>,
    messages: &[ChatMessage],
    assistant_prefix: &str,
    template: &ChatTemplate,
) -> Plan {
    if let (Some(h), Some(key)) = (held, key) {
        let grows = h.key == key
            && assistant_prefix.is_empty()
            && &h.template == template
            && messages.len() > h.messages.len()
            && messages[..h.messages.len()] == h.messages[..]
            && messages[h.messages.len()..]
                .iter()
                .all(|m| m.role == Role::User);
        if grows && !dirty {
            let input = messages[h.messages.len()..]
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n\n");
            return Plan::Continue {
                input,
                reused: h.tokens,
            };
        }
    }
    Plan::Fresh {
        clear: held.is_some() || dirty,
        keep: key.is_some(),
    }
}

/// The cache report of the NPU worker: at most one conversation (the
/// runtime does not say how many bytes its KV cache takes).
pub fn report(held: Option<&Held>, counters: &Counters) -> CacheReport {
    let held = held
        .map(|h| HeldConversation {
            key: h.key.clone(),
            tokens: h.tokens,
        })
        .into_iter()
        .collect();
    counters.report(held, 1, 0)
}

/// Cache figures since the process started.
pub use worker_kit::cache::CacheCounters as Counters;

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: Role, text: &str) -> ChatMessage {
        ChatMessage::new(role, text)
    }

    fn template() -> ChatTemplate {
        ChatTemplate {
            system_prompt: "<sys>".into(),
            prompt_prefix: "<u>".into(),
            prompt_postfix: "</u><a>".into(),
        }
    }

    fn held() -> Held {
        Held {
            key: "k".into(),
            messages: vec![m(Role::User, "hi"), m(Role::Assistant, "hello")],
            template: template(),
            tokens: 20,
        }
    }

    #[test]
    fn a_conversation_that_only_grows_continues() {
        let h = held();
        let next = [
            m(Role::User, "hi"),
            m(Role::Assistant, "hello"),
            m(Role::User, "how are you?"),
        ];
        assert_eq!(
            plan(Some(&h), false, Some("k"), &next, "", &template()),
            Plan::Continue {
                input: "how are you?".into(),
                reused: 20
            }
        );
    }

    #[test]
    fn anything_else_starts_over() {
        let h = held();
        let t = template();
        let grown = [
            m(Role::User, "hi"),
            m(Role::Assistant, "hello"),
            m(Role::User, "more"),
        ];
        let fresh = |clear, keep| Plan::Fresh { clear, keep };
        // Another conversation.
        assert_eq!(
            plan(Some(&h), false, Some("j"), &grown, "", &t),
            fresh(true, true)
        );
        // No key: cleared, not kept.
        assert_eq!(
            plan(Some(&h), false, None, &grown, "", &t),
            fresh(true, false)
        );
        // An edited earlier turn (the answer as the client shows it differs).
        let edited = [
            m(Role::User, "hi"),
            m(Role::Assistant, "hello!"),
            m(Role::User, "more"),
        ];
        assert_eq!(
            plan(Some(&h), false, Some("k"), &edited, "", &t),
            fresh(true, true)
        );
        // A failover's continuation.
        assert_eq!(
            plan(Some(&h), false, Some("k"), &grown, "He", &t),
            fresh(true, true)
        );
        // Another template.
        let mut other = t.clone();
        other.system_prompt = "<other>".into();
        assert_eq!(
            plan(Some(&h), false, Some("k"), &grown, "", &other),
            fresh(true, true)
        );
        // Nothing new from the user.
        assert_eq!(
            plan(Some(&h), false, Some("k"), &h.messages, "", &t),
            fresh(true, true)
        );
        // History left by a run that did not end cleanly.
        assert_eq!(
            plan(Some(&h), true, Some("k"), &grown, "", &t),
            fresh(true, true)
        );
        assert_eq!(plan(None, true, None, &grown, "", &t), fresh(true, false));
        // An empty cache needs no clearing.
        assert_eq!(
            plan(None, false, Some("k"), &grown, "", &t),
            fresh(false, true)
        );
    }

    #[test]
    fn the_report_holds_one_conversation_at_most() {
        let counters = Counters {
            hits: 2,
            ..Counters::default()
        };
        let r = report(Some(&held()), &counters);
        assert_eq!((r.capacity, r.held.len(), r.hits), (1, 1, 2));
        assert_eq!(r.held[0].tokens, 20);
        assert!(report(None, &counters).held.is_empty());
    }
}
