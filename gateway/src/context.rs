//! Conversation context from a Discord reply chain: walk the referenced
//! messages back, within a message and character budget, the bot's messages
//! as assistant turns and everyone else's as user turns. Message nodes are
//! kept in a bounded cache so a chain is fetched from Discord once.
//!
//! A chain longer than the budget is cut in windows, not one message at a
//! time: when a walk runs over the budget, the context starts again at the
//! newest messages that fit in half of it, and that message is remembered
//! as the start of the chain's window ([`Windows`]). The next turns walk
//! back only to it while they fit, so their prompts keep the same start
//! (and the same conversation key, the start's id): the worker reuses the
//! KV cache of the turns before instead of prefilling a prompt that shifts
//! by one message every turn. Only the turn that opens a new window starts
//! cold.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use lru::LruCache;
use proto::chat::{ChatMessage, Role};
use twilight_model::channel::message::MessageReferenceType;
use twilight_model::channel::Message;
use twilight_model::id::marker::UserMarker;
use twilight_model::id::Id;

use crate::render::strip_tail;

/// A message as the context needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Node {
    /// Who said it, for the model.
    pub role: Role,
    /// Its text (mention and the bot's footer removed).
    pub content: String,
    /// The message it replies to: (channel, message).
    pub parent: Option<(u64, u64)>,
    /// A user turn that came before it without being a message of its own
    /// (the prompt of a `/ask` whose answer this is).
    pub prompt: Option<String>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("role", &self.role)
            .field("chars", &self.content.chars().count())
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

/// A bounded map by message id, least recently used first out, shared by
/// the gateway's tasks.
#[derive(Debug)]
pub struct ByMessage<V> {
    inner: Mutex<LruCache<u64, V>>,
}

/// The cache of message nodes, by message id.
pub type NodeCache = ByMessage<Node>;

/// The messages where long chains' context windows start (a forgotten
/// start only means the next turn of that chain opens a new window).
pub type Windows = ByMessage<()>;

impl<V: Clone> ByMessage<V> {
    /// Holds up to `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = std::num::NonZeroUsize::new(capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The entry of message `id`, if held.
    pub fn get(&self, id: u64) -> Option<V> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// Remembers an entry.
    pub fn put(&self, id: u64, value: V) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(id, value);
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes mentions of the bot from a user's message.
pub fn clean_prompt(content: &str, me: Id<UserMarker>) -> String {
    content
        .replace(&format!("<@{me}>"), "")
        .replace(&format!("<@!{me}>"), "")
        .trim()
        .to_owned()
}

/// The message a reply points at, as (channel, message).
pub fn parent_of(message: &Message) -> Option<(u64, u64)> {
    let reference = message.reference.as_ref()?;
    if reference.kind != MessageReferenceType::Default {
        return None;
    }
    let id = reference.message_id?;
    let channel = reference.channel_id.unwrap_or(message.channel_id);
    Some((channel.get(), id.get()))
}

/// The node for a Discord message.
pub fn node_of(message: &Message, me: Id<UserMarker>) -> Node {
    let (role, content) = if message.author.id == me {
        (Role::Assistant, strip_tail(&message.content))
    } else {
        (Role::User, clean_prompt(&message.content, me))
    };
    Node {
        role,
        content,
        parent: parent_of(message),
        prompt: None,
    }
}

/// Limits of a context walk.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most messages, the new one included.
    pub max_messages: usize,
    /// Most characters of message text.
    pub max_chars: usize,
}

/// A built context.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    /// Turns, oldest first, ending with the new user turn (no system prompt).
    pub turns: Vec<ChatMessage>,
    /// Earlier messages were left out because of the budget (or could not be read).
    pub truncated: bool,
    /// The oldest message in the context: the chain's root when nothing
    /// was left out, else the start of its window; `None` for a message
    /// that replies to nothing. Its id names the conversation, so each turn
    /// of a chain goes to the worker that holds the chain's KV cache.
    pub root: Option<u64>,
}

impl Context {
    /// The conversation key of a new message `message_id` with this context:
    /// the chain's root, or the message itself when it starts a chain (its
    /// replies will walk back to it).
    pub fn conversation_key(&self, message_id: u64) -> String {
        self.root.unwrap_or(message_id).to_string()
    }
}

/// Something that can produce the node of a message not in the cache.
pub trait Fetch {
    /// Fetches message `message` of `channel`; `None` if it cannot be read.
    fn fetch(
        &self,
        channel: u64,
        message: u64,
    ) -> impl std::future::Future<Output = Option<Node>> + Send;
}

/// Why a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// At the chain's root: nothing left out.
    Root,
    /// At the start of the chain's window.
    Window,
    /// Over the budget.
    Budget,
    /// At a message that could not be read.
    Unreadable,
}

/// The characters a node takes from the budget.
fn node_chars(node: &Node) -> usize {
    node.content.chars().count() + node.prompt.as_ref().map_or(0, |p| p.chars().count())
}

/// Walks back from `parent` (what the new message replies to), starting with
/// the new user turn `prompt`, to the chain's root or the start of its
/// window in `windows`; a walk over the `budget` opens a new window with
/// the newest messages that fit in half of it.
pub async fn build<F: Fetch>(
    cache: &NodeCache,
    windows: &Windows,
    fetcher: &F,
    prompt: &str,
    parent: Option<(u64, u64)>,
    budget: Budget,
) -> Context {
    let prompt_chars = prompt.chars().count();
    let mut chars = prompt_chars;
    let mut walked: Vec<(u64, Node)> = Vec::new();
    let mut cursor = parent;
    let mut stop = Stop::Root;
    while let Some((channel, id)) = cursor {
        if walked.len() + 1 >= budget.max_messages {
            stop = Stop::Budget;
            break;
        }
        let node = if let Some(node) = cache.get(id) {
            node
        } else if let Some(node) = fetcher.fetch(channel, id).await {
            cache.put(id, node.clone());
            node
        } else {
            stop = Stop::Unreadable;
            break;
        };
        if chars + node_chars(&node) > budget.max_chars {
            stop = Stop::Budget;
            break;
        }
        chars += node_chars(&node);
        cursor = node.parent;
        walked.push((id, node));
        if cursor.is_some() && windows.get(id).is_some() {
            stop = Stop::Window;
            break;
        }
    }
    if stop == Stop::Budget {
        // A new window: the newest messages within half the budget (at
        // least the one replied to), so the next turns fit after it for a
        // while with the same start.
        let half = Budget {
            max_messages: budget.max_messages / 2,
            max_chars: budget.max_chars / 2,
        };
        let mut chars = prompt_chars;
        let keep = walked
            .iter()
            .take_while(|(_, node)| {
                chars += node_chars(node);
                chars <= half.max_chars
            })
            .count()
            .min(half.max_messages.saturating_sub(1))
            .max(1);
        walked.truncate(keep);
        if let Some((id, _)) = walked.last() {
            windows.put(*id, ());
        }
    }
    let root = walked.last().map(|(id, _)| *id);
    let mut turns_rev = vec![ChatMessage::new(Role::User, prompt)];
    for (_, node) in walked {
        if !node.content.is_empty() {
            turns_rev.push(ChatMessage::new(node.role, node.content));
        }
        if let Some(prompt) = node.prompt {
            turns_rev.push(ChatMessage::new(Role::User, prompt));
        }
    }
    turns_rev.reverse();
    Context {
        turns: merge_turns(turns_rev),
        truncated: stop != Stop::Root,
        root,
    }
}

/// Joins consecutive turns of one role (an answer split over several
/// messages is one assistant turn; the chunks carry their own separators).
fn merge_turns(turns: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let mut merged: Vec<ChatMessage> = Vec::with_capacity(turns.len());
    for turn in turns {
        match merged.last_mut() {
            Some(last) if last.role == turn.role => {
                if turn.role == Role::User {
                    last.content.push('\n');
                }
                last.content.push_str(&turn.content);
            }
            _ => merged.push(turn),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fake {
        nodes: std::collections::HashMap<u64, Node>,
        fetched: AtomicUsize,
    }

    impl Fetch for Fake {
        async fn fetch(&self, _channel: u64, message: u64) -> Option<Node> {
            self.fetched.fetch_add(1, Ordering::SeqCst);
            self.nodes.get(&message).cloned()
        }
    }

    fn node(role: Role, content: &str, parent: Option<u64>) -> Node {
        Node {
            role,
            content: content.into(),
            parent: parent.map(|p| (1, p)),
            prompt: None,
        }
    }

    fn chain() -> Fake {
        let mut nodes = std::collections::HashMap::new();
        nodes.insert(1, node(Role::User, "first question", None));
        nodes.insert(2, node(Role::Assistant, "first ", Some(1)));
        nodes.insert(3, node(Role::Assistant, "answer", Some(2)));
        nodes.insert(4, node(Role::User, "second question", Some(3)));
        nodes.insert(5, node(Role::Assistant, "second answer", Some(4)));
        Fake {
            nodes,
            fetched: AtomicUsize::new(0),
        }
    }

    const WIDE: Budget = Budget {
        max_messages: 50,
        max_chars: 10_000,
    };

    #[tokio::test]
    async fn walks_the_chain_and_merges_split_answers() {
        let fake = chain();
        let cache = NodeCache::new(100);
        let windows = Windows::new(100);
        let ctx = build(
            &cache,
            &windows,
            &fake,
            "third question",
            Some((1, 5)),
            WIDE,
        )
        .await;
        assert!(!ctx.truncated);
        let turns: Vec<(Role, &str)> = ctx
            .turns
            .iter()
            .map(|t| (t.role, t.content.as_str()))
            .collect();
        assert_eq!(
            turns,
            vec![
                (Role::User, "first question"),
                (Role::Assistant, "first answer"),
                (Role::User, "second question"),
                (Role::Assistant, "second answer"),
                (Role::User, "third question"),
            ]
        );
        assert_eq!(fake.fetched.load(Ordering::SeqCst), 5);
        // Every turn of the chain names the same conversation: its root.
        assert_eq!(ctx.root, Some(1));
        assert_eq!(ctx.conversation_key(6), "1");
        let earlier = build(
            &cache,
            &windows,
            &fake,
            "second question",
            Some((1, 2)),
            WIDE,
        )
        .await;
        assert_eq!(earlier.conversation_key(3), "1");
        // A message that replies to nothing starts a chain of its own.
        let fresh = build(&cache, &windows, &fake, "hello", None, WIDE).await;
        assert_eq!((fresh.root, fresh.conversation_key(9)), (None, "9".into()));
        // A second walk is served from the cache.
        let again = build(&cache, &windows, &fake, "x", Some((1, 5)), WIDE).await;
        assert_eq!(again.turns.len(), 5);
        assert_eq!(fake.fetched.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn budget_cuts_and_says_so() {
        let fake = chain();
        let cache = NodeCache::new(100);
        let windows = Windows::new(100);
        let by_count = build(
            &cache,
            &windows,
            &fake,
            "q",
            Some((1, 5)),
            Budget {
                max_messages: 3,
                max_chars: 10_000,
            },
        )
        .await;
        // Over the budget: a new window with what fits in half of it, at
        // least the message replied to, remembered as the chain's start.
        assert!(by_count.truncated);
        assert_eq!(by_count.turns.len(), 2);
        assert_eq!(by_count.turns[0].content, "second answer");
        assert_eq!(by_count.root, Some(5));
        assert!(windows.get(5).is_some());

        let by_chars = build(
            &cache,
            &windows,
            &fake,
            "q",
            Some((1, 5)),
            Budget {
                max_messages: 50,
                max_chars: 20,
            },
        )
        .await;
        assert!(by_chars.truncated);
        assert_eq!(by_chars.turns.len(), 2);

        let unreadable = build(&cache, &windows, &fake, "q", Some((1, 99)), WIDE).await;
        assert!(unreadable.truncated);
        assert_eq!(unreadable.turns.len(), 1);
    }

    /// A chain of `turns` question/answer pairs (40 characters a pair) put
    /// in `cache` turn by turn, each turn's context built first with
    /// `windows` (a fresh one per turn when `None`: no window remembered).
    async fn long_chain(turns: u64, windows: Option<&Windows>) -> Vec<Context> {
        let cache = NodeCache::new(1000);
        let fake = Fake {
            nodes: std::collections::HashMap::new(),
            fetched: AtomicUsize::new(0),
        };
        let budget = Budget {
            max_messages: 50,
            max_chars: 400,
        };
        let mut contexts = Vec::new();
        let mut last = None;
        for turn in 0..turns {
            let (q, a) = (2 * turn + 1, 2 * turn + 2);
            let question = format!("question number {turn:04}");
            let fresh = Windows::new(10);
            let ctx = build(
                &cache,
                windows.unwrap_or(&fresh),
                &fake,
                &question,
                last.map(|p| (1, p)),
                budget,
            )
            .await;
            let chars: usize = ctx.turns.iter().map(|t| t.content.chars().count()).sum();
            assert!(chars <= budget.max_chars, "turn {turn}: {chars}");
            assert_eq!(ctx.turns.last().unwrap().content, question);
            contexts.push(ctx);
            cache.put(q, node(Role::User, &question, last));
            cache.put(
                a,
                node(
                    Role::Assistant,
                    &format!("answer number {turn:06}"),
                    Some(q),
                ),
            );
            last = Some(a);
        }
        contexts
    }

    #[tokio::test]
    async fn a_long_chain_keeps_the_start_of_its_window_for_several_turns() {
        let windows = Windows::new(100);
        let contexts = long_chain(40, Some(&windows)).await;
        // 400 characters hold 10 turns; a window opens with 5 and grows.
        assert!(!contexts[9].truncated);
        assert!(contexts[10].truncated);
        let keys: Vec<String> = contexts
            .iter()
            .enumerate()
            .map(|(i, c)| c.conversation_key(2 * i as u64 + 1))
            .collect();
        let changes = keys.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(
            (4..=8).contains(&changes),
            "a new window every few turns, not every turn: {keys:?}"
        );
        // While the key stays, each turn's prompt is the last one's plus the
        // answer and the new question: the cached prefix holds.
        for (i, w) in contexts.windows(2).enumerate() {
            if keys[i] == keys[i + 1] {
                let (a, b) = (&w[0].turns, &w[1].turns);
                assert_eq!(&b[..a.len()], &a[..], "turn {}", i + 1);
            }
        }

        // Without remembered windows every turn past the budget starts
        // elsewhere: the key and the prompt's start move every turn.
        let contexts = long_chain(40, None).await;
        let keys: Vec<String> = contexts
            .iter()
            .enumerate()
            .map(|(i, c)| c.conversation_key(2 * i as u64 + 1))
            .collect();
        let changes = keys.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(changes >= 25, "{changes}");
    }

    #[test]
    fn cache_is_bounded() {
        let cache = NodeCache::new(2);
        for id in 0..5 {
            cache.put(id, node(Role::User, "x", None));
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(4).is_some());
        assert!(cache.get(0).is_none());
    }

    #[test]
    fn mentions_are_removed() {
        let me = Id::new(77);
        assert_eq!(clean_prompt("<@77> hi <@!77>", me), "hi");
    }
}
