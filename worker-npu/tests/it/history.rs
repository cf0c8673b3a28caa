//! The runtime's KV history: a conversation that only grows continues with
//! `keep_history` and sends only the new user turn; anything else clears the
//! cache first. The fake runtime models the history, so what each run saw is
//! checked, not only which flags were passed.

use proto::chat::{ChatMessage, Role};
use proto::worker::{CacheReport, Generate, SupervisorToWorker, WorkerToSupervisor};

use crate::support::{ask, unescape, Fixture, Worker, FAKE_1_2, FAKE_1_3};

async fn ready(fx: &Fixture, runtime: &str) -> Worker {
    let mut w = fx.spawn().await;
    let answer = w.load(fx.load(runtime, "auto")).await;
    assert!(matches!(answer, WorkerToSupervisor::Ready(_)), "{answer:?}");
    w
}

/// Runs `g`; returns the answer and the cache report of its Done.
async fn turn(w: &mut Worker, g: Generate) -> (String, CacheReport, u32) {
    let id = g.request_id;
    w.send(SupervisorToWorker::Generate(g)).await;
    let (pieces, end) = w.collect(id).await;
    let WorkerToSupervisor::Done(done) = end else {
        panic!("{end:?}")
    };
    (pieces.concat(), done.cache, done.stats.cached_tokens)
}

fn keyed(id: u64, key: &str, messages: Vec<ChatMessage>) -> Generate {
    Generate {
        conversation: Some(key.into()),
        messages,
        ..ask(id, "")
    }
}

#[tokio::test]
async fn a_growing_conversation_continues_in_the_runtimes_history() {
    for runtime in [FAKE_1_2, FAKE_1_3] {
        let fx = Fixture::new();
        let mut w = ready(&fx, runtime).await;
        let mut chat = vec![ChatMessage::new(Role::User, "First question")];
        let (a1, cache, cached) = turn(&mut w, keyed(1, "c", chat.clone())).await;
        assert_eq!(fx.recorded("run_keep_history").as_deref(), Some("1"));
        assert_eq!(fx.recorded("run_history_chars").as_deref(), Some("0"));
        assert_eq!(cached, 0);
        assert_eq!(cache.held.len(), 1, "{cache:?}");
        let held_tokens = cache.held[0].tokens;
        assert!(held_tokens > 0);

        chat.push(ChatMessage::new(Role::Assistant, a1.clone()));
        chat.push(ChatMessage::new(Role::User, "Second question"));
        let (_, cache, cached) = turn(&mut w, keyed(2, "c", chat.clone())).await;
        // Only the new turn went to the runtime ...
        assert_eq!(
            unescape(&fx.recorded("run_prompt").unwrap()),
            "Second question"
        );
        // ... and the runtime saw the earlier turn from its cache.
        let seen = unescape(&fx.recorded("run_seen").unwrap());
        assert!(seen.contains("First question"), "{seen:?}");
        assert!(seen.contains(&a1), "{seen:?}");
        assert!(seen.ends_with("Second question<|im_end|>\n<|im_start|>assistant\n"));
        assert_ne!(fx.recorded("run_history_chars").as_deref(), Some("0"));
        assert_eq!(cached, held_tokens);
        assert_eq!((cache.hits, cache.misses, cache.evictions), (1, 1, 0));
        assert_eq!(cache.reused_tokens, u64::from(held_tokens));
        assert!(fx.recorded("clear_kv_cache").is_none(), "never cleared");
    }
}

#[tokio::test]
async fn anything_but_growth_clears_the_cache_and_the_runtime_forgets() {
    let fx = Fixture::new();
    let mut w = ready(&fx, FAKE_1_3).await;
    let first = vec![ChatMessage::new(Role::User, "Secret plan")];
    let (a1, _, _) = turn(&mut w, keyed(1, "c", first.clone())).await;

    // Another conversation: the cache is cleared, the first is not seen.
    let other = vec![ChatMessage::new(Role::User, "Unrelated")];
    let (_, cache, cached) = turn(&mut w, keyed(2, "d", other)).await;
    assert_eq!(fx.recorded("clear_kv_cache").as_deref(), Some("0"));
    let seen = unescape(&fx.recorded("run_seen").unwrap());
    assert!(!seen.contains("Secret plan"), "{seen:?}");
    assert_eq!(cached, 0);
    assert_eq!((cache.misses, cache.evictions), (2, 1));
    assert_eq!(cache.held[0].key, "d");

    // The first conversation again, edited: it starts over with the whole prompt.
    let edited = vec![
        ChatMessage::new(Role::User, "Secret plan"),
        ChatMessage::new(Role::Assistant, format!("{a1} (edited)")),
        ChatMessage::new(Role::User, "And then?"),
    ];
    let (_, _, cached) = turn(&mut w, keyed(3, "c", edited)).await;
    assert_eq!(cached, 0);
    assert!(unescape(&fx.recorded("run_prompt").unwrap()).contains("Secret plan"));
    assert_eq!(fx.recorded("run_history_chars").as_deref(), Some("0"));

    // A request without a key clears and keeps nothing.
    let (_, cache, _) = turn(&mut w, ask(4, "One-off")).await;
    assert_eq!(fx.recorded("run_keep_history").as_deref(), Some("0"));
    assert!(cache.held.is_empty());
    let seen = unescape(&fx.recorded("run_seen").unwrap());
    assert!(!seen.contains("Secret plan") && !seen.contains("And then?"));
}
