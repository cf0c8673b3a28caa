//! What every front-door process (the Discord gateway, the OpenAI API, the
//! cluster bridge and any later one) does the same way around its own work:
//! read its own section of the shared config file, stop on SIGTERM or
//! Ctrl-C, print an error chain on one line, and serve `/metrics` in the
//! format the scraper asks for (the daemon's `/metrics` uses that too).
//!
//! The config file is shared with the supervisor, so a front door reads only
//! its own top-level table and ignores the others; inside that table an
//! unknown key is an error that names it, so a typo is never silently ignored.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why a front door's section of the config file could not be read.
#[derive(Debug, Error)]
pub enum SectionError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file is not valid TOML: {source}")]
    Syntax {
        /// What the TOML parser found.
        #[source]
        source: toml::de::Error,
    },
    /// A key of the section is unknown or has a value of the wrong type.
    #[error("config key {key}: {message}")]
    Key {
        /// Dotted path of the key, starting with the section (`gateway.max_tokens`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Reads the config file at `path` as text.
///
/// # Errors
/// [`SectionError::Read`] naming the file.
pub fn read_config(path: &Path) -> Result<String, SectionError> {
    std::fs::read_to_string(path).map_err(|source| SectionError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Deserializes the top-level table `section` of a whole config file, or the
/// section's defaults when the file has no such table. Other tables are not
/// looked at beyond being valid TOML.
///
/// # Errors
/// Bad TOML, or a key of the section that is unknown or of the wrong type
/// (named with its dotted path).
pub fn parse_section<T: DeserializeOwned + Default>(
    text: &str,
    section: &str,
) -> Result<T, SectionError> {
    Ok(parse_optional_section(text, section)?.unwrap_or_default())
}

/// Like [`parse_section`] for a section without defaults: `None` when the
/// file has no such table.
///
/// # Errors
/// Bad TOML, or a key of the section that is unknown, missing or of the
/// wrong type (named with its dotted path).
pub fn parse_optional_section<T: DeserializeOwned>(
    text: &str,
    section: &str,
) -> Result<Option<T>, SectionError> {
    let mut file: toml::Table = text
        .parse()
        .map_err(|source| SectionError::Syntax { source })?;
    let Some(table) = file.remove(section) else {
        return Ok(None);
    };
    serde_path_to_error::deserialize(table)
        .map_err(|err| {
            let inner_path = err.path().to_string();
            let key = if inner_path == "." {
                section.to_owned()
            } else {
                format!("{section}.{inner_path}")
            };
            SectionError::Key {
                key,
                message: err.into_inner().message().to_owned(),
            }
        })
        .map(Some)
}

/// Logs to stderr (the journal under systemd) with `RUST_LOG`'s filter, or
/// `default_filter` when it is unset; colours only on a terminal.
pub fn init_logging(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Which exposition format a `/metrics` scraper gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsFormat {
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (what `promtool check metrics`
    /// lints; the default for clients that do not ask).
    Text,
}

impl MetricsFormat {
    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Text,
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// Encodes `registry` in this format.
    pub fn encode(self, registry: &prometheus_client::registry::Registry) -> String {
        use prometheus_client::encoding::{prometheus_text, text as openmetrics_text};
        let mut out = String::new();
        let written = match self {
            Self::OpenMetrics => openmetrics_text::encode(&mut out, registry),
            Self::Text => prometheus_text::encode(&mut out, registry),
        };
        // Writing into a String cannot fail; an encoder error would leave the
        // scrape short, never the process down.
        if let Err(e) = written {
            tracing::error!("cannot encode /metrics: {e}");
        }
        out
    }
}

/// A token cancelled at the first SIGTERM or Ctrl-C (logged once at INFO).
/// Must be called inside a tokio runtime.
#[must_use]
pub fn shutdown_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping");
        stop.cancel();
    });
    shutdown
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        // Without a SIGTERM handler (never seen, but possible with a
        // restrictive seccomp profile) Ctrl-C still stops the process.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// An error chain on one line, leaving out causes the message before already
/// quotes (library errors name their source in their own text).
pub fn one_line<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut text = String::new();
    for cause in chain {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Door {
        port: u16,
        name: String,
    }

    #[test]
    fn other_sections_are_ignored_and_a_missing_section_is_the_default() {
        let door: Door = parse_section("[supervisor]\nanything = 1\n", "door").unwrap();
        assert_eq!(door, Door::default());
        let door: Door = parse_section("[supervisor]\nx = 1\n[door]\nport = 8\n", "door").unwrap();
        assert_eq!(door.port, 8);
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named_with_their_section() {
        match parse_section::<Door>("[door]\nprot = 8\n", "door") {
            Err(SectionError::Key { key, message }) => {
                assert_eq!(key, "door.prot");
                assert!(message.contains("prot"), "{message}");
            }
            other => panic!("expected a key error, got {other:?}"),
        }
        match parse_section::<Door>("[door]\nport = \"x\"\n", "door") {
            Err(SectionError::Key { key, .. }) => assert_eq!(key, "door.port"),
            other => panic!("expected a key error, got {other:?}"),
        }
        assert!(matches!(
            parse_section::<Door>("[door\n", "door"),
            Err(SectionError::Syntax { .. })
        ));
    }

    #[test]
    fn the_scraper_chooses_the_metrics_format() {
        use prometheus_client::metrics::counter::Counter;
        let f = MetricsFormat::from_accept(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ));
        assert_eq!(f, MetricsFormat::OpenMetrics);
        assert_eq!(MetricsFormat::from_accept(None), MetricsFormat::Text);
        let mut reg = prometheus_client::registry::Registry::with_prefix("door");
        let c = Counter::<u64>::default();
        c.inc_by(3);
        reg.register("answers", "Answers", c);
        assert!(MetricsFormat::Text
            .encode(&reg)
            .contains("door_answers_total 3"));
        assert!(MetricsFormat::OpenMetrics.encode(&reg).ends_with("# EOF\n"));
    }

    #[test]
    fn one_line_drops_causes_already_quoted() {
        #[derive(Debug, Error)]
        #[error("loading x: {0}")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("disk on fire"));
        let chain = std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        });
        assert_eq!(one_line(chain), "loading x: disk on fire");
    }
}
