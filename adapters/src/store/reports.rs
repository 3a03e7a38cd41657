//! Reports as rows: the `ReportStore` port on both backends. Claiming the next queued report
//! is one write transaction (select the oldest queued, mark it running), so two schedulers
//! never take the same one.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use gatehouse_actors::ids::SiteId;
use gatehouse_actors::ports::BoxFuture;
use gatehouse_actors::report::{
    Report, ReportFormat, ReportKind, ReportSpec, ReportStatus, ReportStore,
};
use gatehouse_actors::store::StoreError;
use uuid::Uuid;

use super::Store;
use super::access::uuid_from_db;
use super::error::Error;
use super::fleet::{from_db, to_db};
use super::schema::reports;

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = reports)]
#[diesel(treat_none_as_default_value = false)]
struct ReportRow {
    id: String,
    kind: String,
    site_id: Option<String>,
    from_ms: i64,
    to_ms: i64,
    format: String,
    status: String,
    progress: i64,
    row_count: i64,
    blob_key: Option<String>,
    size: Option<i64>,
    error: Option<String>,
    requested_by: String,
    created_at: i64,
    finished_at: Option<i64>,
}

impl ReportRow {
    fn encode(r: &Report) -> Result<ReportRow, Error> {
        let what = |field: &str| format!("report {}: {field}", r.id);
        Ok(ReportRow {
            id: r.id.to_string(),
            kind: r.spec.kind.as_str().to_owned(),
            site_id: r.spec.site.as_ref().map(|s| s.as_str().to_owned()),
            from_ms: to_db(r.spec.from_ms, || what("from_ms"))?,
            to_ms: to_db(r.spec.to_ms, || what("to_ms"))?,
            format: r.spec.format.as_str().to_owned(),
            status: r.status.as_str().to_owned(),
            progress: i64::from(r.progress),
            row_count: to_db(r.rows, || what("rows"))?,
            blob_key: r.blob_key.clone(),
            size: r.size.map(|s| to_db(s, || what("size"))).transpose()?,
            error: r.error.clone(),
            requested_by: r.requested_by.clone(),
            created_at: to_db(r.created_at_ms, || what("created_at_ms"))?,
            finished_at: r
                .finished_at_ms
                .map(|t| to_db(t, || what("finished_at_ms")))
                .transpose()?,
        })
    }

    fn decode(self) -> Result<Report, Error> {
        let what = |field: &str| format!("report {}: {field}", self.id);
        let bad = |field: &str, v: &str| Error::Other(format!("{}: {v:?}", what(field)));
        Ok(Report {
            id: uuid_from_db(&self.id, "report")?,
            spec: ReportSpec {
                kind: ReportKind::parse(&self.kind).ok_or_else(|| bad("kind", &self.kind))?,
                site: self
                    .site_id
                    .as_deref()
                    .map(|s| SiteId::new(s).map_err(|_| bad("site_id", s)))
                    .transpose()?,
                from_ms: from_db(self.from_ms, || what("from_ms"))?,
                to_ms: from_db(self.to_ms, || what("to_ms"))?,
                format: ReportFormat::parse(&self.format)
                    .ok_or_else(|| bad("format", &self.format))?,
            },
            status: ReportStatus::parse(&self.status).ok_or_else(|| bad("status", &self.status))?,
            progress: u8::try_from(self.progress.clamp(0, 100)).unwrap_or(0),
            rows: from_db(self.row_count, || what("row_count"))?,
            size: self.size.map(|s| from_db(s, || what("size"))).transpose()?,
            created_at_ms: from_db(self.created_at, || what("created_at"))?,
            finished_at_ms: self
                .finished_at
                .map(|t| from_db(t, || what("finished_at")))
                .transpose()?,
            blob_key: self.blob_key,
            error: self.error,
            requested_by: self.requested_by,
        })
    }
}

async fn insert_report(store: &Store, report: Report) -> Result<(), Error> {
    let row = &ReportRow::encode(&report)?;
    let mut conn = store.conn().await?;
    with_conn!(&mut conn, |c| {
        diesel::insert_into(reports::table)
            .values(row)
            .execute(c)
            .await
    })?;
    Ok(())
}

async fn report(store: &Store, id: Uuid) -> Result<Option<Report>, Error> {
    let id = id.to_string();
    let mut conn = store.conn().await?;
    let row: Option<ReportRow> = with_conn!(&mut conn, |c| {
        reports::table
            .find(&id)
            .select(ReportRow::as_select())
            .first(c)
            .await
            .optional()
    })?;
    row.map(ReportRow::decode).transpose()
}

async fn list(store: &Store, before: Option<Uuid>, limit: usize) -> Result<Vec<Report>, Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let before = before.map(|b| b.to_string());
    let mut conn = store.conn().await?;
    let rows: Vec<ReportRow> = read_tx!(&mut conn, |c| {
        let mut q = reports::table.select(ReportRow::as_select()).into_boxed();
        if let Some(before) = &before {
            let at: Option<i64> = reports::table
                .find(before)
                .select(reports::created_at)
                .first(c)
                .await
                .optional()?;
            let Some(at) = at else {
                return Err(Error::Rejected(format!("no report {before}")));
            };
            q = q.filter(
                reports::created_at
                    .lt(at)
                    .or(reports::created_at.eq(at).and(reports::id.lt(before))),
            );
        }
        q.order((reports::created_at.desc(), reports::id.desc()))
            .limit(limit)
            .load(c)
            .await
            .map_err(Error::from)
    })?;
    rows.into_iter().map(ReportRow::decode).collect()
}

async fn update(store: &Store, report: Report) -> Result<(), Error> {
    let row = &ReportRow::encode(&report)?;
    let mut conn = store.conn().await?;
    with_conn!(&mut conn, |c| {
        diesel::update(reports::table.find(&row.id))
            .set((
                reports::status.eq(&row.status),
                reports::progress.eq(row.progress),
                reports::row_count.eq(row.row_count),
                reports::blob_key.eq(&row.blob_key),
                reports::size.eq(row.size),
                reports::error.eq(&row.error),
                reports::finished_at.eq(row.finished_at),
            ))
            .execute(c)
            .await
    })?;
    Ok(())
}

async fn claim(store: &Store, claimer: &str) -> Result<Option<Report>, Error> {
    let mut conn = store.conn().await?;
    let row: Option<ReportRow> = write_tx!(&mut conn, |c| {
        let next: Option<ReportRow> = reports::table
            .filter(reports::status.eq(ReportStatus::Queued.as_str()))
            .order((reports::created_at.asc(), reports::id.asc()))
            .select(ReportRow::as_select())
            .first(c)
            .await
            .optional()?;
        let Some(mut next) = next else {
            return Ok(None);
        };
        // Only if still queued: on PostgreSQL another claimer may have won meanwhile.
        let taken = diesel::update(
            reports::table
                .find(&next.id)
                .filter(reports::status.eq(ReportStatus::Queued.as_str())),
        )
        .set((
            reports::status.eq(ReportStatus::Running.as_str()),
            reports::claimed_by.eq(claimer),
        ))
        .execute(c)
        .await?;
        if taken == 0 {
            return Ok(None);
        }
        next.status = ReportStatus::Running.as_str().to_owned();
        Ok::<_, Error>(Some(next))
    })?;
    row.map(ReportRow::decode).transpose()
}

async fn requeue_running(store: &Store, alive: Option<Vec<String>>) -> Result<u64, Error> {
    let mut conn = store.conn().await?;
    let running = reports::status.eq(ReportStatus::Running.as_str());
    let requeue = (
        reports::status.eq(ReportStatus::Queued.as_str()),
        reports::progress.eq(0i64),
        reports::claimed_by.eq(None::<String>),
    );
    let n = match alive {
        None => with_conn!(&mut conn, |c| {
            diesel::update(reports::table.filter(running))
                .set(requeue)
                .execute(c)
                .await
        })?,
        Some(alive) => with_conn!(&mut conn, |c| {
            diesel::update(
                reports::table.filter(running).filter(
                    reports::claimed_by
                        .is_null()
                        .or(reports::claimed_by.ne_all(alive.clone())),
                ),
            )
            .set(requeue)
            .execute(c)
            .await
        })?,
    };
    Ok(n as u64)
}

async fn has_report(store: &Store, spec: ReportSpec, since_ms: u64) -> Result<bool, Error> {
    let since = to_db(since_ms, || "report: since".into())?;
    let from = to_db(spec.from_ms, || "report: from_ms".into())?;
    let to = to_db(spec.to_ms, || "report: to_ms".into())?;
    let site = spec.site.as_ref().map(|s| s.as_str().to_owned());
    let mut conn = store.conn().await?;
    let found: Option<String> = with_conn!(&mut conn, |c| {
        let mut q = reports::table
            .filter(reports::kind.eq(spec.kind.as_str()))
            .filter(reports::format.eq(spec.format.as_str()))
            .filter(reports::from_ms.eq(from))
            .filter(reports::to_ms.eq(to))
            .filter(reports::created_at.ge(since))
            .select(reports::id)
            .into_boxed();
        q = match &site {
            Some(s) => q.filter(reports::site_id.eq(s)),
            None => q.filter(reports::site_id.is_null()),
        };
        q.first::<String>(c).await.optional()
    })?;
    Ok(found.is_some())
}

impl ReportStore for Store {
    fn insert_report(&self, report: Report) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { insert_report(self, report).await.map_err(Error::into_store) })
    }

    fn report(&self, id: Uuid) -> BoxFuture<'_, Result<Option<Report>, StoreError>> {
        Box::pin(async move { report(self, id).await.map_err(Error::into_store) })
    }

    fn reports(
        &self,
        before: Option<Uuid>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Report>, StoreError>> {
        Box::pin(async move { list(self, before, limit).await.map_err(Error::into_store) })
    }

    fn update_report(&self, report: Report) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { update(self, report).await.map_err(Error::into_store) })
    }

    fn claim_report(&self, claimer: String) -> BoxFuture<'_, Result<Option<Report>, StoreError>> {
        Box::pin(async move { claim(self, &claimer).await.map_err(Error::into_store) })
    }

    fn requeue_running(
        &self,
        alive: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            requeue_running(self, alive)
                .await
                .map_err(Error::into_store)
        })
    }

    fn has_report(
        &self,
        spec: ReportSpec,
        since_ms: u64,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            has_report(self, spec, since_ms)
                .await
                .map_err(Error::into_store)
        })
    }
}
