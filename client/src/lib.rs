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
//!
//! What this crate must not do: decide anything the supervisor decides
//! (routing, retries of a started answer, admission). It only carries
//! requests and events, and reports failures as [`ClientError`]s.

mod admin;
mod chat;
pub mod cluster;
mod connect;
pub mod link;

pub use admin::AdminClient;
pub use chat::ChatClient;
pub use connect::{connect, ClientError, CONNECT_TIMEOUT};
