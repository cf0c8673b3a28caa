//! The client side of the supervisor's sockets, shared by every program that
//! talks to a running supervisor: `supctl`, the Discord gateway, the other
//! front doors and the tests.
//!
//! - [`connect`]: the one connect-and-handshake in the tree (any role), with
//!   a deadline.
//! - [`ChatClient`]: one connection to the client socket, requests submitted
//!   and read in order (`supctl ask`, tests).
//! - [`link::SupervisorLink`]: a shared, self-healing connection to the client
//!   socket for long-running front doors: reconnects with backoff,
//!   multiplexes requests, cancels a request whose handle is dropped.
//! - [`AdminClient`]: the admin conversation, every call bounded by a timeout
//!   so a wedged supervisor cannot hang its caller.
//! - [`service`]: what every front-door process does alike around its work
//!   (its config section, shutdown on SIGTERM, one-line errors).
//!
//! - [`cluster`]: the NATS transport to a cluster of boards (chosen by a
//!   `nats://` target in [`link::SupervisorLink::start_target`]), and the
//!   wire shared with the boards' bridges.
//!
//! What this crate must not do: decide anything a supervisor decides
//! (routing among its slots, retries of a started answer inside a board,
//! admission). It carries requests and events and reports failures as
//! [`ClientError`]s. The one decision it owns is the cluster's: which board
//! serves an attempt and when a silent board's answer continues on another
//! ([`cluster::tracker`]), since no single supervisor can see that.

mod admin;
mod chat;
pub mod cluster;
mod connect;
pub mod link;
pub mod service;

pub use admin::AdminClient;
pub use chat::ChatClient;
pub use connect::{connect, ClientError, CONNECT_TIMEOUT};
