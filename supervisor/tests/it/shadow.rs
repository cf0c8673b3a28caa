//! The shadowing standby on the real model: while one slot serves, the idle
//! CPU slot prefills the prompt and the answer so far (`Warm`), so the
//! failover after a kill -9 reuses that KV cache instead of a cold prefill;
//! and the failover latency with shadowing on and off, as printed figures.

use std::io::Write;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proto::admin::SlotState;
use proto::chat::{ChatMessage, Role};
use proto::client::SupervisorToClient;

use supervisor::client::ChatClient;

use crate::support::{collect, cpu_slot, fake_slot, greedy, model, Sup, FAST_POLICY};

fn sigkill(pid: u32) {
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();
}

/// A prompt long enough that its cold prefill shows.
fn chat() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(
            Role::System,
            "You are a patient storyteller. You write long, vivid stories with \
             many details about places, weather, people and what they feel, and \
             you never stop early.",
        ),
        ChatMessage::new(
            Role::User,
            "Write a long story about a lighthouse keeper, her dog and a storm \
             that lasts three days.",
        ),
    ]
}

/// Starts a long request and reads `tokens` token frames from `slot`.
async fn start(sup: &Sup, slot: &str, tokens: usize) -> ChatClient {
    let mut client = sup.client().await;
    client.submit(chat(), greedy(400)).await.unwrap();
    let mut seen = 0;
    while seen < tokens {
        match client.next_event().await.unwrap() {
            SupervisorToClient::Started(s) => assert_eq!(s.slot, slot),
            SupervisorToClient::Token(_) => seen += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    client
}

/// A fake primary streaming slowly and a real CPU fallback, shadowing `shadow`.
async fn pair_with_fake(shadow: bool) -> Sup {
    let sup = Sup::start(&format!(
        "{FAST_POLICY}shadow = {shadow}\nshadow_every_tokens = 8\n{}{}",
        fake_slot("primary", "token-ms=40", ""),
        cpu_slot("fallback", &model(), "")
    ))
    .await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    sup.wait_state("fallback", SlotState::Ready, Duration::from_secs(60))
        .await;
    sup
}

/// The failover's Done: how many prompt tokens the fallback took from its cache.
async fn failover_cached_tokens(shadow: bool) -> (u32, u32) {
    let sup = pair_with_fake(shadow).await;
    let mut client = start(&sup, "primary", 20).await;
    // The warm of the answer so far (every 8 tokens) has had its time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = sup.status().await;
    let slot = |name: &str| status.slots.iter().find(|s| s.name == name).unwrap();
    if shadow {
        // Status names the shadow on both sides (stopped for slowing the
        // primary or not, it stays the failover's shadow).
        assert_eq!(slot("primary").shadowed_by.as_deref(), Some("fallback"));
        let sh = slot("fallback").shadowing.clone().expect("shadowing");
        assert_eq!(sh.serving, "primary");
        assert!(sh.streamed_tokens >= 20, "{sh:?}");
    } else {
        assert_eq!(slot("primary").shadowed_by, None);
        assert_eq!(slot("fallback").shadowing, None);
    }
    sigkill(slot("primary").pid.unwrap());
    let events = collect(&mut client, Duration::from_secs(120)).await;
    assert!(
        events
            .iter()
            .any(|(_, e)| matches!(e, SupervisorToClient::Failover(_))),
        "no failover: {events:?}"
    );
    let Some((_, SupervisorToClient::Done(done))) = events.last() else {
        panic!("no done: {events:?}")
    };
    let reused = sup.slot("fallback").await.cache.reused_tokens;
    sup.stop().await;
    (done.stats.cached_tokens, u32::try_from(reused).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_reuses_what_the_shadow_prefilled() {
    let (cached, reused) = failover_cached_tokens(true).await;
    // The prompt alone is some 70 tokens; the warm also covered the answer
    // up to its last multiple of 8 tokens.
    assert!(
        cached >= 60,
        "the failover took only {cached} tokens from the shadow's cache"
    );
    assert_eq!(reused, cached, "the fallback's cache figures count them");
    // Without the shadow, the same failover is a cold prefill.
    let (cached, _) = failover_cached_tokens(false).await;
    assert_eq!(cached, 0);
}

/// Two real CPU slots; kill -9 of the serving primary after `after` tokens,
/// `runs` times: milliseconds from the kill to the next token, and the
/// shadow stops for slowing the primary (`policy.shadow_max_slowdown` =
/// `max_slowdown`).
async fn failover_latencies(
    shadow: bool,
    every: u32,
    max_slowdown: f64,
    runs: usize,
    after: usize,
) -> (Vec<f64>, u64) {
    let policy = FAST_POLICY.replace("restart_intensity = 5", "restart_intensity = 20");
    let sup = Sup::start(&format!(
        "{policy}shadow = {shadow}\nshadow_every_tokens = {every}\nshadow_max_slowdown = {max_slowdown:.2}\n{}{}",
        cpu_slot("primary", &model(), ""),
        cpu_slot("fallback", &model(), "")
    ))
    .await;
    let mut figures = Vec::new();
    for _ in 0..runs {
        sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
            .await;
        sup.wait_state("fallback", SlotState::Ready, Duration::from_secs(60))
            .await;
        // Past the failback hold-down: the primary is the active slot again.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut client = start(&sup, "primary", after).await;
        let pid = sup.slot("primary").await.pid.unwrap();
        let at = Instant::now();
        sigkill(pid);
        let mut failed_over = false;
        loop {
            match client.next_event().await.unwrap() {
                SupervisorToClient::Failover(_) => failed_over = true,
                SupervisorToClient::Token(_) if failed_over => {
                    figures.push(at.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                SupervisorToClient::Done(_) | SupervisorToClient::Error(_) => {
                    panic!("ended without failover")
                }
                _ => {}
            }
        }
        client.cancel(1).await.unwrap();
        drop(client);
    }
    let stops = sup.status().await.shadow.stops_for_slowdown;
    sup.stop().await;
    (figures, stops)
}

/// Figures, not assertions of speed: failover latency (SIGKILL of the
/// serving CPU worker after 60 streamed tokens to the next token from the
/// other CPU worker) with shadowing every 8 and every 32 tokens and off,
/// medians of 3 runs each. The two CPU workers share this machine's cores,
/// so the warms do slow the primary: the "every 8/32" runs allow any
/// slowdown (they measure what the shadow buys), and one more set runs
/// with the default `shadow_max_slowdown` and prints how often it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_latency_with_and_without_the_shadow_figures() {
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut every8, _) = failover_latencies(true, 8, 100.0, 3, 60).await;
    let (mut every32, _) = failover_latencies(true, 32, 100.0, 3, 60).await;
    let (mut off, _) = failover_latencies(false, 8, 100.0, 3, 60).await;
    let (mut guarded, stops) = failover_latencies(true, 8, 1.25, 3, 60).await;
    let round = |v: &[f64]| v.iter().map(|x| x.round()).collect::<Vec<_>>();
    let line = format!(
        "\nFIGURES shadow: failover latency (SIGKILL after 60 tokens -> next token, two CPU slots) shadow every 8 tokens median {:.0} ms of {:?}; every 32 median {:.0} ms of {:?}; shadow off median {:.0} ms of {:?}; every 8 with shadow_max_slowdown 1.25 median {:.0} ms of {:?}, shadowing stopped for slowing the primary in {stops} of 3 requests\n",
        median(&mut every8),
        round(&every8),
        median(&mut every32),
        round(&every32),
        median(&mut off),
        round(&off),
        median(&mut guarded),
        round(&guarded),
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    assert_eq!(
        (every8.len(), every32.len(), off.len(), guarded.len()),
        (3, 3, 3, 3)
    );
}
