//! Access and fairness: allowlists and the per-user limits answer with a
//! short refusal, and never reach the model.

use std::sync::Arc;
use std::time::Duration;

use crate::fake_discord::{Record, CHANNEL, GUILD};
use crate::harness;
use crate::stand_in::{echo_answer, footer, stream_answer, StandIn, Step};
use crate::{finished_answer, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_outside_the_allowlist_is_refused() {
    let bot = harness::start(|c| c.allowed_users = vec![1001]).await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 30, Duration::ZERO)),
    );
    let q = bot.discord.user_message(CHANNEL, 2002, "Let me in", true);
    let refusal = finished_answer(&bot.discord, CHANNEL, q, "can't answer you here.").await;
    assert_eq!(refusal.len(), 1);
    // An allowed user in the same channel is served, and only that one request reached the model.
    let ok = bot.discord.user_message(CHANNEL, 1001, "Me too", true);
    finished_answer(&bot.discord, CHANNEL, ok, &footer()).await;
    let submits = supervisor.submits();
    assert_eq!(submits.len(), 1);
    assert_eq!(submits[0].messages.last().unwrap().content, "Me too");
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_concurrent_request_is_refused() {
    let bot = harness::start(|_| {}).await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| {
            let mut steps = vec![Step::Wait(Duration::from_millis(1500))];
            steps.extend(stream_answer(&echo_answer(s), 30, Duration::from_millis(5)));
            steps
        }),
    );
    let first = bot
        .discord
        .user_message(CHANNEL, 1001, "Slow question", true);
    supervisor.wait_submits(1).await;
    let second = bot
        .discord
        .user_message(CHANNEL, 1001, "Impatient question", true);
    let refusal = finished_answer(
        &bot.discord,
        CHANNEL,
        second,
        "please wait for it to finish.",
    )
    .await;
    assert!(refusal[0].1.contains("still answering"), "{}", refusal[0].1);
    finished_answer(&bot.discord, CHANNEL, first, &footer()).await;
    // Another user is not held up by the first one.
    let other = bot.discord.user_message(CHANNEL, 3003, "Unrelated", true);
    finished_answer(&bot.discord, CHANNEL, other, &footer()).await;
    assert_eq!(supervisor.submits().len(), 2);
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_follow_allow_dms() {
    let bot = harness::start(|_| {}).await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 30, Duration::ZERO)),
    );
    // In a DM every message is a question; no mention needed.
    let q = bot.discord.direct_message(700, 1001, "Hello in private");
    finished_answer(&bot.discord, 700, q, &footer()).await;
    assert_eq!(
        supervisor.submits()[0].messages.last().unwrap().content,
        "Hello in private"
    );
    bot.stop().await.unwrap();

    let bot = harness::start(|c| c.allow_dms = false).await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 30, Duration::ZERO)),
    );
    // With DMs off a DM gets no answer and no refusal: the bot is silent there.
    bot.discord.direct_message(700, 1001, "Hello again");
    let q = bot.discord.user_message(CHANNEL, 1001, "In public", true);
    finished_answer(&bot.discord, CHANNEL, q, &footer()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(bot.discord.channel_requests(700).is_empty());
    assert_eq!(supervisor.submits().len(), 1);
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_the_allowlist_the_bot_is_silent() {
    const OTHER_CHANNEL: u64 = 601;
    const OTHER_GUILD: u64 = 501;
    const DM: u64 = 700;
    let bot = harness::start(|c| {
        c.allowed_guilds = vec![GUILD];
        c.allowed_channels = vec![CHANNEL];
        c.allow_dms = false;
    })
    .await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 30, Duration::ZERO)),
    );
    // Empty mentions and questions in a channel, a guild and DMs the bot
    // does not serve.
    bot.discord.user_message(OTHER_CHANNEL, 1001, "", true);
    bot.discord
        .user_message(OTHER_CHANNEL, 1001, "Anyone here?", true);
    bot.discord
        .guild_message(OTHER_GUILD, OTHER_CHANNEL + 1, 1001, "", true);
    bot.discord
        .guild_message(OTHER_GUILD, OTHER_CHANNEL + 1, 1001, "Hello?", true);
    bot.discord.direct_message(DM, 1001, "");
    bot.discord.direct_message(DM, 1001, "Psst");
    // Where it is allowed, an empty mention gets the hint and a question an
    // answer (so the messages above were handled by now, in whatever order).
    let empty = bot.discord.user_message(CHANNEL, 1001, "", true);
    finished_answer(
        &bot.discord,
        CHANNEL,
        empty,
        "mention me followed by your question.",
    )
    .await;
    let q = bot
        .discord
        .user_message(CHANNEL, 1001, "Real question", true);
    finished_answer(&bot.discord, CHANNEL, q, &footer()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for channel in [OTHER_CHANNEL, OTHER_CHANNEL + 1, DM] {
        let requests = bot.discord.channel_requests(channel);
        assert!(
            requests.is_empty(),
            "the bot wrote in channel {channel}: {:?}",
            requests
                .iter()
                .map(|r| format!("{} {} {}", r.method, r.path, r.body))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(supervisor.submits().len(), 1);
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_do_not_flood_or_delay_answers() {
    let bot = harness::start(|c| c.allowed_users = vec![1001]).await;
    let answer = "word ".repeat(150);
    let scripted = answer.clone();
    let _supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(move |_| stream_answer(&scripted, 5, Duration::from_millis(20))),
    );
    let question = bot
        .discord
        .user_message(CHANNEL, 1001, "Tell me a long story", true);
    bot.discord
        .wait_for("the answer to start", WAIT, |d| {
            (!d.creates(CHANNEL).is_empty()).then_some(())
        })
        .await;
    // While the answer streams, a user who may not ask posts every 400 ms
    // (a little more than one edit interval).
    let mut refused = Vec::new();
    for i in 0..5 {
        refused.push(
            bot.discord
                .user_message(CHANNEL, 2002, &format!("Let me in ({i})"), true),
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let messages = finished_answer(&bot.discord, CHANNEL, question, &footer()).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].1, format!("{answer}\n{}", footer()));
    finished_answer(&bot.discord, CHANNEL, refused[0], "can't answer you here.").await;

    // The answer's writes came one after another: the notice, asked for
    // while the answer was streaming, waited until the answer had nothing
    // more to write.
    let reply = messages[0].0;
    let is_answer = |r: &Record| {
        r.path.ends_with(&format!("/messages/{reply}"))
            || r.body["message_reference"]["message_id"] == serde_json::json!(question.to_string())
    };
    let writes = bot.discord.writes(CHANNEL);
    let order: String = writes
        .iter()
        .map(|r| if is_answer(r) { 'a' } else { 'n' })
        .collect();
    assert!(order.starts_with('a') && order.ends_with("an"), "{order}");
    assert_eq!(order.matches('n').count(), 1, "{order}");
    assert!(
        order.len() > 4,
        "the answer was streamed in several edits: {order}"
    );

    let reactions = bot
        .discord
        .wait_for("the later refusals' reactions", WAIT, |d| {
            let reactions = d.reactions(CHANNEL);
            (reactions.len() >= 4).then_some(reactions)
        })
        .await;

    // One notice; the later refusals in the window are reactions only.
    let notices: Vec<u64> = bot
        .discord
        .creates(CHANNEL)
        .iter()
        .filter_map(|r| {
            r.body["message_reference"]["message_id"]
                .as_str()?
                .parse()
                .ok()
        })
        .filter(|parent| refused.contains(parent))
        .collect();
    assert_eq!(notices, [refused[0]]);
    let mut reacted: Vec<u64> = reactions.iter().map(|(id, _)| *id).collect();
    reacted.sort_unstable();
    assert_eq!(reacted, refused[1..]);
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_bounded() {
    let bot = harness::start(|c| c.max_in_flight = 2).await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| {
            let mut steps = vec![Step::Wait(Duration::from_millis(1500))];
            steps.extend(stream_answer(&echo_answer(s), 30, Duration::ZERO));
            steps
        }),
    );
    // Four users ask at once; two slots.
    let asked: Vec<u64> = (0..4)
        .map(|i| {
            bot.discord
                .user_message(CHANNEL, 1001 + i, &format!("Question {i}"), true)
        })
        .collect();
    supervisor.wait_submits(2).await;
    for q in &asked[..2] {
        finished_answer(&bot.discord, CHANNEL, *q, &footer()).await;
    }
    // The other two were dropped: never submitted, never answered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut submitted: Vec<String> = supervisor
        .submits()
        .iter()
        .map(|s| s.messages.last().unwrap().content.clone())
        .collect();
    submitted.sort();
    assert_eq!(submitted, ["Question 0", "Question 1"]);
    for q in &asked[2..] {
        assert!(bot.discord.answer_messages(CHANNEL, *q).is_empty());
    }
    // The bot's own messages (echoed back by Discord) took no slot, and the
    // slots are free again once the answers are complete.
    let later = bot.discord.user_message(CHANNEL, 1009, "Later", true);
    finished_answer(&bot.discord, CHANNEL, later, &footer()).await;
    assert_eq!(supervisor.submits().len(), 3);
    bot.stop().await.unwrap();
}
