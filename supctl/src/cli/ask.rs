//! `supctl ask PROMPT`: streams an answer to the terminal as it is generated.

use std::io::Write;
use std::path::Path;

use proto::chat::{ChatMessage, GenParams, Role};
use proto::client::{Done, ErrorEvent, SupervisorToClient};

use crate::client::link::{LinkError, LinkEvent, SupervisorLink};
use crate::client::{ChatClient, ClientError};

/// How `ask` ended.
#[derive(Debug)]
pub enum AskOutcome {
    /// The whole answer.
    Done(Done),
    /// The supervisor's error.
    Failed(ErrorEvent),
}

/// What `ask` sends.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    /// The user's prompt.
    pub prompt: &'a str,
    /// A system prompt.
    pub system: Option<&'a str>,
    /// The conversation key (`--conversation`): the supervisor routes the
    /// request to the worker that holds that conversation's KV cache, and
    /// the worker keeps it for the next request with the same key.
    pub conversation: Option<&'a str>,
    /// Sampling and limits.
    pub params: GenParams,
}

impl Question<'_> {
    fn messages(&self) -> Vec<ChatMessage> {
        let mut messages = Vec::new();
        if let Some(system) = self.system {
            messages.push(ChatMessage::new(Role::System, system));
        }
        messages.push(ChatMessage::new(Role::User, self.prompt));
        messages
    }
}

/// Sends `question` and writes the answer to `out` token by token; progress
/// notes (queue, failover) and the summary go to `note`. With `json`, every
/// event is one JSON line on `out` instead.
///
/// # Errors
/// Connection failures.
pub async fn ask(
    client_socket: &Path,
    question: Question<'_>,
    json: bool,
    out: &mut dyn Write,
    note: &mut dyn Write,
) -> Result<AskOutcome, ClientError> {
    let mut client = ChatClient::connect(client_socket).await?;
    client
        .submit_in(
            question.messages(),
            question.params,
            String::new(),
            question.conversation.map(str::to_owned),
        )
        .await?;
    loop {
        let event = client.next_event().await?;
        if let Some(outcome) = show(event, json, out, note) {
            return Ok(outcome);
        }
    }
}

/// Like [`ask`], through a front door's link: the local socket or a cluster
/// of boards over NATS (`--supervisor nats://...`).
///
/// # Errors
/// The link could not carry the request.
pub async fn ask_link(
    link: &SupervisorLink,
    question: Question<'_>,
    json: bool,
    out: &mut dyn Write,
    note: &mut dyn Write,
) -> Result<AskOutcome, LinkError> {
    let mut request = link
        .submit_in(
            question.messages(),
            question.params,
            String::new(),
            question.conversation.map(str::to_owned),
        )
        .await?;
    loop {
        match request.next().await {
            LinkEvent::Event(event) => {
                if let Some(outcome) = show(event, json, out, note) {
                    return Ok(outcome);
                }
            }
            LinkEvent::Lost => return Err(LinkError::ShuttingDown),
        }
    }
}

/// Writes one event; the outcome when it ends the answer.
fn show(
    event: SupervisorToClient,
    json: bool,
    out: &mut dyn Write,
    note: &mut dyn Write,
) -> Option<AskOutcome> {
    if json {
        let line = serde_json::to_string(&event).unwrap_or_default();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    match event {
        SupervisorToClient::Token(t) => {
            if !json {
                let _ = out.write_all(t.text.as_bytes());
                let _ = out.flush();
            }
        }
        SupervisorToClient::Queued(q) => {
            if !json {
                let why = if q.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", q.reason)
                };
                let _ = writeln!(note, "[queued, position {}{why}]", q.position);
            }
        }
        SupervisorToClient::Started(_) | SupervisorToClient::Models(_) => {}
        SupervisorToClient::Failover(f) => {
            if !json {
                let _ = writeln!(
                    note,
                    "\n[{} worker failed ({}); continuing on {}]",
                    f.from, f.reason, f.to
                );
            }
        }
        SupervisorToClient::Done(done) => {
            if !json {
                let s = &done.stats;
                let _ = writeln!(out);
                let cached = if s.cached_tokens > 0 {
                    format!(" ({} from the KV cache)", s.cached_tokens)
                } else {
                    String::new()
                };
                let _ = writeln!(
                        note,
                        "[{} · {} · prompt {} tokens{cached} · generated {} tokens · first token {:.0} ms · {:.1} tokens/s]",
                        done.backend, done.model, s.prompt_tokens, s.generated_tokens, s.ttft_ms, s.decode_tps
                    );
            }
            return Some(AskOutcome::Done(done));
        }
        SupervisorToClient::Error(e) => {
            if !json {
                let _ = writeln!(note, "\nerror ({:?}): {}", e.kind, e.message);
            }
            return Some(AskOutcome::Failed(e));
        }
    }
    None
}
