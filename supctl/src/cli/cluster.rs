//! `supctl status --cluster`: every board of a NATS cluster, from the
//! boards' heartbeats (name, slots and states, models, temperatures, queue,
//! requests served, last seen).

use std::fmt::Write as _;
use std::time::Duration;

use crate::client::cluster::wire::Heartbeat;
use crate::client::cluster::{ClusterError, ClusterLink, NatsTarget};
use tokio_util::sync::CancellationToken;

/// How long to listen for heartbeats: longer than the default interval, so
/// every live board is heard once.
pub const LISTEN: Duration = Duration::from_millis(2_500);

/// One board as seen.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BoardRow {
    /// Its last heartbeat.
    pub heartbeat: Heartbeat,
    /// Whether it is alive (its last heartbeat is recent).
    pub alive: bool,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
}

/// Listens to the cluster's heartbeats for `listen` and lists the boards.
///
/// # Errors
/// The NATS connection could not be opened.
pub async fn boards(target: &NatsTarget, listen: Duration) -> Result<Vec<BoardRow>, ClusterError> {
    let stop = CancellationToken::new();
    let link = ClusterLink::connect(target, "supctl", stop.clone()).await?;
    tokio::time::sleep(listen).await;
    let rows = link
        .boards()
        .into_iter()
        .map(|(heartbeat, alive, last_seen_ms)| BoardRow {
            heartbeat,
            alive,
            last_seen_ms,
        })
        .collect();
    stop.cancel();
    Ok(rows)
}

/// The table people read.
pub fn render(rows: &[BoardRow]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no board is announcing itself (are the bridges and the NATS server up, and is the subject prefix right?)\n");
        return out;
    }
    for row in rows {
        let b = &row.heartbeat;
        let seen = if row.alive { "up" } else { "SILENT" };
        let _ =
            writeln!(
            out,
            "{}  {seen}, last seen {:.1} s ago  classes: {}  queue {}  generating {}  serving {}",
            b.board,
            Duration::from_millis(row.last_seen_ms).as_secs_f64(),
            if b.classes.is_empty() { "-".to_owned() } else { b.classes.join(", ") },
            b.queue,
            b.in_flight,
            b.active.len(),
        );
        for slot in &b.slots {
            let _ = writeln!(
                out,
                "  {:<10} {:<4} {:<12} {}",
                slot.name,
                slot.backend.as_str(),
                slot.state.as_str(),
                slot.model
            );
        }
        if !b.temperatures.is_empty() {
            let temps: Vec<String> = b
                .temperatures
                .iter()
                .map(|(zone, c)| format!("{zone} {c:.0}°C"))
                .collect();
            let _ = writeln!(out, "  temperatures: {}", temps.join(", "));
        }
        if !b.problem.is_empty() {
            let _ = writeln!(out, "  problem: {}", b.problem);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::cluster::wire::BoardSlot;
    use proto::admin::SlotState;
    use proto::chat::Backend;

    #[test]
    fn the_table_names_each_board_its_slots_and_a_silent_one() {
        let beat = |board: &str, problem: &str| Heartbeat {
            board: board.into(),
            classes: vec!["cpu-small".into()],
            slots: vec![BoardSlot {
                name: "primary".into(),
                backend: Backend::Cpu,
                model: "SmolLM2".into(),
                state: SlotState::Ready,
            }],
            queue: 1,
            in_flight: 1,
            temperatures: vec![("soc-thermal".into(), 51.4)],
            active: vec!["x/1".into()],
            interval_ms: 1000,
            problem: problem.into(),
        };
        let rows = vec![
            BoardRow {
                heartbeat: beat("board-1", ""),
                alive: true,
                last_seen_ms: 400,
            },
            BoardRow {
                heartbeat: beat("board-2", "no supervisor"),
                alive: false,
                last_seen_ms: 9000,
            },
        ];
        let text = render(&rows);
        assert!(text.contains("board-1  up, last seen 0.4 s ago  classes: cpu-small  queue 1  generating 1  serving 1"), "{text}");
        assert!(
            text.contains("primary    cpu  ready        SmolLM2"),
            "{text}"
        );
        assert!(text.contains("soc-thermal 51°C"), "{text}");
        assert!(
            text.contains("board-2  SILENT") && text.contains("problem: no supervisor"),
            "{text}"
        );
        assert!(render(&[]).contains("no board is announcing"));
    }
}
