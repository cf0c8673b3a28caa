//! Logging for the gateway process: the filter (`RUST_LOG`, else a quiet
//! default) and a writer that removes interaction and webhook tokens from
//! every line, whatever the filter lets through.
//!
//! twilight-http puts each request's path in an info-level span
//! (`request{method=PATCH path="webhooks/APP/TOKEN/messages/@original"}`),
//! and for slash commands that path carries the interaction token, a
//! credential for 15 minutes. The default filter keeps twilight-http at
//! `warn`, but any `RUST_LOG` replaces it; so the redaction sits in the
//! writer, after formatting, where no filter can switch it off.

use std::borrow::Cow;
use std::io::{self, Write};

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset or invalid: twilight-http's request
/// logs are noise at info.
pub const DEFAULT_FILTER: &str = "info,twilight_http=warn";

/// What replaces a token in the log.
pub const REDACTED: &str = "<redacted>";

/// Path segments followed by an id and then a token.
const TOKEN_PATHS: [&str; 2] = ["webhooks/", "interactions/"];

/// The filter from `RUST_LOG` (`rust_log`), or [`DEFAULT_FILTER`] when it is
/// unset; an invalid one is reported on stderr and replaced by the default.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    match rust_log {
        Some(text) if !text.trim().is_empty() => EnvFilter::try_new(text).unwrap_or_else(|err| {
            eprintln!("rocksteady-gateway: RUST_LOG ignored ({err}); using {DEFAULT_FILTER}");
            EnvFilter::new(DEFAULT_FILTER)
        }),
        _ => EnvFilter::new(DEFAULT_FILTER),
    }
}

/// Replaces the token in every `webhooks/ID/TOKEN` and
/// `interactions/ID/TOKEN` of `line` with [`REDACTED`].
pub fn redact(line: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `line` already in `out`
    let mut search = 0;
    while let Some((start, marker)) = TOKEN_PATHS
        .iter()
        .filter_map(|m| line[search..].find(m).map(|at| (search + at, m)))
        .min_by_key(|(at, _)| *at)
    {
        let id_start = start + marker.len();
        let id_len = line[id_start..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        search = id_start;
        if id_len == 0 || line.as_bytes().get(id_start + id_len) != Some(&b'/') {
            continue;
        }
        let token_start = id_start + id_len + 1;
        // Delimiters are ASCII, so the end is always a char boundary.
        let token_len = line[token_start..]
            .bytes()
            .take_while(|b| !is_delimiter(*b))
            .count();
        if token_len == 0 {
            continue;
        }
        let text = out.get_or_insert_with(|| String::with_capacity(line.len()));
        text.push_str(&line[copied..token_start]);
        text.push_str(REDACTED);
        copied = token_start + token_len;
        search = copied;
    }
    match out {
        None => Cow::Borrowed(line),
        Some(mut text) => {
            text.push_str(&line[copied..]);
            Cow::Owned(text)
        }
    }
}

/// Bytes that end a path segment in a log line (`/`, quotes, whitespace,
/// a query, the escape that starts an ANSI colour, punctuation of a
/// formatted struct).
fn is_delimiter(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b'/' | b'"' | b'\'' | b'?' | b'#' | b'\\' | b',' | b')' | b'}' | b']' | 0x1b
        )
}

/// A [`MakeWriter`] whose writers redact tokens (see [`redact`]) before
/// anything reaches the inner writer.
#[derive(Debug, Clone)]
pub struct Redacting<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter::new(self.0.make_writer_for(meta))
    }
}

/// Collects one formatted event and writes it, redacted, when flushed or
/// dropped (the formatter makes one writer per event), so a token split
/// across two `write` calls is still found.
#[derive(Debug)]
pub struct RedactingWriter<W: Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: Write> RedactingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            pending: Vec::new(),
        }
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.pending);
        let result = self.inner.write_all(redact(&text).as_bytes());
        self.pending.clear();
        result
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        // Nowhere to report a failed log write.
        let _ = self.write_pending();
    }
}

/// The gateway's subscriber: `rust_log` as the filter (see [`filter`]),
/// lines written to `writer` with tokens redacted.
pub fn subscriber<W>(rust_log: Option<&str>, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter(rust_log))
        .with_writer(Redacting(writer))
        .finish()
}

/// Installs [`subscriber`] for the process, filtered by `RUST_LOG`, writing
/// to stdout (the journal, under systemd).
pub fn init() {
    let rust_log = std::env::var("RUST_LOG").ok();
    let _ = tracing::subscriber::set_global_default(subscriber(rust_log.as_deref(), io::stdout));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_paths_are_redacted() {
        assert_eq!(
            redact(
                r#"request{method=PATCH path="webhooks/901/aW50ZXJ.act-ion_tok/messages/@original"}: awaiting"#
            ),
            r#"request{method=PATCH path="webhooks/901/<redacted>/messages/@original"}: awaiting"#
        );
        assert_eq!(
            redact("POST /api/v10/interactions/123/tok123/callback and webhooks/9/other"),
            "POST /api/v10/interactions/123/<redacted>/callback and webhooks/9/<redacted>"
        );
        // Coloured output: the value ends at the escape.
        assert_eq!(
            redact("path=webhooks/1/secret\u{1b}[0m"),
            "path=webhooks/1/<redacted>\u{1b}[0m"
        );
        // Non-ASCII inside a token is redacted with it.
        assert_eq!(redact("webhooks/1/sécret end"), "webhooks/1/<redacted> end");
    }

    #[test]
    fn other_text_is_left_alone() {
        for line in [
            "connected to Discord",
            "channels/600/messages/10001",
            "webhooks/ without an id",
            "webhooks/12 no slash",
            "webhooks/12/ empty token",
            "interactions/abc/def not an id",
            "é webhooks",
        ] {
            assert!(matches!(redact(line), Cow::Borrowed(_)), "{line}");
        }
    }

    #[test]
    fn writer_redacts_a_token_split_across_writes() {
        let mut out = Vec::new();
        {
            let mut writer = RedactingWriter::new(&mut out);
            writer.write_all(b"path=webhooks/901/sec").unwrap();
            writer.write_all(b"ret/messages/@original\n").unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "path=webhooks/901/<redacted>/messages/@original\n"
        );
    }
}
