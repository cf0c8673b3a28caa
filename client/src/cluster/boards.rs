//! The front door's view of the boards, from their heartbeats, without IO:
//! which are alive, which classes they serve, and whether a request for a
//! class can be published or must fail at once.

use std::collections::BTreeMap;

use super::wire::Heartbeat;

/// A board is alive while its last heartbeat is younger than this many of
/// its announced intervals.
pub const MISSED_HEARTBEATS: u64 = 3;

/// What to do with a new request for a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A live board serves the class.
    Publish,
    /// No board known yet, but the front door started recently: heartbeats
    /// may still be on their way.
    Wait,
    /// Nobody serves it: refuse with this message.
    Refuse(String),
}

/// The last heartbeat of every board seen, with its arrival time.
#[derive(Debug, Default, Clone)]
pub struct Boards {
    seen: BTreeMap<String, (Heartbeat, u64)>,
}

impl Boards {
    /// Records a heartbeat that arrived at `now`.
    pub fn on_heartbeat(&mut self, beat: Heartbeat, now: u64) {
        self.seen.insert(beat.board.clone(), (beat, now));
    }

    /// Whether `board`'s last heartbeat is recent enough at `now`.
    fn alive(beat: &Heartbeat, at: u64, now: u64) -> bool {
        now.saturating_sub(at) <= beat.interval_ms.max(100) * MISSED_HEARTBEATS
    }

    /// Every board seen, with whether it is alive and how long ago it spoke.
    pub fn list(&self, now: u64) -> Vec<(&Heartbeat, bool, u64)> {
        self.seen
            .values()
            .map(|(beat, at)| (beat, Self::alive(beat, *at, now), now.saturating_sub(*at)))
            .collect()
    }

    /// Live boards serving `class`.
    pub fn serving(&self, class: &str, now: u64) -> Vec<&str> {
        self.seen
            .values()
            .filter(|(beat, at)| {
                Self::alive(beat, *at, now) && beat.classes.iter().any(|c| c == class)
            })
            .map(|(beat, _)| beat.board.as_str())
            .collect()
    }

    /// Whether `board` last said it serves `key` (`<id>/<attempt>`).
    pub fn lists(&self, board: &str, key: &str) -> Option<u64> {
        self.seen
            .get(board)
            .filter(|(beat, _)| beat.active.iter().any(|a| a == key))
            .map(|(_, at)| *at)
    }

    /// Every class a live board serves, sorted.
    pub fn classes(&self, now: u64) -> Vec<String> {
        let mut classes: Vec<String> = self
            .seen
            .values()
            .filter(|(beat, at)| Self::alive(beat, *at, now))
            .flat_map(|(beat, _)| beat.classes.iter().cloned())
            .collect();
        classes.sort();
        classes.dedup();
        classes
    }

    /// Where a request for `class` goes, `since_start` ms after the front
    /// door began listening, with `grace_ms` allowed for the first
    /// heartbeats to arrive.
    pub fn route(&self, class: &str, now: u64, since_start: u64, grace_ms: u64) -> Route {
        if !self.serving(class, now).is_empty() {
            return Route::Publish;
        }
        if since_start < grace_ms {
            return Route::Wait;
        }
        let served = self.classes(now);
        let message = if served.is_empty() {
            format!("no board serves model class {class:?}: no board is announcing itself (are the boards' bridges and the NATS server up?)")
        } else {
            format!(
                "no board serves model class {class:?}; the classes served now are: {}",
                served.join(", ")
            )
        };
        Route::Refuse(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(board: &str, classes: &[&str], active: &[&str]) -> Heartbeat {
        Heartbeat {
            board: board.into(),
            classes: classes.iter().map(|c| (*c).to_owned()).collect(),
            slots: Vec::new(),
            queue: 0,
            in_flight: 0,
            temperatures: Vec::new(),
            active: active.iter().map(|c| (*c).to_owned()).collect(),
            interval_ms: 1000,
            problem: String::new(),
        }
    }

    #[test]
    fn a_class_is_served_while_a_board_announces_it() {
        let mut b = Boards::default();
        b.on_heartbeat(beat("a", &["cpu-small"], &["r/1"]), 0);
        b.on_heartbeat(beat("b", &["npu-1.5b"], &[]), 0);
        assert_eq!(b.route("cpu-small", 2000, 5000, 1500), Route::Publish);
        assert_eq!(b.serving("cpu-small", 3000), vec!["a"]);
        assert!(
            b.serving("cpu-small", 3001).is_empty(),
            "three missed heartbeats"
        );
        assert_eq!(b.lists("a", "r/1"), Some(0));
        assert_eq!(b.lists("a", "r/2"), None);
    }

    #[test]
    fn an_unserved_class_waits_out_the_grace_then_is_refused_by_name() {
        let mut b = Boards::default();
        assert_eq!(b.route("x", 10, 10, 1500), Route::Wait);
        let Route::Refuse(m) = b.route("x", 2000, 2000, 1500) else {
            panic!()
        };
        assert!(m.contains("no board is announcing"), "{m}");
        b.on_heartbeat(beat("a", &["cpu-small"], &[]), 2000);
        let Route::Refuse(m) = b.route("gpu-huge", 2100, 2100, 1500) else {
            panic!()
        };
        assert!(m.contains("\"gpu-huge\"") && m.contains("cpu-small"), "{m}");
    }
}
