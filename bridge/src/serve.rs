//! One pulled request, from claim to ack: ask the front door whether this
//! attempt is still wanted, submit it to the local supervisor, publish its
//! events to the reply subject, and ack it when it is done or handed back.
//!
//! Not acking is how a board that vanishes gives the request back: JetStream
//! redelivers it after the ack wait, and the claim then tells the next board
//! whether the front door has already moved on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use client::cluster::wire::{Claim, ClaimAnswer, Control, Reply, ReplyBody, WorkRequest};
use client::link::LinkEvent;
use futures::StreamExt;
use proto::client::{ErrorKind, SupervisorToClient};

use crate::Shared;

/// How long the front door has to answer a claim.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);

/// Decides what one local event means for the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Publish it and go on.
    Relay,
    /// Publish it; the request is over: ack.
    Finish,
    /// This board cannot finish it; another may: hand it back and ack.
    HandBack(String),
}

/// What to do with a local event (pure).
pub fn step(event: &LinkEvent) -> Step {
    match event {
        LinkEvent::Lost => Step::HandBack("the board's supervisor went away".into()),
        LinkEvent::Event(SupervisorToClient::Error(e)) => match e.kind {
            // Kinds about this board, not about the request.
            ErrorKind::NoWorker | ErrorKind::ShuttingDown | ErrorKind::Busy | ErrorKind::TooHot => {
                Step::HandBack(format!("the board cannot serve it now ({:?})", e.kind))
            }
            _ => Step::Finish,
        },
        LinkEvent::Event(SupervisorToClient::Done(_)) => Step::Finish,
        LinkEvent::Event(_) => Step::Relay,
    }
}

struct Pulled<'a> {
    shared: &'a Shared,
    class: &'a str,
    counted: bool,
}

impl Pulled<'_> {
    /// The answer started (or will never): no longer counts against the slots.
    fn uncount(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.shared.pulled(self.class, -1);
        }
    }
}

impl Drop for Pulled<'_> {
    fn drop(&mut self) {
        self.uncount();
    }
}

/// Serves one pulled message.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    class: String,
    model: String,
    msg: jetstream::Message,
) {
    let mut pulled = Pulled {
        shared: &shared,
        class: &class,
        counted: true,
    };
    let work: WorkRequest = match serde_json::from_slice(&msg.payload) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, subject = %msg.subject, "dropped a malformed request");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    if !claim(&shared, &work, &msg).await {
        return;
    }
    answer(&shared, &class, model, work, &msg, &mut pulled).await;
}

/// Serves a claimed attempt until it is done, handed back or cancelled.
async fn answer(
    shared: &Shared,
    class: &str,
    model: String,
    work: WorkRequest,
    msg: &jetstream::Message,
    pulled: &mut Pulled<'_>,
) {
    let key = format!("{}/{}", work.id, work.attempt);
    shared.set_active(&key, true);
    tracing::info!(request = %key, class, "serving a request");
    let mut out = Publisher {
        shared,
        subject: shared.subjects.reply(&work.id),
        attempt: work.attempt,
        seq: 0,
    };
    let controls = shared
        .client
        .subscribe(shared.subjects.control(&work.id))
        .await;
    let mut controls = match controls {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for the request's controls");
            None
        }
    };
    let submitted = shared
        .link
        .submit_continuing(work.messages, work.params, model, work.assistant_prefix)
        .await;
    let mut request = match submitted {
        Ok(r) => r,
        Err(e) => {
            out.send(ReplyBody::HandBack {
                reason: format!("the board's supervisor is not reachable: {e}"),
            })
            .await;
            ack(shared, msg).await;
            shared.set_active(&key, false);
            return;
        }
    };
    let mut progress = tokio::time::interval(shared.config.ack_wait / 3);
    // The slot serving it, and whether it finished there (then it is free).
    let mut slot = None;
    let mut finished = false;
    progress.tick().await;
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                out.send(ReplyBody::HandBack { reason: "the board's bridge is stopping".into() }).await;
                ack(shared, msg).await;
                break;
            }
            event = request.next() => {
                if let LinkEvent::Event(SupervisorToClient::Started(s)) = &event {
                    slot = Some(s.slot.clone());
                    shared.started();
                    pulled.uncount();
                }
                finished = matches!(event, LinkEvent::Event(SupervisorToClient::Done(_)));
                match step(&event) {
                    Step::Relay | Step::Finish => {
                        let LinkEvent::Event(e) = event else { break };
                        let end = matches!(e, SupervisorToClient::Done(_) | SupervisorToClient::Error(_));
                        out.send(ReplyBody::Event(e)).await;
                        if end {
                            ack(shared, msg).await;
                            break;
                        }
                    }
                    Step::HandBack(reason) => {
                        tracing::warn!(request = %key, reason, "handing the request back");
                        out.send(ReplyBody::HandBack { reason }).await;
                        ack(shared, msg).await;
                        break;
                    }
                }
            }
            ctl = next_control(&mut controls) => match ctl {
                Some(Control::Stop) => request.stop().await,
                Some(Control::Cancel) => {
                    // Dropping the request cancels it at the supervisor.
                    ack(shared, msg).await;
                    break;
                }
                None => controls = None,
            },
            _ = progress.tick() => {
                // Still working: JetStream must not give it to another board.
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    }
    drop(request);
    shared.set_active(&key, false);
    shared.ended(slot.as_deref().filter(|_| finished));
}

async fn next_control(controls: &mut Option<async_nats::Subscriber>) -> Option<Control> {
    let Some(sub) = controls.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        let msg = sub.next().await?;
        if let Ok(ctl) = serde_json::from_slice(&msg.payload) {
            return Some(ctl);
        }
    }
}

/// Asks the front door whether this attempt is wanted; acks (drops) a stale
/// one, naks one whose claim could not be asked.
async fn claim(shared: &Shared, work: &WorkRequest, msg: &jetstream::Message) -> bool {
    let body = serde_json::to_vec(&Claim {
        attempt: work.attempt,
        board: shared.config.board.clone(),
    })
    .unwrap_or_default();
    let asked = tokio::time::timeout(
        CLAIM_TIMEOUT,
        shared
            .client
            .request(shared.subjects.claim(&work.id), body.into()),
    )
    .await;
    match asked {
        Ok(Ok(answer)) => {
            let granted =
                serde_json::from_slice::<ClaimAnswer>(&answer.payload).is_ok_and(|a| a.granted);
            if !granted {
                tracing::info!(request = %work.id, attempt = work.attempt, "dropped a request the front door no longer wants");
                let _ = msg.ack_with(AckKind::Term).await;
            }
            granted
        }
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            tracing::info!(request = %work.id, "dropped a request whose front door is gone");
            let _ = msg.ack_with(AckKind::Term).await;
            false
        }
        _ => {
            // The front door may be reconnecting: let it come round again.
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            false
        }
    }
}

/// Acks, retrying through a server restart for as long as the ack wait: a
/// lost ack would have the request served twice (the claim would then stop
/// it, but a slot would be spent on learning that).
async fn ack(shared: &Shared, msg: &jetstream::Message) {
    let deadline = Instant::now() + shared.config.ack_wait;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), msg.double_ack()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => tracing::debug!(error = %e, "ack not confirmed; retrying"),
            Err(_) => tracing::debug!("ack not confirmed in time; retrying"),
        }
        if Instant::now() >= deadline {
            tracing::warn!("could not ack a finished request; it may be offered again");
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

struct Publisher<'a> {
    shared: &'a Shared,
    subject: String,
    attempt: u32,
    seq: u64,
}

impl Publisher<'_> {
    async fn send(&mut self, body: ReplyBody) {
        self.seq += 1;
        let reply = Reply {
            attempt: self.attempt,
            board: self.shared.config.board.clone(),
            seq: self.seq,
            body,
        };
        let bytes = serde_json::to_vec(&reply).unwrap_or_default();
        if let Err(e) = self
            .shared
            .client
            .publish(self.subject.clone(), bytes.into())
            .await
        {
            tracing::debug!(error = %e, "reply not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::client::{ErrorEvent, Token};

    fn error(kind: ErrorKind) -> LinkEvent {
        LinkEvent::Event(SupervisorToClient::Error(ErrorEvent {
            request_id: 1,
            kind,
            message: String::new(),
        }))
    }

    #[test]
    fn board_troubles_hand_back_and_request_troubles_finish() {
        assert!(matches!(step(&LinkEvent::Lost), Step::HandBack(_)));
        assert!(matches!(
            step(&error(ErrorKind::NoWorker)),
            Step::HandBack(_)
        ));
        assert!(matches!(
            step(&error(ErrorKind::ShuttingDown)),
            Step::HandBack(_)
        ));
        assert_eq!(step(&error(ErrorKind::BadRequest)), Step::Finish);
        assert_eq!(step(&error(ErrorKind::WorkerFailed)), Step::Finish);
        let token = LinkEvent::Event(SupervisorToClient::Token(Token {
            request_id: 1,
            text: "x".into(),
        }));
        assert_eq!(step(&token), Step::Relay);
    }
}
