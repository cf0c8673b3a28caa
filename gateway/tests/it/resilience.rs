//! Resilience: gateway resume without double answers, the supervisor being
//! down and coming back, and fatal gateway close codes.

use std::sync::Arc;
use std::time::Duration;

use gateway::GatewayError;

use crate::fake_discord::{FakeDiscord, CHANNEL};
use crate::harness;
use crate::stand_in::{echo_answer, footer, stream_answer, StandIn};
use crate::{finished_answer, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_does_not_answer_a_replayed_message_twice() {
    let bot = harness::start(|_| {}).await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 30, Duration::from_millis(5))),
    );
    let footer = footer();
    let q1 = bot
        .discord
        .user_message(CHANNEL, 1001, "Before the reconnect", true);
    finished_answer(&bot.discord, CHANNEL, q1, &footer).await;

    bot.discord.reconnect();
    bot.discord
        .wait_for("the bot to resume", WAIT, |d| {
            (d.resumes() == 1 && d.live_sessions() == 1).then_some(())
        })
        .await;
    assert_eq!(bot.discord.identifies(), 1, "resumed, not identified again");

    bot.discord.replay_message(q1);
    let q2 = bot
        .discord
        .user_message(CHANNEL, 1001, "After the reconnect", true);
    finished_answer(&bot.discord, CHANNEL, q2, &footer).await;
    // Give a double answer to q1 time to show up, if there were one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let submits = supervisor.submits();
    assert_eq!(submits.len(), 2);
    assert_eq!(
        submits[1].messages.last().unwrap().content,
        "After the reconnect"
    );
    let replies_to_q1 = bot
        .discord
        .creates(CHANNEL)
        .into_iter()
        .filter(|r| r.body["message_reference"]["message_id"] == serde_json::json!(q1.to_string()))
        .count();
    assert_eq!(replies_to_q1, 1);
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_down_then_up() {
    let bot = harness::start(|_| {}).await;
    let q1 = bot
        .discord
        .user_message(CHANNEL, 1001, "Anyone there?", true);
    let down = finished_answer(
        &bot.discord,
        CHANNEL,
        q1,
        "please try again in a little while.",
    )
    .await;
    assert!(down[0].1.contains("not running"), "{}", down[0].1);

    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 30, Duration::from_millis(5))),
    );
    let q2 = bot.discord.user_message(CHANNEL, 1001, "Now?", true);
    let up = finished_answer(&bot.discord, CHANNEL, q2, &footer()).await;
    assert!(up[0].1.starts_with("You asked: \"Now?\""), "{}", up[0].1);

    // The supervisor restarts in the middle of nothing: the link reconnects.
    supervisor.stop().await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 30, Duration::from_millis(5))),
    );
    let q3 = bot
        .discord
        .user_message(CHANNEL, 1001, "And after a restart?", true);
    finished_answer(&bot.discord, CHANNEL, q3, &footer()).await;
    assert_eq!(supervisor.submits().len(), 1);
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lost_before_it_was_taken_is_sent_again() {
    let bot = harness::start(|_| {}).await;
    let supervisor = StandIn::start_dropping(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 30, Duration::from_millis(5))),
        true,
    );
    let q = bot
        .discord
        .user_message(CHANNEL, 1001, "Lucky timing?", true);
    let messages = finished_answer(&bot.discord, CHANNEL, q, &footer()).await;
    let submits = supervisor.submits();
    assert_eq!(submits.len(), 2, "sent again after the connection dropped");
    assert_eq!(submits[0].messages, submits[1].messages);
    assert_eq!(
        messages[0].1,
        format!("{}\n{}", echo_answer(&submits[1]), footer())
    );
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_dying_mid_answer_is_reported() {
    let bot = harness::start(|_| {}).await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 3, Duration::from_millis(100))),
    );
    let q = bot.discord.user_message(CHANNEL, 1001, "Long one", true);
    bot.discord
        .wait_for("the answer to start", WAIT, |d| {
            (!d.answer_messages(CHANNEL, q).is_empty()).then_some(())
        })
        .await;
    supervisor.stop().await;
    let messages = finished_answer(&bot.discord, CHANNEL, q, "please try again.").await;
    assert!(
        messages[0].1.contains("answer cut short"),
        "{}",
        messages[0].1
    );
    bot.stop().await.unwrap();
}

async fn fatal_close(code: u16) -> GatewayError {
    let discord = FakeDiscord::start().await;
    discord.close_on_identify(code);
    let bot = harness::start_with(discord, |_| {});
    bot.ended(Duration::from_secs(20)).await.unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_ends_the_process_with_a_clear_error() {
    let err = fatal_close(4004).await;
    assert!(matches!(err, GatewayError::InvalidToken), "{err}");
    let text = err.to_string();
    assert!(text.contains("4004") && text.contains("token"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disallowed_intents_end_the_process_with_a_clear_error() {
    let err = fatal_close(4014).await;
    assert!(matches!(err, GatewayError::DisallowedIntents), "{err}");
    let text = err.to_string();
    assert!(text.contains("4014") && text.contains("intents"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_mid_answer_tells_the_user() {
    let bot = harness::start(|_| {}).await;
    let _supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 2, Duration::from_millis(100))),
    );
    let q = bot
        .discord
        .user_message(CHANNEL, 1001, "Take your time", true);
    bot.discord
        .wait_for("the answer to start", WAIT, |d| {
            (!d.answer_messages(CHANNEL, q).is_empty()).then_some(())
        })
        .await;
    let discord = bot.discord.clone();
    bot.stop().await.unwrap();
    let messages = discord.answer_messages(CHANNEL, q);
    let last = &messages.last().unwrap().1;
    assert!(
        last.ends_with("The bot is restarting; please ask again in a moment."),
        "{last}"
    );
    assert!(!last.contains("tok/s"), "not presented as complete");
}
