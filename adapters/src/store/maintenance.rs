//! Maintenance plans, each gate's progress against them, and maintenance records: the
//! `MaintenanceStore` port on both backends, each query written once inside the dispatch
//! macros of `mod.rs`.
//!
//! A completed record restarts its plan's progress for its gate in the same transaction as
//! the record, so that a crash between the two cannot leave a service recorded and its plan
//! still overdue. Completing an open record is a conditional update (`status = 'open'`): of
//! two concurrent completions exactly one wins, the other is refused.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use gatehouse_actors::ids::{GateId, SiteId};
use gatehouse_actors::maintenance::{
    Attachment, Level, MAX_ATTACHMENTS, MaintenanceStore, Plan, PlanScope, Progress, Record,
    RecordQuery, RecordStatus, Work,
};
use gatehouse_actors::ports::BoxFuture;
use gatehouse_actors::store::StoreError;
use uuid::Uuid;

use super::Store;
use super::access::uuid_from_db;
use super::error::Error;
use super::fleet::{from_db, to_db};
use super::schema::{gates, maintenance_plans, maintenance_progress, maintenance_records, sites};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = maintenance_plans)]
#[diesel(treat_none_as_default_value = false, treat_none_as_null = true)]
struct PlanRow {
    id: String,
    gate_id: Option<String>,
    site_id: Option<String>,
    title: String,
    every_cycles: Option<i64>,
    every_days: Option<i64>,
    warn_cycles: i64,
    warn_days: i64,
    created_at: i64,
    updated_at: i64,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = maintenance_progress)]
#[diesel(treat_none_as_default_value = false)]
struct ProgressRow {
    plan_id: String,
    gate_id: String,
    since_ms: i64,
    since_cycles: Option<i64>,
    announced: String,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = maintenance_records)]
#[diesel(treat_none_as_default_value = false)]
struct RecordRow {
    id: String,
    gate_id: String,
    site_id: String,
    plan_id: Option<String>,
    status: String,
    opened_at: i64,
    opened_by: String,
    lockout: bool,
    completed_at: Option<i64>,
    completed_by: Option<String>,
    cycles_at: Option<i64>,
    summary: String,
    parts: String,
    notes: String,
    attachments: String,
}

// ---- plans ---------------------------------------------------------------------------------

async fn plans(store: &Store) -> Result<Vec<Plan>, Error> {
    let mut conn = store.conn().await?;
    let rows: Vec<PlanRow> = with_conn!(&mut conn, |c| {
        maintenance_plans::table
            .select(PlanRow::as_select())
            .order((
                maintenance_plans::created_at.asc(),
                maintenance_plans::id.asc(),
            ))
            .load(c)
            .await
    })?;
    rows.into_iter().map(PlanRow::decode).collect()
}

async fn put_plan(store: &Store, plan: Plan) -> Result<(), Error> {
    let row = &PlanRow::encode(&plan)?;
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        if let Some(gate) = &row.gate_id {
            require!(
                c,
                gates::table.find(gate).select(gates::id),
                format!("plan {}: unknown gate {gate}", row.id)
            );
        }
        if let Some(site) = &row.site_id {
            require!(
                c,
                sites::table.find(site).select(sites::id),
                format!("plan {}: unknown site {site}", row.id)
            );
        }
        let updated = diesel::update(maintenance_plans::table.find(&row.id))
            .set(row)
            .execute(c)
            .await?;
        if updated == 0 {
            diesel::insert_into(maintenance_plans::table)
                .values(row)
                .execute(c)
                .await?;
        }
        Ok::<_, Error>(())
    })
}

async fn delete_plan(store: &Store, id: Uuid) -> Result<bool, Error> {
    let id = id.to_string();
    let mut conn = store.conn().await?;
    // The foreign keys would do the same; spelled out so that nothing depends on SQLite's
    // foreign-key pragma being on.
    write_tx!(&mut conn, |c| {
        diesel::update(maintenance_records::table.filter(maintenance_records::plan_id.eq(&id)))
            .set(maintenance_records::plan_id.eq(None::<String>))
            .execute(c)
            .await?;
        diesel::delete(maintenance_progress::table.filter(maintenance_progress::plan_id.eq(&id)))
            .execute(c)
            .await?;
        let removed = diesel::delete(maintenance_plans::table.find(&id))
            .execute(c)
            .await?;
        Ok::<_, Error>(removed > 0)
    })
}

impl PlanRow {
    fn encode(plan: &Plan) -> Result<PlanRow, Error> {
        let what = |field: &str| format!("plan {}: {field}", plan.id);
        let (gate_id, site_id) = match &plan.scope {
            PlanScope::Gate(g) => (Some(g.as_str().to_owned()), None),
            PlanScope::Site(s) => (None, Some(s.as_str().to_owned())),
        };
        Ok(PlanRow {
            id: plan.id.to_string(),
            gate_id,
            site_id,
            title: plan.title.clone(),
            every_cycles: plan
                .every_cycles
                .map(|n| to_db(n, || what("every_cycles")))
                .transpose()?,
            every_days: plan.every_days.map(i64::from),
            warn_cycles: to_db(plan.warn_cycles, || what("warn_cycles"))?,
            warn_days: i64::from(plan.warn_days),
            created_at: to_db(plan.created_at_ms, || what("created_at_ms"))?,
            updated_at: to_db(plan.updated_at_ms, || what("updated_at_ms"))?,
        })
    }

    fn decode(self) -> Result<Plan, Error> {
        let what = |field: &str| format!("plan {}: {field}", self.id);
        let days = |v: i64, field: &str| {
            u32::try_from(v).map_err(|_| Error::Other(format!("{}: {v}", what(field))))
        };
        let scope = match (&self.gate_id, &self.site_id) {
            (Some(g), None) => PlanScope::Gate(
                GateId::new(g).map_err(|e| Error::Other(format!("{}: {e}", what("gate_id"))))?,
            ),
            (None, Some(s)) => PlanScope::Site(
                SiteId::new(s).map_err(|e| Error::Other(format!("{}: {e}", what("site_id"))))?,
            ),
            _ => return Err(Error::Other(what("names both or neither gate and site"))),
        };
        Ok(Plan {
            id: uuid_from_db(&self.id, "plan")?,
            scope,
            every_cycles: self
                .every_cycles
                .map(|v| from_db(v, || what("every_cycles")))
                .transpose()?,
            every_days: self.every_days.map(|v| days(v, "every_days")).transpose()?,
            warn_cycles: from_db(self.warn_cycles, || what("warn_cycles"))?,
            warn_days: days(self.warn_days, "warn_days")?,
            created_at_ms: from_db(self.created_at, || what("created_at"))?,
            updated_at_ms: from_db(self.updated_at, || what("updated_at"))?,
            title: self.title,
        })
    }
}

// ---- progress ------------------------------------------------------------------------------

async fn progress(store: &Store) -> Result<Vec<Progress>, Error> {
    let mut conn = store.conn().await?;
    let rows: Vec<ProgressRow> = with_conn!(&mut conn, |c| {
        maintenance_progress::table
            .select(ProgressRow::as_select())
            .load(c)
            .await
    })?;
    rows.into_iter().map(ProgressRow::decode).collect()
}

async fn start_progress(store: &Store, progress: Progress) -> Result<(), Error> {
    let row = &ProgressRow::encode(&progress)?;
    let mut conn = store.conn().await?;
    with_conn!(&mut conn, |c| {
        diesel::insert_into(maintenance_progress::table)
            .values(row)
            .on_conflict_do_nothing()
            .execute(c)
            .await
    })?;
    Ok(())
}

async fn first_cycles(store: &Store, plan: Uuid, gate: GateId, cycles: u64) -> Result<(), Error> {
    let plan = plan.to_string();
    let cycles = to_db(cycles, || {
        format!("progress of {gate} on plan {plan}: cycles")
    })?;
    let mut conn = store.conn().await?;
    with_conn!(&mut conn, |c| {
        diesel::update(
            maintenance_progress::table
                .filter(maintenance_progress::plan_id.eq(&plan))
                .filter(maintenance_progress::gate_id.eq(gate.as_str()))
                .filter(maintenance_progress::since_cycles.is_null()),
        )
        .set(maintenance_progress::since_cycles.eq(cycles))
        .execute(c)
        .await
    })?;
    Ok(())
}

async fn announced(store: &Store, plan: Uuid, gate: GateId, level: Level) -> Result<(), Error> {
    let plan = plan.to_string();
    // Only ever raised: the levels below `level`, as stored.
    let below: &[&str] = match level {
        Level::Ok => &[],
        Level::Due => &["ok"],
        Level::Overdue => &["ok", "due"],
    };
    let mut conn = store.conn().await?;
    with_conn!(&mut conn, |c| {
        diesel::update(
            maintenance_progress::table
                .filter(maintenance_progress::plan_id.eq(&plan))
                .filter(maintenance_progress::gate_id.eq(gate.as_str()))
                .filter(maintenance_progress::announced.eq_any(below)),
        )
        .set(maintenance_progress::announced.eq(level.as_str()))
        .execute(c)
        .await
    })?;
    Ok(())
}

impl ProgressRow {
    fn encode(p: &Progress) -> Result<ProgressRow, Error> {
        let what = |field: &str| format!("progress of {} on plan {}: {field}", p.gate, p.plan);
        Ok(ProgressRow {
            plan_id: p.plan.to_string(),
            gate_id: p.gate.as_str().to_owned(),
            since_ms: to_db(p.since_ms, || what("since_ms"))?,
            since_cycles: p
                .since_cycles
                .map(|n| to_db(n, || what("since_cycles")))
                .transpose()?,
            announced: p.announced.as_str().to_owned(),
        })
    }

    fn decode(self) -> Result<Progress, Error> {
        let what = |field: &str| {
            format!(
                "progress of {} on plan {}: {field}",
                self.gate_id, self.plan_id
            )
        };
        Ok(Progress {
            plan: uuid_from_db(&self.plan_id, "plan")?,
            gate: GateId::new(&self.gate_id)
                .map_err(|e| Error::Other(format!("{}: {e}", what("gate_id"))))?,
            since_ms: from_db(self.since_ms, || what("since_ms"))?,
            since_cycles: self
                .since_cycles
                .map(|v| from_db(v, || what("since_cycles")))
                .transpose()?,
            announced: Level::parse(&self.announced).ok_or_else(|| {
                Error::Other(format!("{}: {:?}", what("announced"), self.announced))
            })?,
        })
    }
}

// ---- records -------------------------------------------------------------------------------

async fn records(store: &Store, query: RecordQuery) -> Result<Vec<Record>, Error> {
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    let gate = query.gate.as_ref().map(|g| g.as_str().to_owned());
    let site = query.site.as_ref().map(|s| s.as_str().to_owned());
    let status = query.status.map(RecordStatus::as_str);
    let before = query.before.map(|id| id.to_string());
    let mut conn = store.conn().await?;
    let rows: Vec<RecordRow> = read_tx!(&mut conn, |c| {
        let mut q = maintenance_records::table
            .select(RecordRow::as_select())
            .into_boxed();
        if let Some(gate) = &gate {
            q = q.filter(maintenance_records::gate_id.eq(gate));
        }
        if let Some(site) = &site {
            q = q.filter(maintenance_records::site_id.eq(site));
        }
        if let Some(status) = status {
            q = q.filter(maintenance_records::status.eq(status));
        }
        if let Some(before) = &before {
            let at: Option<i64> = maintenance_records::table
                .find(before)
                .select(maintenance_records::opened_at)
                .first(c)
                .await
                .optional()?;
            let Some(at) = at else {
                return Err(Error::Rejected(format!("no maintenance record {before}")));
            };
            q = q.filter(
                maintenance_records::opened_at
                    .lt(at)
                    .or(maintenance_records::opened_at
                        .eq(at)
                        .and(maintenance_records::id.lt(before))),
            );
        }
        q.order((
            maintenance_records::opened_at.desc(),
            maintenance_records::id.desc(),
        ))
        .limit(limit)
        .load(c)
        .await
        .map_err(Error::from)
    })?;
    rows.into_iter().map(RecordRow::decode).collect()
}

async fn record(store: &Store, id: Uuid) -> Result<Option<Record>, Error> {
    let id = id.to_string();
    let mut conn = store.conn().await?;
    let row: Option<RecordRow> = with_conn!(&mut conn, |c| {
        maintenance_records::table
            .find(&id)
            .select(RecordRow::as_select())
            .first(c)
            .await
            .optional()
    })?;
    row.map(RecordRow::decode).transpose()
}

/// Restarts the progress of the record's gate against its plan from the record's completion
/// (nothing when the plan or the gate has gone since: records outlive both). A macro for
/// the reason given at `require!`.
macro_rules! restart_progress {
    ($c:expr, $row:expr) => {
        if let (Some(plan), Some(at)) = (&$row.plan_id, $row.completed_at) {
            let plan_there = maintenance_plans::table
                .find(plan)
                .select(maintenance_plans::id)
                .first::<String>($c)
                .await
                .optional()?
                .is_some();
            let gate_there = gates::table
                .find(&$row.gate_id)
                .select(gates::id)
                .first::<String>($c)
                .await
                .optional()?
                .is_some();
            if plan_there && gate_there {
                diesel::delete(
                    maintenance_progress::table
                        .filter(maintenance_progress::plan_id.eq(plan))
                        .filter(maintenance_progress::gate_id.eq(&$row.gate_id)),
                )
                .execute($c)
                .await?;
                diesel::insert_into(maintenance_progress::table)
                    .values(&ProgressRow {
                        plan_id: plan.clone(),
                        gate_id: $row.gate_id.clone(),
                        since_ms: at,
                        since_cycles: $row.cycles_at,
                        announced: Level::Ok.as_str().to_owned(),
                    })
                    .execute($c)
                    .await?;
            }
        }
    };
}

async fn insert_record(store: &Store, record: Record) -> Result<(), Error> {
    let row = &RecordRow::encode(&record)?;
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        if let Some(plan) = &row.plan_id {
            require!(
                c,
                maintenance_plans::table
                    .find(plan)
                    .select(maintenance_plans::id),
                format!("maintenance record {}: unknown plan {plan}", row.id)
            );
        }
        diesel::insert_into(maintenance_records::table)
            .values(row)
            .execute(c)
            .await?;
        restart_progress!(c, row);
        Ok::<_, Error>(())
    })
}

async fn complete_record(store: &Store, record: Record) -> Result<(), Error> {
    let row = &RecordRow::encode(&record)?;
    if row.completed_at.is_none() {
        return Err(Error::Other(format!(
            "maintenance record {}: completing it needs a completion time",
            row.id
        )));
    }
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        let done = diesel::update(
            maintenance_records::table
                .find(&row.id)
                .filter(maintenance_records::status.eq(RecordStatus::Open.as_str())),
        )
        .set((
            maintenance_records::status.eq(&row.status),
            maintenance_records::completed_at.eq(row.completed_at),
            maintenance_records::completed_by.eq(&row.completed_by),
            maintenance_records::cycles_at.eq(row.cycles_at),
            maintenance_records::summary.eq(&row.summary),
            maintenance_records::parts.eq(&row.parts),
            maintenance_records::notes.eq(&row.notes),
        ))
        .execute(c)
        .await?;
        if done == 0 {
            return Err(Error::Rejected(format!(
                "maintenance record {} is not open",
                row.id
            )));
        }
        restart_progress!(c, row);
        Ok::<_, Error>(())
    })
}

async fn add_attachment(store: &Store, record: Uuid, attachment: Attachment) -> Result<(), Error> {
    let id = record.to_string();
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        let current: Option<String> = maintenance_records::table
            .find(&id)
            .select(maintenance_records::attachments)
            .first(c)
            .await
            .optional()?;
        let Some(current) = current else {
            return Err(Error::Rejected(format!("no maintenance record {id}")));
        };
        let mut list: Vec<Attachment> = serde_json::from_str(&current)
            .map_err(|e| Error::Other(format!("maintenance record {id}: attachments: {e}")))?;
        if list.len() >= MAX_ATTACHMENTS {
            return Err(Error::Rejected(format!(
                "maintenance record {id} holds {MAX_ATTACHMENTS} attachments already"
            )));
        }
        list.push(attachment.clone());
        let text = serde_json::to_string(&list)
            .map_err(|e| Error::Other(format!("maintenance record {id}: attachments: {e}")))?;
        diesel::update(maintenance_records::table.find(&id))
            .set(maintenance_records::attachments.eq(text))
            .execute(c)
            .await?;
        Ok::<_, Error>(())
    })
}

impl RecordRow {
    fn encode(r: &Record) -> Result<RecordRow, Error> {
        let what = |field: &str| format!("maintenance record {}: {field}", r.id);
        Ok(RecordRow {
            id: r.id.to_string(),
            gate_id: r.gate.as_str().to_owned(),
            site_id: r.site.as_str().to_owned(),
            plan_id: r.plan.map(|p| p.to_string()),
            status: r.status.as_str().to_owned(),
            opened_at: to_db(r.opened_at_ms, || what("opened_at_ms"))?,
            opened_by: r.opened_by.clone(),
            lockout: r.lockout,
            completed_at: r
                .completed_at_ms
                .map(|t| to_db(t, || what("completed_at_ms")))
                .transpose()?,
            completed_by: r.completed_by.clone(),
            cycles_at: r
                .cycles_at
                .map(|n| to_db(n, || what("cycles_at")))
                .transpose()?,
            summary: r.work.summary.clone(),
            parts: serde_json::to_string(&r.work.parts)
                .map_err(|e| Error::Other(format!("{}: {e}", what("parts"))))?,
            notes: r.work.notes.clone(),
            attachments: serde_json::to_string(&r.attachments)
                .map_err(|e| Error::Other(format!("{}: {e}", what("attachments"))))?,
        })
    }

    fn decode(self) -> Result<Record, Error> {
        let what = |field: &str| format!("maintenance record {}: {field}", self.id);
        Ok(Record {
            id: uuid_from_db(&self.id, "maintenance record")?,
            gate: GateId::new(&self.gate_id)
                .map_err(|e| Error::Other(format!("{}: {e}", what("gate_id"))))?,
            site: SiteId::new(&self.site_id)
                .map_err(|e| Error::Other(format!("{}: {e}", what("site_id"))))?,
            plan: self
                .plan_id
                .as_deref()
                .map(|p| uuid_from_db(p, "plan"))
                .transpose()?,
            status: RecordStatus::parse(&self.status)
                .ok_or_else(|| Error::Other(format!("{}: {:?}", what("status"), self.status)))?,
            opened_at_ms: from_db(self.opened_at, || what("opened_at"))?,
            lockout: self.lockout,
            completed_at_ms: self
                .completed_at
                .map(|t| from_db(t, || what("completed_at")))
                .transpose()?,
            cycles_at: self
                .cycles_at
                .map(|v| from_db(v, || what("cycles_at")))
                .transpose()?,
            work: Work {
                summary: self.summary,
                parts: serde_json::from_str(&self.parts)
                    .map_err(|e| Error::Other(format!("{}: {e}", what("parts"))))?,
                notes: self.notes,
            },
            attachments: serde_json::from_str(&self.attachments)
                .map_err(|e| Error::Other(format!("{}: {e}", what("attachments"))))?,
            opened_by: self.opened_by,
            completed_by: self.completed_by,
        })
    }
}

// ---- the port ------------------------------------------------------------------------------

impl MaintenanceStore for Store {
    fn plans(&self) -> BoxFuture<'_, Result<Vec<Plan>, StoreError>> {
        Box::pin(async move { plans(self).await.map_err(Error::into_store) })
    }

    fn put_plan(&self, plan: Plan) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { put_plan(self, plan).await.map_err(Error::into_store) })
    }

    fn delete_plan(&self, id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { delete_plan(self, id).await.map_err(Error::into_store) })
    }

    fn progress(&self) -> BoxFuture<'_, Result<Vec<Progress>, StoreError>> {
        Box::pin(async move { progress(self).await.map_err(Error::into_store) })
    }

    fn start_progress(&self, p: Progress) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { start_progress(self, p).await.map_err(Error::into_store) })
    }

    fn first_cycles(
        &self,
        plan: Uuid,
        gate: GateId,
        cycles: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            first_cycles(self, plan, gate, cycles)
                .await
                .map_err(Error::into_store)
        })
    }

    fn announced(
        &self,
        plan: Uuid,
        gate: GateId,
        level: Level,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            announced(self, plan, gate, level)
                .await
                .map_err(Error::into_store)
        })
    }

    fn records(&self, query: RecordQuery) -> BoxFuture<'_, Result<Vec<Record>, StoreError>> {
        Box::pin(async move { records(self, query).await.map_err(Error::into_store) })
    }

    fn record(&self, id: Uuid) -> BoxFuture<'_, Result<Option<Record>, StoreError>> {
        Box::pin(async move { record(self, id).await.map_err(Error::into_store) })
    }

    fn insert_record(&self, r: Record) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { insert_record(self, r).await.map_err(Error::into_store) })
    }

    fn complete_record(&self, r: Record) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { complete_record(self, r).await.map_err(Error::into_store) })
    }

    fn add_attachment(
        &self,
        record: Uuid,
        attachment: Attachment,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            add_attachment(self, record, attachment)
                .await
                .map_err(Error::into_store)
        })
    }
}
