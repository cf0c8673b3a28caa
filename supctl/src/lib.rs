//! `supctl`, rocksteady's admin command line, as a library so its tests can
//! run the verbs in-process: [`cli`] (one module per verb) and [`bench`]
//! (`supctl bench`, including its own `[bench]` config section).
//!
//! It is a client of the supervisor: it reads the daemon's config to find
//! the sockets and talks to them through the `client` crate. It must not
//! hold daemon logic (that is the `supervisor` crate; `bench --spawn` only
//! starts it in-process) and must not open sockets by hand.

pub mod bench;
pub mod cli;

/// The client side of the sockets, under the name the verbs use.
pub use client;
