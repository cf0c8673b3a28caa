//! Requests through the supervisor to a real worker-cpu on the real model.

use std::time::Duration;

use proto::admin::SlotState;
use proto::client::{ErrorKind, SupervisorToClient};

use crate::support::{collect, cpu_slot, fake_slot, greedy, model, streamed_text, user, Sup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stream_as_generated_and_two_plus_two_is_four() {
    let sup = Sup::start(&cpu_slot("primary", &model(), "")).await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;

    let mut client = sup.client().await;
    client
        .submit(user("What is 2+2?"), greedy(32))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(60)).await;
    let Some((_, SupervisorToClient::Done(done))) = events.last() else {
        panic!("no done: {events:?}")
    };
    assert_eq!(
        streamed_text(&events),
        done.text,
        "tokens must add up to the done text"
    );
    assert!(
        done.text.contains('4'),
        "greedy answer to 2+2 without a 4: {:?}",
        done.text
    );
    assert!(
        matches!(events[0].1, SupervisorToClient::Started(_)),
        "{:?}",
        events[0].1
    );

    // A longer answer: the first token must reach us long before the end,
    // i.e. the stream is relayed token by token, not as one blob.
    client
        .submit(
            user("Write a long story about a lighthouse keeper."),
            greedy(120),
        )
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(120)).await;
    let tokens: Vec<_> = events
        .iter()
        .filter(|(_, e)| matches!(e, SupervisorToClient::Token(_)))
        .collect();
    let (done_at, SupervisorToClient::Done(done)) = events.last().unwrap() else {
        panic!("no done: {events:?}")
    };
    assert!(tokens.len() > 20, "only {} token events", tokens.len());
    let first_at = tokens[0].0;
    let spread = done_at.duration_since(first_at).as_secs_f64() * 1000.0;
    assert!(
        spread > done.stats.decode_ms * 0.5,
        "first token arrived {spread:.0} ms before done, but decoding took {:.0} ms: tokens were held back",
        done.stats.decode_ms
    );
    assert_eq!(
        done.stats.generated_tokens as usize,
        tokens.len().max(done.stats.generated_tokens as usize)
    );
    assert_eq!(streamed_text(&events), done.text);

    let slot = sup.slot("primary").await;
    assert_eq!(slot.requests_served, 2);
    assert!(slot.last_decode_tps.unwrap() > 0.0);
    assert!(slot.rss_anon_kb.unwrap() > 0);
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_both_complete_and_the_second_is_told_its_place() {
    let sup = Sup::start(&cpu_slot("primary", &model(), "")).await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    let mut first = sup.client().await;
    let mut second = sup.client().await;
    first
        .submit(user("Name three colours."), greedy(48))
        .await
        .unwrap();
    // Make sure the first is being served before the second arrives.
    let started = first.next_event().await.unwrap();
    assert!(
        matches!(started, SupervisorToClient::Started(_)),
        "{started:?}"
    );
    second
        .submit(user("What is 2+2?"), greedy(16))
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        collect(&mut first, Duration::from_secs(120)),
        collect(&mut second, Duration::from_secs(120))
    );
    assert!(
        matches!(a.last().unwrap().1, SupervisorToClient::Done(_)),
        "{a:?}"
    );
    assert!(
        matches!(b.last().unwrap().1, SupervisorToClient::Done(_)),
        "{b:?}"
    );
    let SupervisorToClient::Queued(q) = &b[0].1 else {
        panic!("second request was not told it was queued: {:?}", b[0].1)
    };
    assert_eq!(q.position, 1);
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_frees_the_worker() {
    // 40 ms per token: uncancelled, 400 tokens would keep the worker busy 16 s.
    let slot = fake_slot("primary", "token-ms=40", "");
    let sup = Sup::start(&slot).await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    let mut client = sup.client().await;
    client
        .submit(user("Write a very long story about the sea."), greedy(400))
        .await
        .unwrap();
    let mut tokens = 0;
    while tokens < 3 {
        if let SupervisorToClient::Token(_) = client.next_event().await.unwrap() {
            tokens += 1;
        }
    }
    assert_eq!(sup.slot("primary").await.state, SlotState::Busy);
    drop(client);
    let freed = sup
        .wait_state("primary", SlotState::Ready, Duration::from_secs(3))
        .await;
    assert_eq!(freed.restarts, 0, "cancel must not need a restart");
    // And it serves the next request.
    let mut next = sup.client().await;
    next.submit(user("What is 2+2?"), greedy(8)).await.unwrap();
    let events = collect(&mut next, Duration::from_secs(30)).await;
    assert!(matches!(
        events.last().unwrap().1,
        SupervisorToClient::Done(_)
    ));
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_empty_requests_are_refused_clearly() {
    let sup = Sup::start(&format!("{}\n", cpu_slot("primary", &model(), ""))).await;
    let mut client = sup.client().await;
    let limit = sup.config.supervisor.max_prompt_chars;
    client
        .submit(user(&"a".repeat(limit + 1)), greedy(8))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(10)).await;
    let SupervisorToClient::Error(e) = &events[0].1 else {
        panic!("{events:?}")
    };
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("limit"), "{}", e.message);
    client.submit(Vec::new(), greedy(8)).await.unwrap();
    let events = collect(&mut client, Duration::from_secs(10)).await;
    let SupervisorToClient::Error(e) = &events[0].1 else {
        panic!("{events:?}")
    };
    assert!(e.message.contains("no messages"), "{}", e.message);
    sup.stop().await;
}
