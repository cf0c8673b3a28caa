//! Connect and handshake: the only place a process opens a connection to a
//! supervisor socket and says hello.

use std::path::{Path, PathBuf};
use std::time::Duration;

use interprocess::local_socket::tokio::Stream as LocalStream;
use proto::{Connection, PeerRole, ProtoError};
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

/// How long connecting and the handshake may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Failures talking to the supervisor. The messages do not repeat their
/// cause: print the chain (`{:#}` with anyhow, or [`ClientError::chain`]).
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing listens at the socket path.
    #[error("no supervisor at {path}: is it running?")]
    NotRunning {
        /// Socket path tried.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The socket exists but this user may not use it.
    #[error("not allowed to use {path}: the socket's group and mode decide who may (see the supervisor's [supervisor] *_socket_mode and allowed_gids settings)")]
    PermissionDenied {
        /// Socket path tried.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed for another reason.
    #[error("cannot connect to {path}")]
    Connect {
        /// Socket path tried.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor did not answer in time.
    #[error("the supervisor at {path} did not answer {what} within {seconds} s")]
    Timeout {
        /// Socket path.
        path: PathBuf,
        /// What was waited for ("the handshake", "the status request", ...).
        what: &'static str,
        /// The limit.
        seconds: u64,
    },
    /// The handshake or the conversation failed.
    #[error("conversation with the supervisor at {path} failed")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// The protocol error.
        #[source]
        source: ProtoError,
    },
}

impl ClientError {
    /// The message and its causes on one line, for callers that print
    /// errors without anyhow.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        let path = path.to_owned();
        match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                Self::NotRunning { path, source }
            }
            std::io::ErrorKind::PermissionDenied => Self::PermissionDenied { path, source },
            _ => Self::Connect { path, source },
        }
    }

    pub(crate) fn protocol(path: &Path) -> impl FnOnce(ProtoError) -> Self + '_ {
        move |source| Self::Protocol {
            path: path.to_owned(),
            source,
        }
    }
}

/// Connects to the supervisor socket at `path` as `role` and completes the
/// handshake, all within `timeout`. `software` names the caller in the
/// supervisor's log.
///
/// # Errors
/// [`ClientError::NotRunning`] when nothing listens, [`ClientError::Timeout`]
/// when the supervisor does not answer in time, [`ClientError::Protocol`] when
/// it refuses (version, role, peer) or the socket fails.
pub async fn connect<In, Out>(
    path: &Path,
    role: PeerRole,
    software: &str,
    timeout: Duration,
) -> Result<Connection<LocalStream, In, Out>, ClientError>
where
    In: DeserializeOwned,
    Out: Serialize,
{
    let attempt = async {
        let stream = proto::hello::connect_path(path)
            .await
            .map_err(|source| ClientError::io(path, source))?;
        let mut conn = Connection::new(stream);
        proto::hello::client_handshake(&mut conn.reader, &mut conn.writer, role, software)
            .await
            .map_err(ClientError::protocol(path))?;
        Ok(conn)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ClientError::Timeout {
            path: path.to_owned(),
            what: "the handshake",
            seconds: timeout.as_secs().max(1),
        })?
}

/// This program's name and the library's version, for the hello of callers
/// that do not name themselves.
pub(crate) fn program_name() -> String {
    let exe = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "client".to_owned());
    format!("{exe} {}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};
    use std::path::Path;

    use super::ClientError;

    #[test]
    fn connect_errors_say_what_the_operator_can_do() {
        let p = Path::new("/run/rocksteady/admin.sock");
        for kind in [ErrorKind::NotFound, ErrorKind::ConnectionRefused] {
            let err = ClientError::io(p, Error::from(kind));
            assert!(matches!(err, ClientError::NotRunning { .. }), "{kind:?}");
        }
        let err = ClientError::io(p, Error::from(ErrorKind::PermissionDenied));
        assert!(matches!(err, ClientError::PermissionDenied { .. }));
        assert!(err.to_string().contains("not allowed"), "{err}");
        let err = ClientError::io(p, Error::from(ErrorKind::InvalidInput));
        assert!(matches!(err, ClientError::Connect { .. }));
    }
}
