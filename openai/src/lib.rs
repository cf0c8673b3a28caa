//! rocksteady's OpenAI-compatible HTTP API: `POST /v1/chat/completions`
//! (JSON or server-sent events), `GET /v1/models`, `GET /health` and its own
//! `/metrics`, served through the supervisor's client socket.
//!
//! A front door like the Discord gateway: it decides nothing the supervisor
//! decides (routing, queueing, failover), it translates. What it owns: the
//! API keys and their limits, the request checks, stop strings (applied to
//! the streamed text, then the request is cancelled), and the error shapes.

pub mod api;
pub mod config;
pub mod error;
pub mod idle;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod stop;

use std::sync::Arc;

use client::link::SupervisorLink;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError};
pub use keys::Keys;

/// Serves the API on `listener` until `shutdown`.
///
/// # Errors
/// The listener failed.
pub async fn run(
    config: Config,
    keys: Keys,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let software = concat!("rocksteady-openai ", env!("CARGO_PKG_VERSION"));
    let link = if config.supervisor.is_empty() {
        SupervisorLink::start(
            config.client_socket.clone(),
            software,
            shutdown.child_token(),
        )
    } else {
        // A cluster of boards over NATS (or another socket).
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
        let target = client::cluster::Target::parse(&config.supervisor, credentials.as_deref())
            .map_err(|e| std::io::Error::other(format!("[openai] supervisor: {e}")))?;
        SupervisorLink::start_target(&target, software, shutdown.child_token())
            .await
            .map_err(|e| std::io::Error::other(format!("[openai] supervisor: {e}")))?
    };
    let idle = config.idle_timeout();
    tracing::info!(listen = %listener.local_addr()?, keys = keys.len(), "serving the OpenAI-compatible API");
    let shared = Arc::new(server::Shared::new(config, keys, link));
    let app = server::router(shared);
    axum::serve(
        idle::IdleListener::new(listener, idle),
        app.into_make_service_with_connect_info::<idle::Peer>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}
