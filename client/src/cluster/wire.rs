//! What travels over NATS between front doors and board bridges: subject
//! names, and the JSON bodies of requests, replies, claims, controls and
//! heartbeats.
//!
//! 1. A front door publishes a [`WorkRequest`] to the JetStream work-queue
//!    stream on `<prefix>.work.<class>` (message id `<id>/<attempt>`, so a
//!    retried publish is stored once).
//! 2. A bridge of a board serving `<class>` pulls it when its supervisor has
//!    a free ready slot, and asks the front door on `<prefix>.claim.<id>`
//!    ([`Claim`] -> [`ClaimAnswer`]): only the current attempt, taken by one
//!    board, is served; a stale redelivery is dropped.
//! 3. The bridge publishes [`Reply`]s on `<prefix>.reply.<id>`: the local
//!    supervisor's events, numbered, or a hand-back when its supervisor
//!    failed; the front door may send [`Control`]s on `<prefix>.control.<id>`.
//! 4. Every board announces a [`Heartbeat`] on `<prefix>.heartbeat.<board>`.
//!
//! JSON, not bincode: the bodies are small next to the network hop, an
//! operator can read them with any NATS tool, and a field added later does
//! not break an older peer.

use std::fmt;

use proto::admin::SlotState;
use proto::chat::{Backend, ChatMessage, GenParams};
use proto::client::SupervisorToClient;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The subject prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "rocksteady";

/// A name that cannot be one token of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what} {value:?} is not a valid NATS subject token: use letters, digits, '-' and '_' (dots separate tokens only in a prefix)")]
pub struct NameError {
    /// "model class", "board name" or "subject prefix".
    pub what: &'static str,
    /// The name given.
    pub value: String,
}

/// Checks a class or board name: one subject token without wildcards.
///
/// # Errors
/// [`NameError`] naming `what`.
pub fn check_token(what: &'static str, value: &str) -> Result<(), NameError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what,
            value: value.to_owned(),
        })
    }
}

/// The subjects of one cluster (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (tokens separated by dots).
    ///
    /// # Errors
    /// [`NameError`] when a token of the prefix is not valid.
    pub fn new(prefix: &str) -> Result<Self, NameError> {
        for token in prefix.split('.') {
            check_token("subject prefix", token).map_err(|_| NameError {
                what: "subject prefix",
                value: prefix.to_owned(),
            })?;
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where requests for `class` are published.
    pub fn work(&self, class: &str) -> String {
        format!("{}.work.{class}", self.prefix)
    }

    /// Every work subject (the stream's subjects).
    pub fn work_all(&self) -> String {
        format!("{}.work.>", self.prefix)
    }

    /// The work-queue stream's name (stream names have no dots).
    pub fn stream(&self) -> String {
        format!("{}_WORK", self.prefix.replace('.', "_").to_uppercase())
    }

    /// The durable pull consumer every board serving `class` shares.
    pub fn consumer(class: &str) -> String {
        format!("class-{class}")
    }

    /// Replies to request `id`.
    pub fn reply(&self, id: &str) -> String {
        format!("{}.reply.{id}", self.prefix)
    }

    /// Claims of request `id`.
    pub fn claim(&self, id: &str) -> String {
        format!("{}.claim.{id}", self.prefix)
    }

    /// Controls (stop, cancel) of request `id`.
    pub fn control(&self, id: &str) -> String {
        format!("{}.control.{id}", self.prefix)
    }

    /// Heartbeats of `board`.
    pub fn heartbeat(&self, board: &str) -> String {
        format!("{}.heartbeat.{board}", self.prefix)
    }

    /// Every board's heartbeats.
    pub fn heartbeat_all(&self) -> String {
        format!("{}.heartbeat.*", self.prefix)
    }
}

/// One attempt at a request, as stored in the work-queue stream.
/// `Debug` leaves out the conversation and the partial answer.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkRequest {
    /// The front door's id of the request (unique in the cluster).
    pub id: String,
    /// 1 for the first, +1 for each continuation on another board.
    pub attempt: u32,
    /// The model class asked for.
    pub class: String,
    /// The conversation, ending with the user's turn.
    pub messages: Vec<ChatMessage>,
    /// Sampling and limits; `max_tokens` is what is left of the budget.
    pub params: GenParams,
    /// The answer streamed so far by boards that failed: the next board
    /// continues after it and does not send it again.
    pub assistant_prefix: String,
}

impl fmt::Debug for WorkRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkRequest")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("class", &self.class)
            .field("messages", &self.messages.len())
            .field("prefix_chars", &self.assistant_prefix.chars().count())
            .finish_non_exhaustive()
    }
}

impl WorkRequest {
    /// The stream's de-duplication id of this attempt.
    pub fn msg_id(&self) -> String {
        format!("{}/{}", self.id, self.attempt)
    }
}

/// A bridge asks to serve one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The attempt pulled.
    pub attempt: u32,
    /// The board asking.
    pub board: String,
}

/// The front door's answer to a [`Claim`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimAnswer {
    /// Serve it (else drop the message: it is stale or taken).
    pub granted: bool,
}

/// One message on a request's reply subject.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The attempt this is about.
    pub attempt: u32,
    /// The board sending.
    pub board: String,
    /// 1, 2, ... per attempt: a gap shows a lost message.
    pub seq: u64,
    /// What happened.
    pub body: ReplyBody,
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.body {
            ReplyBody::Event(e) => match e {
                SupervisorToClient::Token(_) => "Token",
                SupervisorToClient::Done(_) => "Done",
                SupervisorToClient::Error(_) => "Error",
                _ => "Event",
            },
            ReplyBody::HandBack { .. } => "HandBack",
        };
        f.debug_struct("Reply")
            .field("attempt", &self.attempt)
            .field("board", &self.board)
            .field("seq", &self.seq)
            .field("kind", &kind)
            .finish()
    }
}

/// Body of a [`Reply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReplyBody {
    /// The local supervisor's event (its request id is the bridge's own).
    Event(SupervisorToClient),
    /// The board cannot finish this attempt (its supervisor went away or
    /// has no worker): continue elsewhere.
    HandBack {
        /// Why, for logs and the user's note.
        reason: String,
    },
}

/// A front door's instruction about a request being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// End the answer where it is, with `Done`.
    Stop,
    /// Give up on it.
    Cancel,
}

/// One slot of a board, as its heartbeat shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardSlot {
    /// Slot name.
    pub name: String,
    /// Backend.
    pub backend: Backend,
    /// Model name.
    pub model: String,
    /// Lifecycle state.
    pub state: SlotState,
}

/// A board's state, announced every heartbeat interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The board's name.
    pub board: String,
    /// Model classes it takes work for now (empty while its supervisor is
    /// unreachable or has no ready-able slot for any).
    pub classes: Vec<String>,
    /// Its supervisor's slots.
    pub slots: Vec<BoardSlot>,
    /// Requests waiting in its supervisor's queue.
    pub queue: u32,
    /// Requests its supervisor is generating.
    pub in_flight: u32,
    /// Temperatures by zone, in °C.
    pub temperatures: Vec<(String, f64)>,
    /// Requests this bridge serves now, as `<id>/<attempt>`.
    pub active: Vec<String>,
    /// Milliseconds between heartbeats.
    pub interval_ms: u64,
    /// Why the supervisor could not be read, if it could not.
    pub problem: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::chat::Role;

    #[test]
    fn subjects_and_names() {
        let s = Subjects::new("rs.lab").unwrap();
        assert_eq!(s.work("cpu-small"), "rs.lab.work.cpu-small");
        assert_eq!(s.work_all(), "rs.lab.work.>");
        assert_eq!(s.stream(), "RS_LAB_WORK");
        assert_eq!(s.heartbeat_all(), "rs.lab.heartbeat.*");
        assert!(Subjects::new("bad prefix").is_err());
        assert!(Subjects::new("a..b").is_err());
        let err = check_token("model class", "cpu.*").unwrap_err();
        assert!(err.to_string().contains("model class \"cpu.*\""), "{err}");
        assert!(check_token("board name", "board-1_a").is_ok());
    }

    #[test]
    fn a_request_round_trips_and_its_debug_hides_the_prompt() {
        let req = WorkRequest {
            id: "abc".into(),
            attempt: 2,
            class: "cpu-small".into(),
            messages: vec![ChatMessage::new(Role::User, "secret question")],
            params: GenParams::default(),
            assistant_prefix: "secret start".into(),
        };
        let json = serde_json::to_vec(&req).unwrap();
        let back: WorkRequest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, req);
        assert_eq!(req.msg_id(), "abc/2");
        let debug = format!("{req:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }
}
