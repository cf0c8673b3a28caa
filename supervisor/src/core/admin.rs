//! `supctl` commands: status, failover pinning, restarts, memory ceilings.

use proto::admin::{AdminError, AdminOk, AdminToSupervisor, Routing, SlotState, SupervisorToAdmin};

use super::{Core, Effect};
use crate::lifecycle::Reason;

impl Core {
    pub(super) fn on_admin(&mut self, cmd: AdminToSupervisor) -> SupervisorToAdmin {
        let ok = |message: String| SupervisorToAdmin::Ok(AdminOk { message });
        let err = |message: String| SupervisorToAdmin::Error(AdminError { message });
        let unknown = |name: &str| {
            err(format!(
                "no slot named {name:?} (use primary, fallback, npu or cpu)"
            ))
        };
        match cmd {
            AdminToSupervisor::Status => SupervisorToAdmin::Status(Box::new(self.status())),
            AdminToSupervisor::Failover(f) => match f.to {
                None => {
                    self.routing = Routing::Auto;
                    ok("routing is automatic again: primary when ready, else fallback".into())
                }
                Some(backend) => {
                    if !self.slots.iter().any(|s| s.cfg.backend == backend) {
                        return err(format!("no slot runs the {backend} backend"));
                    }
                    self.routing = Routing::Pinned(backend);
                    ok(format!(
                        "traffic pinned to {backend} until `supctl failover --auto`"
                    ))
                }
            },
            AdminToSupervisor::SetMemoryCeiling(c) => {
                let Some(i) = self.find_slot(&c.slot) else {
                    return unknown(&c.slot);
                };
                if c.hard_mib != 0 && c.soft_mib > c.hard_mib {
                    return err("the soft ceiling must not be above the hard one".into());
                }
                let s = &mut self.slots[i];
                s.cfg.memory_soft_mib = c.soft_mib;
                s.cfg.memory_hard_mib = c.hard_mib;
                let max = (c.hard_mib > 0).then_some(c.hard_mib << 20);
                let message = format!(
                    "{}: soft ceiling {} MiB, hard ceiling {} MiB (0 = off)",
                    s.name, c.soft_mib, c.hard_mib
                );
                if s.pid.is_some() {
                    self.out.push(Effect::SetCgroupLimit { slot: i, max });
                }
                ok(message)
            }
            AdminToSupervisor::Restart(r) => {
                let Some(i) = self.find_slot(&r.slot) else {
                    return unknown(&r.slot);
                };
                if self.shutting_down {
                    return err("the supervisor is shutting down".into());
                }
                let name = self.slots[i].name;
                match self.slots[i].state {
                    SlotState::Busy if !r.now => {
                        self.slots[i].restart_after_job = true;
                        ok(format!("{name} restarts after its current request"))
                    }
                    SlotState::Idle
                    | SlotState::BackingOff
                    | SlotState::Failed
                    | SlotState::Unavailable => {
                        if self.slots[i].spawning {
                            return ok(format!("{name} is already starting"));
                        }
                        self.slots[i].history.clear();
                        self.slots[i].wake_at = None;
                        self.set_state(i, SlotState::Idle, None);
                        self.spawn(i);
                        ok(format!("{name} starting"))
                    }
                    SlotState::Stopping => ok(format!("{name} is already stopping")),
                    SlotState::Starting if self.slots[i].pid.is_none() => {
                        ok(format!("{name} is already starting"))
                    }
                    _ => {
                        self.stop(i, Reason::Admin);
                        ok(format!("{name} restarting"))
                    }
                }
            }
        }
    }

    fn find_slot(&self, name: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.name == name || s.cfg.backend.as_str() == name)
    }
}
