//! Decisions from the local supervisor's status, without IO: how many
//! requests of a class the board may pull now, and what its heartbeat says.

use proto::admin::{SlotState, StatusReport};

use client::cluster::wire::{BoardSlot, Heartbeat};

/// What the decisions need of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView<'a> {
    /// Slot name.
    pub name: &'a str,
    /// Model name.
    pub model: &'a str,
    /// State.
    pub state: SlotState,
}

/// The slots of a status report, as the decisions see them.
pub fn view(status: &StatusReport) -> Vec<SlotView<'_>> {
    status
        .slots
        .iter()
        .map(|s| SlotView {
            name: &s.name,
            model: &s.model,
            state: s.state,
        })
        .collect()
}

/// Whether a slot can serve `model` ("" = any).
fn serves(slot: &SlotView<'_>, model: &str) -> bool {
    model.is_empty() || slot.model == model || slot.name == model
}

/// How many requests for a class served by local `model` to pull now: one
/// per ready slot serving it, less those this bridge submitted that have
/// not started yet; none while the supervisor has a queue (its own clients
/// come first, and a pulled request must not wait behind them). A slot the
/// status shows busy counts as ready when it is in `freed`: it finished a
/// request of this bridge after the status was read, so the next one need
/// not wait for the next reading.
pub fn free_slots(
    slots: &[SlotView<'_>],
    queue_depth: u32,
    model: &str,
    not_started: usize,
    freed: &[String],
) -> usize {
    if queue_depth > 0 {
        return 0;
    }
    let ready = slots
        .iter()
        .filter(|s| {
            let free = s.state == SlotState::Ready
                || (s.state == SlotState::Busy && freed.iter().any(|f| f == s.name));
            free && serves(s, model)
        })
        .count();
    ready.saturating_sub(not_started)
}

/// Whether any slot serving `model` is alive or on its way back: a class is
/// announced while so, and not while every slot serving it is unavailable
/// or given up on (so a request for it fails fast at the front door).
pub fn class_alive(slots: &[SlotView<'_>], model: &str) -> bool {
    slots
        .iter()
        .any(|s| serves(s, model) && !matches!(s.state, SlotState::Unavailable | SlotState::Failed))
}

/// The heartbeat from the last status (`None`: the supervisor could not be
/// read, and `problem` says why: the board then announces no class).
pub fn heartbeat(
    board: &str,
    classes: &[(String, String)],
    status: Option<&StatusReport>,
    problem: &str,
    active: Vec<String>,
    interval_ms: u64,
) -> Heartbeat {
    let mut beat = Heartbeat {
        board: board.to_owned(),
        classes: Vec::new(),
        slots: Vec::new(),
        queue: 0,
        in_flight: 0,
        temperatures: Vec::new(),
        active,
        interval_ms,
        problem: problem.to_owned(),
    };
    let Some(status) = status else {
        return beat;
    };
    let slots = view(status);
    beat.classes = classes
        .iter()
        .filter(|(_, model)| class_alive(&slots, model))
        .map(|(class, _)| class.clone())
        .collect();
    beat.slots = status
        .slots
        .iter()
        .map(|s| BoardSlot {
            name: s.name.clone(),
            backend: s.backend,
            model: s.model.clone(),
            state: s.state,
        })
        .collect();
    beat.queue = status.queue_depth;
    beat.in_flight = status.in_flight;
    beat.temperatures = status
        .thermal
        .zones
        .iter()
        .map(|z| (z.kind.clone(), z.celsius))
        .collect();
    beat.problem.clear();
    beat
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot<'a>(name: &'a str, model: &'a str, state: SlotState) -> SlotView<'a> {
        SlotView { name, model, state }
    }

    #[test]
    fn pulls_one_per_ready_slot_less_those_not_started() {
        let slots = [
            slot("primary", "qwen", SlotState::Ready),
            slot("fallback", "smollm", SlotState::Ready),
            slot("third", "smollm", SlotState::Busy),
        ];
        assert_eq!(free_slots(&slots, 0, "", 0, &[]), 2);
        assert_eq!(free_slots(&slots, 0, "smollm", 0, &[]), 1);
        assert_eq!(free_slots(&slots, 0, "smollm", 1, &[]), 0);
        assert_eq!(free_slots(&slots, 0, "qwen", 3, &[]), 0);
        assert_eq!(
            free_slots(&slots, 1, "", 0, &[]),
            0,
            "local clients queue first"
        );
        assert_eq!(free_slots(&slots, 0, "llama", 0, &[]), 0);
        // "third" finished our request after the status was read.
        let freed = ["third".to_owned()];
        assert_eq!(free_slots(&slots, 0, "smollm", 0, &freed), 2);
        assert_eq!(free_slots(&slots, 0, "qwen", 0, &freed), 1);
    }

    #[test]
    fn a_class_is_announced_while_a_slot_for_it_can_come_back() {
        let slots = [
            slot("primary", "qwen", SlotState::Unavailable),
            slot("fallback", "smollm", SlotState::BackingOff),
        ];
        assert!(!class_alive(&slots, "qwen"));
        assert!(class_alive(&slots, "smollm"));
        assert!(class_alive(&slots, ""));
        let beat = heartbeat(
            "b",
            &[("c".into(), String::new())],
            None,
            "no supervisor",
            vec!["r/1".into()],
            500,
        );
        assert!(
            beat.classes.is_empty(),
            "an unreadable supervisor serves nothing"
        );
        assert_eq!(beat.problem, "no supervisor");
        assert_eq!(beat.active, vec!["r/1".to_owned()]);
    }
}
