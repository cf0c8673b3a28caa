//! `supctl` verbs, one module each. Each takes what it needs and writes its
//! output to the given writer, so tests can run them in-process.

pub mod ask;
pub mod bench;
pub mod check_model;
pub mod cluster;
pub mod failover;
pub mod restart;
pub mod status;
pub mod validate;

use std::path::Path;

use proto::admin::{AdminToSupervisor, SupervisorToAdmin};

use crate::client::{AdminClient, ClientError};

/// Sends one admin command and turns an `Error` answer into `Err` text.
///
/// # Errors
/// Connection failures, or the supervisor's refusal as [`AdminFailure::Refused`].
pub async fn admin_request(
    admin_socket: &Path,
    cmd: &AdminToSupervisor,
) -> Result<SupervisorToAdmin, AdminFailure> {
    let mut client = AdminClient::connect(admin_socket).await?;
    match client.request(cmd).await? {
        SupervisorToAdmin::Error(e) => Err(AdminFailure::Refused { message: e.message }),
        answer => Ok(answer),
    }
}

/// An admin command that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AdminFailure {
    /// Could not talk to the supervisor.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The supervisor refused.
    #[error("{message}")]
    Refused {
        /// Its reason.
        message: String,
    },
    /// The supervisor answered something unexpected.
    #[error("unexpected answer from the supervisor")]
    Unexpected,
}
