//! The cluster transport: requests spread over several boards through a
//! NATS JetStream work queue, each board's bridge serving them from its
//! supervisor, and a reply that continues on another board when its board
//! dies mid-stream.
//!
//! - [`wire`]: subjects and message bodies (shared with the bridge)
//! - [`target`]: the `supervisor = "..."` string, NATS connect options
//! - [`boards`]: the table of boards from heartbeats; routing by class
//! - [`tracker`]: one request's decisions (claims, silence, continuation)
//! - [`front`]: the front door's driver

pub mod boards;
pub mod front;
#[cfg(test)]
mod sim;
pub mod target;
pub mod tracker;
pub mod wire;

pub use front::{ClusterError, ClusterLink, ClusterRequest};
pub use target::{NatsTarget, Target, TargetError};
