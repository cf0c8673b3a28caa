//! `supctl failover --to npu|cpu` / `--auto`: pin traffic to a backend or
//! return to automatic routing.

use std::path::Path;

use proto::admin::{AdminToSupervisor, FailoverCommand, SupervisorToAdmin};
use proto::chat::Backend;

use super::{admin_request, AdminFailure};

/// Sends the command; returns the supervisor's confirmation.
///
/// # Errors
/// Connection failures or the supervisor's refusal.
pub async fn failover(admin_socket: &Path, to: Option<Backend>) -> Result<String, AdminFailure> {
    match admin_request(
        admin_socket,
        &AdminToSupervisor::Failover(FailoverCommand { to }),
    )
    .await?
    {
        SupervisorToAdmin::Ok(ok) => Ok(ok.message),
        _ => Err(AdminFailure::Unexpected),
    }
}
