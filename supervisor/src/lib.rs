//! rocksteady's supervisor daemon: starts and watches the inference workers,
//! routes chat requests to them, and relays their token streams.
//!
//! It holds the daemon only: the admin command line is the `supctl` crate
//! (which reads this crate's [`config`]), and talking to the sockets is the
//! `client` crate's job. It must not grow client tools or the sections of
//! other programs' config (`[gateway]`, `[bench]` are passed over unread).
//!
//! [`run`] is the whole daemon; the binary only parses arguments and sets up
//! logging around it.

pub mod cgroup;
/// The client side of the sockets, re-exported for `supctl` and the tests.
pub use client;
pub mod config;
pub mod core;
pub mod driver;
mod ffi;
pub mod http;
pub mod identity;
pub mod lifecycle;
pub mod observe;
pub mod pinning;
pub mod process;
pub mod routing;
pub mod server;
#[cfg(test)]
mod sim;
pub mod telemetry;

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::{parse_mode, Config};
use crate::driver::{Driver, Expected};

/// Why the supervisor could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A directory could not be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another supervisor holds the runtime directory, or its lock file
    /// cannot be used.
    #[error(transparent)]
    Lock(#[from] process::LockError),
    /// `supervisor.worker_user` is set, but the supervisor may not switch to it.
    #[error(transparent)]
    WorkerUser(#[from] identity::CannotSwitch),
    /// `supervisor.worker_user` names no user (any more).
    #[error("config key `supervisor.worker_user`: {0}")]
    WorkerUserLookup(#[from] identity::LookupError),
    /// The worker user cannot reach something a worker needs.
    #[error(transparent)]
    WorkerAccess(#[from] Box<identity::AccessError>),
    /// The worker user's socket or directory could not be handed over.
    #[error("cannot give the worker user access to {path}: {source}")]
    Handover {
        /// The socket or directory.
        path: std::path::PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// A socket could not be bound.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: std::path::PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

fn make_dir(path: &Path, mode: u32) -> Result<(), StartError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| StartError::Dir {
            path: path.to_owned(),
            source,
        })
}

/// Decides who the workers run as, says so, and when it is another user
/// makes their socket directory reachable for it and checks that it can
/// reach everything else a worker needs.
fn worker_identity(config: &Config) -> Result<Option<identity::UserIds>, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let sup = &config.supervisor;
    let configured = sup
        .worker_user
        .as_deref()
        .map(identity::lookup)
        .transpose()?;
    let me = identity::Privilege::of_this_process(&config.telemetry.proc_root);
    let user = match identity::decide(configured, me)? {
        identity::WorkerIdentity::Inherit { as_root: true } => {
            tracing::info!("workers run as root, like the supervisor (set supervisor.worker_user to give them a user of their own)");
            return Ok(None);
        }
        identity::WorkerIdentity::Inherit { as_root: false } => return Ok(None),
        identity::WorkerIdentity::Switch(user) => user,
    };
    let handover = |path: &Path, source| StartError::Handover {
        path: path.to_owned(),
        source,
    };
    // The runtime directory gets "search" for others (no listing): its
    // sockets keep their own modes and peer checks. The worker sockets'
    // directory is entered by the worker's group only.
    let run = &sup.runtime_dir;
    let mode = std::fs::metadata(run)
        .map_err(|e| handover(run, e))?
        .permissions()
        .mode();
    std::fs::set_permissions(
        run,
        std::fs::Permissions::from_mode((mode & 0o7777) | 0o001),
    )
    .map_err(|e| handover(run, e))?;
    let dir = sup.worker_socket_dir();
    std::os::unix::fs::chown(&dir, None, Some(user.gid)).map_err(|e| handover(&dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o710))
        .map_err(|e| handover(&dir, e))?;
    identity::check(
        "the worker sockets' directory",
        &dir,
        &user,
        identity::Need::Enter,
    )?;
    identity::check_slots(config, &user)?;
    tracing::info!(user = %user, "workers run as their own user");
    Ok(Some(user))
}

/// Runs the supervisor until `shutdown` is cancelled: locks the runtime
/// directory (one supervisor per directory), binds the sockets,
/// reaps a previous run's workers, starts the workers, serves, and on
/// shutdown stops the workers and removes the sockets. `on_ready` is called
/// once the sockets are bound and a worker is ready (or none can be).
///
/// # Errors
/// [`StartError`] when the directories or sockets cannot be set up.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_ready: Option<Box<dyn FnOnce() + Send>>,
) -> Result<(), StartError> {
    let sup = &config.supervisor;
    make_dir(&sup.runtime_dir, 0o750)?;
    // Before any socket or pid file is touched: a second instance must leave
    // the live one's sockets and workers alone.
    let _instance = process::lock_instance(&sup.runtime_dir)?;
    make_dir(&sup.state_dir, 0o750)?;
    make_dir(&sup.worker_socket_dir(), 0o700)?;
    let worker_user = worker_identity(&config)?;
    let bind = |path: std::path::PathBuf, mode: u32| {
        server::bind(&path, mode).map_err(|source| StartError::Bind { path, source })
    };
    let client_mode = parse_mode(&sup.client_socket_mode).unwrap_or(0o660);
    let client_listener = bind(sup.client_socket(), client_mode)?;
    let admin_listener = bind(
        sup.admin_socket(),
        parse_mode(&sup.admin_socket_mode).unwrap_or(0o600),
    )?;

    let http_listener = if config.http.listen.is_empty() {
        None
    } else {
        let addr = config.http.listen.clone();
        Some(
            tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|source| StartError::Bind {
                    path: addr.into(),
                    source,
                })?,
        )
    };
    let observed = Arc::new(observe::Observed::default());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks = CancellationToken::new();
    let mut sockets = Vec::new();
    let mut joins = Vec::new();
    for (i, (name, _)) in config.slot_list().into_iter().enumerate() {
        let path = sup.worker_socket_dir().join(format!("{name}.sock"));
        process::reap_leftover(&sup.state_dir, &config.telemetry.proc_root, name, &path);
        let listener = bind(path.clone(), 0o600)?;
        if let Some(user) = &worker_user {
            // Only the worker's user may connect (and the accept filter
            // still admits only the pid spawned last).
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).map_err(|source| {
                StartError::Handover {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        let expected = Arc::new(Expected::default());
        sockets.push((path, Arc::clone(&expected)));
        joins.push(tokio::spawn(server::serve_worker_slot(
            i,
            listener,
            expected,
            tx.clone(),
            tasks.clone(),
        )));
    }
    let access = Arc::new(
        server::Access::from_config(&config)
            .refusing_workers(sockets.iter().map(|(_, e)| Arc::clone(e)).collect()),
    );
    joins.push(tokio::spawn(server::serve_clients(
        client_listener,
        tx.clone(),
        Arc::clone(&observed),
        Arc::clone(&access),
        Arc::new(server::ClientLimits::from_config(&config)),
        tasks.clone(),
    )));
    joins.push(tokio::spawn(server::serve_admin(
        admin_listener,
        tx.clone(),
        Arc::clone(&observed),
        access,
        tasks.clone(),
    )));
    if let Some(listener) = http_listener {
        tracing::info!(address = %config.http.listen, "serving /health and /metrics");
        joins.push(tokio::spawn(http::serve(
            listener,
            Arc::clone(&observed),
            tasks.clone(),
        )));
    }
    tracing::info!(client = %sup.client_socket().display(), admin = %sup.admin_socket().display(), "listening");

    let driver = Driver::new(config.clone(), tx, sockets.clone(), observed, on_ready)
        .with_worker_user(worker_user);
    driver.run(rx, shutdown).await;

    tasks.cancel();
    for join in joins {
        let _ = join.await;
    }
    let _ = std::fs::remove_file(sup.client_socket());
    let _ = std::fs::remove_file(sup.admin_socket());
    for (path, _) in sockets {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("supervisor stopped");
    Ok(())
}
