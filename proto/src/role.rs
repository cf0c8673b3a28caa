//! The roles a peer announces in its hello. A module of its own because the
//! handshake ([`crate::hello`]) and the errors ([`crate::error`]) both name
//! them, and the handshake itself depends on the errors.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What the connecting peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRole {
    /// A chat client (the Discord gateway, `supctl ask`): client conversation.
    Client,
    /// The admin CLI: admin conversation.
    Admin,
    /// A worker process connecting back to its supervisor: worker conversation.
    Worker,
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::Admin => "admin",
            Self::Worker => "worker",
        })
    }
}
