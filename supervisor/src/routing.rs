//! Which slot new requests go to: pure functions over the slots' states.

use std::time::Duration;

use proto::admin::{Routing, SlotState, ZoneTemp};
use proto::chat::Backend;

use crate::core::Millis;

/// What routing needs to know about a slot.
#[derive(Debug, Clone, Copy)]
pub struct SlotView {
    /// The slot's backend.
    pub backend: Backend,
    /// Its lifecycle state.
    pub state: SlotState,
    /// Since when it has been continuously ready or busy.
    pub healthy_since: Option<Millis>,
    /// It has been restarted (or failed) since the supervisor started: a
    /// worker that just came back must prove itself before taking traffic back.
    pub recovering: bool,
}

impl SlotView {
    /// Ready or busy: able to take requests (now or after the current one).
    pub fn healthy(&self) -> bool {
        matches!(self.state, SlotState::Ready | SlotState::Busy)
    }
}

/// The slot requests should go to, and why. Slot 0 is the primary.
///
/// Auto: the primary when healthy, else the fallback. Once traffic is on the
/// fallback, it moves back only after the primary has been healthy for
/// `failback_hold`, so a flapping primary does not drag replies back and forth.
/// Pinned: the first healthy slot of that backend, nothing else.
pub fn choose(
    slots: &[SlotView],
    routing: Routing,
    previous: Option<usize>,
    failback_hold: Duration,
    now: Millis,
) -> (Option<usize>, String) {
    if let Routing::Pinned(backend) = routing {
        let pick = slots
            .iter()
            .position(|s| s.backend == backend && s.healthy());
        let why = match pick {
            Some(_) => format!("pinned to {backend} by an operator"),
            None => format!("pinned to {backend} by an operator, but no {backend} worker is ready"),
        };
        return (pick, why);
    }
    let Some(primary) = slots.first() else {
        return (None, "no slots configured".into());
    };
    let fallback = slots.get(1).filter(|s| s.healthy());
    if primary.healthy() {
        let held = !primary.recovering
            || primary
                .healthy_since
                .is_some_and(|since| now.since(since) >= failback_hold);
        let on_fallback = previous == Some(1);
        if on_fallback && !held && fallback.is_some() {
            return (
                Some(1),
                "primary recovering: failback after the hold-down time".into(),
            );
        }
        return (Some(0), "primary ready".into());
    }
    match fallback {
        Some(_) => (
            Some(1),
            format!("failed over: primary is {}", primary.state.as_str()),
        ),
        None => (None, "no worker is ready".into()),
    }
}

/// Substrings of the thermal zone types that belong to a backend's silicon
/// (RK3588: `npu-thermal`; `bigcore0-thermal`, `littlecore-thermal`, ...).
fn zone_patterns(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Npu => &["npu"],
        Backend::Cpu => &["bigcore", "littlecore", "cpu"],
    }
}

/// Hottest zone of a backend's silicon, if any zone matches.
pub fn backend_temp(backend: Backend, zones: &[ZoneTemp]) -> Option<f64> {
    zones
        .iter()
        .filter(|z| zone_patterns(backend).iter().any(|p| z.kind.contains(p)))
        .map(|z| z.celsius)
        .reduce(f64::max)
}

/// While throttled: another healthy slot whose silicon is at least 2 °C
/// cooler than the chosen one's, if there is one.
pub fn cooler(slots: &[SlotView], zones: &[ZoneTemp], chosen: usize) -> Option<usize> {
    let here = backend_temp(slots.get(chosen)?.backend, zones)?;
    slots
        .iter()
        .enumerate()
        .filter(|(i, s)| *i != chosen && s.healthy())
        .filter_map(|(i, s)| backend_temp(s.backend, zones).map(|t| (i, t)))
        .filter(|(_, t)| *t + 2.0 <= here)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// The slots a request of a conversation may start on, best first.
///
/// `allowed` are the slots routing and policy allow now, in their order
/// (the active slot first, then spill-over). `extra` are the other ready
/// slots that hold the conversation and that policy would allow to take a
/// request (never a primary in its failback hold-down, never under a pinned
/// routing): the caller passes them only when they may. A holder that is
/// healthy (`eligible`: not under memory pressure) moves to the front,
/// so the conversation continues where its KV cache is; otherwise the order
/// stays, and the request is prefilled cold where it lands.
pub fn holder_first(
    allowed: &[usize],
    extra: &[usize],
    holds: impl Fn(usize) -> bool,
    eligible: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let mut list: Vec<usize> = allowed.to_vec();
    list.extend(extra.iter().filter(|j| !allowed.contains(j)));
    let pick = list.iter().position(|&j| holds(j) && eligible(j));
    match pick {
        Some(at) => {
            let j = list.remove(at);
            list.insert(0, j);
            list
        }
        // Nobody to prefer: extras were only for a holder.
        None => allowed.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(backend: Backend, state: SlotState, since: Option<Millis>) -> SlotView {
        SlotView {
            backend,
            state,
            healthy_since: since,
            recovering: true,
        }
    }

    #[test]
    fn auto_prefers_primary_and_fails_over_and_back_after_hold() {
        let t0 = Millis(1_000_000);
        let hold = Duration::from_secs(30);
        let fb = view(Backend::Cpu, SlotState::Ready, Some(t0));
        let up = [view(Backend::Npu, SlotState::Busy, Some(t0)), fb];
        assert_eq!(choose(&up, Routing::Auto, None, hold, t0).0, Some(0));
        let down = [view(Backend::Npu, SlotState::BackingOff, None), fb];
        let (pick, why) = choose(&down, Routing::Auto, Some(0), hold, t0);
        assert_eq!(pick, Some(1));
        assert!(why.contains("backing-off"));
        let back = [view(Backend::Npu, SlotState::Ready, Some(t0)), fb];
        assert_eq!(
            choose(
                &back,
                Routing::Auto,
                Some(1),
                hold,
                t0 + Duration::from_secs(5)
            )
            .0,
            Some(1)
        );
        assert_eq!(
            choose(
                &back,
                Routing::Auto,
                Some(1),
                hold,
                t0 + Duration::from_secs(31)
            )
            .0,
            Some(0)
        );
        // A primary that was merely slower to load at start takes over at once.
        let fresh = [
            SlotView {
                recovering: false,
                ..back[0]
            },
            fb,
        ];
        assert_eq!(choose(&fresh, Routing::Auto, Some(1), hold, t0).0, Some(0));
        // Without a healthy fallback there is nothing to hold on to.
        let alone = [
            view(Backend::Npu, SlotState::Ready, Some(t0)),
            view(Backend::Cpu, SlotState::Failed, None),
        ];
        assert_eq!(choose(&alone, Routing::Auto, Some(1), hold, t0).0, Some(0));
    }

    #[test]
    fn pinned_uses_only_that_backend() {
        let t0 = Millis(1_000_000);
        let slots = [
            view(Backend::Npu, SlotState::Ready, Some(t0)),
            view(Backend::Cpu, SlotState::Loading, None),
        ];
        let (pick, why) = choose(
            &slots,
            Routing::Pinned(Backend::Cpu),
            Some(0),
            Duration::ZERO,
            t0,
        );
        assert_eq!(pick, None);
        assert!(why.contains("no cpu worker is ready"));
        let (pick, _) = choose(
            &slots,
            Routing::Pinned(Backend::Npu),
            None,
            Duration::ZERO,
            t0,
        );
        assert_eq!(pick, Some(0));
    }

    #[test]
    fn the_cooler_backend_is_found_by_zone_type() {
        let t0 = Millis(1_000_000);
        let slots = [
            view(Backend::Npu, SlotState::Ready, Some(t0)),
            view(Backend::Cpu, SlotState::Ready, Some(t0)),
        ];
        let zone = |kind: &str, celsius| ZoneTemp {
            kind: kind.into(),
            celsius,
        };
        let hot_npu = [
            zone("npu-thermal", 84.0),
            zone("bigcore0-thermal", 70.0),
            zone("soc-thermal", 80.0),
        ];
        assert_eq!(backend_temp(Backend::Cpu, &hot_npu), Some(70.0));
        assert_eq!(cooler(&slots, &hot_npu, 0), Some(1));
        let close = [zone("npu-thermal", 71.0), zone("bigcore0-thermal", 70.0)];
        assert_eq!(
            cooler(&slots, &close, 0),
            None,
            "within 2 °C is not worth a switch"
        );
        assert_eq!(cooler(&slots, &[zone("soc-thermal", 90.0)], 0), None);
    }

    #[test]
    fn nothing_healthy_means_no_slot() {
        let slots = [view(Backend::Cpu, SlotState::Unavailable, None)];
        assert_eq!(
            choose(&slots, Routing::Auto, None, Duration::ZERO, Millis(0)).0,
            None
        );
    }

    #[test]
    fn the_slot_holding_the_conversation_goes_first() {
        // The fallback holds it: it takes the request ahead of the active primary.
        assert_eq!(holder_first(&[0, 1], &[], |j| j == 1, |_| true), vec![1, 0]);
        // Spill-over off: the fallback is offered only as a holder.
        assert_eq!(holder_first(&[0], &[1], |j| j == 1, |_| true), vec![1, 0]);
        // A holder under memory pressure is not preferred; extras fall away.
        assert_eq!(holder_first(&[0], &[1], |j| j == 1, |j| j != 1), vec![0]);
        // Nobody holds it: routing's order.
        assert_eq!(holder_first(&[1, 0], &[], |_| false, |_| true), vec![1, 0]);
        // The active slot holds it: unchanged.
        assert_eq!(holder_first(&[0, 1], &[], |j| j == 0, |_| true), vec![0, 1]);
    }
}
