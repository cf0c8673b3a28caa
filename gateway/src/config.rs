//! The `[gateway]` section of the rocksteady config file, and the Discord token.
//!
//! The gateway shares its config file with the supervisor: it reads only the
//! `[gateway]` table and ignores every other top-level section, but inside
//! `[gateway]` an unknown key is an error that names the key, so a typo is
//! never silently ignored.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::chat::GenParams;
use serde::{Deserialize, Deserializer};
use thiserror::Error;

/// Discord's own gateway: the shard connects here unless `gateway_url` says otherwise.
pub const DISCORD_GATEWAY_URL: &str = "wss://gateway.discord.gg";
/// Discord's own REST API host.
pub const DISCORD_REST_URL: &str = "https://discord.com";

/// Name of the systemd credential holding the bot token.
pub const TOKEN_CREDENTIAL: &str = "discord-token";
/// Environment variable consulted when no credential file exists.
pub const TOKEN_ENV: &str = "DISCORD_TOKEN";

/// Everything that can be wrong with the configuration or the token.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file is unreadable, not TOML, or `[gateway]` has an unknown or
    /// mistyped key (named).
    #[error(transparent)]
    Section(#[from] client::service::SectionError),
    /// A value has the right type but is out of range.
    #[error("config key gateway.{key}: {reason}")]
    Invalid {
        /// Key inside `[gateway]`.
        key: &'static str,
        /// What is wrong, and what is accepted.
        reason: String,
    },
    /// The credential file exists but could not be read.
    #[error("cannot read the Discord token from {path}: {source}")]
    TokenRead {
        /// The credential file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token found is empty.
    #[error("the Discord token in {origin} is empty")]
    TokenEmpty {
        /// Where it was read from.
        origin: String,
    },
    /// No token anywhere.
    #[error(
        "no Discord token: put it in the systemd credential `discord-token` \
         ($CREDENTIALS_DIRECTORY/discord-token) or set DISCORD_TOKEN"
    )]
    TokenMissing,
}

/// The Discord bot token. `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token (surrounding whitespace removed).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().trim().to_owned())
    }

    /// The token itself, for the Discord clients only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no token was set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads the token the way the service is deployed: the systemd
    /// credential `$CREDENTIALS_DIRECTORY/discord-token` first, then the
    /// `DISCORD_TOKEN` environment variable.
    ///
    /// # Errors
    /// [`ConfigError::TokenMissing`] when neither exists,
    /// [`ConfigError::TokenEmpty`] for an empty one,
    /// [`ConfigError::TokenRead`] when the credential file is unreadable.
    pub fn from_environment() -> Result<Self, ConfigError> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let env = std::env::var(TOKEN_ENV).ok();
        Self::from_sources(dir.as_deref(), env)
    }

    /// [`from_environment`](Self::from_environment) with the sources given.
    ///
    /// # Errors
    /// As [`from_environment`](Self::from_environment).
    pub fn from_sources(
        credentials_dir: Option<&Path>,
        env_token: Option<String>,
    ) -> Result<Self, ConfigError> {
        if let Some(dir) = credentials_dir {
            let path = dir.join(TOKEN_CREDENTIAL);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let token = Self::new(text);
                    if token.is_empty() {
                        return Err(ConfigError::TokenEmpty {
                            origin: path.display().to_string(),
                        });
                    }
                    return Ok(token);
                }
                // systemd sets CREDENTIALS_DIRECTORY for any credential; ours
                // may simply not be among them, so fall through to the variable.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ConfigError::TokenRead { path, source }),
            }
        }
        match env_token {
            Some(text) => {
                let token = Self::new(text);
                if token.is_empty() {
                    Err(ConfigError::TokenEmpty {
                        origin: TOKEN_ENV.to_owned(),
                    })
                } else {
                    Ok(token)
                }
            }
            None => Err(ConfigError::TokenMissing),
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Token(<unset>)"
        } else {
            "Token(<redacted>)"
        })
    }
}

/// The gateway's settings: the `[gateway]` table plus the token.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Discord gateway WebSocket URL; anything but Discord's own is used as a
    /// gateway proxy (`ws://` or `wss://`, no trailing slash).
    pub gateway_url: String,
    /// Discord REST base URL: `https://discord.com`, or `http(s)://host:port`
    /// of an HTTP proxy that forwards Discord's API paths.
    pub rest_url: String,
    /// The supervisor's client socket.
    pub client_socket: PathBuf,
    /// Where requests go instead of `client_socket`, when set: a NATS URL
    /// (`nats://host:4222?class=cpu-small`) for a cluster of boards, or
    /// `unix:/path`. Empty = `client_socket`.
    pub supervisor: String,
    /// The supervisor's admin socket (for `/status`).
    pub admin_socket: PathBuf,
    /// Least time between two message writes in one channel, in milliseconds.
    pub edit_interval_ms: u64,
    /// Most Discord messages (the new one included) taken from a reply chain.
    pub context_max_messages: usize,
    /// Most characters of message text taken from a reply chain.
    pub context_max_chars: usize,
    /// Messages remembered so a reply chain is not fetched twice.
    pub context_cache_size: usize,
    /// Guilds the bot answers in; empty means all.
    #[serde(deserialize_with = "snowflakes")]
    pub allowed_guilds: Vec<u64>,
    /// Channels the bot answers in; empty means all.
    #[serde(deserialize_with = "snowflakes")]
    pub allowed_channels: Vec<u64>,
    /// Users the bot answers; empty (with `allowed_roles` empty) means all.
    #[serde(deserialize_with = "snowflakes")]
    pub allowed_users: Vec<u64>,
    /// Roles whose members the bot answers (in guilds); a user passes when
    /// listed in `allowed_users` or holding one of these roles.
    #[serde(deserialize_with = "snowflakes")]
    pub allowed_roles: Vec<u64>,
    /// Whether to answer direct messages.
    pub allow_dms: bool,
    /// Users who may run `/status`.
    #[serde(deserialize_with = "snowflakes")]
    pub admin_users: Vec<u64>,
    /// Requests one user may have running at once.
    pub user_max_concurrent: usize,
    /// Requests one user may start within `user_rate_window_secs`.
    pub user_rate_limit: usize,
    /// Window of `user_rate_limit`, in seconds.
    pub user_rate_window_secs: u64,
    /// Ask for the privileged MESSAGE_CONTENT intent (lets the bot read
    /// replies that do not mention it); must be enabled in the developer portal.
    pub message_content_intent: bool,
    /// Register the `/ask` and `/status` slash commands at start.
    pub register_commands: bool,
    /// Messages and slash commands handled at once (each answer holds one
    /// until it is complete); more are dropped unanswered and counted in the log.
    pub max_in_flight: usize,
    /// Upper bound on generated tokens per answer.
    pub max_tokens: u32,
    /// Sampling temperature; 0 = greedy.
    pub temperature: f32,
    /// Top-k cut-off; 0 = off.
    pub top_k: u32,
    /// Nucleus cut-off; 1.0 = off.
    pub top_p: f32,
    /// Repetition penalty; 1.0 = off.
    pub repeat_penalty: f32,
    /// Sampling seed.
    pub seed: u32,
    /// System prompt put before every conversation; empty for none.
    pub system_prompt: String,
    /// The bot token; never read from the file.
    #[serde(skip)]
    pub token: Token,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gateway_url: DISCORD_GATEWAY_URL.to_owned(),
            rest_url: DISCORD_REST_URL.to_owned(),
            client_socket: PathBuf::from("/run/rocksteady/client.sock"),
            supervisor: String::new(),
            admin_socket: PathBuf::from("/run/rocksteady/admin.sock"),
            edit_interval_ms: 1000,
            context_max_messages: 12,
            context_max_chars: 6000,
            context_cache_size: 2000,
            allowed_guilds: Vec::new(),
            allowed_channels: Vec::new(),
            allowed_users: Vec::new(),
            allowed_roles: Vec::new(),
            allow_dms: true,
            admin_users: Vec::new(),
            user_max_concurrent: 1,
            user_rate_limit: 6,
            user_rate_window_secs: 60,
            message_content_intent: false,
            register_commands: true,
            max_in_flight: 64,
            max_tokens: 512,
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.1,
            seed: 42,
            system_prompt:
                "You are a helpful assistant in a Discord chat. Answer briefly and clearly."
                    .to_owned(),
            token: Token::default(),
        }
    }
}

impl fmt::Debug for Config {
    // Manual: the system prompt is operator text, but the token must never
    // show, so list the fields that matter for diagnosis only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("gateway_url", &self.gateway_url)
            .field("rest_url", &self.rest_url)
            .field("client_socket", &self.client_socket)
            .field("supervisor", &self.supervisor)
            .field("admin_socket", &self.admin_socket)
            .field("edit_interval_ms", &self.edit_interval_ms)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads the `[gateway]` section of `path` (defaults when absent) and the
    /// token from the environment.
    ///
    /// # Errors
    /// Unreadable file, bad TOML, unknown keys or bad values (naming the key),
    /// and token errors.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = client::service::read_config(path)?;
        let mut config = Self::from_toml(&text)?;
        config.token = Token::from_environment()?;
        Ok(config)
    }

    /// Parses and checks the `[gateway]` section of a whole config file
    /// (without a token).
    ///
    /// # Errors
    /// Bad TOML, unknown keys or bad values, naming the key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = client::service::parse_section(text, "gateway")?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and formats.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        }
        if !(self.gateway_url.starts_with("ws://") || self.gateway_url.starts_with("wss://")) {
            return bad("gateway_url", "must start with ws:// or wss://");
        }
        if self.gateway_url.ends_with('/') {
            return bad("gateway_url", "must not end with a slash");
        }
        if let Err(reason) = RestEndpoint::parse(&self.rest_url) {
            return bad("rest_url", reason);
        }
        if !self.supervisor.is_empty() {
            // The syntax only: credentials are read when the link starts.
            let probe = Path::new("/");
            if let Err(e) = client::cluster::Target::parse(&self.supervisor, Some(probe)) {
                return bad("supervisor", e.to_string());
            }
        }
        if !(50..=60_000).contains(&self.edit_interval_ms) {
            return bad("edit_interval_ms", "must be between 50 and 60000");
        }
        if self.context_max_messages == 0 {
            return bad("context_max_messages", "must be at least 1");
        }
        if self.context_max_chars < 100 {
            return bad("context_max_chars", "must be at least 100");
        }
        if self.context_cache_size == 0 {
            return bad("context_cache_size", "must be at least 1");
        }
        if self.user_max_concurrent == 0 {
            return bad("user_max_concurrent", "must be at least 1");
        }
        if self.user_rate_limit == 0 {
            return bad("user_rate_limit", "must be at least 1");
        }
        if self.user_rate_window_secs == 0 {
            return bad("user_rate_window_secs", "must be at least 1");
        }
        if !(1..=10_000).contains(&self.max_in_flight) {
            return bad("max_in_flight", "must be between 1 and 10000");
        }
        if self.max_tokens == 0 {
            return bad("max_tokens", "must be at least 1");
        }
        if !(0.0..=5.0).contains(&self.temperature) {
            return bad("temperature", "must be between 0 and 5");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be above 0 and at most 1");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty <= 5.0) {
            return bad("repeat_penalty", "must be above 0 and at most 5");
        }
        for (key, list) in [
            ("allowed_guilds", &self.allowed_guilds),
            ("allowed_channels", &self.allowed_channels),
            ("allowed_users", &self.allowed_users),
            ("allowed_roles", &self.allowed_roles),
            ("admin_users", &self.admin_users),
        ] {
            if list.contains(&0) {
                return bad(key, "Discord ids are never 0");
            }
        }
        Ok(())
    }

    /// The minimum spacing of writes in one channel.
    pub fn edit_interval(&self) -> Duration {
        Duration::from_millis(self.edit_interval_ms)
    }

    /// Generation parameters sent with every request.
    pub fn gen_params(&self) -> GenParams {
        GenParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
        }
    }

    /// The gateway proxy URL, or `None` for Discord's own gateway.
    pub fn gateway_proxy(&self) -> Option<&str> {
        (self.gateway_url != DISCORD_GATEWAY_URL).then_some(self.gateway_url.as_str())
    }

    /// The REST endpoint (checked by [`validate`](Self::validate)).
    pub fn rest_endpoint(&self) -> RestEndpoint {
        RestEndpoint::parse(&self.rest_url).unwrap_or(RestEndpoint::Discord)
    }
}

/// Where REST requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestEndpoint {
    /// discord.com.
    Discord,
    /// A proxy: `host:port` and whether it speaks plain HTTP.
    Proxy {
        /// `host[:port]`.
        authority: String,
        /// Plain HTTP instead of HTTPS.
        plain_http: bool,
    },
}

impl RestEndpoint {
    fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim_end_matches('/');
        if url == DISCORD_REST_URL {
            return Ok(Self::Discord);
        }
        let (plain_http, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (false, rest)
        } else {
            return Err("must start with http:// or https://".to_owned());
        };
        if rest.is_empty() || rest.contains('/') {
            return Err("must be a scheme and host[:port] only, without a path".to_owned());
        }
        Ok(Self::Proxy {
            authority: rest.to_owned(),
            plain_http,
        })
    }
}

/// Accepts Discord ids as TOML integers or as strings of digits (as Discord's
/// "Copy ID" gives them).
fn snowflakes<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneId {
        Int(u64),
        Str(String),
    }
    let raw = Vec::<OneId>::deserialize(de)?;
    raw.into_iter()
        .map(|id| match id {
            OneId::Int(n) => Ok(n),
            OneId::Str(s) => s.trim().parse::<u64>().map_err(|_| {
                serde::de::Error::custom(format!("{s:?} is not a Discord id (digits only)"))
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_sections_are_ignored_and_defaults_fill_in() {
        let config = Config::from_toml(
            "[supervisor]\nwhatever = 1\n[slots.primary]\nbackend = \"npu\"\n\
             [gateway]\nedit_interval_ms = 700\nallowed_users = [12, \"34\"]\n",
        )
        .unwrap();
        assert_eq!(config.edit_interval_ms, 700);
        assert_eq!(config.allowed_users, vec![12, 34]);
        assert_eq!(
            config.client_socket,
            Path::new("/run/rocksteady/client.sock")
        );
        let empty = Config::from_toml("").unwrap();
        assert_eq!(empty.gateway_url, DISCORD_GATEWAY_URL);
    }

    #[test]
    fn example_file_documents_the_defaults() {
        let example = Config::from_toml(include_str!("../config.example.toml")).unwrap();
        assert_eq!(example, Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[gateway]\nedit_intervall_ms = 5\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("edit_intervall_ms"), "{text}");
        assert!(matches!(
            err,
            ConfigError::Section(client::service::SectionError::Key { .. })
        ));
    }

    #[test]
    fn token_in_the_file_is_refused() {
        let err = Config::from_toml("[gateway]\ntoken = \"abc\"\n").unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Config::from_toml("[gateway]\nmax_tokens = \"many\"\n").unwrap_err();
        match err {
            ConfigError::Section(client::service::SectionError::Key { key, .. }) => {
                assert_eq!(key, "gateway.max_tokens");
            }
            other => panic!("unexpected {other}"),
        }
        let err = Config::from_toml("[gateway]\nallowed_roles = [\"x1\"]\n").unwrap_err();
        assert!(err.to_string().contains("allowed_roles"), "{err}");
    }

    #[test]
    fn out_of_range_names_the_key() {
        for (text, key) in [
            ("edit_interval_ms = 0", "edit_interval_ms"),
            ("top_p = 0.0", "top_p"),
            ("rest_url = \"ftp://x\"", "rest_url"),
            ("rest_url = \"http://x:1/api\"", "rest_url"),
            ("gateway_url = \"http://x\"", "gateway_url"),
            ("allowed_guilds = [0]", "allowed_guilds"),
            ("user_max_concurrent = 0", "user_max_concurrent"),
            ("max_in_flight = 0", "max_in_flight"),
        ] {
            let err = Config::from_toml(&format!("[gateway]\n{text}\n")).unwrap_err();
            match err {
                ConfigError::Invalid { key: got, .. } => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: unexpected {other}"),
            }
        }
    }

    #[test]
    fn rest_endpoint_parses_proxy() {
        let config =
            Config::from_toml("[gateway]\nrest_url = \"http://127.0.0.1:8080\"\n").unwrap();
        assert_eq!(
            config.rest_endpoint(),
            RestEndpoint::Proxy {
                authority: "127.0.0.1:8080".into(),
                plain_http: true
            }
        );
        assert_eq!(Config::default().rest_endpoint(), RestEndpoint::Discord);
        assert_eq!(Config::default().gateway_proxy(), None);
    }

    #[test]
    fn token_sources_in_order() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Token::from_sources(Some(dir.path()), None),
            Err(ConfigError::TokenMissing)
        ));
        assert_eq!(
            Token::from_sources(Some(dir.path()), Some("env-token".into())).unwrap(),
            Token::new("env-token")
        );
        std::fs::write(dir.path().join(TOKEN_CREDENTIAL), "file-token\n").unwrap();
        let token = Token::from_sources(Some(dir.path()), Some("env-token".into())).unwrap();
        assert_eq!(token.expose(), "file-token");
        assert!(!format!("{token:?}").contains("file-token"));
        std::fs::write(dir.path().join(TOKEN_CREDENTIAL), " \n").unwrap();
        assert!(matches!(
            Token::from_sources(Some(dir.path()), None),
            Err(ConfigError::TokenEmpty { .. })
        ));
        assert!(matches!(
            Token::from_sources(None, Some(String::new())),
            Err(ConfigError::TokenEmpty { .. })
        ));
    }
}
