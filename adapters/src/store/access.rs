//! Users, refresh-token families, API keys, grants and the audit log: the `AccessStore` port
//! on both backends, with each query written once inside the dispatch macros of `mod.rs`.
//!
//! Identifiers are UUIDs stored as text, times are milliseconds in BIGINT columns, roles are
//! their names (keys of the `roles` table) and a grant's weekly windows are a JSON list in
//! its `windows` column. References (a grant's user, gate or site; an API key's site; a
//! family's user) are checked inside the writing transaction, so that a bad one is refused
//! with a message naming it rather than a bare constraint error; the foreign keys remain as
//! the backstop against a concurrent delete.
//!
//! The one operation with a race to win is presenting a refresh token. It runs in a write
//! transaction whose deciding step is a conditional update (`used_at IS NULL`). SQLite's
//! `BEGIN IMMEDIATE` serializes whole write transactions anyway; on PostgreSQL a second
//! transaction updating the same row waits for the first to commit and then re-checks the
//! condition, finding the token used. So two concurrent presentations cannot both rotate:
//! the loser sees a used token and revokes the family, as for any replayed token.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use gatehouse_actors::access::{
    AccessStore, AccountLink, ApiKeyRecord, AuditRecord, Grant, GrantScope, LinkPurpose,
    RefreshUse, Role, UserId, UserRecord, WeeklyWindow,
};
use gatehouse_actors::ids::{GateId, SiteId};
use gatehouse_actors::ports::BoxFuture;
use gatehouse_actors::store::StoreError;
use uuid::Uuid;

use super::Store;
use super::error::Error;
use super::fleet::{from_db, to_db};
use super::schema::{
    account_links, api_keys, audit_log, gates, grants, refresh_token_families, refresh_tokens,
    sites, users,
};

/// Inserts an unused token into a family (a macro for the reason given at [`require!`]).
macro_rules! insert_token {
    ($c:expr, id: $id:expr, family: $family:expr, hash: $hash:expr, now: $now:expr) => {
        diesel::insert_into(refresh_tokens::table)
            .values((
                refresh_tokens::id.eq($id),
                refresh_tokens::family_id.eq($family),
                refresh_tokens::hash.eq($hash),
                refresh_tokens::issued_at.eq($now),
            ))
            .execute($c)
            .await?
    };
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
#[diesel(treat_none_as_default_value = false)]
struct UserRow {
    id: String,
    username: String,
    password_hash: String,
    role: String,
    created_at: i64,
    disabled: bool,
    email: Option<String>,
}

// `treat_none_as_default_value = false`: a key without a site is written as NULL explicitly,
// the same statement shape on both backends whatever the column's default.
#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
#[diesel(treat_none_as_default_value = false)]
struct ApiKeyRow {
    id: String,
    name: String,
    hash: String,
    role: String,
    site_id: Option<String>,
    created_at: i64,
    revoked_at: Option<i64>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = grants)]
#[diesel(treat_none_as_default_value = false)]
struct GrantRow {
    id: String,
    user_id: String,
    gate_id: Option<String>,
    site_id: Option<String>,
    windows: String,
    created_at: i64,
}

/// An audit record to append: the id is the database's.
#[derive(Insertable)]
#[diesel(table_name = audit_log)]
#[diesel(treat_none_as_default_value = false)]
pub(super) struct NewAudit {
    at_ms: i64,
    actor: String,
    action: String,
    target: Option<String>,
    source_ip: Option<String>,
    details: String,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = audit_log)]
struct AuditRow {
    id: i64,
    at_ms: i64,
    actor: String,
    action: String,
    target: Option<String>,
    source_ip: Option<String>,
    details: String,
}

// ---- users ---------------------------------------------------------------------------------

async fn create_user(store: &Store, user: UserRecord) -> Result<(), Error> {
    let row = &UserRow::encode(user)?;
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        // Checked first so that the refusal says what is wrong; the UNIQUE constraint still
        // refuses a name taken by a concurrent insert, with the database's wording.
        let taken: Option<String> = users::table
            .filter(users::username.eq(&row.username))
            .select(users::id)
            .first(c)
            .await
            .optional()?;
        if taken.is_some() {
            return Err(Error::Rejected(format!(
                "username {:?} taken",
                row.username
            )));
        }
        diesel::insert_into(users::table)
            .values(row)
            .execute(c)
            .await?;
        Ok::<_, Error>(())
    })
}

async fn user_by_name(store: &Store, username: &str) -> Result<Option<UserRecord>, Error> {
    let mut conn = store.conn().await?;
    let row: Option<UserRow> = with_conn!(&mut conn, |c| {
        users::table
            .filter(users::username.eq(username))
            .select(UserRow::as_select())
            .first(c)
            .await
            .optional()
    })?;
    row.map(UserRow::decode).transpose()
}

async fn user(store: &Store, id: UserId) -> Result<Option<UserRecord>, Error> {
    let id = id.to_string();
    let mut conn = store.conn().await?;
    let row: Option<UserRow> = with_conn!(&mut conn, |c| {
        users::table
            .find(&id)
            .select(UserRow::as_select())
            .first(c)
            .await
            .optional()
    })?;
    row.map(UserRow::decode).transpose()
}

async fn all_users(store: &Store) -> Result<Vec<UserRecord>, Error> {
    let mut conn = store.conn().await?;
    let rows: Vec<UserRow> = with_conn!(&mut conn, |c| {
        users::table
            .select(UserRow::as_select())
            .order(users::username.asc())
            .load(c)
            .await
    })?;
    rows.into_iter().map(UserRow::decode).collect()
}

async fn update_user(store: &Store, user: UserRecord) -> Result<(), Error> {
    let row = &UserRow::encode(user)?;
    let mut conn = store.conn().await?;
    let updated = with_conn!(&mut conn, |c| {
        diesel::update(users::table.find(&row.id))
            .set((
                users::role.eq(&row.role),
                users::password_hash.eq(&row.password_hash),
                users::disabled.eq(row.disabled),
                users::email.eq(&row.email),
            ))
            .execute(c)
            .await
    })?;
    if updated == 0 {
        return Err(Error::Rejected(format!("no user {}", row.id)));
    }
    Ok(())
}

async fn delete_user(store: &Store, id: UserId) -> Result<bool, Error> {
    let id = id.to_string();
    let mut conn = store.conn().await?;
    // Grants and refresh-token families (and through them the tokens) go with the user:
    // ON DELETE CASCADE in both schemas.
    let removed = with_conn!(&mut conn, |c| {
        diesel::delete(users::table.find(&id)).execute(c).await
    })?;
    Ok(removed > 0)
}

impl UserRow {
    fn encode(user: UserRecord) -> Result<UserRow, Error> {
        let what = || format!("user {}: created_at_ms", user.username);
        Ok(UserRow {
            id: user.id.to_string(),
            created_at: to_db(user.created_at_ms, what)?,
            role: user.role.as_str().to_owned(),
            username: user.username,
            password_hash: user.password_hash,
            disabled: user.disabled,
            email: user.email,
        })
    }

    fn decode(self) -> Result<UserRecord, Error> {
        let what = |field: &str| format!("user {}: {field}", self.id);
        Ok(UserRecord {
            id: UserId(uuid_from_db(&self.id, "user")?),
            role: role_from_db(&self.role, || what("role"))?,
            created_at_ms: from_db(self.created_at, || what("created_at"))?,
            username: self.username,
            password_hash: self.password_hash,
            disabled: self.disabled,
            email: self.email,
        })
    }
}

// ---- refresh tokens ------------------------------------------------------------------------

async fn start_family(
    store: &Store,
    user: UserId,
    token_hash: String,
    now_ms: u64,
) -> Result<Uuid, Error> {
    let now = to_db(now_ms, || "refresh family: now_ms".into())?;
    let family = Uuid::new_v4();
    let (family_id, token_id, user_id) = (
        &family.to_string(),
        &Uuid::new_v4().to_string(),
        &user.to_string(),
    );
    let token_hash = &token_hash;
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        require!(
            c,
            users::table.find(user_id).select(users::id),
            format!("no user {user_id}")
        );
        diesel::insert_into(refresh_token_families::table)
            .values((
                refresh_token_families::id.eq(family_id),
                refresh_token_families::user_id.eq(user_id),
                refresh_token_families::created_at.eq(now),
            ))
            .execute(c)
            .await?;
        insert_token!(c, id: token_id, family: family_id, hash: token_hash, now: now);
        Ok::<_, Error>(())
    })?;
    Ok(family)
}

async fn use_refresh(store: &Store, token_hash: String, now_ms: u64) -> Result<RefreshUse, Error> {
    let now = to_db(now_ms, || "refresh use: now_ms".into())?;
    let token_hash = &token_hash;
    let mut conn = store.conn().await?;
    let outcome = write_tx!(&mut conn, |c| {
        let family: Option<String> = refresh_tokens::table
            .filter(refresh_tokens::hash.eq(token_hash))
            .select(refresh_tokens::family_id)
            .first(c)
            .await
            .optional()?;
        let Some(family) = family else {
            return Ok(None);
        };
        // Gone only if its user was deleted since the token was read (PostgreSQL reads
        // each statement afresh): as invalid as a revoked family.
        let owner: Option<(String, Option<i64>)> = refresh_token_families::table
            .find(&family)
            .select((
                refresh_token_families::user_id,
                refresh_token_families::revoked_at,
            ))
            .first(c)
            .await
            .optional()?;
        let Some((user, None)) = owner else {
            return Ok(None);
        };
        // The deciding step: only one transaction can move `used_at` off NULL.
        let claimed = diesel::update(
            refresh_tokens::table
                .filter(refresh_tokens::hash.eq(token_hash))
                .filter(refresh_tokens::used_at.is_null()),
        )
        .set(refresh_tokens::used_at.eq(now))
        .execute(c)
        .await?;
        if claimed == 1 {
            return Ok(Some((family, user, true)));
        }
        // Presented before: whoever holds it may be a thief, so every token of the family
        // stops working, the holder's newest one included.
        diesel::update(
            refresh_token_families::table
                .find(&family)
                .filter(refresh_token_families::revoked_at.is_null()),
        )
        .set(refresh_token_families::revoked_at.eq(now))
        .execute(c)
        .await?;
        Ok::<_, Error>(Some((family, user, false)))
    })?;
    let Some((family, user, rotated)) = outcome else {
        return Ok(RefreshUse::Invalid);
    };
    let family = uuid_from_db(&family, "refresh-token family")?;
    let user = UserId(uuid_from_db(&user, "user")?);
    Ok(if rotated {
        RefreshUse::Rotated { family, user }
    } else {
        RefreshUse::Reused { family, user }
    })
}

async fn add_refresh(
    store: &Store,
    family: Uuid,
    token_hash: String,
    now_ms: u64,
) -> Result<(), Error> {
    let now = to_db(now_ms, || "refresh token: now_ms".into())?;
    let (family_id, token_id) = (&family.to_string(), &Uuid::new_v4().to_string());
    let token_hash = &token_hash;
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        let revoked: Option<Option<i64>> = refresh_token_families::table
            .find(family_id)
            .select(refresh_token_families::revoked_at)
            .first(c)
            .await
            .optional()?;
        match revoked {
            None => {
                return Err(Error::Rejected(format!(
                    "no refresh-token family {family_id}"
                )));
            }
            // Revoked between the rotation and now (reuse, logout): a token issued into it
            // would never work, so the caller is told instead of handing one out.
            Some(Some(_)) => {
                return Err(Error::Rejected(format!(
                    "refresh-token family {family_id} is revoked"
                )));
            }
            Some(None) => {}
        }
        insert_token!(c, id: token_id, family: family_id, hash: token_hash, now: now);
        Ok::<_, Error>(())
    })
}

async fn revoke_family(store: &Store, family: Uuid, now_ms: u64) -> Result<(), Error> {
    let now = to_db(now_ms, || "refresh family: now_ms".into())?;
    let family = family.to_string();
    let mut conn = store.conn().await?;
    // `revoked_at IS NULL`: the first revocation's time is the one kept.
    with_conn!(&mut conn, |c| {
        diesel::update(
            refresh_token_families::table
                .find(&family)
                .filter(refresh_token_families::revoked_at.is_null()),
        )
        .set(refresh_token_families::revoked_at.eq(now))
        .execute(c)
        .await
    })?;
    Ok(())
}

async fn revoke_user_families(store: &Store, user: UserId, now_ms: u64) -> Result<(), Error> {
    let now = to_db(now_ms, || "refresh family: now_ms".into())?;
    let user = user.to_string();
    let mut conn = store.conn().await?;
    with_conn!(&mut conn, |c| {
        diesel::update(
            refresh_token_families::table
                .filter(refresh_token_families::user_id.eq(&user))
                .filter(refresh_token_families::revoked_at.is_null()),
        )
        .set(refresh_token_families::revoked_at.eq(now))
        .execute(c)
        .await
    })?;
    Ok(())
}

// ---- API keys ------------------------------------------------------------------------------

async fn create_api_key(store: &Store, key: ApiKeyRecord) -> Result<(), Error> {
    let row = &ApiKeyRow::encode(key)?;
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        if let Some(site) = &row.site_id {
            require!(
                c,
                sites::table.find(site).select(sites::id),
                format!("API key {}: unknown site {site}", row.name)
            );
        }
        diesel::insert_into(api_keys::table)
            .values(row)
            .execute(c)
            .await?;
        Ok::<_, Error>(())
    })
}

async fn api_key_by_hash(store: &Store, hash: &str) -> Result<Option<ApiKeyRecord>, Error> {
    let mut conn = store.conn().await?;
    let row: Option<ApiKeyRow> = with_conn!(&mut conn, |c| {
        api_keys::table
            .filter(api_keys::hash.eq(hash))
            .select(ApiKeyRow::as_select())
            .first(c)
            .await
            .optional()
    })?;
    row.map(ApiKeyRow::decode).transpose()
}

async fn api_keys(store: &Store) -> Result<Vec<ApiKeyRecord>, Error> {
    let mut conn = store.conn().await?;
    // Oldest first; the id breaks ties between keys made in the same millisecond.
    let rows: Vec<ApiKeyRow> = with_conn!(&mut conn, |c| {
        api_keys::table
            .select(ApiKeyRow::as_select())
            .order((api_keys::created_at.asc(), api_keys::id.asc()))
            .load(c)
            .await
    })?;
    rows.into_iter().map(ApiKeyRow::decode).collect()
}

async fn revoke_api_key(store: &Store, id: Uuid, now_ms: u64) -> Result<bool, Error> {
    let now = to_db(now_ms, || "API key: now_ms".into())?;
    let id = id.to_string();
    let mut conn = store.conn().await?;
    // A key revoked already keeps its first revocation time, and the answer says nothing
    // changed.
    let revoked = with_conn!(&mut conn, |c| {
        diesel::update(
            api_keys::table
                .find(&id)
                .filter(api_keys::revoked_at.is_null()),
        )
        .set(api_keys::revoked_at.eq(now))
        .execute(c)
        .await
    })?;
    Ok(revoked > 0)
}

impl ApiKeyRow {
    fn encode(key: ApiKeyRecord) -> Result<ApiKeyRow, Error> {
        let what = |field: &str| format!("API key {}: {field}", key.id);
        Ok(ApiKeyRow {
            id: key.id.to_string(),
            role: key.role.as_str().to_owned(),
            site_id: key.site.as_ref().map(|s| s.as_str().to_owned()),
            created_at: to_db(key.created_at_ms, || what("created_at_ms"))?,
            revoked_at: key
                .revoked_at_ms
                .map(|t| to_db(t, || what("revoked_at_ms")))
                .transpose()?,
            name: key.name,
            hash: key.hash,
        })
    }

    fn decode(self) -> Result<ApiKeyRecord, Error> {
        let what = |field: &str| format!("API key {}: {field}", self.id);
        Ok(ApiKeyRecord {
            id: uuid_from_db(&self.id, "API key")?,
            role: role_from_db(&self.role, || what("role"))?,
            site: self
                .site_id
                .as_deref()
                .map(|s| {
                    SiteId::new(s)
                        .map_err(|e| Error::Other(format!("{}: {s:?}: {e}", what("site_id"))))
                })
                .transpose()?,
            created_at_ms: from_db(self.created_at, || what("created_at"))?,
            revoked_at_ms: self
                .revoked_at
                .map(|t| from_db(t, || what("revoked_at")))
                .transpose()?,
            name: self.name,
            hash: self.hash,
        })
    }
}

// ---- grants --------------------------------------------------------------------------------

async fn create_grant(store: &Store, grant: Grant, now_ms: u64) -> Result<(), Error> {
    let row = &GrantRow::encode(grant, now_ms)?;
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        require!(
            c,
            users::table.find(&row.user_id).select(users::id),
            format!("grant {}: unknown user {}", row.id, row.user_id)
        );
        if let Some(gate) = &row.gate_id {
            require!(
                c,
                gates::table.find(gate).select(gates::id),
                format!("grant {}: unknown gate {gate}", row.id)
            );
        }
        if let Some(site) = &row.site_id {
            require!(
                c,
                sites::table.find(site).select(sites::id),
                format!("grant {}: unknown site {site}", row.id)
            );
        }
        diesel::insert_into(grants::table)
            .values(row)
            .execute(c)
            .await?;
        Ok::<_, Error>(())
    })
}

async fn grants_of(store: &Store, user: UserId) -> Result<Vec<Grant>, Error> {
    let user = user.to_string();
    let mut conn = store.conn().await?;
    let rows: Vec<GrantRow> = with_conn!(&mut conn, |c| {
        grants::table
            .filter(grants::user_id.eq(&user))
            .select(GrantRow::as_select())
            .order((grants::created_at.asc(), grants::id.asc()))
            .load(c)
            .await
    })?;
    rows.into_iter().map(GrantRow::decode).collect()
}

async fn delete_grant(store: &Store, id: Uuid) -> Result<bool, Error> {
    let id = id.to_string();
    let mut conn = store.conn().await?;
    let removed = with_conn!(&mut conn, |c| {
        diesel::delete(grants::table.find(&id)).execute(c).await
    })?;
    Ok(removed > 0)
}

impl GrantRow {
    fn encode(grant: Grant, now_ms: u64) -> Result<GrantRow, Error> {
        // The policy trusts stored windows; one that cannot match anything (or matches
        // nonsense) is refused here rather than silently granting nothing.
        for window in &grant.windows {
            window
                .validate()
                .map_err(|e| Error::Rejected(format!("grant {}: window: {e}", grant.id)))?;
        }
        let windows = serde_json::to_string(&grant.windows)
            .map_err(|e| Error::Other(format!("grant {}: windows: {e}", grant.id)))?;
        let (gate_id, site_id) = match &grant.scope {
            GrantScope::Gate(g) => (Some(g.as_str().to_owned()), None),
            GrantScope::Site(s) => (None, Some(s.as_str().to_owned())),
        };
        Ok(GrantRow {
            id: grant.id.to_string(),
            user_id: grant.user.to_string(),
            gate_id,
            site_id,
            windows,
            created_at: to_db(now_ms, || format!("grant {}: now_ms", grant.id))?,
        })
    }

    fn decode(self) -> Result<Grant, Error> {
        let what = |field: &str| format!("grant {}: {field}", self.id);
        let scope = match (&self.gate_id, &self.site_id) {
            (Some(g), None) => GrantScope::Gate(
                GateId::new(g)
                    .map_err(|e| Error::Other(format!("{}: {g:?}: {e}", what("gate_id"))))?,
            ),
            (None, Some(s)) => GrantScope::Site(
                SiteId::new(s)
                    .map_err(|e| Error::Other(format!("{}: {s:?}: {e}", what("site_id"))))?,
            ),
            _ => {
                return Err(Error::Other(what(
                    "must name exactly one of gate_id and site_id",
                )));
            }
        };
        let windows: Vec<WeeklyWindow> = serde_json::from_str(&self.windows)
            .map_err(|e| Error::Other(format!("{}: {e}", what("windows"))))?;
        Ok(Grant {
            id: uuid_from_db(&self.id, "grant")?,
            user: UserId(uuid_from_db(&self.user_id, "user")?),
            scope,
            windows,
        })
    }
}

// ---- account links -------------------------------------------------------------------------

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = account_links)]
#[diesel(treat_none_as_default_value = false)]
struct LinkRow {
    id: String,
    user_id: String,
    purpose: String,
    digest: String,
    created_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
}

impl LinkRow {
    fn encode(link: AccountLink) -> Result<LinkRow, Error> {
        let what = |field: &str| format!("account link {}: {field}", link.id);
        Ok(LinkRow {
            id: link.id.to_string(),
            user_id: link.user.to_string(),
            purpose: link.purpose.as_str().to_owned(),
            created_at: to_db(link.created_at_ms, || what("created_at_ms"))?,
            expires_at: to_db(link.expires_at_ms, || what("expires_at_ms"))?,
            used_at: link
                .used_at_ms
                .map(|t| to_db(t, || what("used_at_ms")))
                .transpose()?,
            digest: link.digest,
        })
    }

    fn decode(self) -> Result<AccountLink, Error> {
        let what = |field: &str| format!("account link {}: {field}", self.id);
        Ok(AccountLink {
            id: uuid_from_db(&self.id, "account link")?,
            user: UserId(uuid_from_db(&self.user_id, "user")?),
            purpose: LinkPurpose::parse(&self.purpose)
                .ok_or_else(|| Error::Other(format!("{}: unknown purpose", what("purpose"))))?,
            created_at_ms: from_db(self.created_at, || what("created_at"))?,
            expires_at_ms: from_db(self.expires_at, || what("expires_at"))?,
            used_at_ms: self
                .used_at
                .map(|t| from_db(t, || what("used_at")))
                .transpose()?,
            digest: self.digest,
        })
    }
}

async fn issue_link(store: &Store, link: AccountLink) -> Result<(), Error> {
    let row = &LinkRow::encode(link)?;
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        require!(
            c,
            users::table.find(&row.user_id).select(users::id),
            format!("account link: unknown user {}", row.user_id)
        );
        // Only the newest mail works: an older link of the same purpose counts as used.
        diesel::update(
            account_links::table
                .filter(account_links::user_id.eq(&row.user_id))
                .filter(account_links::purpose.eq(&row.purpose))
                .filter(account_links::used_at.is_null()),
        )
        .set(account_links::used_at.eq(row.created_at))
        .execute(c)
        .await?;
        diesel::insert_into(account_links::table)
            .values(row)
            .execute(c)
            .await?;
        Ok::<_, Error>(())
    })
}

async fn link(store: &Store, digest: String) -> Result<Option<(AccountLink, UserRecord)>, Error> {
    let mut conn = store.conn().await?;
    let found: Option<(LinkRow, Option<UserRow>)> = with_conn!(&mut conn, |c| {
        let link: Option<LinkRow> = account_links::table
            .filter(account_links::digest.eq(&digest))
            .select(LinkRow::as_select())
            .first(c)
            .await
            .optional()?;
        match link {
            None => Ok::<_, diesel::result::Error>(None),
            Some(link) => {
                let user: Option<UserRow> = users::table
                    .find(&link.user_id)
                    .select(UserRow::as_select())
                    .first(c)
                    .await
                    .optional()?;
                Ok(Some((link, user)))
            }
        }
    })?;
    match found {
        // The user was deleted between the two reads: the link went with it.
        None | Some((_, None)) => Ok(None),
        Some((link, Some(user))) => Ok(Some((link.decode()?, user.decode()?))),
    }
}

async fn redeem_link(
    store: &Store,
    digest: String,
    password_hash: String,
    now_ms: u64,
) -> Result<Option<UserRecord>, Error> {
    let now = to_db(now_ms, || "account link: now_ms".into())?;
    let (digest, password_hash) = (&digest, &password_hash);
    let mut conn = store.conn().await?;
    let user: Option<UserRow> = write_tx!(&mut conn, |c| {
        let owner: Option<String> = account_links::table
            .filter(account_links::digest.eq(digest))
            .filter(account_links::used_at.is_null())
            .filter(account_links::expires_at.gt(now))
            .select(account_links::user_id)
            .first(c)
            .await
            .optional()?;
        let Some(owner) = owner else {
            return Ok(None);
        };
        let enabled = users::table
            .find(&owner)
            .filter(users::disabled.eq(false))
            .select(users::id)
            .first::<String>(c)
            .await
            .optional()?;
        if enabled.is_none() {
            return Ok(None);
        }
        // The deciding step, as for refresh tokens: one transaction moves `used_at` off NULL.
        let claimed = diesel::update(
            account_links::table
                .filter(account_links::digest.eq(digest))
                .filter(account_links::used_at.is_null()),
        )
        .set(account_links::used_at.eq(now))
        .execute(c)
        .await?;
        if claimed != 1 {
            return Ok(None);
        }
        diesel::update(users::table.find(&owner))
            .set(users::password_hash.eq(password_hash))
            .execute(c)
            .await?;
        // Whoever knew the old password is out, on every device.
        diesel::update(
            refresh_token_families::table
                .filter(refresh_token_families::user_id.eq(&owner))
                .filter(refresh_token_families::revoked_at.is_null()),
        )
        .set(refresh_token_families::revoked_at.eq(now))
        .execute(c)
        .await?;
        let user: UserRow = users::table
            .find(&owner)
            .select(UserRow::as_select())
            .first(c)
            .await?;
        Ok::<_, Error>(Some(user))
    })?;
    user.map(UserRow::decode).transpose()
}

// ---- audit ---------------------------------------------------------------------------------

/// An audit record as a row (NULLs written as NULL, so that rows batch on SQLite too).
pub(super) fn audit_row(record: AuditRecord) -> Result<NewAudit, Error> {
    Ok(NewAudit {
        at_ms: to_db(record.at_ms, || "audit record: at_ms".into())?,
        actor: record.actor,
        action: record.action,
        target: record.target,
        source_ip: record.source_ip,
        details: record.details,
    })
}

async fn append_audit(store: &Store, record: AuditRecord) -> Result<(), Error> {
    let row = &audit_row(record)?;
    let mut conn = store.conn().await?;
    with_conn!(&mut conn, |c| {
        diesel::insert_into(audit_log::table)
            .values(row)
            .execute(c)
            .await
    })?;
    Ok(())
}

async fn audit_after(
    store: &Store,
    after: i64,
    limit: u32,
) -> Result<Vec<(i64, AuditRecord)>, Error> {
    let mut conn = store.conn().await?;
    let rows: Vec<AuditRow> = with_conn!(&mut conn, |c| {
        audit_log::table
            .filter(audit_log::id.gt(after))
            .order(audit_log::id.asc())
            .limit(i64::from(limit))
            .select(AuditRow::as_select())
            .load(c)
            .await
    })?;
    rows.into_iter()
        .map(|row| {
            let at_ms = from_db(row.at_ms, || format!("audit record {}: at_ms", row.id))?;
            Ok((
                row.id,
                AuditRecord {
                    at_ms,
                    actor: row.actor,
                    action: row.action,
                    target: row.target,
                    source_ip: row.source_ip,
                    details: row.details,
                },
            ))
        })
        .collect()
}

// ---- helpers -------------------------------------------------------------------------------

pub(super) fn uuid_from_db(raw: &str, kind: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(raw)
        .map_err(|e| Error::Other(format!("stored {kind} id {raw:?} is not a UUID: {e}")))
}

fn role_from_db(raw: &str, what: impl Fn() -> String) -> Result<Role, Error> {
    raw.parse()
        .map_err(|e: String| Error::Other(format!("{}: {e}", what())))
}

// ---- the port ------------------------------------------------------------------------------

impl AccessStore for Store {
    fn create_user(&self, user: UserRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { create_user(self, user).await.map_err(Error::into_store) })
    }

    fn user_by_name(
        &self,
        username: String,
    ) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>> {
        Box::pin(async move {
            user_by_name(self, &username)
                .await
                .map_err(Error::into_store)
        })
    }

    fn user(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>> {
        Box::pin(async move { user(self, id).await.map_err(Error::into_store) })
    }

    fn users(&self) -> BoxFuture<'_, Result<Vec<UserRecord>, StoreError>> {
        Box::pin(async move { all_users(self).await.map_err(Error::into_store) })
    }

    fn update_user(&self, user: UserRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { update_user(self, user).await.map_err(Error::into_store) })
    }

    fn delete_user(&self, id: UserId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { delete_user(self, id).await.map_err(Error::into_store) })
    }

    fn start_family(
        &self,
        user: UserId,
        token_hash: String,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Uuid, StoreError>> {
        Box::pin(async move {
            start_family(self, user, token_hash, now_ms)
                .await
                .map_err(Error::into_store)
        })
    }

    fn use_refresh(
        &self,
        token_hash: String,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<RefreshUse, StoreError>> {
        Box::pin(async move {
            use_refresh(self, token_hash, now_ms)
                .await
                .map_err(Error::into_store)
        })
    }

    fn add_refresh(
        &self,
        family: Uuid,
        token_hash: String,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            add_refresh(self, family, token_hash, now_ms)
                .await
                .map_err(Error::into_store)
        })
    }

    fn revoke_family(&self, family: Uuid, now_ms: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            revoke_family(self, family, now_ms)
                .await
                .map_err(Error::into_store)
        })
    }

    fn revoke_user_families(
        &self,
        user: UserId,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            revoke_user_families(self, user, now_ms)
                .await
                .map_err(Error::into_store)
        })
    }

    fn create_api_key(&self, key: ApiKeyRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { create_api_key(self, key).await.map_err(Error::into_store) })
    }

    fn api_key_by_hash(
        &self,
        hash: String,
    ) -> BoxFuture<'_, Result<Option<ApiKeyRecord>, StoreError>> {
        Box::pin(async move {
            api_key_by_hash(self, &hash)
                .await
                .map_err(Error::into_store)
        })
    }

    fn api_keys(&self) -> BoxFuture<'_, Result<Vec<ApiKeyRecord>, StoreError>> {
        Box::pin(async move { api_keys(self).await.map_err(Error::into_store) })
    }

    fn revoke_api_key(&self, id: Uuid, now_ms: u64) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            revoke_api_key(self, id, now_ms)
                .await
                .map_err(Error::into_store)
        })
    }

    fn create_grant(&self, grant: Grant, now_ms: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            create_grant(self, grant, now_ms)
                .await
                .map_err(Error::into_store)
        })
    }

    fn grants_of(&self, user: UserId) -> BoxFuture<'_, Result<Vec<Grant>, StoreError>> {
        Box::pin(async move { grants_of(self, user).await.map_err(Error::into_store) })
    }

    fn delete_grant(&self, id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { delete_grant(self, id).await.map_err(Error::into_store) })
    }

    fn issue_link(&self, link: AccountLink) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { issue_link(self, link).await.map_err(Error::into_store) })
    }

    fn link(
        &self,
        digest: String,
    ) -> BoxFuture<'_, Result<Option<(AccountLink, UserRecord)>, StoreError>> {
        Box::pin(async move { link(self, digest).await.map_err(Error::into_store) })
    }

    fn redeem_link(
        &self,
        digest: String,
        password_hash: String,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>> {
        Box::pin(async move {
            redeem_link(self, digest, password_hash, now_ms)
                .await
                .map_err(Error::into_store)
        })
    }

    fn audit(&self, record: AuditRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { append_audit(self, record).await.map_err(Error::into_store) })
    }

    fn audit_after(
        &self,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<(i64, AuditRecord)>, StoreError>> {
        Box::pin(async move {
            audit_after(self, after, limit)
                .await
                .map_err(Error::into_store)
        })
    }
}
