//! The front door's decisions about one request served by the cluster,
//! without IO: which board's messages count, when a board is taken to be
//! gone, and what to republish so the answer continues on another board.
//!
//! Inputs are claims, replies, the board's heartbeats and clock ticks (in
//! milliseconds from any fixed start); outputs are [`Out`]s the driver
//! carries out. A board is gone when nothing about this request came from it
//! (no reply, no heartbeat listing it) for `silence_ms`, or when it hands
//! the request back. The answer then continues as a new attempt whose
//! prefix is the text streamed so far, exactly as a worker failover inside
//! one board continues; the user is told once per continuation.

use proto::chat::{Backend, ChatMessage, GenParams};
use proto::client::{Done, ErrorEvent, ErrorKind, Failover, Started, SupervisorToClient, Token};

use super::wire::{Reply, ReplyBody, WorkRequest};

/// Limits of one request's tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A serving board silent this long is taken to be gone.
    pub silence_ms: u64,
    /// Continuations on other boards before the request fails.
    pub max_continuations: u32,
    /// An unclaimed request fails after this long (no board took it).
    pub queue_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            silence_ms: 5_000,
            max_continuations: 3,
            queue_ms: 300_000,
        }
    }
}

/// What the driver does.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Hand this event to the request's owner.
    Emit(SupervisorToClient),
    /// Publish this attempt to the work stream.
    Publish(WorkRequest),
    /// The request is over: stop listening for it.
    End,
}

/// One request's tracking state.
#[derive(Debug)]
pub struct Tracker {
    id: String,
    class: String,
    messages: Vec<ChatMessage>,
    params: GenParams,
    limits: Limits,
    /// The owner's request id, put into every emitted event.
    owner_id: u64,
    attempt: u32,
    /// The board serving the current attempt.
    board: Option<String>,
    /// Last sign of life of the serving board (or of the publish).
    last_sign: u64,
    /// Text streamed to the owner so far.
    text: String,
    /// Token events streamed (the budget left for a continuation).
    tokens: u32,
    /// Backend that served last, for the note.
    backend: Backend,
    next_seq: u64,
    /// A reply of the current attempt was lost (a sequence gap, e.g. across
    /// a NATS restart): its tokens are held back until `Done`, which carries
    /// the whole answer, so the owner never sees text with a hole in it.
    gap: bool,
    ended: bool,
}

impl Tracker {
    /// Tracks a new request; returns it and the first attempt to publish.
    pub fn new(
        id: String,
        owner_id: u64,
        class: String,
        messages: Vec<ChatMessage>,
        params: GenParams,
        limits: Limits,
        now: u64,
    ) -> (Self, WorkRequest) {
        let tracker = Self {
            id,
            class,
            messages,
            params,
            limits,
            owner_id,
            attempt: 1,
            board: None,
            last_sign: now,
            text: String::new(),
            tokens: 0,
            backend: Backend::Cpu,
            next_seq: 1,
            gap: false,
            ended: false,
        };
        let first = tracker.work();
        (tracker, first)
    }

    /// The request's cluster id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The owner's id of the request.
    pub fn owner_id(&self) -> u64 {
        self.owner_id
    }

    /// The current attempt.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The board serving now, if any.
    pub fn board(&self) -> Option<&str> {
        self.board.as_deref()
    }

    /// Whether the request is over.
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn work(&self) -> WorkRequest {
        let mut params = self.params;
        // The budget covers the whole answer, across boards.
        params.max_tokens = params.max_tokens.saturating_sub(self.tokens).max(1);
        WorkRequest {
            id: self.id.clone(),
            attempt: self.attempt,
            class: self.class.clone(),
            messages: self.messages.clone(),
            params,
            assistant_prefix: self.text.clone(),
        }
    }

    /// A board asks to serve `attempt`: granted to the first board that
    /// asks for the current attempt, refused for anything else (a stale
    /// redelivery, a second board, a request already over).
    pub fn on_claim(&mut self, board: &str, attempt: u32, now: u64) -> bool {
        if self.ended || attempt != self.attempt || self.board.is_some() {
            return false;
        }
        self.board = Some(board.to_owned());
        self.last_sign = now;
        self.next_seq = 1;
        self.gap = false;
        true
    }

    fn is_from_server(&self, reply: &Reply) -> bool {
        !self.ended && reply.attempt == self.attempt && self.board.as_deref() == Some(&reply.board)
    }

    /// A reply arrived.
    pub fn on_reply(&mut self, reply: Reply, now: u64) -> Vec<Out> {
        if !self.is_from_server(&reply) {
            return Vec::new();
        }
        self.last_sign = now;
        if reply.seq != self.next_seq {
            self.gap = true;
        }
        self.next_seq = reply.seq + 1;
        match reply.body {
            ReplyBody::HandBack { reason } => self.continue_elsewhere(&reason, now),
            ReplyBody::Event(event) => self.on_event(event),
        }
    }

    fn on_event(&mut self, event: SupervisorToClient) -> Vec<Out> {
        let id = self.owner_id;
        match event {
            SupervisorToClient::Queued(mut q) => {
                q.request_id = id;
                vec![Out::Emit(SupervisorToClient::Queued(q))]
            }
            SupervisorToClient::Started(s) => {
                self.backend = s.backend;
                let board = self.board.clone().unwrap_or_default();
                vec![Out::Emit(SupervisorToClient::Started(Started {
                    request_id: id,
                    slot: format!("{board}/{}", s.slot),
                    backend: s.backend,
                    model: s.model,
                }))]
            }
            SupervisorToClient::Token(_) if self.gap => Vec::new(),
            SupervisorToClient::Token(t) => {
                self.text.push_str(&t.text);
                self.tokens += 1;
                vec![Out::Emit(SupervisorToClient::Token(Token {
                    request_id: id,
                    text: t.text,
                }))]
            }
            SupervisorToClient::Failover(mut f) => {
                f.request_id = id;
                vec![Out::Emit(SupervisorToClient::Failover(f))]
            }
            SupervisorToClient::Done(done) => self.finish(done),
            SupervisorToClient::Error(mut e) => {
                e.request_id = id;
                self.ended = true;
                vec![Out::Emit(SupervisorToClient::Error(e)), Out::End]
            }
            SupervisorToClient::Models(_) => Vec::new(),
        }
    }

    /// The board's `Done` carries the whole answer (with the prefix it was
    /// given): tokens lost on the way (a NATS restart) are sent before it,
    /// so the owner's stream always adds up to the answer.
    fn finish(&mut self, done: Done) -> Vec<Out> {
        let mut out = Vec::new();
        if let Some(missing) = done.text.strip_prefix(self.text.as_str()) {
            if !missing.is_empty() {
                self.text.push_str(missing);
                out.push(Out::Emit(SupervisorToClient::Token(Token {
                    request_id: self.owner_id,
                    text: missing.to_owned(),
                })));
            }
        }
        self.ended = true;
        out.push(Out::Emit(SupervisorToClient::Done(Done {
            request_id: self.owner_id,
            text: self.text.clone(),
            ..done
        })));
        out.push(Out::End);
        out
    }

    /// A heartbeat from `board` that lists this request's current attempt
    /// (the driver checks the list).
    pub fn on_heartbeat(&mut self, board: &str, now: u64) {
        if self.board.as_deref() == Some(board) {
            self.last_sign = self.last_sign.max(now);
        }
    }

    /// Time passed: a silent serving board is taken to be gone; an
    /// unclaimed request waits up to `queue_ms`.
    pub fn on_tick(&mut self, now: u64) -> Vec<Out> {
        if self.ended {
            return Vec::new();
        }
        let quiet = now.saturating_sub(self.last_sign);
        match &self.board {
            Some(board) if quiet >= self.limits.silence_ms => {
                let reason = format!(
                    "board {board} went silent for {} s",
                    self.limits.silence_ms.div_ceil(1000)
                );
                self.continue_elsewhere(&reason, now)
            }
            None if quiet >= self.limits.queue_ms => {
                self.ended = true;
                vec![
                    Out::Emit(SupervisorToClient::Error(ErrorEvent {
                        request_id: self.owner_id,
                        kind: ErrorKind::Busy,
                        message: format!(
                            "no board took the request within {} s; try again later",
                            self.limits.queue_ms / 1000
                        ),
                    })),
                    Out::End,
                ]
            }
            _ => Vec::new(),
        }
    }

    fn continue_elsewhere(&mut self, reason: &str, now: u64) -> Vec<Out> {
        let continuation = self.attempt; // continuations so far, plus this one
        if continuation > self.limits.max_continuations {
            self.ended = true;
            return vec![
                Out::Emit(SupervisorToClient::Error(ErrorEvent {
                    request_id: self.owner_id,
                    kind: ErrorKind::WorkerFailed,
                    message: format!(
                        "the answer was interrupted {continuation} times ({reason}); giving up"
                    ),
                })),
                Out::End,
            ];
        }
        self.attempt += 1;
        self.board = None;
        self.last_sign = now;
        let mut out = Vec::new();
        // Nothing shown yet: a silent retry, like a request still queued.
        if !self.text.is_empty() {
            out.push(Out::Emit(SupervisorToClient::Failover(Failover {
                request_id: self.owner_id,
                from: self.backend,
                to: self.backend,
                reason: format!("{reason}; continuing on another board"),
            })));
        }
        out.push(Out::Publish(self.work()));
        out
    }

    /// The owner gave up: refuse later claims.
    pub fn cancel(&mut self) {
        self.ended = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::chat::{GenStats, Role};

    fn tracker() -> (Tracker, WorkRequest) {
        Tracker::new(
            "r1".into(),
            7,
            "cpu-small".into(),
            vec![ChatMessage::new(Role::User, "hi")],
            GenParams {
                max_tokens: 10,
                ..GenParams::default()
            },
            Limits {
                silence_ms: 1000,
                max_continuations: 2,
                queue_ms: 60_000,
            },
            0,
        )
    }

    fn reply(board: &str, attempt: u32, seq: u64, event: SupervisorToClient) -> Reply {
        Reply {
            attempt,
            board: board.into(),
            seq,
            body: ReplyBody::Event(event),
        }
    }

    fn token(text: &str) -> SupervisorToClient {
        SupervisorToClient::Token(Token {
            request_id: 99,
            text: text.into(),
        })
    }

    fn done(text: &str) -> SupervisorToClient {
        SupervisorToClient::Done(Done {
            request_id: 99,
            text: text.into(),
            backend: Backend::Cpu,
            model: "m".into(),
            stats: GenStats::default(),
        })
    }

    fn emitted(out: &[Out]) -> Vec<SupervisorToClient> {
        out.iter()
            .filter_map(|o| match o {
                Out::Emit(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_board_claims_an_attempt_and_stale_claims_are_refused() {
        let (mut t, first) = tracker();
        assert_eq!(first.attempt, 1);
        assert!(!t.on_claim("a", 2, 1), "an attempt not published yet");
        assert!(t.on_claim("a", 1, 1));
        assert!(!t.on_claim("b", 1, 2), "a redelivery to another board");
        assert!(!t.on_claim("a", 1, 2), "a redelivery to the same board");
    }

    #[test]
    fn events_are_renumbered_for_the_owner_and_foreign_replies_ignored() {
        let (mut t, _) = tracker();
        t.on_claim("a", 1, 0);
        assert!(t.on_reply(reply("b", 1, 1, token("x")), 1).is_empty());
        let out = t.on_reply(reply("a", 1, 1, token("Hel")), 1);
        assert_eq!(
            emitted(&out),
            vec![SupervisorToClient::Token(Token {
                request_id: 7,
                text: "Hel".into()
            })]
        );
        let out = t.on_reply(reply("a", 1, 2, done("Hello")), 2);
        // The lost "lo" is sent before Done, so the stream adds up.
        let events = emitted(&out);
        assert_eq!(
            events[0],
            SupervisorToClient::Token(Token {
                request_id: 7,
                text: "lo".into()
            })
        );
        assert!(
            matches!(&events[1], SupervisorToClient::Done(d) if d.text == "Hello" && d.request_id == 7)
        );
        assert_eq!(out.last(), Some(&Out::End));
        assert!(t.ended());
        assert!(
            t.on_tick(100_000).is_empty(),
            "an ended request is never republished"
        );
    }

    #[test]
    fn a_silent_board_is_replaced_with_the_streamed_text_as_prefix_told_once() {
        let (mut t, _) = tracker();
        t.on_claim("a", 1, 0);
        t.on_reply(reply("a", 1, 1, token("One ")), 100);
        t.on_reply(reply("a", 1, 2, token("two ")), 200);
        t.on_heartbeat("a", 900);
        assert!(
            t.on_tick(1500).is_empty(),
            "the heartbeat listed the request"
        );
        let out = t.on_tick(1900);
        let events = emitted(&out);
        assert_eq!(events.len(), 1);
        assert!(
            matches!(&events[0], SupervisorToClient::Failover(f) if f.reason.contains("board a went silent"))
        );
        let Some(Out::Publish(next)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(next.attempt, 2);
        assert_eq!(next.assistant_prefix, "One two ");
        assert_eq!(next.params.max_tokens, 8);
        // The dead board's late words no longer count.
        assert!(t
            .on_reply(reply("a", 1, 3, token("three")), 2000)
            .is_empty());
        assert!(
            t.on_tick(2500).is_empty(),
            "waiting for a claim is not silence"
        );
        assert!(t.on_claim("b", 2, 2600));
        let out = t.on_reply(reply("b", 2, 1, token("three")), 2700);
        assert_eq!(emitted(&out).len(), 1);
        let out = t.on_reply(reply("b", 2, 2, done("One two three")), 2800);
        assert!(
            matches!(&emitted(&out)[0], SupervisorToClient::Done(d) if d.text == "One two three")
        );
    }

    #[test]
    fn after_a_lost_reply_tokens_wait_for_done_so_the_text_has_no_hole() {
        let (mut t, _) = tracker();
        t.on_claim("a", 1, 0);
        assert_eq!(
            emitted(&t.on_reply(reply("a", 1, 1, token("The "),), 1)).len(),
            1
        );
        // seq 2 ("qui") is lost; "ck" arrives as seq 3.
        assert!(emitted(&t.on_reply(reply("a", 1, 3, token("ck")), 2)).is_empty());
        let out = emitted(&t.on_reply(reply("a", 1, 4, done("The quick")), 3));
        assert_eq!(
            out[0],
            SupervisorToClient::Token(Token {
                request_id: 7,
                text: "quick".into()
            })
        );
        assert!(matches!(&out[1], SupervisorToClient::Done(d) if d.text == "The quick"));
    }

    #[test]
    fn a_hand_back_continues_at_once_and_before_any_text_silently() {
        let (mut t, _) = tracker();
        t.on_claim("a", 1, 0);
        let out = t.on_reply(
            Reply {
                attempt: 1,
                board: "a".into(),
                seq: 1,
                body: ReplyBody::HandBack {
                    reason: "supervisor gone".into(),
                },
            },
            10,
        );
        assert!(
            emitted(&out).is_empty(),
            "nothing was shown, nothing to explain"
        );
        assert!(
            matches!(out.last(), Some(Out::Publish(w)) if w.attempt == 2 && w.assistant_prefix.is_empty())
        );
    }

    #[test]
    fn too_many_continuations_fail_and_an_unclaimed_request_times_out() {
        let (mut t, _) = tracker();
        for attempt in 1..=2 {
            assert!(t.on_claim("a", attempt, 0));
            let out = t.on_tick(5000 * u64::from(attempt));
            assert!(matches!(out.last(), Some(Out::Publish(_))));
        }
        assert!(t.on_claim("a", 3, 10_000));
        let out = t.on_tick(20_000);
        assert!(
            matches!(&emitted(&out)[0], SupervisorToClient::Error(e) if e.kind == ErrorKind::WorkerFailed)
        );

        let (mut t, _) = tracker();
        assert!(t.on_tick(59_000).is_empty());
        let out = t.on_tick(60_000);
        assert!(
            matches!(&emitted(&out)[0], SupervisorToClient::Error(e) if e.kind == ErrorKind::Busy && e.message.contains("no board took"))
        );
    }
}
