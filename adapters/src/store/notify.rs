//! Notification rules and the mail outbox: the `NotifyStore` port on both backends.
//!
//! The outbox is the durable half of email: a message is a row from the moment it is queued,
//! so SMTP being down or the process restarting delays it and loses nothing. Queueing checks
//! the dedupe window inside the same write transaction as the insert (SQLite's `BEGIN
//! IMMEDIATE` serializes writers; on PostgreSQL the notifier is the only writer of new rows,
//! one batch at a time), so one flapping gate yields one row per recipient per window.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use gatehouse_actors::access::{Role, UserId};
use gatehouse_actors::ids::SiteId;
use gatehouse_actors::notify::{Mail, MailQuery, MailStatus, NotifyStore, Rule, Trigger};
use gatehouse_actors::ports::BoxFuture;
use gatehouse_actors::store::StoreError;
use uuid::Uuid;

use super::Store;
use super::access::uuid_from_db;
use super::error::Error;
use super::fleet::{from_db, to_db};
use super::schema::{mail_outbox, notification_rules, sites, users};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = notification_rules)]
#[diesel(treat_none_as_default_value = false, treat_none_as_null = true)]
struct RuleRow {
    id: String,
    trigger_kind: String,
    site_id: Option<String>,
    after_s: i64,
    user_ids: String,
    roles: String,
    created_at: i64,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = mail_outbox)]
#[diesel(treat_none_as_default_value = false)]
struct MailRow {
    id: String,
    dedupe_key: String,
    recipient: String,
    subject: String,
    body_text: String,
    body_html: String,
    created_at: i64,
    status: String,
    attempts: i64,
    next_attempt_at: i64,
    sent_at: Option<i64>,
    last_error: Option<String>,
}

// ---- rules ---------------------------------------------------------------------------------

async fn rules(store: &Store) -> Result<Vec<Rule>, Error> {
    let mut conn = store.conn().await?;
    let rows: Vec<RuleRow> = with_conn!(&mut conn, |c| {
        notification_rules::table
            .select(RuleRow::as_select())
            .order((
                notification_rules::created_at.asc(),
                notification_rules::id.asc(),
            ))
            .load(c)
            .await
    })?;
    rows.into_iter().map(RuleRow::decode).collect()
}

async fn put_rule(store: &Store, rule: Rule) -> Result<(), Error> {
    let row = &RuleRow::encode(&rule)?;
    let user_ids: Vec<String> = rule.users.iter().map(|u| u.to_string()).collect();
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        if let Some(site) = &row.site_id {
            require!(
                c,
                sites::table.find(site).select(sites::id),
                format!("rule {}: unknown site {site}", row.id)
            );
        }
        for user in &user_ids {
            require!(
                c,
                users::table.find(user).select(users::id),
                format!("rule {}: unknown user {user}", row.id)
            );
        }
        let updated = diesel::update(notification_rules::table.find(&row.id))
            .set(row)
            .execute(c)
            .await?;
        if updated == 0 {
            diesel::insert_into(notification_rules::table)
                .values(row)
                .execute(c)
                .await?;
        }
        Ok::<_, Error>(())
    })
}

async fn delete_rule(store: &Store, id: Uuid) -> Result<bool, Error> {
    let id = id.to_string();
    let mut conn = store.conn().await?;
    let removed = with_conn!(&mut conn, |c| {
        diesel::delete(notification_rules::table.find(&id))
            .execute(c)
            .await
    })?;
    Ok(removed > 0)
}

impl RuleRow {
    fn encode(rule: &Rule) -> Result<RuleRow, Error> {
        let what = |field: &str| format!("rule {}: {field}", rule.id);
        let roles: Vec<&str> = rule.roles.iter().map(|r| r.as_str()).collect();
        Ok(RuleRow {
            id: rule.id.to_string(),
            trigger_kind: rule.trigger.as_str().to_owned(),
            site_id: rule.site.as_ref().map(|s| s.as_str().to_owned()),
            after_s: to_db(rule.after_s, || what("after_s"))?,
            user_ids: serde_json::to_string(&rule.users)
                .map_err(|e| Error::Other(format!("{}: {e}", what("users"))))?,
            roles: serde_json::to_string(&roles)
                .map_err(|e| Error::Other(format!("{}: {e}", what("roles"))))?,
            created_at: to_db(rule.created_at_ms, || what("created_at_ms"))?,
        })
    }

    fn decode(self) -> Result<Rule, Error> {
        let what = |field: &str| format!("rule {}: {field}", self.id);
        let roles: Vec<String> = serde_json::from_str(&self.roles)
            .map_err(|e| Error::Other(format!("{}: {e}", what("roles"))))?;
        Ok(Rule {
            id: uuid_from_db(&self.id, "rule")?,
            trigger: Trigger::parse(&self.trigger_kind).ok_or_else(|| {
                Error::Other(format!("{}: {:?}", what("trigger"), self.trigger_kind))
            })?,
            site: self
                .site_id
                .as_deref()
                .map(|s| {
                    SiteId::new(s).map_err(|e| Error::Other(format!("{}: {e}", what("site_id"))))
                })
                .transpose()?,
            after_s: from_db(self.after_s, || what("after_s"))?,
            users: serde_json::from_str::<Vec<UserId>>(&self.user_ids)
                .map_err(|e| Error::Other(format!("{}: {e}", what("user_ids"))))?,
            roles: roles
                .iter()
                .map(|r| {
                    r.parse::<Role>()
                        .map_err(|e| Error::Other(format!("{}: {e}", what("roles"))))
                })
                .collect::<Result<_, _>>()?,
            created_at_ms: from_db(self.created_at, || what("created_at"))?,
        })
    }
}

// ---- outbox --------------------------------------------------------------------------------

async fn enqueue(
    store: &Store,
    mails: Vec<Mail>,
    window_ms: u64,
    now_ms: u64,
) -> Result<usize, Error> {
    let rows: Vec<MailRow> = mails
        .iter()
        .map(MailRow::encode)
        .collect::<Result<_, _>>()?;
    let since = to_db(now_ms.saturating_sub(window_ms), || "outbox: window".into())?;
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        let mut queued = 0;
        for row in &rows {
            let recent: Option<String> = mail_outbox::table
                .filter(mail_outbox::dedupe_key.eq(&row.dedupe_key))
                .filter(mail_outbox::recipient.eq(&row.recipient))
                .filter(mail_outbox::created_at.gt(since))
                .select(mail_outbox::id)
                .first(c)
                .await
                .optional()?;
            if recent.is_some() {
                continue;
            }
            diesel::insert_into(mail_outbox::table)
                .values(row)
                .execute(c)
                .await?;
            queued += 1;
        }
        Ok::<_, Error>(queued)
    })
}

async fn due(store: &Store, now_ms: u64, limit: usize) -> Result<Vec<Mail>, Error> {
    let now = to_db(now_ms, || "outbox: now".into())?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut conn = store.conn().await?;
    let rows: Vec<MailRow> = with_conn!(&mut conn, |c| {
        mail_outbox::table
            .filter(mail_outbox::status.eq(MailStatus::Pending.as_str()))
            .filter(mail_outbox::next_attempt_at.le(now))
            .order((mail_outbox::next_attempt_at.asc(), mail_outbox::id.asc()))
            .limit(limit)
            .select(MailRow::as_select())
            .load(c)
            .await
    })?;
    rows.into_iter().map(MailRow::decode).collect()
}

async fn claim(store: &Store, id: Uuid, now_ms: u64, until_ms: u64) -> Result<bool, Error> {
    let now = to_db(now_ms, || "outbox claim: now".into())?;
    let until = to_db(until_ms, || "outbox claim: until".into())?;
    let id = id.to_string();
    let mut conn = store.conn().await?;
    // One conditional update: of two notifiers claiming at once, the second finds the next
    // attempt moved past `now` (on PostgreSQL it waits for the first's commit and re-checks).
    let claimed = with_conn!(&mut conn, |c| {
        diesel::update(
            mail_outbox::table
                .find(&id)
                .filter(mail_outbox::status.eq(MailStatus::Pending.as_str()))
                .filter(mail_outbox::next_attempt_at.le(now)),
        )
        .set(mail_outbox::next_attempt_at.eq(until))
        .execute(c)
        .await
    })?;
    Ok(claimed == 1)
}

async fn attempted(store: &Store, mail: Mail) -> Result<(), Error> {
    let row = &MailRow::encode(&mail)?;
    let mut conn = store.conn().await?;
    with_conn!(&mut conn, |c| {
        diesel::update(mail_outbox::table.find(&row.id))
            .set((
                mail_outbox::status.eq(&row.status),
                mail_outbox::attempts.eq(row.attempts),
                mail_outbox::next_attempt_at.eq(row.next_attempt_at),
                mail_outbox::sent_at.eq(row.sent_at),
                mail_outbox::last_error.eq(&row.last_error),
            ))
            .execute(c)
            .await
    })?;
    Ok(())
}

async fn mails(store: &Store, query: MailQuery) -> Result<Vec<Mail>, Error> {
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    let status = query.status.map(MailStatus::as_str);
    let before = query.before.map(|id| id.to_string());
    let mut conn = store.conn().await?;
    let rows: Vec<MailRow> = read_tx!(&mut conn, |c| {
        let mut q = mail_outbox::table.select(MailRow::as_select()).into_boxed();
        if let Some(status) = status {
            q = q.filter(mail_outbox::status.eq(status));
        }
        if let Some(before) = &before {
            let at: Option<i64> = mail_outbox::table
                .find(before)
                .select(mail_outbox::created_at)
                .first(c)
                .await
                .optional()?;
            let Some(at) = at else {
                return Err(Error::Rejected(format!("no message {before}")));
            };
            q = q.filter(
                mail_outbox::created_at.lt(at).or(mail_outbox::created_at
                    .eq(at)
                    .and(mail_outbox::id.lt(before))),
            );
        }
        q.order((mail_outbox::created_at.desc(), mail_outbox::id.desc()))
            .limit(limit)
            .load(c)
            .await
            .map_err(Error::from)
    })?;
    rows.into_iter().map(MailRow::decode).collect()
}

async fn pending(store: &Store) -> Result<u64, Error> {
    let mut conn = store.conn().await?;
    let n: i64 = with_conn!(&mut conn, |c| {
        mail_outbox::table
            .filter(mail_outbox::status.eq(MailStatus::Pending.as_str()))
            .count()
            .get_result(c)
            .await
    })?;
    Ok(n.max(0) as u64)
}

impl MailRow {
    fn encode(m: &Mail) -> Result<MailRow, Error> {
        let what = |field: &str| format!("message {}: {field}", m.id);
        Ok(MailRow {
            id: m.id.to_string(),
            dedupe_key: m.dedupe_key.clone(),
            recipient: m.recipient.clone(),
            subject: m.subject.clone(),
            body_text: m.text.clone(),
            body_html: m.html.clone(),
            created_at: to_db(m.created_at_ms, || what("created_at_ms"))?,
            status: m.status.as_str().to_owned(),
            attempts: i64::from(m.attempts),
            next_attempt_at: to_db(m.next_attempt_at_ms, || what("next_attempt_at_ms"))?,
            sent_at: m
                .sent_at_ms
                .map(|t| to_db(t, || what("sent_at_ms")))
                .transpose()?,
            last_error: m.last_error.clone(),
        })
    }

    fn decode(self) -> Result<Mail, Error> {
        let what = |field: &str| format!("message {}: {field}", self.id);
        Ok(Mail {
            id: uuid_from_db(&self.id, "message")?,
            status: MailStatus::parse(&self.status)
                .ok_or_else(|| Error::Other(format!("{}: {:?}", what("status"), self.status)))?,
            attempts: u32::try_from(self.attempts).map_err(|_| Error::Other(what("attempts")))?,
            created_at_ms: from_db(self.created_at, || what("created_at"))?,
            next_attempt_at_ms: from_db(self.next_attempt_at, || what("next_attempt_at"))?,
            sent_at_ms: self
                .sent_at
                .map(|t| from_db(t, || what("sent_at")))
                .transpose()?,
            dedupe_key: self.dedupe_key,
            recipient: self.recipient,
            subject: self.subject,
            text: self.body_text,
            html: self.body_html,
            last_error: self.last_error,
        })
    }
}

// ---- the port ------------------------------------------------------------------------------

impl NotifyStore for Store {
    fn rules(&self) -> BoxFuture<'_, Result<Vec<Rule>, StoreError>> {
        Box::pin(async move { rules(self).await.map_err(Error::into_store) })
    }

    fn put_rule(&self, rule: Rule) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { put_rule(self, rule).await.map_err(Error::into_store) })
    }

    fn delete_rule(&self, id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { delete_rule(self, id).await.map_err(Error::into_store) })
    }

    fn enqueue(
        &self,
        mails: Vec<Mail>,
        window_ms: u64,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            enqueue(self, mails, window_ms, now_ms)
                .await
                .map_err(Error::into_store)
        })
    }

    fn due(&self, now_ms: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Mail>, StoreError>> {
        Box::pin(async move { due(self, now_ms, limit).await.map_err(Error::into_store) })
    }

    fn claim(
        &self,
        id: Uuid,
        now_ms: u64,
        until_ms: u64,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            claim(self, id, now_ms, until_ms)
                .await
                .map_err(Error::into_store)
        })
    }

    fn attempted(&self, mail: Mail) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { attempted(self, mail).await.map_err(Error::into_store) })
    }

    fn mails(&self, query: MailQuery) -> BoxFuture<'_, Result<Vec<Mail>, StoreError>> {
        Box::pin(async move { mails(self, query).await.map_err(Error::into_store) })
    }

    fn pending(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move { pending(self).await.map_err(Error::into_store) })
    }
}
