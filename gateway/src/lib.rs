//! rocksteady's Discord gateway: the bot that turns Discord messages and
//! slash commands into supervisor requests and streams the answers back.
//!
//! [`run`] is the whole process minus argument parsing and tracing setup: it
//! connects the shard (twilight-gateway), the REST client (twilight-http) and
//! the supervisor link, and handles events until `shutdown` is cancelled or
//! Discord refuses the bot for good.
//!
//! It is a client of the supervisor like any other: it must not open the
//! sockets by hand (that is the `client` crate), must not read other
//! programs' config sections (only `[gateway]`), and must not log a prompt,
//! an answer or a token.

pub mod access;
pub mod admin;
pub mod bot;
pub mod config;
pub mod context;
pub mod inflight;
pub mod logging;
pub mod pacer;
pub mod render;
pub mod reply;
pub mod split;

/// The shared supervisor connection lives in the client library.
pub use client::link;

/// Software name sent in the hello.
pub const SOFTWARE: &str = concat!("rocksteady-gateway ", env!("CARGO_PKG_VERSION"));

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use twilight_gateway::{
    CloseFrame, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt as _,
};
use twilight_model::gateway::CloseCode;

use crate::bot::{Bot, Me};
use crate::config::RestEndpoint;
pub use crate::config::{Config, ConfigError, Token};
use crate::inflight::InFlight;
use crate::link::SupervisorLink;

/// How long in-flight answers get to write their last edit at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the gateway stopped other than by request.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Discord closed the gateway with 4004.
    #[error(
        "Discord rejected the bot token (gateway close code 4004, authentication failed); \
         check the discord-token credential or DISCORD_TOKEN"
    )]
    InvalidToken,
    /// Discord closed the gateway with 4014.
    #[error(
        "Discord refused the requested intents (gateway close code 4014, disallowed intents); \
         enable the Message Content intent for the bot in the developer portal, or set \
         message_content_intent = false in [gateway]"
    )]
    DisallowedIntents,
    /// `supervisor` is not a socket path or NATS URL that can be used.
    #[error("[gateway] supervisor")]
    Supervisor(#[source] client::link::LinkError),
    /// `supervisor` does not parse.
    #[error("[gateway] supervisor")]
    Target(#[source] client::cluster::TargetError),
    /// Any other close code after which Discord does not allow reconnecting.
    #[error("Discord closed the gateway for good (close code {code}: {reason})")]
    FatalClose {
        /// The close code.
        code: u16,
        /// Discord's reason text.
        reason: String,
    },
}

/// The gateway intents the configuration needs.
pub fn intents(config: &Config) -> Intents {
    let mut intents = Intents::GUILD_MESSAGES | Intents::DIRECT_MESSAGES;
    if config.message_content_intent {
        intents |= Intents::MESSAGE_CONTENT;
    }
    intents
}

fn fatal_close(code: u16, reason: &str) -> Option<GatewayError> {
    match CloseCode::try_from(code) {
        Ok(CloseCode::AuthenticationFailed) => Some(GatewayError::InvalidToken),
        Ok(CloseCode::DisallowedIntents) => Some(GatewayError::DisallowedIntents),
        Ok(close) if !close.can_reconnect() => Some(GatewayError::FatalClose {
            code,
            reason: reason.to_owned(),
        }),
        _ => None,
    }
}

/// The REST client and the shard, pointed at Discord or the configured proxies.
fn discord_clients(config: &Config) -> (Arc<twilight_http::Client>, Shard) {
    let mut http = twilight_http::Client::builder().token(config.token.expose().to_owned());
    if let RestEndpoint::Proxy {
        authority,
        plain_http,
    } = config.rest_endpoint()
    {
        http = http.proxy(authority, plain_http);
    }
    let mut shard_config =
        twilight_gateway::ConfigBuilder::new(config.token.expose().to_owned(), intents(config));
    if let Some(url) = config.gateway_proxy() {
        shard_config = shard_config.proxy_url(url.to_owned());
    }
    (
        Arc::new(http.build()),
        Shard::with_config(ShardId::ONE, shard_config.build()),
    )
}

/// The link to the supervisor: its socket, or a cluster of boards over NATS
/// when `supervisor` says so.
async fn supervisor_link(
    config: &Config,
    link_stop: CancellationToken,
) -> Result<SupervisorLink, GatewayError> {
    if config.supervisor.is_empty() {
        return Ok(SupervisorLink::start(
            config.client_socket.clone(),
            SOFTWARE,
            link_stop,
        ));
    }
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
    let target = client::cluster::Target::parse(&config.supervisor, credentials.as_deref())
        .map_err(GatewayError::Target)?;
    SupervisorLink::start_target(&target, SOFTWARE, link_stop)
        .await
        .map_err(GatewayError::Supervisor)
}

/// Runs the bot until `shutdown` is cancelled.
///
/// # Errors
/// [`GatewayError`] when the configuration is invalid or Discord refuses the
/// bot for good (bad token, disallowed intents).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), GatewayError> {
    config.validate()?;
    if config.token.is_empty() {
        return Err(ConfigError::TokenMissing.into());
    }
    // twilight's TLS stack needs a process-wide crypto provider; a second
    // install (tests run several bots in one process) fails harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let (http, mut shard) = discord_clients(&config);

    let link_stop = CancellationToken::new();
    let link = supervisor_link(&config, link_stop.clone()).await?;
    // A child token: stopping after a fatal close must not cancel the caller's.
    let stop = shutdown.child_token();
    let in_flight = InFlight::new(config.max_in_flight);
    let bot = Arc::new(Bot::new(config, http, link, stop.clone()));
    let tasks = TaskTracker::new();
    let wanted = EventTypeFlags::READY
        | EventTypeFlags::RESUMED
        | EventTypeFlags::MESSAGE_CREATE
        | EventTypeFlags::INTERACTION_CREATE;

    let result = loop {
        let item = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            item = shard.next_event(wanted) => item,
        };
        let event = match item {
            None => break Ok(()),
            Some(Ok(event)) => event,
            Some(Err(err)) => {
                // The error text can carry a whole event (user messages):
                // log only that one failed.
                tracing::warn!(kind = ?std::mem::discriminant(err.kind()), "could not receive a gateway event");
                continue;
            }
        };
        match event {
            Event::Ready(ready) => {
                tracing::info!(user = ready.user.id.get(), "connected to Discord");
                bot.set_me(Me {
                    user: ready.user.id,
                    application: ready.application.id,
                });
                let bot = Arc::clone(&bot);
                tasks.spawn(async move { bot.register_commands().await });
            }
            Event::Resumed => tracing::info!("gateway session resumed"),
            Event::GatewayClose(Some(frame)) => {
                if let Some(err) = fatal_close(frame.code, &frame.reason) {
                    break Err(err);
                }
                tracing::info!(code = frame.code, "gateway closed; reconnecting");
            }
            // One task per request the bot takes on, at most max_in_flight
            // at once. The loop never waits for a slot (it also keeps the
            // shard's heartbeat going): without one, the event is dropped.
            // Chatter that does not ask the bot anything takes no slot.
            Event::MessageCreate(message) => {
                if !bot.wants(&message) {
                    continue;
                }
                let Some(slot) = in_flight.try_start("message") else {
                    continue;
                };
                let bot = Arc::clone(&bot);
                tasks.spawn(async move {
                    bot.on_message(message.message).await;
                    drop(slot);
                });
            }
            Event::InteractionCreate(interaction) => {
                let Some(slot) = in_flight.try_start("slash command") else {
                    continue;
                };
                let bot = Arc::clone(&bot);
                tasks.spawn(async move {
                    bot.on_interaction(interaction.0).await;
                    drop(slot);
                });
            }
            _ => {}
        }
    };

    // Stop: tell Discord, let answers in flight write their last edit, then
    // drop the supervisor connection (which cancels anything left).
    stop.cancel();
    shard.close(CloseFrame::NORMAL);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(item) = shard.next_event(EventTypeFlags::empty()).await {
            if matches!(item, Ok(Event::GatewayClose(_))) {
                break;
            }
        }
    })
    .await;
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some answers were still being written at shutdown");
    }
    link_stop.cancel();
    result
}
