//! Streaming a reply: created as a reply, edited as tokens arrive, paced per
//! channel, complete despite 429s, split over several messages when long.

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use gateway::split::fence_lines;

use crate::fake_discord::CHANNEL;
use crate::harness::{self, INTERVAL};
use crate::stand_in::{echo_answer, footer, stream_answer, StandIn};
use crate::{assert_no_overlap, assert_paced, finished_answer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mention_gets_a_streamed_reply() {
    let bot = harness::start(|_| {}).await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 5, Duration::from_millis(40))),
    );
    let question = bot
        .discord
        .user_message(CHANNEL, 1001, "What is rocksteady?", true);
    let footer = footer();
    let messages = finished_answer(&bot.discord, CHANNEL, question, &footer).await;

    let submits = supervisor.submits();
    assert_eq!(
        submits.len(),
        1,
        "one request, though the bot's own messages came back"
    );
    let turns = crate::stand_in::turns(&submits[0].messages);
    assert_eq!(
        turns,
        vec![
            ("system".into(), "You are a test assistant.".into()),
            ("user".into(), "What is rocksteady?".into()),
        ]
    );
    let answer = echo_answer(&submits[0]);
    assert_eq!(messages.len(), 1);
    let (reply_id, content) = &messages[0];
    assert_eq!(content, &format!("{answer}\n{footer}"));

    // Created as a silent reply without pings.
    let creates = bot.discord.creates(CHANNEL);
    assert_eq!(creates.len(), 1);
    let create = &creates[0].body;
    assert_eq!(
        create["message_reference"]["message_id"]
            .as_str()
            .map(str::to_owned),
        Some(question.to_string())
    );
    assert_eq!(create["allowed_mentions"]["parse"], serde_json::json!([]));
    assert_eq!(create["flags"].as_u64().unwrap_or(0) & 4096, 4096);

    // Edited as tokens arrived: every edit but the last shows a prefix of the answer.
    let edits = bot.discord.edits(CHANNEL, *reply_id);
    assert!(edits.len() >= 2, "only {} edits", edits.len());
    for edit in &edits[..edits.len() - 1] {
        let text = edit.body["content"].as_str().unwrap();
        assert!(answer.starts_with(text), "edit {text:?} is not a prefix");
    }
    assert!(create["content"].as_str().unwrap().len() < answer.len());

    // Typing shown before the first token.
    let records = bot.discord.records();
    let typing = records
        .iter()
        .position(|r| r.method == Method::POST && r.path.ends_with("/typing"))
        .expect("typing indicator");
    let first_create = records
        .iter()
        .position(|r| r.method == Method::POST && r.path.ends_with("/messages"))
        .unwrap();
    assert!(typing < first_create);

    assert_paced(&bot.discord.writes(CHANNEL), INTERVAL);
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_edits_still_end_complete() {
    let bot = harness::start(|_| {}).await;
    bot.discord.rate_limit_every(2);
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 4, Duration::from_millis(30))),
    );
    let question = bot.discord.user_message(CHANNEL, 1001, "Rate me", true);
    let messages = finished_answer(&bot.discord, CHANNEL, question, &footer()).await;
    let answer = echo_answer(&supervisor.submits()[0]);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].1, format!("{answer}\n{}", footer()));
    let edits = bot.discord.edits(CHANNEL, messages[0].0);
    assert!(
        edits.iter().any(|r| r.status == 429),
        "the fake answered some edits with 429"
    );
    assert_no_overlap(&edits);
    bot.stop().await.unwrap();
}

/// Rebuilds the answer from split messages: strips the footer and the fences
/// the bot added, and checks the pieces follow each other exactly.
fn rejoin(contents: &[String], footer: &str, answer: &str) -> String {
    let mut joined = String::new();
    for (i, content) in contents.iter().enumerate() {
        let mut content = content.as_str();
        if i + 1 == contents.len() {
            content = content
                .strip_suffix(&format!("\n{footer}"))
                .expect("footer on the last message");
        }
        let mut candidates = vec![content.to_owned()];
        for suffix in ["\n```", "```"] {
            if let Some(stripped) = content.strip_suffix(suffix) {
                candidates.push(stripped.to_owned());
            }
        }
        for candidate in candidates.clone() {
            if candidate.starts_with("```") {
                if let Some((_, after)) = candidate.split_once('\n') {
                    candidates.push(after.to_owned());
                }
            }
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.len()));
        // The piece is the longest candidate that continues the text so far
        // (if none does, the longest, so the comparison shows the difference).
        let rest = answer.get(joined.len()..).unwrap_or_default();
        let piece = candidates
            .iter()
            .find(|c| rest.starts_with(c.as_str()))
            .unwrap_or(&candidates[0])
            .clone();
        joined.push_str(&piece);
    }
    joined
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_answer_continues_in_follow_ups() {
    let code: String = (0..110)
        .map(|i| format!("    let value_{i} = compute({i}); // step {i}\n"))
        .collect::<Vec<_>>()
        .concat();
    let answer = format!(
        "Here is the program you asked for:\n\n```rust\nfn main() {{\n{code}}}\n```\n\n{}",
        "Some closing words follow here. ".repeat(40)
    );
    assert!(answer.chars().count() > 5000);
    let scripted = answer.clone();
    let bot = harness::start(|_| {}).await;
    let _supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(move |_| stream_answer(&scripted, 150, Duration::from_millis(15))),
    );
    let question = bot
        .discord
        .user_message(CHANNEL, 1001, "Write a long program", true);
    let messages = finished_answer(&bot.discord, CHANNEL, question, &footer()).await;
    assert!(messages.len() >= 3, "{} messages", messages.len());
    for (_, content) in &messages {
        assert!(
            content.chars().count() <= 2000,
            "{} chars",
            content.chars().count()
        );
        assert_eq!(
            fence_lines(content) % 2,
            0,
            "unbalanced fences in {content}"
        );
    }
    // The middle of the code block is reopened with its language.
    assert!(messages[1].1.starts_with("```rust\n"), "{}", messages[1].1);
    let contents: Vec<String> = messages.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(rejoin(&contents, &footer(), &answer), answer);
    // Pacing holds across the messages of one channel.
    assert_paced(&bot.discord.writes(CHANNEL), INTERVAL);
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_messages_are_ignored() {
    let bot = harness::start(|_| {}).await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 50, Duration::ZERO)),
    );
    let human = bot.discord.user_message(CHANNEL, 1001, "human", true);
    // Another bot mentioning us is not answered.
    let bot_question = {
        let id = bot.discord.new_id();
        let mut message = serde_json::json!({
            "id": id.to_string(),
            "channel_id": CHANNEL.to_string(),
            "guild_id": crate::fake_discord::GUILD.to_string(),
            "author": {"id": "4242", "username": "otherbot", "discriminator": "0000", "avatar": null, "bot": true},
            "content": format!("<@{}> hello", crate::fake_discord::BOT_ID),
            "timestamp": "2024-01-01T00:00:00+00:00",
            "tts": false, "mention_everyone": false, "mention_roles": [],
            "attachments": [], "embeds": [], "pinned": false, "type": 0,
        });
        message["mentions"] = serde_json::json!([{"id": crate::fake_discord::BOT_ID.to_string(), "username": "rocksteady", "discriminator": "0000", "avatar": null, "bot": true, "public_flags": 0}]);
        bot.discord.dispatch("MESSAGE_CREATE", &message);
        id
    };
    finished_answer(&bot.discord, CHANNEL, human, &footer()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(supervisor.submits().len(), 1);
    assert!(bot
        .discord
        .answer_messages(CHANNEL, bot_question)
        .is_empty());
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_position_and_failover_are_shown() {
    use proto::chat::Backend;
    use proto::client::{Failover, Queued, SupervisorToClient};

    use crate::stand_in::Step;

    let bot = harness::start(|_| {}).await;
    let _supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| {
            let mut steps = vec![
                Step::Send(SupervisorToClient::Queued(Queued {
                    request_id: 0,
                    position: 2,
                    reason: "board cooling down".into(),
                })),
                Step::Wait(Duration::from_millis(800)),
            ];
            let mut answer = stream_answer(&echo_answer(s), 10, Duration::from_millis(10));
            let done = answer.pop().unwrap();
            answer.push(Step::Send(SupervisorToClient::Failover(Failover {
                request_id: 0,
                from: Backend::Npu,
                to: Backend::Cpu,
                reason: "hang".into(),
            })));
            answer.push(done);
            steps.extend(answer);
            steps
        }),
    );
    let question = bot.discord.user_message(CHANNEL, 1001, "Busy?", true);
    let messages = finished_answer(&bot.discord, CHANNEL, question, &footer()).await;
    let creates = bot.discord.creates(CHANNEL);
    assert_eq!(
        creates[0].body["content"],
        serde_json::json!("⏳ Queued: position 2 (board cooling down)")
    );
    assert!(
        messages[0].1.ends_with(&format!(
            "\n-# ↪ switched from npu to cpu (hang)\n{}",
            footer()
        )),
        "{}",
        messages[0].1
    );
    bot.stop().await.unwrap();
}
