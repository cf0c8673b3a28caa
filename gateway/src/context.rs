//! Conversation context from a Discord reply chain: walk the referenced
//! messages back, within a message and character budget, the bot's messages
//! as assistant turns and everyone else's as user turns. Message nodes are
//! kept in a bounded cache so a chain is fetched from Discord once.

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

/// The cache of message nodes, by message id.
#[derive(Debug)]
pub struct NodeCache {
    inner: Mutex<LruCache<u64, Node>>,
}

impl NodeCache {
    /// Holds up to `capacity` nodes (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = std::num::NonZeroUsize::new(capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The node of message `id`, if cached.
    pub fn get(&self, id: u64) -> Option<Node> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// Remembers a node.
    pub fn put(&self, id: u64, node: Node) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(id, node);
    }

    /// Number of cached nodes.
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
    /// The oldest message the walk reached (the chain's root when nothing
    /// was left out), `None` for a message that replies to nothing. Its id
    /// names the conversation, so each turn of a chain goes to the worker
    /// that holds the chain's KV cache.
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

/// Walks back from `parent` (what the new message replies to), starting with
/// the new user turn `prompt`.
pub async fn build<F: Fetch>(
    cache: &NodeCache,
    fetcher: &F,
    prompt: &str,
    parent: Option<(u64, u64)>,
    budget: Budget,
) -> Context {
    let mut turns_rev = vec![ChatMessage::new(Role::User, prompt)];
    let mut chars = prompt.chars().count();
    let mut messages = 1;
    let mut truncated = false;
    let mut cursor = parent;
    let mut root = None;
    while let Some((channel, id)) = cursor {
        if messages >= budget.max_messages {
            truncated = true;
            break;
        }
        let node = if let Some(node) = cache.get(id) {
            node
        } else if let Some(node) = fetcher.fetch(channel, id).await {
            cache.put(id, node.clone());
            node
        } else {
            truncated = true;
            break;
        };
        let mut node_chars = node.content.chars().count();
        if let Some(prompt) = &node.prompt {
            node_chars += prompt.chars().count();
        }
        if chars + node_chars > budget.max_chars {
            truncated = true;
            break;
        }
        chars += node_chars;
        messages += 1;
        root = Some(id);
        if !node.content.is_empty() {
            turns_rev.push(ChatMessage::new(node.role, node.content.clone()));
        }
        if let Some(prompt) = &node.prompt {
            turns_rev.push(ChatMessage::new(Role::User, prompt.clone()));
        }
        cursor = node.parent;
    }
    turns_rev.reverse();
    Context {
        turns: merge_turns(turns_rev),
        truncated,
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
        let ctx = build(&cache, &fake, "third question", Some((1, 5)), WIDE).await;
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
        let earlier = build(&cache, &fake, "second question", Some((1, 2)), WIDE).await;
        assert_eq!(earlier.conversation_key(3), "1");
        // A message that replies to nothing starts a chain of its own.
        let fresh = build(&cache, &fake, "hello", None, WIDE).await;
        assert_eq!((fresh.root, fresh.conversation_key(9)), (None, "9".into()));
        // A second walk is served from the cache.
        let again = build(&cache, &fake, "x", Some((1, 5)), WIDE).await;
        assert_eq!(again.turns.len(), 5);
        assert_eq!(fake.fetched.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn budget_cuts_and_says_so() {
        let fake = chain();
        let cache = NodeCache::new(100);
        let by_count = build(
            &cache,
            &fake,
            "q",
            Some((1, 5)),
            Budget {
                max_messages: 3,
                max_chars: 10_000,
            },
        )
        .await;
        assert!(by_count.truncated);
        assert_eq!(by_count.turns.len(), 3);
        assert_eq!(by_count.turns[0].content, "second question");

        let by_chars = build(
            &cache,
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

        let unreadable = build(&cache, &fake, "q", Some((1, 99)), WIDE).await;
        assert!(unreadable.truncated);
        assert_eq!(unreadable.turns.len(), 1);
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
