//! Errors of framing, encoding and the handshake.

use std::io;

use thiserror::Error;

use crate::role::PeerRole;

/// Everything that can go wrong on a protocol connection.
#[derive(Debug, Error)]
pub enum ProtoError {
    /// The socket failed.
    #[error("socket error: {source}")]
    Io {
        /// The underlying error.
        #[from]
        source: io::Error,
    },
    /// A length prefix announced more than the protocol allows; nothing was allocated.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Length announced by the prefix (or of the frame being sent).
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({have} of {need} bytes received)")]
    Truncated {
        /// Bytes of the frame (prefix included) that did arrive.
        have: usize,
        /// Bytes the frame needed (prefix included), when the prefix was complete.
        need: usize,
    },
    /// A frame's payload is not a valid encoding of the expected message.
    #[error("malformed {what} frame: {source}")]
    Decode {
        /// Which message type was expected.
        what: &'static str,
        /// What bincode found.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// A message could not be encoded (should not happen for protocol types).
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// Which message type was being encoded.
        what: &'static str,
        /// What bincode found.
        #[source]
        source: bincode::error::EncodeError,
    },
    /// The first frame was not a rocksteady hello (wrong program on the socket).
    #[error(
        "peer did not start with a rocksteady hello (is something else listening on this socket?)"
    )]
    NotRocksteady,
    /// Both sides are rocksteady, but of incompatible protocol versions.
    #[error("protocol version mismatch: this side speaks version {ours}, the peer speaks version {theirs}; run the same rocksteady release on both sides")]
    VersionMismatch {
        /// Our `PROTOCOL_VERSION`.
        ours: u16,
        /// The version the peer announced.
        theirs: u16,
    },
    /// The peer connected to a socket that does not serve its role.
    #[error("a {role} peer is not served on this socket (expected {expected})")]
    WrongRole {
        /// What the peer said it is.
        role: PeerRole,
        /// What this socket serves.
        expected: String,
    },
    /// The other side refused the handshake and said why.
    #[error("refused by peer: {reason}")]
    Refused {
        /// The peer's reason.
        reason: String,
    },
    /// The peer closed the connection before the conversation ended.
    #[error("connection closed by peer")]
    Closed,
    /// The peer did not complete the handshake in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
}

impl ProtoError {
    /// True for failures that mean the peer went away (as opposed to sending garbage).
    pub fn is_disconnect(&self) -> bool {
        match self {
            Self::Closed | Self::Truncated { .. } => true,
            Self::Io { source } => matches!(
                source.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}
