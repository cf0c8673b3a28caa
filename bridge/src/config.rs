//! The bridge's `[bridge]` section of the rocksteady config file (the
//! supervisor passes over it): which NATS cluster, which board, which model
//! classes this board takes and with which of its models.
//!
//! ```toml
//! [bridge]
//! board = "board-2"                 # default: the host name
//! nats = "nats://10.0.0.1:4222?creds=credential:nats-creds"
//! client_socket = "/run/rocksteady/client.sock"
//! admin_socket = "/run/rocksteady/admin.sock"
//! heartbeat_ms = 1000
//! ack_wait_s = 30
//!
//! [bridge.classes]                  # class = local model ("" = any slot)
//! cpu-small = ""
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use client::cluster::wire::{check_token, NameError};
use client::cluster::{NatsTarget, Target, TargetError};
use serde::Deserialize;
use thiserror::Error;

/// A config the bridge cannot run with.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file is unreadable, not TOML, or `[bridge]` has an unknown,
    /// missing or mistyped key (named).
    #[error(transparent)]
    Section(#[from] client::service::SectionError),
    /// No `[bridge]` section.
    #[error("{path} has no [bridge] section")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// `nats` is not a NATS URL.
    #[error("[bridge] nats: {0}")]
    Target(#[from] TargetError),
    /// `nats` names a Unix socket.
    #[error("[bridge] nats must be a NATS URL (nats://host:port), not a socket path")]
    NotNats,
    /// A class or board name that cannot be a subject token.
    #[error("[bridge] {0}")]
    Name(#[from] NameError),
    /// No classes.
    #[error("[bridge.classes] is empty: name at least one model class this board serves (e.g. cpu-small = \"\")")]
    NoClasses,
    /// A number out of range.
    #[error("[bridge] {key} = {value} is out of range ({range})")]
    Range {
        /// The key.
        key: &'static str,
        /// The value.
        value: u64,
        /// The range.
        range: &'static str,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    board: Option<String>,
    nats: String,
    #[serde(default = "default_client_socket")]
    client_socket: PathBuf,
    #[serde(default = "default_admin_socket")]
    admin_socket: PathBuf,
    #[serde(default = "default_heartbeat_ms")]
    heartbeat_ms: u64,
    #[serde(default = "default_ack_wait_s")]
    ack_wait_s: u64,
    #[serde(default)]
    classes: BTreeMap<String, String>,
}

fn default_client_socket() -> PathBuf {
    PathBuf::from("/run/rocksteady/client.sock")
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from("/run/rocksteady/admin.sock")
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_ack_wait_s() -> u64 {
    30
}

/// The bridge's settings.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// This board's name in subjects and heartbeats.
    pub board: String,
    /// The NATS cluster.
    pub nats: NatsTarget,
    /// The local supervisor's client socket.
    pub client_socket: PathBuf,
    /// The local supervisor's admin socket (slot states, queue, temperatures).
    pub admin_socket: PathBuf,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// How long a pulled request may go without an ack or a progress note
    /// before JetStream gives it to another board.
    pub ack_wait: Duration,
    /// Class -> local model name ("" = any slot).
    pub classes: BTreeMap<String, String>,
}

impl BridgeConfig {
    /// Reads `[bridge]` from the config file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the problem.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = client::service::read_config(path)?;
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Self::parse(&text, path, credentials.as_deref(), &host_name())
    }

    /// Parses `[bridge]` from `text` (`path` only names it in errors);
    /// `host` is the board name when none is set.
    ///
    /// # Errors
    /// [`ConfigError`] naming the problem.
    pub fn parse(
        text: &str,
        path: &Path,
        credentials_dir: Option<&Path>,
        host: &str,
    ) -> Result<Self, ConfigError> {
        let raw: Raw =
            client::service::parse_optional_section(text, "bridge")?.ok_or_else(|| {
                ConfigError::Missing {
                    path: path.to_owned(),
                }
            })?;
        let Target::Nats(nats) = Target::parse(&raw.nats, credentials_dir)? else {
            return Err(ConfigError::NotNats);
        };
        let board = raw.board.unwrap_or_else(|| host.to_owned());
        check_token("board name", &board)?;
        if raw.classes.is_empty() {
            return Err(ConfigError::NoClasses);
        }
        for class in raw.classes.keys() {
            check_token("model class", class)?;
        }
        if !(100..=60_000).contains(&raw.heartbeat_ms) {
            return Err(ConfigError::Range {
                key: "heartbeat_ms",
                value: raw.heartbeat_ms,
                range: "100 to 60000",
            });
        }
        if !(2..=3600).contains(&raw.ack_wait_s) {
            return Err(ConfigError::Range {
                key: "ack_wait_s",
                value: raw.ack_wait_s,
                range: "2 to 3600",
            });
        }
        Ok(Self {
            board,
            nats: *nats,
            client_socket: raw.client_socket,
            admin_socket: raw.admin_socket,
            heartbeat: Duration::from_millis(raw.heartbeat_ms),
            ack_wait: Duration::from_secs(raw.ack_wait_s),
            classes: raw.classes,
        })
    }
}

/// The host name, made into a valid board name ("board" if unreadable).
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "board".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BridgeConfig, ConfigError> {
        BridgeConfig::parse(text, Path::new("c.toml"), None, "rock-5b")
    }

    #[test]
    fn a_bridge_section_beside_the_supervisors_is_read() {
        let c = parse(
            "[supervisor]\nruntime_dir = \"/x\"\n[bridge]\nnats = \"nats://n:4222?prefix=lab\"\n[bridge.classes]\ncpu-small = \"\"\nnpu-1_5b = \"qwen\"\n",
        )
        .unwrap();
        assert_eq!(c.board, "rock-5b");
        assert_eq!(c.nats.prefix, "lab");
        assert_eq!(c.classes["npu-1_5b"], "qwen");
        assert_eq!(c.heartbeat, Duration::from_secs(1));
        assert_eq!(
            c.client_socket,
            PathBuf::from("/run/rocksteady/client.sock")
        );
    }

    #[test]
    fn bad_sections_are_named() {
        let err = |t: &str| parse(t).unwrap_err().to_string();
        assert!(err("[supervisor]\n").contains("no [bridge] section"));
        assert!(err("[bridge]\nnats = \"nats://n\"\n").contains("[bridge.classes] is empty"));
        assert!(
            err("[bridge]\nnats = \"/run/x.sock\"\n[bridge.classes]\na = \"\"\n")
                .contains("must be a NATS URL")
        );
        assert!(
            err("[bridge]\nnats = \"nats://n\"\n[bridge.classes]\n\"a.b\" = \"\"\n")
                .contains("model class")
        );
        assert!(err(
            "[bridge]\nnats = \"nats://n\"\nheartbeat_ms = 5\n[bridge.classes]\na = \"\"\n"
        )
        .contains("heartbeat_ms"));
        let e = parse("[bridge]\nnats = \"nats://n\"\ncolour = 1\n[bridge.classes]\na = \"\"\n")
            .unwrap_err();
        assert!(format!("{:#}", anyhow::Error::from(e)).contains("colour"));
    }
}
