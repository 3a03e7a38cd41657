//! Who may do what: roles, per-gate and per-site grants with weekly time windows, the
//! authorization policy (a pure function), and the store port for users, credentials, API
//! keys, grants and the audit log. Hashing, tokens and HTTP live in `api/`; SQL in `adapters/`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::gate::Action;
use crate::ids::{GateId, SiteId};
use crate::ports::BoxFuture;
use crate::store::StoreError;

/// A user's or API key's role (CONTRACTS.md "Roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Operator,
    Resident,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Resident, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Resident => "resident",
            Role::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (admin, operator, resident, viewer)"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user id (UUID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub uuid::Uuid);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A time of the week in a site's time zone: 0 = Monday, minutes since midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    pub weekday: u8,
    pub minute: u16,
}

impl LocalTime {
    /// The time to pass when the decision does not depend on it (everything but a
    /// resident's command): no site's clock needs reading.
    pub const IRRELEVANT: LocalTime = LocalTime {
        weekday: 0,
        minute: 0,
    };
}

/// A weekly window: on `days` (bit 0 = Monday … bit 6 = Sunday), from `start` to `end`
/// minutes after midnight, local time. `end` ≤ `start` runs past midnight into the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeeklyWindow {
    pub days: u8,
    pub start: u16,
    pub end: u16,
}

impl WeeklyWindow {
    pub const MINUTES_PER_DAY: u16 = 24 * 60;

    pub fn validate(&self) -> Result<(), String> {
        if self.days == 0 || self.days > 0x7f {
            return Err("days must name at least one day (bits 0..=6, Monday first)".into());
        }
        if self.start >= Self::MINUTES_PER_DAY || self.end > Self::MINUTES_PER_DAY {
            return Err("start and end are minutes after midnight (0..1440)".into());
        }
        Ok(())
    }

    fn day(&self, weekday: u8) -> bool {
        self.days & (1 << (weekday % 7)) != 0
    }

    pub fn contains(&self, t: LocalTime) -> bool {
        if self.start < self.end {
            self.day(t.weekday) && (self.start..self.end).contains(&t.minute)
        } else {
            // Past midnight: the evening part belongs to the listed day, the early part to
            // the day after it.
            let yesterday = (t.weekday + 6) % 7;
            (self.day(t.weekday) && t.minute >= self.start)
                || (self.day(yesterday) && t.minute < self.end)
        }
    }
}

/// What a grant covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantScope {
    Gate(GateId),
    Site(SiteId),
}

/// A resident's access to a gate or a whole site, optionally limited to weekly windows
/// (none = always).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: uuid::Uuid,
    pub user: UserId,
    pub scope: GrantScope,
    pub windows: Vec<WeeklyWindow>,
}

impl Grant {
    pub fn covers(&self, gate: &GateId, site: &SiteId) -> bool {
        match &self.scope {
            GrantScope::Gate(g) => g == gate,
            GrantScope::Site(s) => s == site,
        }
    }

    pub fn open_at(&self, t: LocalTime) -> bool {
        self.windows.is_empty() || self.windows.iter().any(|w| w.contains(t))
    }
}

/// What someone wants to do, for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Read state, subscribe, read events.
    Read,
    /// A gate command.
    Command(Action),
    /// Audit log, actor tree, metrics JSON.
    Operate,
    /// Sites, controllers, gates, profiles; users, grants, API keys.
    Administer,
    /// Maintenance plans and records: write.
    Maintain,
    /// Maintenance plans and records: read.
    ReadMaintenance,
}

/// Why an operation is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The role never may.
    Role,
    /// A resident without a grant for the gate.
    NoGrant,
    /// A resident whose grants do not cover this time of the week.
    OutsideWindow,
    /// An API key scoped to another site.
    OtherSite,
}

/// Who is asking: a user's role and grants, or an API key's role and optional site.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub role: Role,
    /// For residents: their grants (other roles ignore them).
    pub grants: Vec<Grant>,
    /// An API key limited to one site.
    pub site: Option<SiteId>,
}

/// The policy of CONTRACTS.md "Roles", for operations on `gate` of `site` (use the site alone
/// and any gate for site-wide operations). `at` is the local time at the site.
pub fn authorize(
    who: &Principal,
    op: Operation,
    gate: Option<(&GateId, &SiteId)>,
    at: LocalTime,
) -> Result<(), Denial> {
    match (&who.site, gate) {
        (Some(limit), Some((_, site))) if limit != site => return Err(Denial::OtherSite),
        // A key limited to one site never acts fleet-wide (administration, the audit log,
        // maintenance across sites); fleet-wide reads are filtered gate by gate.
        (Some(_), None) if op != Operation::Read => return Err(Denial::OtherSite),
        _ => {}
    }
    let command_class = |a: Action| match a {
        Action::Lockout | Action::Unlock | Action::Reset => 2,
        _ => 1,
    };
    match (who.role, op) {
        (Role::Admin, _) => Ok(()),
        (Role::Operator, Operation::Administer) => Err(Denial::Role),
        (Role::Operator, _) => Ok(()),
        (Role::Viewer, Operation::Read | Operation::ReadMaintenance) => Ok(()),
        (Role::Viewer, _) => Err(Denial::Role),
        (Role::Resident, Operation::Read) => resident_grant(who, gate, None),
        (Role::Resident, Operation::Command(a)) if command_class(a) == 1 => {
            resident_grant(who, gate, Some(at))
        }
        (Role::Resident, _) => Err(Denial::Role),
    }
}

fn resident_grant(
    who: &Principal,
    gate: Option<(&GateId, &SiteId)>,
    at: Option<LocalTime>,
) -> Result<(), Denial> {
    let Some((gate, site)) = gate else {
        return Err(Denial::NoGrant);
    };
    let mut covering = who
        .grants
        .iter()
        .filter(|g| g.covers(gate, site))
        .peekable();
    if covering.peek().is_none() {
        return Err(Denial::NoGrant);
    }
    match at {
        None => Ok(()),
        Some(t) if covering.any(|g| g.open_at(t)) => Ok(()),
        Some(_) => Err(Denial::OutsideWindow),
    }
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    /// PHC string (argon2id).
    pub password_hash: String,
    pub role: Role,
    pub created_at_ms: u64,
    pub disabled: bool,
    /// Where notifications reach this user (checked by `notify::validate_address`).
    pub email: Option<String>,
}

/// The password hash of a user who has not chosen a password yet (invited): no PHC string,
/// so nothing verifies against it.
pub const NO_PASSWORD: &str = "!";

impl UserRecord {
    /// Whether the user has a password (an invited user has none until the link is used).
    pub fn password_set(&self) -> bool {
        self.password_hash != NO_PASSWORD
    }
}

/// An API key as stored: only a hash of the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: uuid::Uuid,
    pub name: String,
    pub hash: String,
    pub role: Role,
    pub site: Option<SiteId>,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// The token was current: it is now used, and the caller may issue the next one in
    /// `family`.
    Rotated { family: uuid::Uuid, user: UserId },
    /// The token had been used before: its whole family is now revoked.
    Reused { family: uuid::Uuid, user: UserId },
    /// Unknown, or its family was revoked (logout, reuse).
    Invalid,
}

/// One audit record: who did what, when, from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at_ms: u64,
    /// `user:<uuid>`, `key:<uuid>` or `system`.
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub source_ip: Option<String>,
    /// JSON object.
    pub details: String,
}

/// What an emailed account link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkPurpose {
    /// A new user chooses a first password.
    Invitation,
    /// A user who forgot the password chooses a new one.
    PasswordReset,
}

impl LinkPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkPurpose::Invitation => "invitation",
            LinkPurpose::PasswordReset => "password_reset",
        }
    }

    pub fn parse(s: &str) -> Option<LinkPurpose> {
        match s {
            "invitation" => Some(LinkPurpose::Invitation),
            "password_reset" => Some(LinkPurpose::PasswordReset),
            _ => None,
        }
    }

    /// How long a link stays good: an invitation waits for someone to read the mail; a reset
    /// link is a password in transit and lives an hour.
    pub fn lifetime_ms(self) -> u64 {
        match self {
            LinkPurpose::Invitation => 7 * 24 * 3600 * 1000,
            LinkPurpose::PasswordReset => 3600 * 1000,
        }
    }
}

/// An emailed one-time link that lets its holder set a user's password. Only a digest of its
/// secret is stored, like refresh tokens and API keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountLink {
    pub id: uuid::Uuid,
    pub user: UserId,
    pub purpose: LinkPurpose,
    pub digest: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// Used, or replaced by a newer link of the same purpose.
    pub used_at_ms: Option<u64>,
}

impl AccountLink {
    /// Whether the link can still be used at `now_ms`.
    pub fn usable(&self, now_ms: u64) -> bool {
        self.used_at_ms.is_none() && now_ms < self.expires_at_ms
    }
}

/// Users, credentials, grants and the audit log.
pub trait AccessStore: Send + Sync + 'static {
    fn create_user(&self, user: UserRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    fn user_by_name(
        &self,
        username: String,
    ) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>>;
    fn user(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>>;
    fn users(&self) -> BoxFuture<'_, Result<Vec<UserRecord>, StoreError>>;
    /// Replaces role, password hash and disabled flag (the username and id are fixed).
    fn update_user(&self, user: UserRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    fn delete_user(&self, id: UserId) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Starts a refresh-token family for `user` with its first token (by hash).
    fn start_family(
        &self,
        user: UserId,
        token_hash: String,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<uuid::Uuid, StoreError>>;
    /// Presents a refresh token (by hash): see [`RefreshUse`]. Atomic: two concurrent uses of
    /// one token cannot both rotate.
    fn use_refresh(
        &self,
        token_hash: String,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<RefreshUse, StoreError>>;
    /// Adds the next token to a family (after `Rotated`).
    fn add_refresh(
        &self,
        family: uuid::Uuid,
        token_hash: String,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    fn revoke_family(
        &self,
        family: uuid::Uuid,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Revokes every family of a user (password change, disable).
    fn revoke_user_families(
        &self,
        user: UserId,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    fn create_api_key(&self, key: ApiKeyRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    fn api_key_by_hash(
        &self,
        hash: String,
    ) -> BoxFuture<'_, Result<Option<ApiKeyRecord>, StoreError>>;
    fn api_keys(&self) -> BoxFuture<'_, Result<Vec<ApiKeyRecord>, StoreError>>;
    fn revoke_api_key(
        &self,
        id: uuid::Uuid,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    fn create_grant(&self, grant: Grant, now_ms: u64) -> BoxFuture<'_, Result<(), StoreError>>;
    fn grants_of(&self, user: UserId) -> BoxFuture<'_, Result<Vec<Grant>, StoreError>>;
    fn delete_grant(&self, id: uuid::Uuid) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Stores a new account link; the user's earlier unused links of the same purpose stop
    /// working in the same transaction (only the newest mail works). `Rejected` when the user
    /// does not exist.
    fn issue_link(&self, link: AccountLink) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The link with this digest and its user, whatever its state.
    fn link(
        &self,
        digest: String,
    ) -> BoxFuture<'_, Result<Option<(AccountLink, UserRecord)>, StoreError>>;
    /// Uses the link with this digest if it is usable at `now_ms` and its user is enabled: in
    /// one transaction, marks it used, sets the user's password hash and ends every session of
    /// the user. Answers the user as it now is, or `None` (unknown, used, replaced, expired,
    /// or the user is disabled); two concurrent uses cannot both succeed.
    fn redeem_link(
        &self,
        digest: String,
        password_hash: String,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>>;

    fn audit(&self, record: AuditRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Audit records with id `> after`, oldest first, at most `limit`; with their ids.
    fn audit_after(
        &self,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<(i64, AuditRecord)>, StoreError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(weekday: u8, hour: u16, minute: u16) -> LocalTime {
        LocalTime {
            weekday,
            minute: hour * 60 + minute,
        }
    }

    fn gate() -> (GateId, SiteId) {
        (GateId::new("service").unwrap(), SiteId::new("hq").unwrap())
    }

    fn resident(windows: Vec<WeeklyWindow>) -> Principal {
        let (g, _) = gate();
        Principal {
            role: Role::Resident,
            grants: vec![Grant {
                id: uuid::Uuid::new_v4(),
                user: UserId(uuid::Uuid::new_v4()),
                scope: GrantScope::Gate(g),
                windows,
            }],
            site: None,
        }
    }

    /// Weekdays 06:00–09:00: the cleaner of the issue.
    const WEEKDAY_MORNINGS: WeeklyWindow = WeeklyWindow {
        days: 0b001_1111,
        start: 6 * 60,
        end: 9 * 60,
    };

    #[test]
    fn a_weekday_morning_window_opens_on_weekday_mornings_only() {
        assert!(WEEKDAY_MORNINGS.contains(at(0, 6, 0)));
        assert!(WEEKDAY_MORNINGS.contains(at(4, 8, 59)));
        assert!(!WEEKDAY_MORNINGS.contains(at(4, 9, 0)));
        assert!(!WEEKDAY_MORNINGS.contains(at(5, 7, 0)), "Saturday");
        assert!(!WEEKDAY_MORNINGS.contains(at(2, 5, 59)));
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        let friday_night = WeeklyWindow {
            days: 1 << 4,
            start: 22 * 60,
            end: 2 * 60,
        };
        assert!(friday_night.contains(at(4, 23, 0)));
        assert!(friday_night.contains(at(5, 1, 59)), "early Saturday");
        assert!(
            !friday_night.contains(at(4, 1, 0)),
            "early Friday is Thursday night's"
        );
        assert!(!friday_night.contains(at(5, 23, 0)));
    }

    #[test]
    fn residents_need_a_grant_and_its_window_for_commands_but_not_its_window_to_read() {
        let (g, s) = gate();
        let who = resident(vec![WEEKDAY_MORNINGS]);
        let open = Operation::Command(Action::Open);
        assert_eq!(authorize(&who, open, Some((&g, &s)), at(1, 7, 0)), Ok(()));
        assert_eq!(
            authorize(&who, open, Some((&g, &s)), at(1, 12, 0)),
            Err(Denial::OutsideWindow)
        );
        assert_eq!(
            authorize(&who, Operation::Read, Some((&g, &s)), at(1, 12, 0)),
            Ok(())
        );
        let other = GateId::new("front").unwrap();
        assert_eq!(
            authorize(&who, open, Some((&other, &s)), at(1, 7, 0)),
            Err(Denial::NoGrant)
        );
        assert_eq!(
            authorize(
                &who,
                Operation::Command(Action::Lockout),
                Some((&g, &s)),
                at(1, 7, 0)
            ),
            Err(Denial::Role)
        );
    }

    #[test]
    fn the_role_matrix_follows_the_contract() {
        let (g, s) = gate();
        let t = at(0, 12, 0);
        let ops = [
            Operation::Read,
            Operation::Command(Action::Open),
            Operation::Command(Action::Reset),
            Operation::Operate,
            Operation::Administer,
            Operation::Maintain,
            Operation::ReadMaintenance,
        ];
        // Rows: admin, operator, viewer (residents are covered above).
        let expected = [
            (Role::Admin, [true, true, true, true, true, true, true]),
            (Role::Operator, [true, true, true, true, false, true, true]),
            (
                Role::Viewer,
                [true, false, false, false, false, false, true],
            ),
        ];
        for (role, row) in expected {
            let who = Principal {
                role,
                grants: Vec::new(),
                site: None,
            };
            for (op, want) in ops.iter().zip(row) {
                assert_eq!(
                    authorize(&who, *op, Some((&g, &s)), t).is_ok(),
                    want,
                    "{role} {op:?}"
                );
            }
        }
    }

    #[test]
    fn an_api_key_scoped_to_a_site_never_acts_fleet_wide() {
        let key = Principal {
            role: Role::Admin,
            grants: Vec::new(),
            site: Some(SiteId::new("north").unwrap()),
        };
        let t = at(0, 12, 0);
        for op in [
            Operation::Administer,
            Operation::Operate,
            Operation::Maintain,
            Operation::ReadMaintenance,
        ] {
            assert_eq!(
                authorize(&key, op, None, t),
                Err(Denial::OtherSite),
                "{op:?}"
            );
        }
        assert_eq!(authorize(&key, Operation::Read, None, t), Ok(()));
        let unlimited = Principal { site: None, ..key };
        assert_eq!(
            authorize(&unlimited, Operation::Administer, None, t),
            Ok(())
        );
    }

    #[test]
    fn an_api_key_scoped_to_a_site_is_refused_elsewhere() {
        let (g, s) = gate();
        let key = Principal {
            role: Role::Operator,
            grants: Vec::new(),
            site: Some(SiteId::new("elsewhere").unwrap()),
        };
        assert_eq!(
            authorize(&key, Operation::Read, Some((&g, &s)), at(0, 0, 0)),
            Err(Denial::OtherSite)
        );
    }
}
