//! `supctl restart <slot> [--now]`: restart one worker, after its current
//! request unless `--now`.

use std::path::Path;

use proto::admin::{AdminToSupervisor, RestartCommand, SupervisorToAdmin};

use super::{admin_request, AdminFailure};

/// Sends the command; returns the supervisor's confirmation.
///
/// # Errors
/// Connection failures or the supervisor's refusal.
pub async fn restart(admin_socket: &Path, slot: &str, now: bool) -> Result<String, AdminFailure> {
    let cmd = AdminToSupervisor::Restart(RestartCommand {
        slot: slot.to_owned(),
        now,
    });
    match admin_request(admin_socket, &cmd).await? {
        SupervisorToAdmin::Ok(ok) => Ok(ok.message),
        _ => Err(AdminFailure::Unexpected),
    }
}
