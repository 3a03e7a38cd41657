//! In-process rate limits: gate commands per caller and gate, and login attempts per account
//! and per client address with an exponential lockout after repeated failures.
//!
//! Both are keyed tables behind one mutex each, bounded in size: when a table is full, the
//! keys that have gone idle (whose state has fully decayed, so forgetting them changes
//! nothing) are dropped first, and only if every key is still active is the one closest to
//! idle forgotten. Time comes from a [`Clock`], so that tests step it by hand instead of
//! sleeping.
//!
//! In a cluster the same limits are also kept in Redis ([`SharedLimits`]), so that a client
//! spreading its requests over the nodes gets no more than from one: a request is admitted
//! when this node's table and the shared one both admit it. While Redis is away or slow, each
//! node decides with its own table alone (at most the nodes' count times the limits, never
//! none). Command ids are also claimed in the store ([`CommandIds`]), so that an id is one
//! command across every gate and node, and after a restart.
//!
//! The limits (see [`Limits::default`]):
//! - commands: a burst of 5 per caller and gate, then one every 2 s (GCRA). `stop` is never
//!   limited (see [`RateLimits::admit_command`]): refusing to stop a gate is never safer; a
//!   retry of a command id admitted on that gate lately (a phone resending after a tunnel)
//!   is not counted again: it moves nothing and gets the first command's outcome;
//! - login, per account name (whether it exists or not, so that the answer does not tell):
//!   5 failures are free, then each further failure locks the name for 30 s, doubling up to
//!   15 min; failures are forgotten 1 h after the last one, and a successful login clears them;
//! - login, per client address: the same with 20 free failures, and a success does not clear
//!   them (one valid account must not reset an address that is guessing others).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gatehouse_actors::clock::wall_ms;
use gatehouse_actors::cluster::SharedLimits;
use gatehouse_actors::gate::Action;
use gatehouse_actors::ids::{CommandId, GateId};
use gatehouse_actors::store::{Claimed, CommandClaim};

use crate::command_ids::CommandIds;

/// Monotonic time for the limiter, as a duration since an arbitrary origin.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;
}

/// The process's monotonic clock.
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to: for tests.
#[derive(Default)]
pub struct ManualClock {
    now: Mutex<Duration>,
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *lock(&self.now) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *lock(&self.now)
    }
}

pub use gatehouse_actors::cluster::{LockoutPolicy, Quota};

/// Every limit, with the table sizes that bound their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub command: Quota,
    pub login_account: LockoutPolicy,
    pub login_address: LockoutPolicy,
    /// Password-reset mails asked for one account (as typed): a person asks again after a
    /// few minutes, a script filling someone's mailbox is held back.
    pub link_account: Quota,
    /// Password-reset mails asked from one address, whatever the account.
    pub link_address: Quota,
    /// Keys per table, at most.
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A person presses a button a few times in a row at most; a script looping on a
            // gate wears out the motor and floods the controller.
            command: Quota {
                burst: 5,
                period: Duration::from_secs(2),
            },
            login_account: LockoutPolicy {
                free: 5,
                base: Duration::from_secs(30),
                max: Duration::from_secs(15 * 60),
                forget: Duration::from_secs(60 * 60),
            },
            // More room: several people may log in from behind one NAT.
            login_address: LockoutPolicy {
                free: 20,
                base: Duration::from_secs(30),
                max: Duration::from_secs(15 * 60),
                forget: Duration::from_secs(60 * 60),
            },
            link_account: Quota {
                burst: 3,
                period: Duration::from_secs(10 * 60),
            },
            link_address: Quota {
                burst: 10,
                period: Duration::from_secs(60),
            },
            // ~100 bytes per key: a few MiB at most per table.
            max_keys: 20_000,
        }
    }
}

/// The limiter's state per key: when it becomes idle (fully decayed), so that a full table
/// knows what it may forget.
trait Decays {
    fn idle_at(&self) -> Duration;
}

/// GCRA state: the theoretical arrival time of the next request. Times are durations since
/// any fixed origin the caller keeps (the limiter's clock; a connection's start).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gcra {
    tat: Duration,
}

impl Decays for Gcra {
    fn idle_at(&self) -> Duration {
        self.tat
    }
}

impl Gcra {
    /// Admits one request at `now`, or says how long until one would be.
    pub fn admit(&mut self, quota: Quota, now: Duration) -> Result<(), Duration> {
        let tolerance = quota.period * quota.burst.saturating_sub(1);
        let tat = self.tat.max(now);
        let allowed_at = tat.saturating_sub(tolerance);
        if allowed_at > now {
            return Err(allowed_at - now);
        }
        self.tat = tat + quota.period;
        Ok(())
    }
}

/// Failure count and lockout of one login key.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Duration,
    locked_until: Duration,
    forget_at: Duration,
}

impl Decays for Failures {
    fn idle_at(&self) -> Duration {
        self.forget_at.max(self.locked_until)
    }
}

impl Failures {
    fn fresh() -> Self {
        Failures {
            count: 0,
            last: Duration::ZERO,
            locked_until: Duration::ZERO,
            forget_at: Duration::ZERO,
        }
    }

    fn locked(&self, now: Duration) -> Result<(), Duration> {
        if self.locked_until > now {
            Err(self.locked_until - now)
        } else {
            Ok(())
        }
    }

    /// Counts a failure; true when it is the one that locks (the first lock of a run of
    /// failures, which is worth telling someone about; later ones only lengthen it).
    fn fail(&mut self, policy: LockoutPolicy, now: Duration) -> bool {
        if now >= self.forget_at {
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.last = now;
        self.forget_at = now + policy.forget;
        if self.count > policy.free {
            let doublings = (self.count - policy.free - 1).min(30);
            let lock = policy.base.saturating_mul(1 << doublings).min(policy.max);
            self.locked_until = now + lock;
        }
        self.count == policy.free.saturating_add(1)
    }
}

/// A bounded map from keys to limiter state.
struct Table<K, V> {
    map: Mutex<HashMap<K, V>>,
    max: usize,
}

impl<K: Hash + Eq + Clone, V: Decays + Copy> Table<K, V> {
    fn new(max: usize) -> Self {
        Table {
            map: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// Runs `f` on the key's state (`fresh` if it has none), making room first if needed.
    fn with<T>(&self, key: &K, now: Duration, fresh: V, f: impl FnOnce(&mut V) -> T) -> T {
        let mut map = lock(&self.map);
        if !map.contains_key(key) && map.len() >= self.max {
            map.retain(|_, v| v.idle_at() > now);
            if map.len() >= self.max
                && let Some(victim) = map
                    .iter()
                    .min_by_key(|(_, v)| v.idle_at())
                    .map(|(k, _)| k.clone())
            {
                map.remove(&victim);
            }
        }
        f(map.entry(key.clone()).or_insert(fresh))
    }

    /// Runs `f` on the key's state only if it has one.
    fn peek<T>(&self, key: &K, f: impl FnOnce(&V) -> T) -> Option<T> {
        lock(&self.map).get(key).map(f)
    }

    fn remove(&self, key: &K) {
        lock(&self.map).remove(key);
    }

    fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// The process's rate limits. Shared by REST and the WebSocket sessions.
pub struct RateLimits {
    limits: Limits,
    clock: Arc<dyn Clock>,
    /// Per (caller, gate): `user:<uuid>` or `key:<uuid>`, and the gate.
    commands: Table<(String, GateId), Gcra>,
    /// Per account name as typed (lower-cased), existing or not.
    accounts: Table<String, Failures>,
    /// Per client address.
    addresses: Table<IpAddr, Failures>,
    /// Password-reset requests per account as typed, and per address.
    link_accounts: Table<String, Gcra>,
    link_addresses: Table<IpAddr, Gcra>,
    /// The command ids admitted lately, by gate.
    admitted: Mutex<RecentIds>,
    /// The same limits, shared with the other nodes of a cluster (none: this node alone).
    shared: Option<Arc<dyn SharedLimits>>,
    /// Command ids claimed in the store (none: this node's memory alone).
    claims: Option<CommandIds>,
}

/// The last [`RecentIds::CAPACITY`] admitted command ids with their gate and action, oldest
/// forgotten first.
#[derive(Default)]
struct RecentIds {
    order: VecDeque<uuid::Uuid>,
    known: HashMap<uuid::Uuid, (GateId, Action)>,
}

impl RecentIds {
    /// Minutes of commands at a busy site's rate; hours at most sites'.
    const CAPACITY: usize = 50_000;

    fn get(&self, id: &uuid::Uuid) -> Option<&(GateId, Action)> {
        self.known.get(id)
    }

    fn insert(&mut self, id: uuid::Uuid, command: (GateId, Action)) {
        if self.known.insert(id, command).is_none() {
            self.order.push_back(id);
            if self.order.len() > Self::CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.known.remove(&old);
            }
        }
    }
}

/// What the limiter knows of an admitted command id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// A new command: counted (unless `stop`).
    New,
    /// The same command again (same gate and action): not counted; the gate answers it with
    /// the first command's outcome.
    Retry,
    /// The id was used lately for another gate or action: `rejected{id_conflict}`.
    Conflict,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits::new(Limits::default(), Arc::new(SystemClock::default()))
    }
}

impl RateLimits {
    pub fn new(limits: Limits, clock: Arc<dyn Clock>) -> Self {
        RateLimits {
            limits,
            clock,
            commands: Table::new(limits.max_keys),
            accounts: Table::new(limits.max_keys),
            addresses: Table::new(limits.max_keys),
            link_accounts: Table::new(limits.max_keys),
            link_addresses: Table::new(limits.max_keys),
            admitted: Mutex::default(),
            shared: None,
            claims: None,
        }
    }

    /// Also keeps every limit in `shared`, with the other nodes of the cluster.
    pub fn shared_with(mut self, shared: Arc<dyn SharedLimits>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Also claims every new command id in the store.
    pub fn claiming_in(mut self, claims: CommandIds) -> Self {
        self.claims = Some(claims);
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes one command by `actor` on `gate` from this node's table, or says how long until
    /// one would be admitted.
    fn command_here(&self, actor: &str, gate: &GateId) -> Result<(), Duration> {
        let now = self.clock.now();
        let quota = self.limits.command;
        self.commands.with(
            &(actor.to_string(), gate.clone()),
            now,
            Gcra { tat: now },
            |g| g.admit(quota, now),
        )
    }

    /// What this node remembers of command `id`, if anything: a retry of the same command, or
    /// a conflict with another.
    fn recent(&self, id: uuid::Uuid, gate: &GateId, action: Action) -> Option<Admitted> {
        match lock(&self.admitted).get(&id) {
            Some((g, a)) if g == gate && *a == action => Some(Admitted::Retry),
            Some(_) => Some(Admitted::Conflict),
            None => None,
        }
    }

    fn remember(&self, id: uuid::Uuid, gate: &GateId, action: Action) {
        lock(&self.admitted).insert(id, (gate.clone(), action));
    }

    /// Remembers the newest ids claimed in the store (as many as the memory holds): at start,
    /// so that a node alone, whose memory decides, knows the ids used before it restarted.
    /// Answers how many.
    pub async fn load_recent_ids(&self) -> Result<usize, gatehouse_actors::store::StoreError> {
        let Some(claims) = &self.claims else {
            return Ok(0);
        };
        let recent = claims.recent(RecentIds::CAPACITY as u32).await?;
        let mut admitted = lock(&self.admitted);
        for c in &recent {
            admitted.insert(c.id.0, (c.gate.clone(), c.action));
        }
        Ok(recent.len())
    }

    /// Admits command `id` (`action` on `gate` by `actor`): a burst then one per period per
    /// caller and gate, except that `stop` is never limited (stopping a moving gate must never
    /// wait for a limiter) and a retry of a command admitted lately is not counted again. An
    /// id used for another gate or action is a conflict.
    ///
    /// This node's memory answers the ids it has seen; a new one is charged here and in the
    /// cluster's shared table, then claimed in the store, which knows every node's ids (a
    /// retry first seen by another node is charged once more here). Each wait is bounded:
    /// Redis or the store being away makes this node decide alone, never stops commands.
    pub async fn admit_command(
        &self,
        actor: &str,
        gate: &GateId,
        action: Action,
        id: uuid::Uuid,
    ) -> Result<Admitted, Duration> {
        if let Some(known) = self.recent(id, gate, action) {
            return Ok(known);
        }
        if action != Action::Stop {
            self.command_here(actor, gate)?;
            if let Some(shared) = &self.shared
                && let Ok(Some(wait)) = shared
                    .take(format!("cmd:{actor}:{gate}"), self.limits.command)
                    .await
            {
                return Err(wait);
            }
        }
        if let Some(claims) = &self.claims {
            let claim = CommandClaim {
                id: CommandId(id),
                gate: gate.clone(),
                action,
                at_ms: wall_ms(),
            };
            match claims.claim(claim).await {
                Some(Claimed::Same) => {
                    self.remember(id, gate, action);
                    return Ok(Admitted::Retry);
                }
                Some(Claimed::Other {
                    gate: first,
                    action: first_action,
                }) => {
                    self.remember(id, &first, first_action);
                    return Ok(Admitted::Conflict);
                }
                Some(Claimed::New) | None => {}
            }
        }
        self.remember(id, gate, action);
        Ok(Admitted::New)
    }

    /// [`login_allowed`](Self::login_allowed) by this node's tables.
    fn login_allowed_here(&self, account: &str, address: IpAddr) -> Result<(), Duration> {
        let now = self.clock.now();
        let by_account = self
            .accounts
            .peek(&account_key(account), |f| f.locked(now))
            .unwrap_or(Ok(()));
        let by_address = self
            .addresses
            .peek(&address, |f| f.locked(now))
            .unwrap_or(Ok(()));
        match (by_account, by_address) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(d), Ok(())) | (Ok(()), Err(d)) => Err(d),
        }
    }

    /// Counts a failed login in this node's tables; answers which of the account and the
    /// address this failure just locked out (each once per run of failures).
    fn login_failed_here(&self, account: &str, address: IpAddr) -> (bool, bool) {
        let now = self.clock.now();
        let (account_policy, address_policy) =
            (self.limits.login_account, self.limits.login_address);
        let account = self
            .accounts
            .with(&account_key(account), now, Failures::fresh(), |f| {
                f.fail(account_policy, now)
            });
        let address = self.addresses.with(&address, now, Failures::fresh(), |f| {
            f.fail(address_policy, now)
        });
        (account, address)
    }

    /// Takes one password-reset request for `account` (as typed, existing or not) from
    /// `address`, or says how long until one would be taken. The address is charged first, so
    /// that one client cycling through names is stopped by its own quota.
    fn link_request_here(&self, account: &str, address: IpAddr) -> Result<(), Duration> {
        let now = self.clock.now();
        let (by_account, by_address) = (self.limits.link_account, self.limits.link_address);
        self.link_addresses
            .with(&address, now, Gcra { tat: now }, |g| {
                g.admit(by_address, now)
            })?;
        self.link_accounts
            .with(&account_key(account), now, Gcra { tat: now }, |g| {
                g.admit(by_account, now)
            })
    }

    fn login_succeeded_here(&self, account: &str) {
        self.accounts.remove(&account_key(account));
    }

    /// Whether a login for `account` from `address` may be tried now; otherwise how long the
    /// longer of the lockouts (the account's, the address's, here or shared) still runs.
    /// Check before verifying the password, so that a locked-out guesser costs no hashing.
    pub async fn login_allowed(&self, account: &str, address: IpAddr) -> Result<(), Duration> {
        self.login_allowed_here(account, address)?;
        if let Some(shared) = &self.shared
            && let Ok(Some(wait)) = shared
                .locked(vec![
                    shared_account_key(account),
                    shared_address_key(address),
                ])
                .await
        {
            return Err(wait);
        }
        Ok(())
    }

    /// Records a failed login (wrong password, unknown or disabled account); answers which of
    /// the account and the address this failure just locked out (each once per run of
    /// failures: the cluster's count when Redis answers, this node's otherwise).
    pub async fn login_failed(&self, account: &str, address: IpAddr) -> (bool, bool) {
        let here = self.login_failed_here(account, address);
        let Some(shared) = &self.shared else {
            return here;
        };
        let (by_account, by_address) = tokio::join!(
            shared.fail(shared_account_key(account), self.limits.login_account),
            shared.fail(shared_address_key(address), self.limits.login_address),
        );
        match (by_account, by_address) {
            (Ok(a), Ok(b)) => (a, b),
            _ => here,
        }
    }

    /// Takes one password-reset request for `account` (as typed, existing or not) from
    /// `address`, here and in the cluster's shared table, or says how long until one would
    /// be taken.
    pub async fn link_request(&self, account: &str, address: IpAddr) -> Result<(), Duration> {
        self.link_request_here(account, address)?;
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        if let Ok(Some(wait)) = shared
            .take(format!("link:addr:{address}"), self.limits.link_address)
            .await
        {
            return Err(wait);
        }
        if let Ok(Some(wait)) = shared
            .take(
                format!("link:acct:{}", account_key(account)),
                self.limits.link_account,
            )
            .await
        {
            return Err(wait);
        }
        Ok(())
    }

    /// Records a successful login: the account's failures are forgotten (the address's are
    /// not), here and in the cluster.
    pub async fn login_succeeded(&self, account: &str) {
        self.login_succeeded_here(account);
        if let Some(shared) = &self.shared {
            let _ = shared.clear(shared_account_key(account)).await;
        }
    }

    /// Keys held, per table (commands, accounts, addresses): for tests and metrics.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.commands.len(),
            self.accounts.len(),
            self.addresses.len(),
        )
    }
}

/// Account names are matched as typed, but case does not make a new key to guess with.
fn account_key(account: &str) -> String {
    account.to_lowercase()
}

fn shared_account_key(account: &str) -> String {
    format!("login:acct:{}", account_key(account))
}

fn shared_address_key(address: IpAddr) -> String {
    format!("login:addr:{address}")
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The HTTP answer for a refused request: 429 `rate_limited` with `Retry-After`.
pub fn rate_limited(wait: Duration, what: &'static str) -> crate::ApiError {
    let secs = retry_after_secs(wait);
    crate::ApiError::new(
        warp::http::StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many {what}; retry in {secs} s"),
    )
    .with_details(serde_json::json!({ "retry_after_s": secs }))
    .with_header(
        warp::http::header::RETRY_AFTER,
        warp::http::HeaderValue::from(secs),
    )
}

/// A poisoned lock only means another thread panicked mid-update of plain numbers; the
/// state is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rig(limits: Limits) -> (Arc<ManualClock>, RateLimits) {
        let clock = Arc::new(ManualClock::default());
        let limits = RateLimits::new(limits, clock.clone());
        (clock, limits)
    }

    fn gate(s: &str) -> GateId {
        GateId::new(s).unwrap()
    }

    const ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
    const OTHER_ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 8));

    #[test]
    fn commands_allow_a_burst_then_one_per_period_with_the_wait_until_the_next() {
        let (clock, limits) = rig(Limits::default());
        let g = gate("front");
        for i in 0..5 {
            assert_eq!(
                limits.command_here("user:a", &g),
                Ok(()),
                "burst command {i}"
            );
        }
        assert_eq!(
            limits.command_here("user:a", &g),
            Err(Duration::from_secs(2))
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(
            limits.command_here("user:a", &g),
            Err(Duration::from_millis(1500)),
            "a refused command does not push the next one back"
        );
        clock.advance(Duration::from_millis(1500));
        assert_eq!(limits.command_here("user:a", &g), Ok(()));
        assert!(limits.command_here("user:a", &g).is_err());
        clock.advance(Duration::from_secs(10));
        for _ in 0..5 {
            assert_eq!(
                limits.command_here("user:a", &g),
                Ok(()),
                "the burst refills"
            );
        }
        assert!(limits.command_here("user:a", &g).is_err());
    }

    #[tokio::test]
    async fn command_limits_are_per_caller_and_per_gate_and_stop_is_never_limited() {
        let (_clock, limits) = rig(Limits::default());
        let (front, back) = (gate("front"), gate("back"));
        for _ in 0..5 {
            limits.command_here("user:a", &front).unwrap();
        }
        assert!(limits.command_here("user:a", &front).is_err());
        assert_eq!(
            limits.command_here("user:b", &front),
            Ok(()),
            "another caller"
        );
        assert_eq!(limits.command_here("user:a", &back), Ok(()), "another gate");
        for _ in 0..20 {
            assert_eq!(
                limits
                    .admit_command("user:a", &front, Action::Stop, uuid::Uuid::new_v4())
                    .await,
                Ok(Admitted::New)
            );
        }
        assert!(
            limits
                .admit_command("user:a", &front, Action::Open, uuid::Uuid::new_v4())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_retried_command_id_is_not_counted_again_and_a_reused_one_conflicts() {
        let (_clock, limits) = rig(Limits::default());
        let (front, back) = (gate("front"), gate("back"));
        let first = uuid::Uuid::new_v4();
        assert_eq!(
            limits
                .admit_command("user:a", &front, Action::Open, first)
                .await,
            Ok(Admitted::New)
        );
        for _ in 0..4 {
            limits
                .admit_command("user:a", &front, Action::Open, uuid::Uuid::new_v4())
                .await
                .unwrap();
        }
        // The burst is spent: new ids wait, the first one's retries do not.
        assert!(
            limits
                .admit_command("user:a", &front, Action::Open, uuid::Uuid::new_v4())
                .await
                .is_err()
        );
        for _ in 0..10 {
            assert_eq!(
                limits
                    .admit_command("user:a", &front, Action::Open, first)
                    .await,
                Ok(Admitted::Retry)
            );
        }
        // The same id for another gate or another action is not the same command.
        assert_eq!(
            limits
                .admit_command("user:a", &back, Action::Open, first)
                .await,
            Ok(Admitted::Conflict)
        );
        assert_eq!(
            limits
                .admit_command("user:a", &front, Action::Close, first)
                .await,
            Ok(Admitted::Conflict)
        );
    }

    #[test]
    fn the_retry_memory_is_bounded_and_forgets_the_oldest_first() {
        let mut recent = RecentIds::default();
        let g = gate("front");
        let first = uuid::Uuid::new_v4();
        recent.insert(first, (g.clone(), Action::Open));
        for _ in 0..RecentIds::CAPACITY {
            recent.insert(uuid::Uuid::new_v4(), (g.clone(), Action::Open));
        }
        assert!(recent.get(&first).is_none());
        assert_eq!(recent.order.len(), RecentIds::CAPACITY);
        assert_eq!(recent.known.len(), RecentIds::CAPACITY);
    }

    #[test]
    fn login_failures_lock_the_account_after_the_free_ones_doubling_each_time() {
        let (clock, limits) = rig(Limits::default());
        for _ in 0..5 {
            assert_eq!(limits.login_allowed_here("alice", ADDR), Ok(()));
            assert_eq!(limits.login_failed_here("alice", ADDR), (false, false));
        }
        assert_eq!(
            limits.login_allowed_here("alice", ADDR),
            Ok(()),
            "five failures are free"
        );
        assert_eq!(
            limits.login_failed_here("alice", ADDR),
            (true, false),
            "the sixth locks the account, and says so once"
        );
        assert_eq!(
            limits.login_allowed_here("Alice", OTHER_ADDR),
            Err(Duration::from_secs(30)),
            "the account is locked from anywhere, whatever the case"
        );
        assert_eq!(
            limits.login_allowed_here("bob", ADDR),
            Ok(()),
            "others are not"
        );
        clock.advance(Duration::from_secs(30));
        assert_eq!(limits.login_allowed_here("alice", ADDR), Ok(()));
        assert_eq!(
            limits.login_failed_here("alice", ADDR),
            (false, false),
            "a longer lock of the same run is not news"
        );
        assert_eq!(
            limits.login_allowed_here("alice", ADDR),
            Err(Duration::from_secs(60))
        );
        for _ in 0..20 {
            clock.advance(Duration::from_secs(3600 - 1));
            limits.login_failed_here("alice", ADDR);
        }
        assert_eq!(
            limits.login_allowed_here("alice", OTHER_ADDR),
            Err(Duration::from_secs(15 * 60)),
            "the lockout is capped"
        );
    }

    #[test]
    fn a_success_clears_the_account_and_an_hour_without_failures_forgets_them() {
        let (clock, limits) = rig(Limits::default());
        for _ in 0..5 {
            limits.login_failed_here("alice", ADDR);
        }
        limits.login_succeeded_here("alice");
        limits.login_failed_here("alice", OTHER_ADDR);
        assert_eq!(limits.login_allowed_here("alice", OTHER_ADDR), Ok(()));

        for _ in 0..4 {
            limits.login_failed_here("carol", OTHER_ADDR);
        }
        clock.advance(Duration::from_secs(3600));
        limits.login_failed_here("carol", OTHER_ADDR);
        limits.login_failed_here("carol", OTHER_ADDR);
        assert_eq!(
            limits.login_allowed_here("carol", OTHER_ADDR),
            Ok(()),
            "the old failures were forgotten"
        );
    }

    #[test]
    fn an_address_guessing_many_accounts_is_locked_and_a_success_does_not_unlock_it() {
        let (_clock, limits) = rig(Limits::default());
        for i in 0..20 {
            limits.login_failed_here(&format!("user{i}"), ADDR);
            limits.login_succeeded_here("mallory");
        }
        assert_eq!(limits.login_allowed_here("someone", ADDR), Ok(()));
        limits.login_failed_here("user20", ADDR);
        assert_eq!(
            limits.login_allowed_here("someone", ADDR),
            Err(Duration::from_secs(30))
        );
        assert_eq!(limits.login_allowed_here("someone", OTHER_ADDR), Ok(()));
    }

    #[test]
    fn tables_stay_bounded_dropping_idle_keys_first() {
        let (clock, limits) = rig(Limits {
            max_keys: 3,
            ..Limits::default()
        });
        let g = gate("front");
        // "user:busy" uses its whole burst: it stays active for a while.
        for _ in 0..5 {
            limits.command_here("user:busy", &g).unwrap();
        }
        limits.command_here("user:a", &g).unwrap();
        limits.command_here("user:b", &g).unwrap();
        clock.advance(Duration::from_secs(3));
        for i in 0..10 {
            limits.command_here(&format!("user:new{i}"), &g).unwrap();
            assert!(limits.sizes().0 <= 3);
        }
        // The idle ones went first; the busy caller's state lasted until it had to go.
        clock.advance(Duration::from_secs(100));
        assert_eq!(limits.sizes().0, 3);
        limits.login_failed_here("x", ADDR);
        assert_eq!(limits.sizes(), (3, 1, 1));
    }

    #[test]
    fn a_full_table_keeps_a_busy_key_over_an_idle_one() {
        let (clock, limits) = rig(Limits {
            max_keys: 2,
            ..Limits::default()
        });
        let g = gate("front");
        for _ in 0..5 {
            limits.command_here("user:busy", &g).unwrap();
        }
        limits.command_here("user:idle", &g).unwrap();
        clock.advance(Duration::from_secs(2));
        limits.command_here("user:new", &g).unwrap();
        // Two seconds refilled one command; a forgotten caller would have its whole burst.
        assert_eq!(limits.command_here("user:busy", &g), Ok(()));
        assert!(
            limits.command_here("user:busy", &g).is_err(),
            "the busy caller was not forgotten"
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
