//! A conversation through the supervisor to a real worker-cpu on the real
//! model: its second turn reuses the first's KV cache, and the slot's cache
//! figures show in `supctl status`'s report and in /metrics.

use std::time::Duration;

use proto::admin::SlotState;
use proto::chat::{ChatMessage, Role};
use proto::client::SupervisorToClient;

use crate::operate::{free_port, get, metric};
use crate::support::{collect, cpu_slot, greedy, model, Sup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_turn_reuses_the_cache_and_the_figures_show() {
    let port = free_port();
    let sup = Sup::start(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n{}",
        cpu_slot(
            "primary",
            &model(),
            "[slots.primary.cpu]\ncache_sequences = 2\n"
        )
    ))
    .await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    let mut client = sup.client().await;
    let mut chat = vec![
        ChatMessage::new(Role::System, "You are terse."),
        ChatMessage::new(Role::User, "What is the capital of France?"),
    ];
    let key = Some("chain-1".to_owned());
    client
        .submit_in(chat.clone(), greedy(16), String::new(), key.clone())
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(120)).await;
    let Some((_, SupervisorToClient::Done(first))) = events.last() else {
        panic!("no done: {events:?}")
    };
    assert_eq!(first.stats.cached_tokens, 0);
    chat.push(ChatMessage::new(Role::Assistant, first.text.clone()));
    chat.push(ChatMessage::new(Role::User, "And of Spain?"));
    client
        .submit_in(chat, greedy(16), String::new(), key)
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(120)).await;
    let Some((_, SupervisorToClient::Done(second))) = events.last() else {
        panic!("no done: {events:?}")
    };
    assert!(
        second.stats.cached_tokens >= first.stats.prompt_tokens,
        "{} reused, turn 1 had {} prompt tokens",
        second.stats.cached_tokens,
        first.stats.prompt_tokens
    );

    let cache = sup.slot("primary").await.cache;
    assert_eq!((cache.hits, cache.misses, cache.capacity), (1, 1, 2));
    assert_eq!(cache.reused_tokens, u64::from(second.stats.cached_tokens));
    assert_eq!(cache.held.len(), 1);
    assert_eq!(cache.held[0].key, "chain-1");
    assert!(cache.kv_bytes_per_sequence > 0);

    // /metrics follows the published snapshot (at most a second behind).
    let labels = [("slot", "primary"), ("event", "hit")];
    let mut hits = 0.0;
    for _ in 0..100 {
        let (code, text) = get(port, "/metrics").await;
        if code == 200 && text.contains("rocksteady_kv_cache_events_total") {
            hits = metric(&text, "rocksteady_kv_cache_events_total", &labels);
            if hits >= 1.0 {
                let reused = metric(
                    &text,
                    "rocksteady_kv_cache_reused_tokens_total",
                    &[("slot", "primary")],
                );
                assert!((reused - f64::from(second.stats.cached_tokens)).abs() < 0.5);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!((hits - 1.0).abs() < 0.5, "hits in /metrics: {hits}");
}
