//! Where a front door's requests go, from one config string: the local
//! supervisor's Unix socket (`unix:/run/rocksteady/client.sock`, or a bare
//! path), or a NATS cluster
//! (`nats://host:4222[,host2:4222]?prefix=rocksteady&class=cpu-small&creds=credential:nats-creds`),
//! and how a NATS connection is opened (credentials, nkey, TLS).
//!
//! Query keys of a NATS target:
//! - `prefix`: subject prefix (default `rocksteady`)
//! - `class`: model class of requests that name no model
//! - `creds`: a NATS user credentials file; `nkey`: an nkey seed file.
//!   `credential:<name>` reads `$CREDENTIALS_DIRECTORY/<name>` (systemd's
//!   `LoadCredential=`), so the secret never sits in the config or the
//!   environment.
//! - `tls=1` requires TLS (also implied by a `tls://` URL); `ca` adds a root
//!   certificate file; `cert` and `key` a client certificate.
//! - `silence_ms`: a serving board silent this long is replaced (default 5000)
//! - `name`: this front door's name in the server's connection list

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::wire::{check_token, NameError, Subjects, DEFAULT_PREFIX};

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The local supervisor's client socket.
    Unix(PathBuf),
    /// A NATS cluster.
    Nats(Box<NatsTarget>),
}

/// A NATS server and how to use it. `Debug` shows file paths, never secrets
/// (the config holds only paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTarget {
    /// Server URLs, comma-separated as given.
    pub servers: String,
    /// Subject prefix.
    pub prefix: String,
    /// Class of requests that name no model.
    pub class: Option<String>,
    /// User credentials file.
    pub creds: Option<PathBuf>,
    /// Nkey seed file.
    pub nkey: Option<PathBuf>,
    /// Require TLS.
    pub tls: bool,
    /// Extra root certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate and key.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Silence after which a serving board is replaced.
    pub silence: Duration,
    /// Connection name.
    pub name: Option<String>,
}

/// A target string that cannot be used.
#[derive(Debug, Error)]
pub enum TargetError {
    /// Neither a path nor `unix:` nor `nats://`/`tls://`.
    #[error("supervisor {value:?} is neither a socket path (unix:/path) nor a NATS URL (nats://host:port)")]
    Scheme {
        /// The string given.
        value: String,
    },
    /// An unknown query key.
    #[error("unknown NATS option {key:?} (known: prefix, class, creds, nkey, tls, ca, cert, key, silence_ms, name)")]
    UnknownKey {
        /// The key.
        key: String,
    },
    /// A value that does not parse.
    #[error("NATS option {key}={value:?} is not valid: {why}")]
    BadValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is expected.
        why: &'static str,
    },
    /// A prefix or class that cannot be a subject token.
    #[error(transparent)]
    Name(#[from] NameError),
    /// `credential:<name>` with no `$CREDENTIALS_DIRECTORY`.
    #[error("{key}=credential:{name} needs $CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=); it is not set")]
    NoCredentialsDirectory {
        /// The key.
        key: String,
        /// The credential's name.
        name: String,
    },
}

impl Target {
    /// Parses a target; `credentials_dir` stands for `$CREDENTIALS_DIRECTORY`.
    ///
    /// # Errors
    /// [`TargetError`] saying what is wrong.
    pub fn parse(value: &str, credentials_dir: Option<&Path>) -> Result<Self, TargetError> {
        let value = value.trim();
        if let Some(path) = value.strip_prefix("unix:") {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if value.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(value)));
        }
        let tls_url = value.starts_with("tls://");
        if !(value.starts_with("nats://") || tls_url) {
            return Err(TargetError::Scheme {
                value: value.to_owned(),
            });
        }
        let (servers, query) = value.split_once('?').unwrap_or((value, ""));
        let mut target = NatsTarget {
            servers: servers.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            class: None,
            creds: None,
            nkey: None,
            tls: tls_url,
            ca: None,
            client_cert: None,
            silence: Duration::from_secs(5),
            name: None,
        };
        let mut cert = None;
        let mut key_file = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, val) = pair.split_once('=').unwrap_or((pair, ""));
            let file = |what: &str| -> Result<PathBuf, TargetError> {
                secret_path(what, val, credentials_dir)
            };
            match key {
                "prefix" => {
                    Subjects::new(val)?;
                    val.clone_into(&mut target.prefix);
                }
                "class" => {
                    check_token("model class", val)?;
                    target.class = Some(val.to_owned());
                }
                "creds" => target.creds = Some(file(key)?),
                "nkey" => target.nkey = Some(file(key)?),
                "ca" => target.ca = Some(file(key)?),
                "cert" => cert = Some(file(key)?),
                "key" => key_file = Some(file(key)?),
                "tls" => {
                    target.tls = match val {
                        "1" | "true" | "yes" => true,
                        "0" | "false" | "no" => tls_url,
                        _ => {
                            return Err(TargetError::BadValue {
                                key: key.into(),
                                value: val.into(),
                                why: "expected 1 or 0",
                            })
                        }
                    }
                }
                "silence_ms" => {
                    let ms: u64 = val.parse().ok().filter(|ms| *ms >= 100).ok_or_else(|| {
                        TargetError::BadValue {
                            key: key.into(),
                            value: val.into(),
                            why: "expected milliseconds, at least 100",
                        }
                    })?;
                    target.silence = Duration::from_millis(ms);
                }
                "name" => target.name = Some(val.to_owned()),
                other => {
                    return Err(TargetError::UnknownKey { key: other.into() });
                }
            }
        }
        match (cert, key_file) {
            (Some(c), Some(k)) => target.client_cert = Some((c, k)),
            (None, None) => {}
            _ => {
                return Err(TargetError::BadValue {
                    key: "cert".into(),
                    value: String::new(),
                    why: "cert and key go together",
                })
            }
        }
        Ok(Self::Nats(Box::new(target)))
    }
}

fn secret_path(
    key: &str,
    val: &str,
    credentials_dir: Option<&Path>,
) -> Result<PathBuf, TargetError> {
    if let Some(name) = val.strip_prefix("credential:") {
        let dir = credentials_dir.ok_or_else(|| TargetError::NoCredentialsDirectory {
            key: key.into(),
            name: name.into(),
        })?;
        return Ok(dir.join(name));
    }
    if val.is_empty() {
        return Err(TargetError::BadValue {
            key: key.into(),
            value: String::new(),
            why: "expected a file path or credential:<name>",
        });
    }
    Ok(PathBuf::from(val))
}

/// Failures opening a NATS connection.
#[derive(Debug, Error)]
pub enum NatsConnectError {
    /// A credentials, nkey or certificate file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server refused or could not be reached.
    #[error("cannot connect to the NATS server at {servers}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
}

impl NatsTarget {
    /// Opens a connection that reconnects by itself forever (requests and
    /// subscriptions resume on the new connection).
    ///
    /// # Errors
    /// [`NatsConnectError`]: an unreadable secret, or no server reachable
    /// within the first attempt.
    pub async fn connect(
        &self,
        default_name: &str,
    ) -> Result<async_nats::Client, NatsConnectError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(self.name.as_deref().unwrap_or(default_name))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(3))
            .max_reconnects(None)
            // Reconnect quickly: a restarted server should not leave every
            // board idle for the default's growing delay.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(2_000))
            })
            .event_callback(|event| async move {
                tracing::info!(%event, "NATS connection");
            });
        if let Some(path) = &self.creds {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|source| NatsConnectError::Read {
                        path: path.clone(),
                        source,
                    })?;
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path).map_err(|source| NatsConnectError::Read {
                path: path.clone(),
                source,
            })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if self.tls {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let servers: Vec<async_nats::ServerAddr> = self
            .servers
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        options
            .connect(servers)
            .await
            .map_err(|source| NatsConnectError::Connect {
                servers: self.servers.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_targets_keep_working() {
        let t = Target::parse("unix:/run/rocksteady/client.sock", None).unwrap();
        assert_eq!(t, Target::Unix("/run/rocksteady/client.sock".into()));
        let t = Target::parse("/tmp/x.sock", None).unwrap();
        assert_eq!(t, Target::Unix("/tmp/x.sock".into()));
    }

    #[test]
    fn nats_targets_carry_prefix_class_and_secrets_from_systemd_credentials() {
        let dir = Path::new("/run/credentials/rocksteady-gateway.service");
        let t = Target::parse(
            "nats://10.0.0.2:4222,10.0.0.3:4222?prefix=rs.lab&class=cpu-small&creds=credential:nats-creds&silence_ms=3000",
            Some(dir),
        )
        .unwrap();
        let Target::Nats(n) = t else { panic!() };
        assert_eq!(n.servers, "nats://10.0.0.2:4222,10.0.0.3:4222");
        assert_eq!(n.prefix, "rs.lab");
        assert_eq!(n.class.as_deref(), Some("cpu-small"));
        assert_eq!(n.creds, Some(dir.join("nats-creds")));
        assert_eq!(n.silence, Duration::from_secs(3));
        assert!(!n.tls);
        let Target::Nats(n) = Target::parse("tls://h:4222?ca=/etc/ca.pem", None).unwrap() else {
            panic!()
        };
        assert!(n.tls);
    }

    #[test]
    fn bad_targets_say_what_is_wrong() {
        let err = |s: &str| Target::parse(s, None).unwrap_err().to_string();
        assert!(err("http://x").contains("neither a socket path"));
        assert!(err("nats://h?colour=red").contains("unknown NATS option \"colour\""));
        assert!(err("nats://h?class=a.b").contains("model class"));
        assert!(err("nats://h?creds=credential:c").contains("CREDENTIALS_DIRECTORY"));
        assert!(err("nats://h?silence_ms=soon").contains("silence_ms"));
        assert!(err("nats://h?cert=/c.pem").contains("cert and key go together"));
    }
}
