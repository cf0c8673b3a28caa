//! What happens to the simulated supervisor: clients that submit (valid and
//! invalid requests, short and long prompts), cancel and disappear; admin
//! commands; and faults injected into workers at seeded moments.

use std::collections::BTreeMap;

use proto::admin::{AdminToSupervisor, FailoverCommand, MemoryCeiling, RestartCommand};
use proto::chat::{Backend, ChatMessage, GenParams, Role};
use proto::client::{Submit, SupervisorToClient};
use proto::worker::WorkerToSupervisor;

use super::check::Tracker;
use super::world::{Ev, World};
use super::SCHEDULE_MS;
use crate::core::{Core, Event};

/// The simulated clients.
pub struct Clients {
    conns: Vec<u64>,
    next_conn: u64,
    next_id: u64,
    next_admin: u64,
    /// Open requests per connection.
    open: BTreeMap<u64, Vec<u64>>,
}

impl Clients {
    /// `n` client connections.
    pub fn new(n: u64) -> Self {
        Self {
            conns: (1..=n).collect(),
            next_conn: n + 1,
            next_id: 1,
            next_admin: 1,
            open: BTreeMap::new(),
        }
    }

    /// One client or admin action; schedules the next.
    pub fn act(&mut self, w: &mut World, core: &Core, tracker: &mut Tracker) -> Option<Event> {
        if w.now.0 < SCHEDULE_MS && w.rng.chance(0.8) {
            let d = w.rng.range(0, 1500);
            w.at(d, Ev::Client);
        }
        let conn = *w.rng.pick(&self.conns);
        let roll = w.rng.range(0, 100);
        match roll {
            0..=59 => {
                let id = self.next_id;
                self.next_id += 1;
                let chars = usize::try_from(if w.rng.chance(0.2) {
                    w.rng.range(1000, 5000)
                } else {
                    w.rng.range(5, 400)
                })
                .unwrap_or(10);
                let mut params = GenParams {
                    max_tokens: u32::try_from(w.rng.range(1, 40)).unwrap_or(8),
                    ..GenParams::default()
                };
                if w.rng.chance(0.04) {
                    params.temperature = f32::NAN;
                }
                if w.rng.chance(0.03) {
                    params.max_tokens = 0;
                }
                tracker.requests.entry((conn, id)).or_default();
                self.open.entry(conn).or_default().push(id);
                Some(Event::ClientSubmit {
                    conn,
                    submit: Submit {
                        request_id: id,
                        messages: vec![ChatMessage::new(Role::User, "x".repeat(chars))],
                        params,
                        model: String::new(),
                        conversation: None,
                    },
                })
            }
            60..=69 => {
                let open = self.open.get(&conn).filter(|o| !o.is_empty())?;
                let id = *w.rng.pick(open);
                Some(Event::ClientCancel {
                    conn,
                    request_id: id,
                })
            }
            70..=74 => {
                // The client disappears; a new one takes its place.
                self.conns.retain(|c| *c != conn);
                self.conns.push(self.next_conn);
                self.next_conn += 1;
                for ((c, _), r) in &mut tracker.requests {
                    if *c == conn {
                        r.gone = true;
                    }
                }
                Some(Event::ClientGone { conn })
            }
            _ => {
                let id = self.next_admin;
                self.next_admin += 1;
                let slot = if w.rng.chance(0.5) {
                    "primary"
                } else {
                    "fallback"
                };
                let cmd = match w.rng.range(0, 6) {
                    0 => AdminToSupervisor::Failover(FailoverCommand {
                        to: Some(if w.rng.chance(0.5) {
                            Backend::Cpu
                        } else {
                            Backend::Npu
                        }),
                    }),
                    1 => AdminToSupervisor::Failover(FailoverCommand { to: None }),
                    2 => AdminToSupervisor::Restart(RestartCommand {
                        slot: slot.into(),
                        now: w.rng.chance(0.5),
                    }),
                    3 => {
                        // A lower ceiling may stop a worker for memory.
                        let i = usize::from(slot == "fallback");
                        w.faults[i].push((core.slots()[i].incarnation, "ceiling"));
                        let hard = w.rng.range(150, 600);
                        AdminToSupervisor::SetMemoryCeiling(MemoryCeiling {
                            slot: slot.into(),
                            soft_mib: hard / 2,
                            hard_mib: hard,
                        })
                    }
                    _ => AdminToSupervisor::Status,
                };
                Some(Event::Admin { id, cmd })
            }
        }
    }

    /// A client event arrived: forget finished requests.
    pub fn on_event(&mut self, _w: &mut World, conn: u64, event: &SupervisorToClient) {
        let id = match event {
            SupervisorToClient::Done(d) => d.request_id,
            SupervisorToClient::Error(e) => e.request_id,
            _ => return,
        };
        if let Some(open) = self.open.get_mut(&conn) {
            open.retain(|x| *x != id);
        }
    }
}

/// Injects a random fault into slot `i`'s live process (if any).
pub fn fault(w: &mut World, i: usize) {
    let kind = w.rng.range(0, 8);
    let Some(p) = w.procs[i].last_mut() else {
        return;
    };
    let inc = p.incarnation;
    let name = match kind {
        0 => {
            let code = if w.rng.chance(0.5) {
                (Some(1), None)
            } else {
                (None, Some(11))
            };
            w.exit(i, inc, 0, code.0, code.1);
            "crash"
        }
        1 => {
            w.oom_kills += 1;
            w.exit(i, inc, 0, None, Some(9));
            // Without per-worker cgroups the counter is system-wide: a
            // worker of another slot killed meanwhile may be taken for an
            // OOM kill too.
            for j in 0..w.procs.len() {
                if let Some(other) = w.procs[j].last().filter(|_| j != i) {
                    let other_inc = other.incarnation;
                    w.faults[j].push((other_inc, "oom-elsewhere"));
                }
            }
            "oom"
        }
        2 => {
            w.exit(i, inc, 0, None, Some(9));
            "kill9"
        }
        3 => {
            p.hung = true;
            "hang"
        }
        4 => {
            if !p.connected {
                return;
            }
            p.connected = false;
            w.at(
                1,
                Ev::Core(Event::WorkerDisconnected {
                    slot: i,
                    incarnation: inc,
                }),
            );
            "disconnect"
        }
        5 => {
            p.decode_ms = 2_500;
            "slow"
        }
        6 => {
            p.grow_kb = 120 << 10;
            "grow"
        }
        _ => {
            p.refuse_p = 1.0;
            "refuse"
        }
    };
    w.faults[i].push((inc, name));
}

/// A worker message in a few words (never the text).
pub fn short(msg: &WorkerToSupervisor) -> String {
    match msg {
        WorkerToSupervisor::Token(t) => format!("token req={} tokens={}", t.request_id, t.tokens),
        WorkerToSupervisor::Done(d) => format!("done req={} {:?}", d.request_id, d.finish),
        WorkerToSupervisor::Error(e) => format!("error req={} {:?}", e.request_id, e.kind),
        WorkerToSupervisor::Ready(_) => "ready".into(),
        WorkerToSupervisor::LoadFailed(f) => format!("load failed code={}", f.exit_code),
        WorkerToSupervisor::Heartbeat(h) => format!("heartbeat {}", h.seq),
        WorkerToSupervisor::Warmed(w) => format!("warmed tokens={}", w.tokens),
    }
}
