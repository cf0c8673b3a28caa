//! One connection to the client socket, read in order: `supctl ask` and the
//! tests. Long-running front doors use [`crate::link::SupervisorLink`].

use std::path::{Path, PathBuf};

use interprocess::local_socket::tokio::Stream as LocalStream;
use proto::chat::{ChatMessage, GenParams};
use proto::client::{Cancel, ClientToSupervisor, Submit, SupervisorToClient};
use proto::{Connection, PeerRole, ProtoError};

use crate::connect::{connect, ClientError, CONNECT_TIMEOUT};

/// A chat client connection.
pub struct ChatClient {
    conn: Connection<LocalStream, SupervisorToClient, ClientToSupervisor>,
    path: PathBuf,
    next_id: u64,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ChatClient {
    /// Connects to the client socket at `path`, named in the supervisor's log
    /// after this program.
    ///
    /// # Errors
    /// See [`connect`].
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        Self::connect_as(path, &crate::connect::program_name()).await
    }

    /// Connects to the client socket at `path`; `software` names the caller.
    ///
    /// # Errors
    /// See [`connect`].
    pub async fn connect_as(path: &Path, software: &str) -> Result<Self, ClientError> {
        let conn = connect(path, PeerRole::Client, software, CONNECT_TIMEOUT).await?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            next_id: 1,
        })
    }

    /// Submits a request for any model; returns its id.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn submit(
        &mut self,
        messages: Vec<ChatMessage>,
        params: GenParams,
    ) -> Result<u64, ClientError> {
        self.submit_to(messages, params, String::new()).await
    }

    /// Submits a request for `model` (empty = any); returns its id.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn submit_to(
        &mut self,
        messages: Vec<ChatMessage>,
        params: GenParams,
        model: String,
    ) -> Result<u64, ClientError> {
        self.submit_in(messages, params, model, None).await
    }

    /// Submits a request for `model` (empty = any) that continues
    /// `conversation` (see [`Submit::conversation`]); returns its id.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn submit_in(
        &mut self,
        messages: Vec<ChatMessage>,
        params: GenParams,
        model: String,
        conversation: Option<String>,
    ) -> Result<u64, ClientError> {
        let request_id = self.next_id;
        self.next_id += 1;
        self.conn
            .send(&ClientToSupervisor::Submit(Submit {
                request_id,
                messages,
                params,
                model,
                conversation,
            }))
            .await
            .map_err(ClientError::protocol(&self.path))?;
        Ok(request_id)
    }

    /// Cancels a request.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn cancel(&mut self, request_id: u64) -> Result<(), ClientError> {
        self.conn
            .send(&ClientToSupervisor::Cancel(Cancel { request_id }))
            .await
            .map_err(ClientError::protocol(&self.path))
    }

    /// The next event for any of this connection's requests.
    ///
    /// # Errors
    /// [`ClientError::Protocol`] with [`ProtoError::Closed`] when the
    /// supervisor went away.
    pub async fn next_event(&mut self) -> Result<SupervisorToClient, ClientError> {
        match self.conn.recv().await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(ClientError::Protocol {
                path: self.path.clone(),
                source: ProtoError::Closed,
            }),
            Err(source) => Err(ClientError::Protocol {
                path: self.path.clone(),
                source,
            }),
        }
    }
}
