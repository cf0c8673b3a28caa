//! What a streamed answer looks like in Discord at each moment: the answer
//! split into messages, and the short status, note and footer lines.

use std::fmt;

use proto::client::{Done, ErrorKind, SupervisorToClient};

use crate::link::LinkEvent;
use crate::split::{split, Chunk, DISCORD_LIMIT, TAIL_RESERVE};

/// Longest model name shown in the footer.
const MAX_MODEL_NAME: usize = 60;

/// Everything known about one answer so far.
#[derive(Default, Clone, PartialEq)]
pub struct AnswerState {
    /// The answer text streamed so far.
    pub text: String,
    /// Queue position and reason while waiting for a worker.
    pub queued: Option<(u32, String)>,
    /// Short notes for the tail (failover, context cut).
    pub notes: Vec<String>,
    /// The footer once the answer is complete.
    pub footer: Option<String>,
    /// A plain sentence when the request failed.
    pub error: Option<String>,
    /// No more events will come.
    pub finished: bool,
}

impl fmt::Debug for AnswerState {
    // Manual: the answer is user-facing text and stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerState")
            .field("chars", &self.text.chars().count())
            .field("queued", &self.queued)
            .field("notes", &self.notes.len())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl AnswerState {
    /// Applies one event from the supervisor link.
    pub fn apply(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Event(SupervisorToClient::Queued(q)) => {
                self.queued = Some((q.position, q.reason));
            }
            LinkEvent::Event(SupervisorToClient::Started(_)) => self.queued = None,
            // Answers to a models query never reach a request.
            LinkEvent::Event(SupervisorToClient::Models(_)) => {}
            LinkEvent::Event(SupervisorToClient::Token(t)) => {
                self.queued = None;
                self.text.push_str(&t.text);
            }
            LinkEvent::Event(SupervisorToClient::Failover(f)) => {
                let reason = if f.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", f.reason)
                };
                self.notes
                    .push(format!("↪ switched from {} to {}{reason}", f.from, f.to));
            }
            LinkEvent::Event(SupervisorToClient::Done(done)) => {
                self.footer = Some(footer(&done));
                // The supervisor's text is authoritative (equal to the tokens).
                self.text = done.text;
                self.queued = None;
                self.finished = true;
            }
            LinkEvent::Event(SupervisorToClient::Error(e)) => {
                self.error = Some(error_message(e.kind, &e.message));
                self.queued = None;
                self.finished = true;
            }
            LinkEvent::Lost => {
                self.error = Some(
                    "The model service went away while answering; please try again.".to_owned(),
                );
                self.queued = None;
                self.finished = true;
            }
        }
    }

    /// Marks the answer failed with `message` (e.g. the supervisor is down).
    pub fn fail(&mut self, message: impl Into<String>) {
        self.error = Some(message.into());
        self.queued = None;
        self.finished = true;
    }

    /// True once the first piece of the answer arrived (or it ended).
    pub fn has_output(&self) -> bool {
        !self.text.is_empty() || self.finished
    }

    /// The messages to show now; empty while there is nothing to show yet.
    pub fn render(&self) -> Vec<Chunk> {
        let mut tail: Vec<String> = self.notes.iter().map(|n| format!("-# {n}")).collect();
        let mut chunks = if self.text.is_empty() {
            let line = if let Some(error) = &self.error {
                format!("⚠️ {error}")
            } else if let Some((position, reason)) = &self.queued {
                if reason.is_empty() {
                    format!("⏳ Queued: position {position}")
                } else {
                    format!("⏳ Queued: position {position} ({reason})")
                }
            } else if self.finished {
                "*(the model gave an empty answer)*".to_owned()
            } else {
                return Vec::new();
            };
            vec![Chunk {
                content: line,
                body: String::new(),
            }]
        } else {
            if let Some(error) = &self.error {
                tail.push(format!("-# ⚠️ answer cut short: {error}"));
            }
            split(&self.text, DISCORD_LIMIT - TAIL_RESERVE)
        };
        if let Some(footer) = &self.footer {
            tail.push(format!("-# {footer}"));
        }
        if !tail.is_empty() {
            let mut tail = tail.join("\n");
            if tail.chars().count() >= TAIL_RESERVE {
                tail = tail.chars().take(TAIL_RESERVE - 2).collect::<String>() + "…";
            }
            if let Some(last) = chunks.last_mut() {
                last.content.push('\n');
                last.content.push_str(&tail);
            }
        }
        chunks
    }
}

/// The footer of a finished answer: backend, model, speed.
pub fn footer(done: &Done) -> String {
    let model: String = if done.model.chars().count() > MAX_MODEL_NAME {
        done.model
            .chars()
            .take(MAX_MODEL_NAME - 1)
            .collect::<String>()
            + "…"
    } else {
        done.model.clone()
    };
    format!(
        "{} · {} · {:.1} tok/s",
        done.backend, model, done.stats.decode_tps
    )
}

/// A short, plain sentence for a failed request.
pub fn error_message(kind: ErrorKind, detail: &str) -> String {
    match kind {
        ErrorKind::Busy => {
            "I'm busy with other questions right now; please try again in a minute.".to_owned()
        }
        ErrorKind::TooHot => {
            "The board is cooling down; please try again in a few minutes.".to_owned()
        }
        ErrorKind::NoWorker => {
            "No model worker is available right now; please try again later.".to_owned()
        }
        ErrorKind::BadRequest => {
            if detail.is_empty() {
                "That request could not be served.".to_owned()
            } else {
                format!("That request could not be served: {detail}")
            }
        }
        ErrorKind::WorkerFailed => "The model failed while answering; please try again.".to_owned(),
        ErrorKind::Cancelled => "The request was cancelled.".to_owned(),
        ErrorKind::ShuttingDown => {
            "The model service is restarting; please try again shortly.".to_owned()
        }
    }
}

/// What users see when the supervisor is not running.
pub const SUPERVISOR_DOWN: &str =
    "The model service is not running right now; please try again in a little while.";

/// Removes the bot's own status and footer lines from one of its messages,
/// leaving the answer text (for context built from fetched messages).
pub fn strip_tail(content: &str) -> String {
    let mut lines: Vec<&str> = content.lines().collect();
    while lines.last().is_some_and(|l| l.starts_with("-# ")) {
        lines.pop();
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::chat::{Backend, GenStats};
    use proto::client::{ErrorEvent, Failover, Queued, Token};

    fn token(text: &str) -> LinkEvent {
        LinkEvent::Event(SupervisorToClient::Token(Token {
            request_id: 1,
            text: text.into(),
        }))
    }

    #[test]
    fn queued_then_tokens_then_footer() {
        let mut state = AnswerState::default();
        assert!(state.render().is_empty());
        state.apply(LinkEvent::Event(SupervisorToClient::Queued(Queued {
            request_id: 1,
            position: 2,
            reason: "board cooling down".into(),
        })));
        assert_eq!(
            state.render()[0].content,
            "⏳ Queued: position 2 (board cooling down)"
        );
        state.apply(token("Hello"));
        state.apply(token(" world"));
        assert_eq!(state.render()[0].content, "Hello world");
        state.apply(LinkEvent::Event(SupervisorToClient::Failover(Failover {
            request_id: 1,
            from: Backend::Npu,
            to: Backend::Cpu,
            reason: "hang".into(),
        })));
        state.apply(LinkEvent::Event(SupervisorToClient::Done(Done {
            request_id: 1,
            text: "Hello world!".into(),
            backend: Backend::Cpu,
            model: "tiny".into(),
            stats: GenStats {
                decode_tps: 12.34,
                cached_tokens: 0,
                ..GenStats::default()
            },
        })));
        assert!(state.finished);
        let chunks = state.render();
        assert_eq!(
            chunks[0].content,
            "Hello world!\n-# ↪ switched from npu to cpu (hang)\n-# cpu · tiny · 12.3 tok/s"
        );
        assert_eq!(strip_tail(&chunks[0].content), "Hello world!");
    }

    #[test]
    fn errors_are_plain() {
        let mut state = AnswerState::default();
        state.apply(LinkEvent::Event(SupervisorToClient::Error(ErrorEvent {
            request_id: 1,
            kind: ErrorKind::TooHot,
            message: "internal detail".into(),
        })));
        let content = &state.render()[0].content;
        assert!(content.contains("cooling down"), "{content}");
        assert!(!content.contains("internal detail"));

        let mut partial = AnswerState::default();
        partial.apply(token("Half an"));
        partial.apply(LinkEvent::Lost);
        let content = &partial.render()[0].content;
        assert!(
            content.starts_with("Half an\n-# ⚠️ answer cut short:"),
            "{content}"
        );
    }

    #[test]
    fn long_answer_with_footer_stays_under_the_limit() {
        let mut state = AnswerState::default();
        state.apply(token(&"word ".repeat(1000)));
        state.footer = Some("x".repeat(500));
        let chunks = state.render();
        assert!(chunks.len() >= 3);
        assert!(chunks
            .iter()
            .all(|c| c.content.chars().count() <= DISCORD_LIMIT));
    }
}
