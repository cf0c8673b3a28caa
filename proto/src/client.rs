//! Client conversation: a chat client (the Discord gateway, `supctl ask`) and
//! the supervisor, on the client socket.
//!
//! 1. Handshake with role [`PeerRole::Client`](crate::PeerRole::Client).
//! 2. The client sends [`ClientToSupervisor::Submit`] with an id of its own
//!    choosing, unique on this connection; several may be in flight.
//! 3. For each request the supervisor sends, in order: `Queued` (zero or more
//!    times, with the position), `Started`, `Token`s (each sent the moment the
//!    worker produced it), possibly `Failover` followed by `Started` and more
//!    `Token`s, and finally exactly one of `Done` or `Error`.
//! 4. The client may send `Cancel`; closing the connection cancels all its
//!    requests. `Stop` ends an answer early but still with `Done`.
//! 5. `Continue` is a `Submit` whose answer starts with given text (the
//!    part another board streamed before it failed).
//! 6. At any time the client may send `Models` with an id of its own (from the
//!    same id space as requests); the supervisor answers with one `Models`
//!    listing its slots, so a front door can say what it serves.

use serde::{Deserialize, Serialize};

use crate::admin::SlotState;
use crate::chat::{Backend, ChatMessage, GenParams, GenStats};

/// Client to supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientToSupervisor {
    /// Ask for a completion.
    Submit(Submit),
    /// Give up on a request.
    Cancel(Cancel),
    /// Ask which models the slots serve.
    Models(ModelsQuery),
    /// End a request's answer where it is (the client found a stop string):
    /// like `Cancel`, but a started answer ends with `Done` and its figures.
    Stop(Cancel),
    /// Ask for a completion whose answer must start with text already shown
    /// to the user (another board failed mid-answer): the worker continues
    /// after it, the events carry only the new text, and `Done` the whole.
    Continue(Continue),
}

/// Body of [`ClientToSupervisor::Continue`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Continue {
    /// The request, as for `Submit` (`max_tokens` is what is left).
    pub submit: Submit,
    /// The start of the answer, already streamed.
    pub assistant_prefix: String,
}

/// Body of [`ClientToSupervisor::Submit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submit {
    /// Client-chosen id, echoed in every event about this request.
    pub request_id: u64,
    /// The conversation so far, ending with the user's turn.
    pub messages: Vec<ChatMessage>,
    /// Sampling and limits.
    pub params: GenParams,
    /// The model to answer with: a slot's model name or model file name.
    /// Empty means any (the supervisor routes). A model no slot serves is
    /// refused with [`ErrorKind::BadRequest`].
    pub model: String,
    /// The conversation this request continues (the gateway uses the root
    /// message of the Discord reply chain), so the supervisor can route it
    /// to the worker that holds its KV cache. `None` = a one-off request.
    /// At most [`MAX_CONVERSATION_KEY`] bytes.
    pub conversation: Option<String>,
}

/// Longest conversation key accepted, in bytes: keys are ids, not text.
pub const MAX_CONVERSATION_KEY: usize = 128;

/// Body of [`ClientToSupervisor::Models`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelsQuery {
    /// Client-chosen id, echoed in the answer.
    pub request_id: u64,
}

/// Body of [`ClientToSupervisor::Cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The request to cancel.
    pub request_id: u64,
}

/// Supervisor to client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SupervisorToClient {
    /// Waiting for a worker.
    Queued(Queued),
    /// A worker took the request.
    Started(Started),
    /// A piece of the answer (complete UTF-8).
    Token(Token),
    /// The serving worker failed; the answer continues on another.
    Failover(Failover),
    /// The answer is complete.
    Done(Done),
    /// The request ended without a complete answer.
    Error(ErrorEvent),
    /// The answer to a [`ClientToSupervisor::Models`] query.
    Models(ModelList),
}

impl SupervisorToClient {
    /// The request this event is about.
    pub fn request_id(&self) -> u64 {
        match self {
            Self::Queued(e) => e.request_id,
            Self::Started(e) => e.request_id,
            Self::Token(e) => e.request_id,
            Self::Failover(e) => e.request_id,
            Self::Done(e) => e.request_id,
            Self::Error(e) => e.request_id,
            Self::Models(e) => e.request_id,
        }
    }
}

/// Body of [`SupervisorToClient::Queued`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The request.
    pub request_id: u64,
    /// 1-based place in the queue (1 = next).
    pub position: u32,
    /// Why it waits beyond the queue, if anything (e.g. "board cooling down"); empty otherwise.
    pub reason: String,
}

/// Body of [`SupervisorToClient::Started`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The request.
    pub request_id: u64,
    /// Name of the worker slot serving it.
    pub slot: String,
    /// That worker's backend.
    pub backend: Backend,
    /// The model's name.
    pub model: String,
}

/// Body of [`SupervisorToClient::Token`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The request.
    pub request_id: u64,
    /// Text of one or more tokens, never a partial UTF-8 sequence.
    pub text: String,
}

/// Body of [`SupervisorToClient::Failover`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The request.
    pub request_id: u64,
    /// Backend that was serving.
    pub from: Backend,
    /// Backend that continues.
    pub to: Backend,
    /// Why ("crash", "hang", "memory", "oom", ...).
    pub reason: String,
}

/// Body of [`SupervisorToClient::Done`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    /// The request.
    pub request_id: u64,
    /// The whole answer: equal to the concatenated `Token` texts.
    pub text: String,
    /// Backend that produced the end of the answer.
    pub backend: Backend,
    /// Model that produced the end of the answer.
    pub model: String,
    /// Figures of the final generation, generated tokens counted over the whole answer.
    pub stats: GenStats,
}

/// Body of [`SupervisorToClient::Models`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    /// The query answered.
    pub request_id: u64,
    /// Every configured slot, in configuration order.
    pub slots: Vec<ModelSlot>,
}

/// One slot as [`ModelList`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSlot {
    /// Slot name ("primary", "fallback").
    pub name: String,
    /// The slot's backend.
    pub backend: Backend,
    /// Model name as the worker reported it (the file name before the first load).
    pub model: String,
    /// Model file name from the configuration.
    pub model_file: String,
    /// Lifecycle state.
    pub state: SlotState,
}

/// Body of [`SupervisorToClient::Error`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEvent {
    /// The request.
    pub request_id: u64,
    /// What kind of failure, for clients that word it themselves.
    pub kind: ErrorKind,
    /// A plain sentence for people.
    pub message: String,
}

/// Kinds of request failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The queue is full.
    Busy,
    /// The board is too hot to start generations and the wait ran out.
    TooHot,
    /// No worker is able to serve.
    NoWorker,
    /// The request is malformed or exceeds a limit (prompt too long, no messages).
    BadRequest,
    /// The worker failed and no other could finish the answer.
    WorkerFailed,
    /// Cancelled on request.
    Cancelled,
    /// The supervisor is shutting down.
    ShuttingDown,
}
