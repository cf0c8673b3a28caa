//! Conversations: context from reply chains, `/ask`, `/status`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;
use proto::admin::{
    Routing, SlotState, SlotStatus, StatusReport, ThermalLevel, ThermalStatus, ZoneTemp,
};
use proto::chat::Backend;
use serde_json::json;

use crate::fake_discord::{APP_ID, CHANNEL};
use crate::harness;
use crate::stand_in::{echo_answer, footer, start_admin, stream_answer, turns, StandIn};
use crate::{finished_answer, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_to_the_bot_carries_earlier_turns() {
    let bot = harness::start(|c| c.context_max_messages = 3).await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 20, Duration::from_millis(5))),
    );
    let footer = footer();
    let q1 = bot
        .discord
        .user_message(CHANNEL, 1001, "First question", true);
    let r1 = finished_answer(&bot.discord, CHANNEL, q1, &footer).await;
    let a1 = echo_answer(&supervisor.submits()[0]);

    // A reply to the bot's answer (without the mention) continues the conversation.
    let q2 = bot
        .discord
        .user_reply(CHANNEL, 1001, "Second question", r1[0].0);
    let r2 = finished_answer(&bot.discord, CHANNEL, q2, &footer).await;
    let submits = supervisor.submits();
    assert_eq!(submits.len(), 2);
    assert_eq!(
        turns(&submits[1].messages),
        vec![
            ("system".into(), "You are a test assistant.".into()),
            ("user".into(), "First question".into()),
            ("assistant".into(), a1.clone()),
            ("user".into(), "Second question".into()),
        ]
    );
    assert!(!r2[0].1.contains("left out"));
    // Both turns name the chain by its root message, the first question.
    let root = q1.to_string();
    assert_eq!(submits[0].conversation.as_deref(), Some(root.as_str()));
    assert_eq!(submits[1].conversation.as_deref(), Some(root.as_str()));

    // Three messages fit; the fourth back is over the budget, so the context
    // opens a new window with what fits in half of it (the answer replied
    // to), named by that message; the answer says older ones were left out.
    let a2 = echo_answer(&submits[1]);
    let q3 = bot
        .discord
        .user_reply(CHANNEL, 1001, "Third question", r2[0].0);
    let r3 = finished_answer(&bot.discord, CHANNEL, q3, &footer).await;
    let submits = supervisor.submits();
    assert_eq!(
        turns(&submits[2].messages),
        vec![
            ("system".into(), "You are a test assistant.".into()),
            ("assistant".into(), a2),
            ("user".into(), "Third question".into()),
        ]
    );
    let window = r2[0].0.to_string();
    assert_eq!(submits[2].conversation.as_deref(), Some(window.as_str()));
    assert!(
        r3[0]
            .1
            .contains("older messages were left out of the context"),
        "{}",
        r3[0].1
    );
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_command_is_deferred_then_edited() {
    let bot = harness::start(|_| {}).await;
    let supervisor = StandIn::start(
        &bot.client_socket(),
        Arc::new(|s| stream_answer(&echo_answer(s), 6, Duration::from_millis(40))),
    );
    // The commands were registered at start.
    let registered = bot
        .discord
        .wait_for("command registration", WAIT, |d| {
            d.records().into_iter().find(|r| {
                r.method == Method::PUT && r.path == format!("/applications/{APP_ID}/commands")
            })
        })
        .await;
    let names: Vec<&str> = registered
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["ask", "status"]);

    let sent = Instant::now();
    let token = bot.discord.slash_command(
        CHANNEL,
        1001,
        "ask",
        &json!([{"name": "prompt", "type": 3, "value": "Explain pacing"}]),
    );
    let original = format!("/webhooks/{APP_ID}/{token}/messages/@original");
    let expected_end = footer();
    let edits = bot
        .discord
        .wait_for("the /ask answer", WAIT, |d| {
            let edits: Vec<_> = d
                .records()
                .into_iter()
                .filter(|r| r.method == Method::PATCH && r.path == original)
                .collect();
            edits
                .last()
                .is_some_and(|r| {
                    r.body["content"]
                        .as_str()
                        .unwrap_or("")
                        .ends_with(&expected_end)
                })
                .then_some(edits)
        })
        .await;
    let records = bot.discord.records();
    let callback = records
        .iter()
        .find(|r| r.method == Method::POST && r.path.ends_with(&format!("/{token}/callback")))
        .expect("interaction answered");
    assert_eq!(callback.body["type"], json!(5), "deferred");
    assert!(callback.start.duration_since(sent) < Duration::from_secs(3));
    assert!(
        callback.end <= edits[0].start,
        "deferred before the first edit"
    );
    assert!(edits.len() >= 2, "edited as tokens arrived");

    let submits = supervisor.submits();
    assert_eq!(
        submits[0].messages.last().unwrap().content,
        "Explain pacing"
    );
    let answer = echo_answer(&submits[0]);
    assert_eq!(
        edits.last().unwrap().body["content"].as_str().unwrap(),
        format!("{answer}\n{}", footer())
    );
    bot.stop().await.unwrap();
}

fn report() -> StatusReport {
    StatusReport {
        version: "9.9.9".into(),
        pid: 4242,
        uptime_ms: 90_000,
        slots: vec![SlotStatus {
            name: "primary".into(),
            backend: Backend::Npu,
            state: SlotState::BackingOff,
            state_ms: 3_000,
            reason: "crashed".into(),
            pid: None,
            model: "qwen".into(),
            profile: "normal".into(),
            profile_reason: String::new(),
            rss_anon_kb: None,
            rss_file_kb: None,
            vm_hwm_kb: None,
            memory_pressure: false,
            uptime_ms: None,
            requests_served: 5,
            last_decode_tps: None,
            restarts: 2,
            last_restart_reason: Some("crash".into()),
            chat_template: String::new(),
            cpus: None,
            cpus_reason: String::new(),
            cache: proto::worker::CacheReport::default(),
            shadowing: None,
            shadowed_by: None,
        }],
        active_backend: Some(Backend::Cpu),
        routing: Routing::Auto,
        routing_reason: "primary backing off".into(),
        queue_depth: 3,
        in_flight: 1,
        thermal: ThermalStatus {
            zones: vec![ZoneTemp {
                kind: "npu-thermal".into(),
                celsius: 61.0,
            }],
            level: ThermalLevel::Normal,
        },
        mem_available_kb: None,
        telemetry: proto::admin::TelemetryStatus::default(),
        shadow: proto::admin::ShadowSummary::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_for_admins_only() {
    let bot = harness::start(|c| c.admin_users = vec![1001]).await;
    let _admin = start_admin(&bot.admin_socket(), report());

    let token = bot
        .discord
        .slash_command(CHANNEL, 1001, "status", &json!([]));
    let original = format!("/webhooks/{APP_ID}/{token}/messages/@original");
    let edit = bot
        .discord
        .wait_for("the status answer", WAIT, |d| {
            d.records()
                .into_iter()
                .find(|r| r.method == Method::PATCH && r.path == original)
        })
        .await;
    let text = edit.body["content"].as_str().unwrap();
    assert!(text.contains("Backend: **cpu**"), "{text}");
    assert!(text.contains("Queue: 3 waiting, 1 generating"), "{text}");
    assert!(text.contains("backing-off"), "{text}");
    assert!(text.contains("npu 61.0 °C"), "{text}");
    let records = bot.discord.records();
    let callback = records
        .iter()
        .find(|r| r.path.ends_with(&format!("/{token}/callback")))
        .unwrap();
    assert_eq!(callback.body["type"], json!(5));
    assert_eq!(callback.body["data"]["flags"], json!(64), "ephemeral");

    let stranger = bot
        .discord
        .slash_command(CHANNEL, 2002, "status", &json!([]));
    let refusal = bot
        .discord
        .wait_for("the refusal", WAIT, |d| {
            d.records()
                .into_iter()
                .find(|r| r.path.ends_with(&format!("/{stranger}/callback")))
        })
        .await;
    assert_eq!(refusal.body["type"], json!(4));
    assert!(refusal.body["data"]["content"]
        .as_str()
        .unwrap()
        .contains("Only the bot's operators"));
    bot.stop().await.unwrap();
}
