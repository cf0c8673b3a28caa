//! Who may ask: allowlists, the per-user limits on concurrent and recent
//! requests, and the de-duplication of replayed events.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::Config;

/// Where a request comes from, as far as access is concerned.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The guild, or `None` in a DM.
    pub guild: Option<u64>,
    /// The channel.
    pub channel: u64,
    /// The asking user.
    pub user: u64,
    /// The user's roles in the guild (empty in DMs).
    pub roles: Vec<u64>,
}

/// Why a request is turned down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// DMs are not served.
    DmsDisabled,
    /// The guild or channel is not on its allowlist.
    PlaceNotAllowed,
    /// The user is on neither the user nor the role allowlist.
    NotAllowed,
    /// Too many requests in the window; the user may try again after this long.
    RateLimited {
        /// Time until the oldest request leaves the window.
        retry_after: Duration,
    },
    /// The user already has as many requests running as allowed.
    TooManyConcurrent {
        /// The limit.
        limit: usize,
    },
}

impl Refusal {
    /// True where the bot must not write at all: a guild or channel it does
    /// not serve, or a DM while DMs are off. Posting there (even a refusal)
    /// would be the bot speaking where its operator did not put it; only a
    /// slash command, answered privately, hears [`message`](Self::message).
    pub fn silent(&self) -> bool {
        matches!(self, Self::DmsDisabled | Self::PlaceNotAllowed)
    }

    /// The reaction put on the user's message when they were already told
    /// once in the window (see [`NoticeBudget`]).
    pub fn reaction(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } | Self::TooManyConcurrent { .. } => "⏳",
            Self::DmsDisabled | Self::PlaceNotAllowed | Self::NotAllowed => "🚫",
        }
    }

    /// A short sentence for the user.
    pub fn message(&self) -> String {
        match self {
            Self::DmsDisabled => "Sorry, I don't answer direct messages.".to_owned(),
            Self::PlaceNotAllowed => "Sorry, I don't answer in this channel.".to_owned(),
            Self::NotAllowed => "Sorry, I can't answer you here.".to_owned(),
            Self::RateLimited { retry_after } => format!(
                "You're asking faster than I can keep up; please try again in {} s.",
                retry_after.as_secs().max(1)
            ),
            Self::TooManyConcurrent { limit: 1 } => {
                "I'm still answering your previous question; please wait for it to finish."
                    .to_owned()
            }
            Self::TooManyConcurrent { limit } => format!(
                "You already have {limit} questions in progress; please wait for one to finish."
            ),
        }
    }
}

/// Allowlist check, pure.
///
/// Guild and channel lists must both pass. A user passes when both user and
/// role lists are empty, or the user is listed, or holds a listed role. In a
/// DM only `allow_dms` and the user list count (roles are unknown there).
///
/// # Errors
/// The refusal.
pub fn check_allowed(config: &Config, origin: &Origin) -> Result<(), Refusal> {
    let listed = |list: &[u64], id: u64| list.is_empty() || list.contains(&id);
    match origin.guild {
        None => {
            if !config.allow_dms {
                return Err(Refusal::DmsDisabled);
            }
        }
        Some(guild) => {
            if !listed(&config.allowed_guilds, guild)
                || !listed(&config.allowed_channels, origin.channel)
            {
                return Err(Refusal::PlaceNotAllowed);
            }
        }
    }
    if config.allowed_users.is_empty() && config.allowed_roles.is_empty() {
        return Ok(());
    }
    if config.allowed_users.contains(&origin.user)
        || origin
            .roles
            .iter()
            .any(|r| config.allowed_roles.contains(r))
    {
        Ok(())
    } else {
        Err(Refusal::NotAllowed)
    }
}

/// Per-user fairness: concurrent requests and a sliding-window rate limit.
#[derive(Debug)]
pub struct UserLimits {
    max_concurrent: usize,
    rate_limit: usize,
    window: Duration,
    state: Arc<Mutex<HashMap<u64, UserState>>>,
}

#[derive(Debug, Default)]
struct UserState {
    running: usize,
    recent: VecDeque<Instant>,
}

/// Held while a user's request runs; dropping it frees the slot.
#[derive(Debug)]
pub struct UserPermit {
    user: u64,
    state: Arc<Mutex<HashMap<u64, UserState>>>,
}

impl Drop for UserPermit {
    fn drop(&mut self) {
        let mut map = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get_mut(&self.user) {
            entry.running = entry.running.saturating_sub(1);
        }
    }
}

impl UserLimits {
    /// Limits from the config.
    pub fn new(config: &Config) -> Self {
        Self::with_limits(
            config.user_max_concurrent,
            config.user_rate_limit,
            Duration::from_secs(config.user_rate_window_secs),
        )
    }

    /// Limits given directly.
    pub fn with_limits(max_concurrent: usize, rate_limit: usize, window: Duration) -> Self {
        Self {
            max_concurrent,
            rate_limit,
            window,
            state: Arc::default(),
        }
    }

    /// Admits one request of `user` now, or says why not. An admitted request
    /// counts against the rate limit; a refused one does not.
    ///
    /// # Errors
    /// The refusal.
    pub fn admit(&self, user: u64) -> Result<UserPermit, Refusal> {
        self.admit_at(user, Instant::now())
    }

    fn admit_at(&self, user: u64, now: Instant) -> Result<UserPermit, Refusal> {
        let mut map = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget idle users so the map stays as small as the active set.
        if map.len() > 10_000 {
            let window = self.window;
            map.retain(|_, s| {
                s.running > 0
                    || s.recent
                        .back()
                        .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        let entry = map.entry(user).or_default();
        while entry
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            entry.recent.pop_front();
        }
        if entry.running >= self.max_concurrent {
            return Err(Refusal::TooManyConcurrent {
                limit: self.max_concurrent,
            });
        }
        if entry.recent.len() >= self.rate_limit {
            let oldest = entry.recent.front().copied().unwrap_or(now);
            return Err(Refusal::RateLimited {
                retry_after: self.window.saturating_sub(now.duration_since(oldest)),
            });
        }
        entry.recent.push_back(now);
        entry.running += 1;
        Ok(UserPermit {
            user,
            state: Arc::clone(&self.state),
        })
    }
}

/// At most one notice (a refusal, a hint) per user per window: a user who
/// keeps posting is told once, and after that the bot only reacts to the
/// message, so nobody can make it fill a channel with refusals.
#[derive(Debug)]
pub struct NoticeBudget {
    window: Duration,
    last: HashMap<u64, Instant>,
}

impl NoticeBudget {
    /// One notice per user per `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            last: HashMap::new(),
        }
    }

    /// True when `user` may be sent a notice at `now` (and counts it); false
    /// when they had one less than a window ago.
    pub fn allow(&mut self, user: u64, now: Instant) -> bool {
        if self.last.len() > 10_000 {
            // Forget users whose window has passed so the map stays as small
            // as the set of recently noticed users.
            let window = self.window;
            self.last
                .retain(|_, at| now.saturating_duration_since(*at) < window);
        }
        match self.last.get(&user) {
            Some(at) if now.saturating_duration_since(*at) < self.window => false,
            _ => {
                self.last.insert(user, now);
                true
            }
        }
    }
}

/// Remembers recently seen ids (messages, interactions) so an event replayed
/// after a resume is handled once. Bounded: the oldest ids are forgotten.
#[derive(Debug)]
pub struct SeenIds {
    capacity: usize,
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl SeenIds {
    /// Remembers up to `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    /// Records `id`; true when it is new.
    pub fn first_time(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(guild: Option<u64>, channel: u64, user: u64, roles: &[u64]) -> Origin {
        Origin {
            guild,
            channel,
            user,
            roles: roles.to_vec(),
        }
    }

    #[test]
    fn empty_lists_allow_everyone() {
        let config = Config::default();
        assert!(check_allowed(&config, &origin(Some(1), 2, 3, &[])).is_ok());
        assert!(check_allowed(&config, &origin(None, 2, 3, &[])).is_ok());
    }

    #[test]
    fn lists_restrict() {
        let config = Config {
            allowed_guilds: vec![1],
            allowed_channels: vec![2],
            allowed_users: vec![3],
            allowed_roles: vec![9],
            allow_dms: false,
            ..Config::default()
        };
        assert!(check_allowed(&config, &origin(Some(1), 2, 3, &[])).is_ok());
        assert!(check_allowed(&config, &origin(Some(1), 2, 4, &[9])).is_ok());
        assert_eq!(
            check_allowed(&config, &origin(Some(1), 2, 4, &[8])),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            check_allowed(&config, &origin(Some(5), 2, 3, &[])),
            Err(Refusal::PlaceNotAllowed)
        );
        assert_eq!(
            check_allowed(&config, &origin(Some(1), 6, 3, &[])),
            Err(Refusal::PlaceNotAllowed)
        );
        assert_eq!(
            check_allowed(&config, &origin(None, 6, 3, &[])),
            Err(Refusal::DmsDisabled)
        );
        // Outside the places the bot serves it says nothing; a user who is
        // not listed, in a place it serves, is told.
        assert!(Refusal::PlaceNotAllowed.silent());
        assert!(Refusal::DmsDisabled.silent());
        assert!(!Refusal::NotAllowed.silent());
        assert!(!Refusal::TooManyConcurrent { limit: 1 }.silent());
    }

    #[test]
    fn concurrency_and_rate() {
        let limits = UserLimits::with_limits(1, 2, Duration::from_secs(10));
        let t0 = Instant::now();
        let first = limits.admit_at(7, t0).unwrap();
        assert_eq!(
            limits.admit_at(7, t0).unwrap_err(),
            Refusal::TooManyConcurrent { limit: 1 }
        );
        // Another user is not affected.
        let other = limits.admit_at(8, t0).unwrap();
        drop(first);
        let second = limits.admit_at(7, t0 + Duration::from_secs(1)).unwrap();
        drop(second);
        match limits.admit_at(7, t0 + Duration::from_secs(2)) {
            Err(Refusal::RateLimited { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(8));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(limits.admit_at(7, t0 + Duration::from_secs(10)).is_ok());
        drop(other);
    }

    #[test]
    fn one_notice_per_user_per_window() {
        let mut budget = NoticeBudget::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(budget.allow(7, t0));
        // The same user posting every second is not told again in the window.
        for s in 1..60 {
            assert!(!budget.allow(7, t0 + Duration::from_secs(s)), "second {s}");
        }
        // Another user is told.
        assert!(budget.allow(8, t0 + Duration::from_secs(1)));
        // A window after the notice, the first user may be told again.
        assert!(budget.allow(7, t0 + Duration::from_secs(60)));
        assert!(!budget.allow(7, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn notice_budget_forgets_old_users() {
        let mut budget = NoticeBudget::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for user in 0..10_001 {
            assert!(budget.allow(user, t0));
        }
        assert!(budget.allow(99_999, t0 + Duration::from_secs(2)));
        assert_eq!(budget.last.len(), 1);
    }

    #[test]
    fn seen_ids_are_bounded() {
        let mut seen = SeenIds::new(2);
        assert!(seen.first_time(1));
        assert!(!seen.first_time(1));
        assert!(seen.first_time(2));
        assert!(seen.first_time(3));
        // 1 was forgotten to keep the bound.
        assert!(seen.first_time(1));
        assert!(!seen.first_time(3));
    }
}
