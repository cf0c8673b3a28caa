//! Streaming an answer into Discord: the reply (and its follow-ups) is
//! created, then edited as tokens arrive, through the channel's pacing lane.
//!
//! One task owns one answer and does its writes one after another, so two
//! writes of one message are never in flight together. Each write waits for
//! the channel's lane and only then takes the newest state, so a slow lane
//! never sends stale text; everything that arrived meanwhile goes out in one
//! edit.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use twilight_model::channel::message::{AllowedMentions, MessageFlags};
use twilight_model::id::marker::{ApplicationMarker, ChannelMarker, MessageMarker};
use twilight_model::id::Id;

use crate::access::UserPermit;
use crate::link::Request;
use crate::pacer::Pacer;
use crate::render::AnswerState;
use crate::split::Chunk;

/// A typing indicator lasts 10 s; refresh it before it lapses.
const TYPING_REFRESH: Duration = Duration::from_secs(8);

/// Longest a notice waits for a turn in a channel busy with answers.
pub const NOTICE_MAX_WAIT: Duration = Duration::from_secs(30);

/// Consecutive failed writes after which an answer is abandoned.
const MAX_WRITE_FAILURES: u32 = 5;

/// Where an answer goes.
pub enum Target {
    /// A reply to a user's message in a channel.
    Channel {
        /// The channel.
        channel: Id<ChannelMarker>,
        /// The user's message.
        reply_to: Id<MessageMarker>,
    },
    /// The (deferred) response to a slash command.
    Interaction {
        /// The application.
        application: Id<ApplicationMarker>,
        /// The interaction token (a credential for 15 minutes: never logged).
        token: String,
        /// The channel, for pacing.
        channel: u64,
    },
}

impl Target {
    fn channel(&self) -> u64 {
        match self {
            Self::Channel { channel, .. } => channel.get(),
            Self::Interaction { channel, .. } => *channel,
        }
    }
}

/// A failed message write.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The request failed.
    #[error("{}", crate::bot::describe_http(.source))]
    Http {
        /// The client's error.
        #[from]
        source: twilight_http::Error,
    },
    /// The response did not parse.
    #[error("Discord's response could not be parsed")]
    Body {
        /// The parser's error.
        #[from]
        source: twilight_http::response::DeserializeBodyError,
    },
}

/// One message of the answer as Discord shows it.
struct Shown {
    id: Option<Id<MessageMarker>>,
    content: String,
}

/// A finished answer's messages: id and the answer text each carries.
pub type Sent = Vec<(Id<MessageMarker>, String)>;

/// Writes one answer.
///
/// It holds only what writing needs (the REST client, the pacer, the
/// shutdown token), not the whole bot, so the bot can own writers without
/// the writer depending back on it.
pub struct Writer<'a> {
    http: &'a Arc<twilight_http::Client>,
    pacer: &'a Pacer,
    shutdown: &'a CancellationToken,
    target: Target,
    shown: Vec<Shown>,
    no_mentions: AllowedMentions,
}

impl<'a> Writer<'a> {
    /// A writer for `target` through `http`, paced by `pacer`, giving up
    /// when `shutdown` is cancelled.
    pub fn new(
        http: &'a Arc<twilight_http::Client>,
        pacer: &'a Pacer,
        shutdown: &'a CancellationToken,
        target: Target,
    ) -> Self {
        // A deferred interaction already has its (empty) original response.
        let shown = match target {
            Target::Interaction { .. } => vec![Shown {
                id: None,
                content: String::new(),
            }],
            Target::Channel { .. } => Vec::new(),
        };
        Self {
            http,
            pacer,
            shutdown,
            target,
            shown,
            no_mentions: AllowedMentions::default(),
        }
    }

    /// Shows `content` as message `index` (creating it if it is the next one).
    async fn put(&mut self, index: usize, content: &str) -> Result<(), WriteError> {
        let http = self.http;
        let existing = self.shown.get(index).map(|s| s.id);
        let id = match (&self.target, existing) {
            (Target::Channel { channel, .. }, Some(Some(id))) => {
                http.update_message(*channel, id)
                    .content(Some(content))
                    .allowed_mentions(Some(&self.no_mentions))
                    .await?;
                id
            }
            (Target::Channel { channel, reply_to }, _) => {
                let parent = index
                    .checked_sub(1)
                    .and_then(|i| self.shown.get(i))
                    .and_then(|s| s.id)
                    .unwrap_or(*reply_to);
                http.create_message(*channel)
                    .content(content)
                    .reply(parent)
                    .fail_if_not_exists(false)
                    .allowed_mentions(Some(&self.no_mentions))
                    .flags(MessageFlags::SUPPRESS_NOTIFICATIONS)
                    .await?
                    .model()
                    .await?
                    .id
            }
            (
                Target::Interaction {
                    application, token, ..
                },
                _,
            ) if index == 0 => {
                http.interaction(*application)
                    .update_response(token)
                    .content(Some(content))
                    .allowed_mentions(Some(&self.no_mentions))
                    .await?
                    .model()
                    .await?
                    .id
            }
            (
                Target::Interaction {
                    application, token, ..
                },
                Some(Some(id)),
            ) => {
                http.interaction(*application)
                    .update_followup(token, id)
                    .content(Some(content))
                    .allowed_mentions(Some(&self.no_mentions))
                    .await?;
                id
            }
            (
                Target::Interaction {
                    application, token, ..
                },
                _,
            ) => {
                http.interaction(*application)
                    .create_followup(token)
                    .content(content)
                    .allowed_mentions(Some(&self.no_mentions))
                    .flags(MessageFlags::SUPPRESS_NOTIFICATIONS)
                    .await?
                    .model()
                    .await?
                    .id
            }
        };
        let shown = Shown {
            id: Some(id),
            content: content.to_owned(),
        };
        if index < self.shown.len() {
            self.shown[index] = shown;
        } else {
            self.shown.push(shown);
        }
        Ok(())
    }

    /// The first message whose shown text differs from `desired`.
    fn first_difference(&self, desired: &[Chunk]) -> Option<usize> {
        desired
            .iter()
            .enumerate()
            .find(|(i, chunk)| {
                self.shown
                    .get(*i)
                    .is_none_or(|s| s.content != chunk.content)
            })
            .map(|(i, _)| i)
    }

    /// Streams `request` into the target until the answer is complete,
    /// starting from `state` (which may already be finished, e.g. with an
    /// error, when `request` is `None`). Returns the messages written.
    ///
    /// `user_slot` (the user's concurrency permit) is released the moment the
    /// request ends at the supervisor, before the final edit: by the time the
    /// user sees the finished answer, they may ask again.
    pub async fn stream(
        mut self,
        mut request: Option<Request>,
        mut state: AnswerState,
        user_slot: Option<UserPermit>,
    ) -> Sent {
        let mut user_slot = user_slot;
        let channel = self.target.channel();
        let typing = CancellationToken::new();
        let _stop_typing = typing.clone().drop_guard();
        if let Target::Channel { channel, .. } = &self.target {
            if !state.has_output() {
                tokio::spawn(keep_typing(self.http.clone(), *channel, typing.clone()));
            }
        }
        let shutdown = self.shutdown.clone();
        let mut failures = 0;
        loop {
            drain(&mut request, &mut state);
            if state.has_output() {
                typing.cancel();
            }
            if state.finished {
                user_slot.take();
            }
            if self.first_difference(&state.render()).is_none() {
                if state.finished {
                    break;
                }
                let Some(req) = request.as_mut() else { break };
                tokio::select! {
                    event = req.next() => state.apply(event),
                    () = shutdown.cancelled() => {
                        state.fail("The bot is restarting; please ask again in a moment.");
                    }
                }
                continue;
            }
            let permit = self.pacer.acquire(channel).await;
            // Take the newest state only now that it is our turn.
            drain(&mut request, &mut state);
            if state.finished {
                user_slot.take();
            }
            let desired = state.render();
            let Some(index) = self.first_difference(&desired) else {
                continue;
            };
            let result = self.put(index, &desired[index].content).await;
            drop(permit);
            match result {
                Ok(()) => failures = 0,
                Err(err) => {
                    failures += 1;
                    tracing::warn!(error = %err, failures, "could not write an answer message");
                    if failures >= MAX_WRITE_FAILURES {
                        // Dropping the request cancels it at the supervisor.
                        break;
                    }
                }
            }
        }
        let desired = state.render();
        self.shown
            .iter()
            .zip(
                desired
                    .iter()
                    .map(|c| c.body.clone())
                    .chain(std::iter::repeat(String::new())),
            )
            .filter_map(|(shown, body)| shown.id.map(|id| (id, body)))
            .collect()
    }

    /// Posts one short message that is the whole answer (e.g. `/status`)
    /// through the lane, with an answer's priority.
    pub async fn say(mut self, text: &str) {
        let permit = self.pacer.acquire(self.target.channel()).await;
        if let Err(err) = self.put(0, text).await {
            tracing::warn!(error = %err, "could not post a message");
        }
        drop(permit);
    }

    /// Posts a notice (a refusal, a hint) through the lane behind every
    /// answer write. A notice that has not had its turn after
    /// [`NOTICE_MAX_WAIT`] is dropped: by then it answers nothing the user
    /// still waits for. True when it was posted.
    pub async fn notice(mut self, text: &str) -> bool {
        let channel = self.target.channel();
        let Ok(permit) =
            tokio::time::timeout(NOTICE_MAX_WAIT, self.pacer.acquire_notice(channel)).await
        else {
            tracing::debug!(channel, "notice dropped: the channel was busy with answers");
            return false;
        };
        let result = self.put(0, text).await;
        drop(permit);
        match result {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %err, "could not post a notice");
                false
            }
        }
    }
}

fn drain(request: &mut Option<Request>, state: &mut AnswerState) {
    if let Some(req) = request.as_mut() {
        while let Some(event) = req.try_next() {
            state.apply(event);
        }
    }
}

/// Shows "typing…" until `stop`, refreshing it before it lapses.
async fn keep_typing(
    http: std::sync::Arc<twilight_http::Client>,
    channel: Id<ChannelMarker>,
    stop: CancellationToken,
) {
    loop {
        if let Err(err) = http.create_typing_trigger(channel).await {
            tracing::debug!(error = %crate::bot::describe_http(&err), "typing indicator failed");
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(TYPING_REFRESH) => {}
        }
    }
}
