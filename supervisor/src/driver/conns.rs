//! Connection limits of the client and admin sockets: the pure decisions
//! (may this peer open one more connection, is this prompt too long, has this
//! connection been idle too long) and the shared table of open connections
//! the accept loops consult.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::chat::ChatMessage;

/// How many connections a socket holds open at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// All peers together.
    pub total: usize,
    /// One user (by uid).
    pub per_uid: usize,
}

/// Why a new connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapRefusal {
    /// The socket holds `total` connections already.
    Total,
    /// This user holds `per_uid` connections already.
    PerUid,
}

/// Whether one more connection may open, given how many are open in all and
/// for the peer's user. The total is checked first: a full socket is full
/// for everyone, whoever holds the connections.
///
/// # Errors
/// [`CapRefusal`] naming the cap that is reached.
pub fn admit(caps: Caps, open_total: usize, open_for_uid: usize) -> Result<(), CapRefusal> {
    if open_total >= caps.total {
        Err(CapRefusal::Total)
    } else if open_for_uid >= caps.per_uid {
        Err(CapRefusal::PerUid)
    } else {
        Ok(())
    }
}

/// The characters of a conversation when they exceed `limit`: checked in the
/// connection task, so an oversized prompt is answered there and never
/// reaches the queue. The same count the core uses.
pub fn prompt_too_long(messages: &[ChatMessage], limit: usize) -> Option<usize> {
    let chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
    (chars > limit).then_some(chars)
}

/// Whether a connection with nothing received and nothing sent for `quiet`
/// has been idle too long. A request waiting in the queue sends nothing, so
/// the limit must exceed the queue timeout (checked by the config).
pub fn idle_too_long(quiet: Duration, limit: Duration) -> bool {
    quiet >= limit
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_uid: HashMap<u32, usize>,
}

/// The open connections of one socket, by user.
#[derive(Debug)]
pub struct Table {
    caps: Caps,
    open: Mutex<Open>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket {
    table: Arc<Table>,
    uid: u32,
}

impl Table {
    /// An empty table with these caps.
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            open: Mutex::new(Open::default()),
        })
    }

    /// A place for a connection of `uid`, or why there is none.
    ///
    /// # Errors
    /// [`CapRefusal`] when a cap is reached.
    pub fn open(self: &Arc<Self>, uid: u32) -> Result<Ticket, CapRefusal> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine = open.by_uid.get(&uid).copied().unwrap_or(0);
        admit(self.caps, open.total, mine)?;
        open.total += 1;
        *open.by_uid.entry(uid).or_insert(0) += 1;
        Ok(Ticket {
            table: Arc::clone(self),
            uid,
        })
    }

    /// Connections open now.
    pub fn total(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::chat::Role;

    const CAPS: Caps = Caps {
        total: 3,
        per_uid: 2,
    };

    #[test]
    fn the_total_cap_comes_before_the_per_user_cap() {
        assert_eq!(admit(CAPS, 0, 0), Ok(()));
        assert_eq!(admit(CAPS, 2, 1), Ok(()));
        assert_eq!(admit(CAPS, 2, 2), Err(CapRefusal::PerUid));
        assert_eq!(admit(CAPS, 3, 0), Err(CapRefusal::Total));
        assert_eq!(admit(CAPS, 3, 2), Err(CapRefusal::Total));
    }

    #[test]
    fn tickets_hold_places_until_dropped() {
        let table = Table::new(CAPS);
        let a1 = table.open(1).unwrap();
        let _a2 = table.open(1).unwrap();
        assert_eq!(table.open(1).unwrap_err(), CapRefusal::PerUid);
        let _b1 = table.open(2).unwrap();
        assert_eq!(table.open(3).unwrap_err(), CapRefusal::Total);
        drop(a1);
        assert_eq!(table.total(), 2);
        let _c1 = table.open(3).unwrap();
        assert_eq!(table.total(), 3);
    }

    #[test]
    fn prompt_size_counts_characters_over_all_messages() {
        let msgs = vec![
            ChatMessage::new(Role::System, "ab"),
            ChatMessage::new(Role::User, "ééé"),
        ];
        assert_eq!(prompt_too_long(&msgs, 5), None);
        assert_eq!(prompt_too_long(&msgs, 4), Some(5));
    }

    #[test]
    fn idle_means_quiet_for_the_whole_limit() {
        let limit = Duration::from_secs(10);
        assert!(!idle_too_long(Duration::from_secs(9), limit));
        assert!(idle_too_long(Duration::from_secs(10), limit));
    }
}
