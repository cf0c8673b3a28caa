//! The admin conversation (`supctl` and the gateway's `/status`): one command,
//! one answer, each bounded by a timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use interprocess::local_socket::tokio::Stream as LocalStream;
use proto::admin::{AdminToSupervisor, StatusReport, SupervisorToAdmin};
use proto::{Connection, PeerRole, ProtoError};

use crate::connect::{connect, ClientError, CONNECT_TIMEOUT};

/// How long an admin command may wait for its answer by default: a status
/// is answered from memory, so a supervisor that takes longer is wedged.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// An admin connection.
pub struct AdminClient {
    conn: Connection<LocalStream, SupervisorToAdmin, AdminToSupervisor>,
    path: PathBuf,
    timeout: Duration,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// Connects to the admin socket at `path`, named in the supervisor's log
    /// after this program.
    ///
    /// # Errors
    /// See [`connect`].
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        Self::connect_as(path, &crate::connect::program_name()).await
    }

    /// Connects to the admin socket at `path`; `software` names the caller.
    ///
    /// # Errors
    /// See [`connect`].
    pub async fn connect_as(path: &Path, software: &str) -> Result<Self, ClientError> {
        let conn = connect(path, PeerRole::Admin, software, CONNECT_TIMEOUT).await?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            timeout: ADMIN_TIMEOUT,
        })
    }

    /// Sets how long each command waits for its answer.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one command and waits (at most the timeout) for its answer.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when no answer comes in time (the connection
    /// is then unusable: a late answer would be taken for the next one's);
    /// [`ClientError::Protocol`] when the socket fails or the supervisor
    /// closes it.
    pub async fn request(
        &mut self,
        cmd: &AdminToSupervisor,
    ) -> Result<SupervisorToAdmin, ClientError> {
        let path = &self.path;
        let exchange = async {
            self.conn
                .send(cmd)
                .await
                .map_err(ClientError::protocol(path))?;
            match self.conn.recv().await {
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => Err(ClientError::Protocol {
                    path: path.clone(),
                    source: ProtoError::Closed,
                }),
                Err(source) => Err(ClientError::Protocol {
                    path: path.clone(),
                    source,
                }),
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                path: path.clone(),
                what: command_name(cmd),
                seconds: self.timeout.as_secs().max(1),
            })?
    }

    /// Asks for the status report.
    ///
    /// # Errors
    /// As [`Self::request`]; [`ClientError::Protocol`] with
    /// [`ProtoError::Refused`] when the supervisor answers with an error or
    /// something other than a status.
    pub async fn status(&mut self) -> Result<StatusReport, ClientError> {
        match self.request(&AdminToSupervisor::Status).await? {
            SupervisorToAdmin::Status(report) => Ok(*report),
            SupervisorToAdmin::Error(err) => Err(ClientError::Protocol {
                path: self.path.clone(),
                source: ProtoError::Refused {
                    reason: err.message,
                },
            }),
            SupervisorToAdmin::Ok(ok) => Err(ClientError::Protocol {
                path: self.path.clone(),
                source: ProtoError::Refused {
                    reason: format!("unexpected answer to a status request: {}", ok.message),
                },
            }),
        }
    }
}

fn command_name(cmd: &AdminToSupervisor) -> &'static str {
    match cmd {
        AdminToSupervisor::Status => "the status request",
        AdminToSupervisor::Failover(_) => "the failover command",
        AdminToSupervisor::Restart(_) => "the restart command",
        AdminToSupervisor::SetMemoryCeiling(_) => "the memory ceiling command",
    }
}
