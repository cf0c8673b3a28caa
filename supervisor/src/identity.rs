//! Who the workers run as: `supervisor.worker_user` looked up, the pure
//! decision whether the supervisor may and must switch to it, the check
//! that the user can reach what a worker needs (binary, model files, its
//! socket), and the switch itself between fork and exec.
//!
//! A worker runs Rockchip's closed RKLLM library (NPU) or llama.cpp on
//! untrusted prompts. As its own user it cannot use `admin.sock` or
//! `client.sock` (their uid check refuses it), signal the supervisor, or
//! write the supervisor's state.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A user as the kernel sees it: uid, primary gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (from the group database), primary included.
    pub groups: Vec<u32>,
}

impl fmt::Display for UserIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (uid {}, gid {})", self.name, self.uid, self.gid)
    }
}

/// Why `supervisor.worker_user` names no usable user.
#[derive(Debug, Error)]
pub enum LookupError {
    /// No such user in the password database.
    #[error("no user named {0:?} on this system (see getent passwd)")]
    NoSuchUser(String),
    /// The name cannot be a user name.
    #[error("{0:?} is not a user name")]
    BadName(String),
    /// The database could not be read.
    #[error("cannot look up user {name:?}: {source}")]
    Database {
        /// The name.
        name: String,
        /// OS error.
        #[source]
        source: nix::Error,
    },
}

/// Looks up `name` in the user and group databases.
///
/// # Errors
/// [`LookupError`] when there is no such user or the lookup failed.
pub fn lookup(name: &str) -> Result<UserIds, LookupError> {
    let db = |source| LookupError::Database {
        name: name.to_owned(),
        source,
    };
    if name.is_empty() || name.contains(['\0', '/', ':']) {
        return Err(LookupError::BadName(name.to_owned()));
    }
    let user = nix::unistd::User::from_name(name)
        .map_err(db)?
        .ok_or_else(|| LookupError::NoSuchUser(name.to_owned()))?;
    let cname = CString::new(name).map_err(|_| LookupError::BadName(name.to_owned()))?;
    let mut groups: Vec<u32> = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(db)?
        .into_iter()
        .map(nix::unistd::Gid::as_raw)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    Ok(UserIds {
        name: name.to_owned(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
    })
}

/// What this process may do about identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privilege {
    /// Effective uid.
    pub euid: u32,
    /// CAP_SETUID, CAP_SETGID and CAP_CHOWN (to hand the worker its
    /// socket) are all effective.
    pub can_switch: bool,
}

/// CAP_CHOWN's bit number.
const CAP_CHOWN: u32 = 0;
/// CAP_SETGID's bit number.
const CAP_SETGID: u32 = 6;
/// CAP_SETUID's bit number.
const CAP_SETUID: u32 = 7;

/// The effective capability set from `/proc/<pid>/status` text.
pub fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

impl Privilege {
    /// This process's, from `<proc_root>/self/status` (no capabilities if
    /// unreadable).
    pub fn of_this_process(proc_root: &Path) -> Self {
        let caps = std::fs::read_to_string(proc_root.join("self/status"))
            .ok()
            .and_then(|s| cap_eff(&s))
            .unwrap_or(0);
        let bit = |n: u32| caps & (1 << n) != 0;
        Self {
            euid: nix::unistd::geteuid().as_raw(),
            can_switch: bit(CAP_SETUID) && bit(CAP_SETGID) && bit(CAP_CHOWN),
        }
    }
}

/// Who the workers run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerIdentity {
    /// The supervisor's own user.
    Inherit {
        /// The supervisor runs as root with no `worker_user`: worth saying.
        as_root: bool,
    },
    /// Another user, switched to at spawn.
    Switch(UserIds),
}

impl WorkerIdentity {
    /// The user to switch to, if any.
    pub fn switch(&self) -> Option<&UserIds> {
        match self {
            Self::Switch(ids) => Some(ids),
            Self::Inherit { .. } => None,
        }
    }
}

/// `worker_user` is set but the workers cannot be switched to it.
#[derive(Debug, Error)]
pub enum CannotSwitch {
    /// This process lacks the privilege.
    #[error("supervisor.worker_user is {user}, but the supervisor (uid {euid}) is neither root nor has CAP_SETUID, CAP_SETGID and CAP_CHOWN: run it as root, or remove worker_user to run the workers as the supervisor's own user")]
    NotPrivileged {
        /// The configured user.
        user: UserIds,
        /// Our effective uid.
        euid: u32,
    },
    /// The configured user is root, and the supervisor is not: that would
    /// give the workers more than the supervisor has.
    #[error("supervisor.worker_user is root, but the supervisor runs as uid {euid}: workers must not have more rights than the supervisor")]
    Root {
        /// Our effective uid.
        euid: u32,
    },
}

/// Decides who the workers run as, from the configured user (looked up)
/// and what this process may do. A configured user that is the
/// supervisor's own needs no switch; any other needs root or both
/// capabilities, and is never silently ignored.
///
/// # Errors
/// [`CannotSwitch`] when another user is configured and we may not switch.
pub fn decide(configured: Option<UserIds>, me: Privilege) -> Result<WorkerIdentity, CannotSwitch> {
    match configured {
        None => Ok(WorkerIdentity::Inherit {
            as_root: me.euid == 0,
        }),
        Some(user) if user.uid == me.euid => Ok(WorkerIdentity::Inherit { as_root: false }),
        Some(user) if user.uid == 0 => Err(CannotSwitch::Root { euid: me.euid }),
        Some(user) if me.euid == 0 || me.can_switch => Ok(WorkerIdentity::Switch(user)),
        Some(user) => Err(CannotSwitch::NotPrivileged {
            user,
            euid: me.euid,
        }),
    }
}

/// What a worker must be able to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read a file (a model, a template, a library).
    Read,
    /// Execute a file (the worker binary).
    Execute,
    /// Enter a directory (where its socket is).
    Enter,
}

impl Need {
    fn bits(self) -> u32 {
        match self {
            Self::Read => 0o4,
            Self::Execute | Self::Enter => 0o1,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Execute => "execute",
            Self::Enter => "enter",
        }
    }
}

/// Owner and permission bits of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The path.
    pub path: PathBuf,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Whether `user` has `bits` (r=4, w=2, x=1) on `node` by the classic owner,
/// group, other rule (root passes). POSIX ACLs are not consulted: a path
/// readable only through an ACL is reported unreadable, which errs on the
/// side of a clear message at start over a load failure later.
pub fn permits(node: &Node, user: &UserIds, bits: u32) -> bool {
    if user.uid == 0 {
        return true;
    }
    let shift = if node.uid == user.uid {
        6
    } else if node.gid == user.gid || user.groups.contains(&node.gid) {
        3
    } else {
        0
    };
    (node.mode >> shift) & bits == bits
}

/// The first node of `chain` (directories from the root down, then the
/// target) that stops `user`: every directory must be enterable, the
/// target must allow `need`.
pub fn first_denial<'a>(chain: &'a [Node], user: &UserIds, need: Need) -> Option<&'a Node> {
    let (target, dirs) = chain.split_last()?;
    dirs.iter()
        .find(|d| !permits(d, user, Need::Enter.bits()))
        .or_else(|| (!permits(target, user, need.bits())).then_some(target))
}

/// A path a worker needs that its user cannot reach.
#[derive(Debug, Error)]
#[error("{what} {path}: worker user {user} cannot {verb} it: {blocked} is mode {mode:04o}, owner uid {owner}, group gid {group}")]
pub struct AccessError {
    /// What the path is ("slot primary's model").
    pub what: String,
    /// The path.
    pub path: PathBuf,
    /// The user.
    pub user: String,
    /// What it cannot do.
    pub verb: &'static str,
    /// The path that stops it (the target or a directory above it).
    pub blocked: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// Its owner.
    pub owner: u32,
    /// Its group.
    pub group: u32,
}

fn node(path: &Path) -> io::Result<Node> {
    let meta = std::fs::metadata(path)?;
    Ok(Node {
        path: path.to_owned(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Checks that `user` can `need` the existing file or directory `path`
/// (symlinks resolved first). A path that does not exist passes: its
/// absence is reported by the checks that own it (the worker's own load).
///
/// # Errors
/// [`AccessError`] naming the path that stops the user.
pub fn check(what: &str, path: &Path, user: &UserIds, need: Need) -> Result<(), Box<AccessError>> {
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(());
    };
    let mut chain: Vec<Node> = real.ancestors().filter_map(|p| node(p).ok()).collect();
    chain.reverse();
    match first_denial(&chain, user, need) {
        None => Ok(()),
        Some(n) => Err(Box::new(AccessError {
            what: what.to_owned(),
            path: path.to_owned(),
            user: user.to_string(),
            verb: need.verb(),
            blocked: n.path.clone(),
            mode: n.mode,
            owner: n.uid,
            group: n.gid,
        })),
    }
}

/// Checks everything a worker of each slot opens by path: its binary
/// (execute), model and fallback model, chat template file and NPU runtime
/// (read). The socket directory is checked by the caller once it is set up.
///
/// # Errors
/// The first [`AccessError`].
pub fn check_slots(config: &crate::config::Config, user: &UserIds) -> Result<(), Box<AccessError>> {
    for (name, slot) in config.slot_list() {
        let what = |thing: &str| format!("slot {name}'s {thing}");
        check(
            &what("worker binary"),
            &slot.worker_binary(),
            user,
            Need::Execute,
        )?;
        check(&what("model"), &slot.model, user, Need::Read)?;
        if let Some(m) = &slot.fallback_model {
            check(&what("fallback model"), m, user, Need::Read)?;
        }
        if let Some(t) = &slot.cpu.chat_template {
            if let model_check::template::Setting::File(f) =
                model_check::template::Setting::parse(t)
            {
                check(&what("chat template"), &f, user, Need::Read)?;
            }
        }
        if slot.backend == proto::chat::Backend::Npu {
            check(
                &what("NPU runtime"),
                &slot.npu.runtime_path,
                user,
                Need::Read,
            )?;
        }
    }
    Ok(())
}

pub use crate::ffi::run_as;

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32, groups: &[u32]) -> UserIds {
        UserIds {
            name: "w".into(),
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    fn n(path: &str, mode: u32, uid: u32, gid: u32) -> Node {
        Node {
            path: path.into(),
            mode,
            uid,
            gid,
        }
    }

    #[test]
    fn the_decision_switches_only_when_asked_and_allowed() {
        let root = Privilege {
            euid: 0,
            can_switch: false,
        };
        let plain = Privilege {
            euid: 1000,
            can_switch: false,
        };
        let capable = Privilege {
            euid: 1000,
            can_switch: true,
        };
        let nobody = user(65534, 65534, &[65534]);
        // Unset: the supervisor's user; at root that is worth an INFO line.
        assert_eq!(
            decide(None, root).unwrap(),
            WorkerIdentity::Inherit { as_root: true }
        );
        assert_eq!(
            decide(None, plain).unwrap(),
            WorkerIdentity::Inherit { as_root: false }
        );
        // Root or both capabilities: switch.
        assert_eq!(
            decide(Some(nobody.clone()), root).unwrap(),
            WorkerIdentity::Switch(nobody.clone())
        );
        assert_eq!(
            decide(Some(nobody.clone()), capable).unwrap(),
            WorkerIdentity::Switch(nobody.clone())
        );
        // Our own user: nothing to switch.
        assert_eq!(
            decide(Some(user(1000, 1000, &[])), plain).unwrap(),
            WorkerIdentity::Inherit { as_root: false }
        );
        // Another user without the privilege: refused, never ignored.
        let err = decide(Some(nobody), plain).unwrap_err();
        assert!(err.to_string().contains("CAP_SETUID"), "{err}");
        // Root workers under a non-root supervisor: never.
        let err = decide(Some(user(0, 0, &[])), capable).unwrap_err();
        assert!(matches!(err, CannotSwitch::Root { euid: 1000 }), "{err}");
    }

    #[test]
    fn capabilities_are_read_from_the_status_file() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t00000000000000c0\n";
        assert_eq!(cap_eff(status), Some(0xc0));
        assert_eq!(cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn permissions_follow_owner_group_other() {
        let w = user(100, 200, &[200, 300]);
        assert!(permits(&n("/f", 0o400, 100, 0), &w, 4), "owner");
        assert!(
            !permits(&n("/f", 0o044, 100, 0), &w, 4),
            "owner bits decide for the owner"
        );
        assert!(
            permits(&n("/f", 0o040, 0, 300), &w, 4),
            "supplementary group"
        );
        assert!(!permits(&n("/f", 0o600, 0, 0), &w, 4), "other");
        assert!(permits(&n("/f", 0o604, 0, 0), &w, 4));
        assert!(permits(&n("/f", 0o000, 5, 5), &user(0, 0, &[]), 4), "root");
    }

    #[test]
    fn the_first_denial_names_the_blocking_directory_or_the_file() {
        let w = user(65534, 65534, &[65534]);
        let chain = [
            n("/", 0o755, 0, 0),
            n("/srv", 0o700, 0, 0),
            n("/srv/m.gguf", 0o644, 0, 0),
        ];
        assert_eq!(
            first_denial(&chain, &w, Need::Read).unwrap().path,
            Path::new("/srv")
        );
        let chain = [n("/", 0o755, 0, 0), n("/m.gguf", 0o600, 0, 0)];
        assert_eq!(
            first_denial(&chain, &w, Need::Read).unwrap().path,
            Path::new("/m.gguf")
        );
        let chain = [n("/", 0o755, 0, 0), n("/w", 0o754, 0, 0)];
        assert_eq!(
            first_denial(&chain, &w, Need::Execute).unwrap().path,
            Path::new("/w")
        );
        let chain = [n("/", 0o755, 0, 0), n("/m.gguf", 0o644, 0, 0)];
        assert!(first_denial(&chain, &w, Need::Read).is_none());
    }

    #[test]
    fn a_file_behind_a_closed_directory_is_reported_with_the_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let closed = dir.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        let model = closed.join("m.gguf");
        std::fs::write(&model, b"x").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o644)).unwrap();
        let owner = std::fs::metadata(&closed).unwrap().uid();
        let other = user(owner.wrapping_add(12345), 4_000_000, &[]);
        let err = check("slot primary's model", &model, &other, Need::Read).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cannot read"), "{text}");
        assert!(
            text.contains(&format!("{} is mode 0700", closed.display())),
            "{text}"
        );
        // A missing path is left to the checks that own it.
        check("x", &dir.path().join("absent"), &other, Need::Read).unwrap();
    }
}
