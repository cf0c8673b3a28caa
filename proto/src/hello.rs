//! The handshake that opens every connection.
//!
//! 1. The connecting side sends [`Hello`]: magic bytes, its protocol version, its role.
//! 2. The listening side answers [`HelloReply::Accepted`] or
//!    [`HelloReply::Refused`] with a reason, and closes after a refusal.
//!
//! `magic` and `version` are the first fields of `Hello` and must stay so: a
//! peer of another version may not decode the rest, but it can always decode
//! [`HelloPrefix`] and refuse with a clear "version mismatch" instead of a
//! garbled decode error.

use std::path::Path;
use std::time::Duration;

use interprocess::local_socket::{tokio::prelude::*, GenericFilePath};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::ProtoError;
use crate::frame::{decode, FrameReader, FrameWriter};
pub use crate::role::PeerRole;

/// Version of the whole wire protocol; bump it on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 5;

/// First bytes of every hello: tells a rocksteady peer from a stray program.
pub const MAGIC: [u8; 4] = *b"RSTD";

/// How long a listening side waits for the hello before dropping the peer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The first frame on every connection, sent by the connecting side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// What the sender is.
    pub role: PeerRole,
    /// Free text naming the sending program and its version, for logs.
    pub software: String,
}

impl Hello {
    /// A hello of this build for `role`.
    pub fn new(role: PeerRole, software: &str) -> Self {
        Self {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role,
            software: software.to_owned(),
        }
    }
}

/// The fields of [`Hello`] that every protocol version shares.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct HelloPrefix {
    /// See [`Hello::magic`].
    pub magic: [u8; 4],
    /// See [`Hello::version`].
    pub version: u16,
}

/// The listening side's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Go ahead.
    Accepted(Accepted),
    /// Not served here; the connection closes after this frame.
    Refused(Refused),
}

/// Body of [`HelloReply::Accepted`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The listener's protocol version (equal to the hello's).
    pub version: u16,
    /// Free text naming the listening program, for logs.
    pub software: String,
}

/// Body of [`HelloReply::Refused`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Why, in words an operator can act on.
    pub reason: String,
    /// The listener's protocol version, so the peer can report a mismatch.
    pub version: u16,
}

/// Connects to a Unix socket at a filesystem path (never the abstract
/// namespace: only a path has file permissions).
///
/// # Errors
/// The socket error; `NotFound`/`ConnectionRefused` mean nothing listens there.
pub async fn connect_path(path: &Path) -> std::io::Result<LocalSocketStream> {
    let name = path.to_fs_name::<GenericFilePath>()?;
    LocalSocketStream::connect(name).await
}

/// The connecting side's half: sends the hello and waits for the answer.
///
/// # Errors
/// [`ProtoError::Refused`] / [`ProtoError::VersionMismatch`] when the listener
/// says no, socket and decode errors otherwise.
pub async fn client_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    role: PeerRole,
    software: &str,
) -> Result<Accepted, ProtoError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    writer.send(&Hello::new(role, software)).await?;
    match reader.expect::<HelloReply>().await? {
        HelloReply::Accepted(accepted) => Ok(accepted),
        HelloReply::Refused(refused) if refused.version != PROTOCOL_VERSION => {
            Err(ProtoError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: refused.version,
            })
        }
        HelloReply::Refused(refused) => Err(ProtoError::Refused {
            reason: refused.reason,
        }),
    }
}

/// The listening side's half: reads the hello (within [`HANDSHAKE_TIMEOUT`]),
/// checks magic, version and role, and answers. On a refusal the reason is
/// sent to the peer before the error is returned, so both sides can log it.
///
/// # Errors
/// [`ProtoError::NotRocksteady`], [`ProtoError::VersionMismatch`],
/// [`ProtoError::WrongRole`], [`ProtoError::HandshakeTimeout`], or a socket error.
pub async fn server_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    serves: &[PeerRole],
    software: &str,
) -> Result<Hello, ProtoError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let frame = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.raw_frame())
        .await
        .map_err(|_| ProtoError::HandshakeTimeout)??;
    let verdict = check_hello(&frame, serves);
    match verdict {
        Ok(hello) => {
            writer
                .send(&HelloReply::Accepted(Accepted {
                    version: PROTOCOL_VERSION,
                    software: software.to_owned(),
                }))
                .await?;
            Ok(hello)
        }
        Err(err) => {
            // Best effort: the peer may already be gone, and our own error is
            // what matters to the caller.
            let _ = writer
                .send(&HelloReply::Refused(Refused {
                    reason: err.to_string(),
                    version: PROTOCOL_VERSION,
                }))
                .await;
            Err(err)
        }
    }
}

fn check_hello(frame: &[u8], serves: &[PeerRole]) -> Result<Hello, ProtoError> {
    let (prefix, _) = bincode::serde::decode_from_slice::<HelloPrefix, _>(
        frame,
        bincode::config::standard().with_limit::<64>(),
    )
    .map_err(|_| ProtoError::NotRocksteady)?;
    if prefix.magic != MAGIC {
        return Err(ProtoError::NotRocksteady);
    }
    if prefix.version != PROTOCOL_VERSION {
        return Err(ProtoError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: prefix.version,
        });
    }
    let hello: Hello = decode(frame)?;
    if !serves.contains(&hello.role) {
        return Err(ProtoError::WrongRole {
            role: hello.role,
            expected: serves
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
        });
    }
    Ok(hello)
}
