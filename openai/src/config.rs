//! The `[openai]` section of the rocksteady config file, and the API keys.
//!
//! The front door shares its config file with the supervisor: it reads only
//! the `[openai]` table and ignores every other top-level section, but inside
//! `[openai]` an unknown key is an error that names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::chat::GenParams;
use serde::Deserialize;
use thiserror::Error;

use crate::keys::{Keys, KeysError};

/// Name of the systemd credential holding the API keys.
pub const KEYS_CREDENTIAL: &str = "openai-keys";

/// Everything that can be wrong with the configuration or the keys.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file is unreadable, not TOML, or `[openai]` has an unknown or
    /// mistyped key (named).
    #[error(transparent)]
    Section(#[from] client::service::SectionError),
    /// A value has the right type but is out of range.
    #[error("config key openai.{key}: {reason}")]
    Invalid {
        /// Key inside `[openai]`.
        key: &'static str,
        /// What is wrong, and what is accepted.
        reason: String,
    },
    /// The keys file could not be read.
    #[error("cannot read the API keys file {path}: {source}")]
    KeysRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The keys file has a bad line.
    #[error("API keys file {path}: {source}")]
    Keys {
        /// The file.
        path: PathBuf,
        /// Which line and why.
        #[source]
        source: KeysError,
    },
    /// No key, and the listener is reachable from other hosts.
    #[error(
        "no API keys configured, and listen = {listen} is not loopback-only: put keys in the \
         systemd credential `openai-keys` ($CREDENTIALS_DIRECTORY/openai-keys) or openai.keys_file, \
         or listen on 127.0.0.1"
    )]
    OpenWithoutKeys {
        /// The listen address.
        listen: SocketAddr,
    },
}

/// The front door's settings: the `[openai]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port of the HTTP listener.
    pub listen: SocketAddr,
    /// The supervisor's client socket.
    pub client_socket: PathBuf,
    /// Where requests go instead of `client_socket`, when set: a NATS URL
    /// (`nats://host:4222?class=cpu-small`) for a cluster of boards, or
    /// `unix:/path`. Empty = `client_socket`.
    pub supervisor: String,
    /// The supervisor's HTTP endpoint (`host:port` of its `[http] listen`),
    /// whose `/health` is passed through; empty = health from the slots'
    /// states over the client socket.
    pub supervisor_http: String,
    /// The API keys file; empty = `$CREDENTIALS_DIRECTORY/openai-keys` when it exists.
    pub keys_file: PathBuf,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle_timeout_secs: u64,
    /// Origins allowed by CORS (`*` for any); empty = CORS off.
    pub cors_origins: Vec<String>,
    /// Requests one key may have running at once.
    pub key_max_concurrent: usize,
    /// Requests one key may start within `key_rate_window_secs`.
    pub key_rate_limit: usize,
    /// Window of `key_rate_limit`, in seconds.
    pub key_rate_window_secs: u64,
    /// `Retry-After` sent when the supervisor's queue is full, in seconds.
    pub busy_retry_after_secs: u64,
    /// Generated tokens when a request names no limit.
    pub default_max_tokens: u32,
    /// Most generated tokens a request may ask for.
    pub max_tokens_limit: u32,
    /// Sampling temperature when a request names none.
    pub temperature: f32,
    /// Top-k cut-off (not part of the OpenAI API); 0 = off.
    pub top_k: u32,
    /// Repetition penalty (not part of the OpenAI API); 1.0 = off.
    pub repeat_penalty: f32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            client_socket: PathBuf::from("/run/rocksteady/client.sock"),
            supervisor: String::new(),
            supervisor_http: "127.0.0.1:9464".to_owned(),
            keys_file: PathBuf::new(),
            max_body_bytes: 1024 * 1024,
            idle_timeout_secs: 120,
            cors_origins: Vec::new(),
            key_max_concurrent: 2,
            key_rate_limit: 60,
            key_rate_window_secs: 60,
            busy_retry_after_secs: 2,
            default_max_tokens: 512,
            max_tokens_limit: 2048,
            temperature: 0.7,
            top_k: 40,
            repeat_penalty: 1.1,
        }
    }
}

/// The whole file as the front door sees it: other sections are ignored.
impl Config {
    /// Reads the `[openai]` section of `path` (defaults when absent).
    ///
    /// # Errors
    /// Unreadable file, bad TOML, unknown keys or bad values (naming the key).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = client::service::read_config(path)?;
        Self::from_toml(&text)
    }

    /// Parses and checks the `[openai]` section of a whole config file.
    ///
    /// # Errors
    /// Bad TOML, unknown keys or bad values, naming the key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = client::service::parse_section(text, "openai")?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, reason: &str) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        }
        if !self.supervisor.is_empty() {
            // Checked without the credentials directory: only the syntax here.
            let probe = Path::new("/");
            if let Err(e) = client::cluster::Target::parse(&self.supervisor, Some(probe)) {
                return Err(ConfigError::Invalid {
                    key: "supervisor",
                    reason: e.to_string(),
                });
            }
        }
        if !self.supervisor_http.is_empty() && self.supervisor_http.parse::<SocketAddr>().is_err() {
            return bad(
                "supervisor_http",
                "must be host:port with an IP address (the supervisor's http.listen), or empty",
            );
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes", "must be at least 1024");
        }
        if self.idle_timeout_secs == 0 {
            return bad("idle_timeout_secs", "must be at least 1");
        }
        if self.key_max_concurrent == 0 {
            return bad("key_max_concurrent", "must be at least 1");
        }
        if self.key_rate_limit == 0 {
            return bad("key_rate_limit", "must be at least 1");
        }
        if self.key_rate_window_secs == 0 {
            return bad("key_rate_window_secs", "must be at least 1");
        }
        if self.default_max_tokens == 0 || self.default_max_tokens > self.max_tokens_limit {
            return bad(
                "default_max_tokens",
                "must be at least 1 and at most max_tokens_limit",
            );
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad("temperature", "must be between 0 and 2");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty <= 5.0) {
            return bad("repeat_penalty", "must be above 0 and at most 5");
        }
        for origin in &self.cors_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return bad(
                    "cors_origins",
                    "each entry must be \"*\" or an origin like https://host[:port]",
                );
            }
        }
        Ok(())
    }

    /// Idle connection timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// Defaults of every request's sampling.
    pub fn gen_defaults(&self) -> GenParams {
        GenParams {
            max_tokens: self.default_max_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: 1.0,
            repeat_penalty: self.repeat_penalty,
            seed: 42,
        }
    }

    /// Loads the API keys: `keys_file` when set, else the systemd credential
    /// `openai-keys` when `credentials_dir` has it, else none. No keys with a
    /// listener reachable from other hosts is an error.
    ///
    /// # Errors
    /// Unreadable or malformed keys file; [`ConfigError::OpenWithoutKeys`].
    pub fn load_keys(&self, credentials_dir: Option<&Path>) -> Result<Keys, ConfigError> {
        let path = if self.keys_file.as_os_str().is_empty() {
            credentials_dir
                .map(|d| d.join(KEYS_CREDENTIAL))
                .filter(|p| p.exists())
        } else {
            Some(self.keys_file.clone())
        };
        let keys = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| ConfigError::KeysRead {
                        path: path.clone(),
                        source,
                    })?;
                Keys::parse(&text).map_err(|source| ConfigError::Keys { path, source })?
            }
            None => Keys::default(),
        };
        if keys.is_empty() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::OpenWithoutKeys {
                listen: self.listen,
            });
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_shows_the_defaults() {
        let c = Config::from_toml(include_str!("../../deploy/config.example.toml")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn other_sections_are_ignored_and_defaults_apply() {
        let c =
            Config::from_toml("[gateway]\nfoo = 1\n[openai]\nlisten = \"0.0.0.0:9000\"\n").unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.key_max_concurrent, Config::default().key_max_concurrent);
    }

    #[test]
    fn unknown_and_bad_keys_are_named() {
        let err = Config::from_toml("[openai]\nlisen = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("openai.lisen"), "{err}");
        let err = Config::from_toml("[openai]\nkey_rate_limit = 0\n").unwrap_err();
        assert!(err.to_string().contains("openai.key_rate_limit"), "{err}");
        let err = Config::from_toml("[openai]\ncors_origins = [\"example.com\"]\n").unwrap_err();
        assert!(err.to_string().contains("cors_origins"), "{err}");
        let err = Config::from_toml("[openai]\nsupervisor = \"http://x\"\n").unwrap_err();
        assert!(err.to_string().contains("supervisor"), "{err}");
        let ok = Config::from_toml("[openai]\nsupervisor = \"nats://h:4222?class=cpu-small\"\n");
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn no_keys_is_refused_off_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        assert!(c.load_keys(Some(dir.path())).unwrap().is_empty());
        c.listen = "0.0.0.0:8090".parse().unwrap();
        let err = c.load_keys(Some(dir.path())).unwrap_err();
        assert!(matches!(err, ConfigError::OpenWithoutKeys { .. }));
        assert!(err.to_string().contains("openai-keys"));
        std::fs::write(
            dir.path().join(KEYS_CREDENTIAL),
            "sk-0123456789abcdef0123 ops\n",
        )
        .unwrap();
        let keys = c.load_keys(Some(dir.path())).unwrap();
        assert_eq!(keys.find("sk-0123456789abcdef0123"), Some("ops"));
    }
}
