//! Client side of the client and admin conversations: what `supctl` and the
//! tests use to talk to a running supervisor.

use std::path::{Path, PathBuf};

use interprocess::local_socket::tokio::Stream as LocalStream;
use proto::admin::{AdminToSupervisor, SupervisorToAdmin};
use proto::chat::{ChatMessage, GenParams};
use proto::client::{Cancel, ClientToSupervisor, Submit, SupervisorToClient};
use proto::frame::{FrameReader, FrameWriter};
use proto::hello::{client_handshake, connect_path};
use proto::{PeerRole, ProtoError};
use thiserror::Error;
use tokio::io::{ReadHalf, WriteHalf};

/// Failures talking to the supervisor.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing listens at the socket path.
    #[error("no supervisor at {path}: is it running? ({source})")]
    NotRunning {
        /// Socket path tried.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The conversation failed.
    #[error(transparent)]
    Protocol(#[from] ProtoError),
}

type Halves = (
    FrameReader<ReadHalf<LocalStream>>,
    FrameWriter<WriteHalf<LocalStream>>,
);

async fn open(path: &Path, role: PeerRole) -> Result<Halves, ClientError> {
    let stream = connect_path(path)
        .await
        .map_err(|source| ClientError::NotRunning {
            path: path.to_owned(),
            source,
        })?;
    let (r, w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    client_handshake(
        &mut reader,
        &mut writer,
        role,
        concat!("supctl ", env!("CARGO_PKG_VERSION")),
    )
    .await?;
    Ok((reader, writer))
}

/// A chat client connection.
pub struct ChatClient {
    reader: FrameReader<ReadHalf<LocalStream>>,
    writer: FrameWriter<WriteHalf<LocalStream>>,
    next_id: u64,
}

impl ChatClient {
    /// Connects to the client socket.
    ///
    /// # Errors
    /// [`ClientError::NotRunning`] when nothing listens; protocol errors.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let (reader, writer) = open(path, PeerRole::Client).await?;
        Ok(Self {
            reader,
            writer,
            next_id: 1,
        })
    }

    /// Submits a request; returns its id.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn submit(
        &mut self,
        messages: Vec<ChatMessage>,
        params: GenParams,
    ) -> Result<u64, ClientError> {
        let request_id = self.next_id;
        self.next_id += 1;
        self.writer
            .send(&ClientToSupervisor::Submit(Submit {
                request_id,
                messages,
                params,
            }))
            .await?;
        Ok(request_id)
    }

    /// Cancels a request.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn cancel(&mut self, request_id: u64) -> Result<(), ClientError> {
        self.writer
            .send(&ClientToSupervisor::Cancel(Cancel { request_id }))
            .await?;
        Ok(())
    }

    /// The next event for any of this connection's requests.
    ///
    /// # Errors
    /// [`ProtoError::Closed`] when the supervisor went away.
    pub async fn next_event(&mut self) -> Result<SupervisorToClient, ClientError> {
        Ok(self.reader.expect().await?)
    }
}

/// An admin connection.
pub struct AdminClient {
    reader: FrameReader<ReadHalf<LocalStream>>,
    writer: FrameWriter<WriteHalf<LocalStream>>,
}

impl AdminClient {
    /// Connects to the admin socket.
    ///
    /// # Errors
    /// [`ClientError::NotRunning`] when nothing listens; protocol errors.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let (reader, writer) = open(path, PeerRole::Admin).await?;
        Ok(Self { reader, writer })
    }

    /// Sends one command and waits for its answer.
    ///
    /// # Errors
    /// Socket errors; [`ProtoError::Closed`] if the supervisor went away.
    pub async fn request(
        &mut self,
        cmd: &AdminToSupervisor,
    ) -> Result<SupervisorToAdmin, ClientError> {
        self.writer.send(cmd).await?;
        Ok(self.reader.expect().await?)
    }
}
