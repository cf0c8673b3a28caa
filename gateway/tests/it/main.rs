//! Integration tests of the Discord gateway: the real twilight clients against
//! a fake Discord, with a scripted supervisor stand-in or the real supervisor.

// Test helpers fail by panicking, and the fake's routing table reads best as
// one long match.
#![allow(clippy::missing_panics_doc, clippy::too_many_lines)]

mod access;
mod conversation;
mod end_to_end;
mod fake_discord;
mod harness;
mod logging;
mod resilience;
mod stand_in;
mod streaming;

use std::time::Duration;

use fake_discord::{FakeDiscord, Record};

/// How long a test waits for something the bot should do.
pub const WAIT: Duration = Duration::from_secs(20);

/// Waits until the bot's answer to `user_message` is complete (its last
/// message ends with `end`) and returns the contents of its messages.
pub async fn finished_answer(
    discord: &FakeDiscord,
    channel: u64,
    user_message: u64,
    end: &str,
) -> Vec<(u64, String)> {
    discord
        .wait_for("the answer to finish", WAIT, |d| {
            let messages = d.answer_messages(channel, user_message);
            messages
                .last()
                .is_some_and(|(_, content)| content.ends_with(end))
                .then_some(messages)
        })
        .await
}

/// Asserts writes were at least `interval` apart, each starting after the
/// previous one was answered (so none overlapped).
pub fn assert_paced(writes: &[Record], interval: Duration) {
    for pair in writes.windows(2) {
        let gap = pair[1].start.saturating_duration_since(pair[0].end);
        assert!(
            pair[1].start >= pair[0].end && gap >= interval,
            "writes {} {} and {} {} only {gap:?} apart",
            pair[0].method,
            pair[0].path,
            pair[1].method,
            pair[1].path
        );
    }
}

/// Asserts no two requests in `records` overlapped in time.
pub fn assert_no_overlap(records: &[Record]) {
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|r| r.start);
    for pair in sorted.windows(2) {
        assert!(
            pair[1].start >= pair[0].end,
            "{} {} started before the previous one was answered",
            pair[1].method,
            pair[1].path
        );
    }
}
