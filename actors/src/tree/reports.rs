//! Report jobs, run by the scheduler: claim the oldest queued report, read what it covers
//! (page by page, reporting progress), render it (`report::csv` / `report::pdf`), store the
//! file in the blob store, mark it done or failed. Also the monthly schedule: on a new month,
//! each site's previous month is queued once (events as CSV, maintenance as PDF).
//!
//! Invariants: a report is claimed by one scheduler (a conditional update in the store);
//! one left `running` by a process that stopped is queued again when the scheduler starts;
//! a store or blob store that is away fails nothing: the report goes back to `queued` and
//! is tried at the next round.

use std::collections::HashSet;
use std::sync::Arc;

use crate::access::AccessStore;
use crate::blob::{BlobError, BlobStore};
use crate::clock::{utc, wall_ms};
use crate::gate::{CommandStatus, EventKind};
use crate::ids::{GateId, SiteId};
use crate::maintenance::{MaintenanceStore, RecordQuery};
use crate::report::{
    MAX_CSV_ROWS, MAX_PDF_ROWS, Report, ReportFormat, ReportKind, ReportSpec, ReportStatus,
    ReportStore, Table, csv, pdf,
};
use crate::store::{EventStore, StoreError};
use crate::tree::Fleet;

/// Rows read per store query.
const PAGE: u32 = 500;

#[derive(Clone)]
pub struct ReportJobs {
    pub reports: Arc<dyn ReportStore>,
    pub events: Arc<dyn EventStore>,
    pub access: Arc<dyn AccessStore>,
    pub maintenance: Arc<dyn MaintenanceStore>,
    pub blobs: Arc<dyn BlobStore>,
    /// Queue each site's previous month at the start of a month.
    pub monthly: bool,
    /// Who claims the reports this process runs: the node id in a cluster, else `local`.
    pub claimer: String,
}

/// Why a job did not finish: the report goes back to the queue (transient) or fails.
enum JobError {
    Transient(String),
    Permanent(String),
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        if e.is_transient() {
            JobError::Transient(e.to_string())
        } else {
            JobError::Permanent(e.to_string())
        }
    }
}

impl From<BlobError> for JobError {
    fn from(e: BlobError) -> Self {
        if e.is_transient() {
            JobError::Transient(e.to_string())
        } else {
            JobError::Permanent(e.to_string())
        }
    }
}

impl ReportJobs {
    /// Runs queued reports until none waits (or the store fails).
    pub async fn run_queued(&self, fleet: &Fleet) {
        loop {
            let report = match self.reports.claim_report(self.claimer.clone()).await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, "reports: the queue is unreadable; next round");
                    return;
                }
            };
            let id = report.id;
            let outcome = self.generate(report.clone(), fleet).await;
            let mut done = report;
            match outcome {
                Ok((rows, key, size)) => {
                    done.status = ReportStatus::Done;
                    done.progress = 100;
                    done.rows = rows;
                    done.blob_key = Some(key);
                    done.size = Some(size);
                    done.finished_at_ms = Some(wall_ms());
                    tracing::info!(report = %id, rows, size, "report done");
                }
                Err(JobError::Permanent(why)) => {
                    done.status = ReportStatus::Failed;
                    done.error = Some(why.clone());
                    done.finished_at_ms = Some(wall_ms());
                    tracing::warn!(report = %id, %why, "report failed");
                }
                Err(JobError::Transient(why)) => {
                    done.status = ReportStatus::Queued;
                    done.progress = 0;
                    done.error = Some(why.clone());
                    tracing::warn!(report = %id, %why, "report put back in the queue");
                }
            }
            let requeued = done.status == ReportStatus::Queued;
            if let Err(error) = self.reports.update_report(done).await {
                tracing::warn!(report = %id, %error, "a report's outcome was not recorded");
                return;
            }
            if requeued {
                return;
            }
        }
    }

    async fn progress(&self, report: &Report, progress: u8) {
        let mut r = report.clone();
        r.progress = progress.min(99);
        if let Err(error) = self.reports.update_report(r).await {
            tracing::debug!(%error, "report progress not recorded");
        }
    }

    async fn generate(
        &self,
        report: Report,
        fleet: &Fleet,
    ) -> Result<(u64, String, u64), JobError> {
        let spec = &report.spec;
        let limit = match spec.format {
            ReportFormat::Csv => MAX_CSV_ROWS,
            ReportFormat::Pdf => MAX_PDF_ROWS,
        };
        let mut table = match spec.kind {
            ReportKind::Events => self.events_table(&report, fleet, limit).await?,
            ReportKind::Audit => self.audit_table(&report, fleet, limit).await?,
            ReportKind::Maintenance => self.maintenance_table(&report, limit).await?,
        };
        table.subtitle = format!(
            "{} - {} (UTC){}; generated {}",
            utc(spec.from_ms),
            utc(spec.to_ms),
            spec.site
                .as_ref()
                .map(|s| format!(", site {s}"))
                .unwrap_or_else(|| ", all sites".into()),
            utc(wall_ms())
        );
        let rows = table.rows.len() as u64;
        let bytes = match spec.format {
            ReportFormat::Csv => csv(&table),
            ReportFormat::Pdf => pdf(&table),
        };
        let key = report.key();
        let size = self
            .blobs
            .put(
                &key,
                spec.format.content_type(),
                Box::pin(std::io::Cursor::new(bytes)),
                u64::MAX,
            )
            .await?;
        Ok((rows, key, size))
    }

    /// The gates a report covers: the site's, or every configured gate.
    async fn gates(&self, site: Option<&SiteId>, fleet: &Fleet) -> Vec<GateId> {
        match fleet.records().await {
            Some(records) => {
                let controllers: HashSet<_> = records
                    .controllers
                    .iter()
                    .filter(|c| site.is_none_or(|s| &c.site == s))
                    .map(|c| c.id.clone())
                    .collect();
                records
                    .gates
                    .iter()
                    .filter(|g| controllers.contains(&g.controller))
                    .map(|g| g.id.clone())
                    .collect()
            }
            None => Vec::new(),
        }
    }

    async fn events_table(
        &self,
        report: &Report,
        fleet: &Fleet,
        limit: usize,
    ) -> Result<Table, JobError> {
        let spec = &report.spec;
        let gates = self.gates(spec.site.as_ref(), fleet).await;
        let mut table = Table {
            title: "Gatehouse - gate events".into(),
            columns: vec![
                "time (UTC)",
                "gate",
                "seq",
                "event",
                "state",
                "cause",
                "detail",
            ],
            ..Table::default()
        };
        for (n, gate) in gates.iter().enumerate() {
            let mut after = 0;
            'pages: loop {
                let page = self.events.since(gate.clone(), after, PAGE).await?;
                let Some(last) = page.last() else {
                    break;
                };
                after = last.event.seq;
                for stored in &page {
                    let e = &stored.event;
                    // A gate's events are in time order (one actor stamps both).
                    if e.at_ms >= spec.to_ms {
                        break 'pages;
                    }
                    if e.at_ms < spec.from_ms {
                        continue;
                    }
                    if table.rows.len() >= limit {
                        table.cut += 1;
                        continue;
                    }
                    let (kind, detail) = describe(&e.kind, e.snapshot.fault_code);
                    table.rows.push(vec![
                        utc(e.at_ms),
                        e.gate.to_string(),
                        e.seq.to_string(),
                        kind.to_owned(),
                        e.snapshot.state.as_str().to_owned(),
                        match e.cause {
                            crate::gate::Cause::Command(id) => format!("command {id}"),
                            crate::gate::Cause::Local => "local".into(),
                            crate::gate::Cause::System => "system".into(),
                        },
                        detail,
                    ]);
                }
                if page.len() < PAGE as usize {
                    break;
                }
            }
            self.progress(report, ((n + 1) * 100 / gates.len().max(1)) as u8)
                .await;
        }
        // Across gates, in time order.
        table
            .rows
            .sort_by(|a, b| a[0].cmp(&b[0]).then(a[1].cmp(&b[1])));
        Ok(table)
    }

    async fn audit_table(
        &self,
        report: &Report,
        fleet: &Fleet,
        limit: usize,
    ) -> Result<Table, JobError> {
        let spec = &report.spec;
        let targets: Option<HashSet<String>> = match &spec.site {
            Some(site) => {
                let mut t: HashSet<String> = self
                    .gates(Some(site), fleet)
                    .await
                    .into_iter()
                    .map(|g| format!("gate:{g}"))
                    .collect();
                t.insert(format!("site:{site}"));
                Some(t)
            }
            None => None,
        };
        let mut table = Table {
            title: "Gatehouse - audit log".into(),
            columns: vec!["time (UTC)", "actor", "action", "target", "from", "details"],
            ..Table::default()
        };
        let mut after = 0;
        loop {
            let page = self.access.audit_after(after, PAGE).await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = *last;
            for (_, r) in &page {
                if r.at_ms < spec.from_ms || r.at_ms >= spec.to_ms {
                    continue;
                }
                if let Some(targets) = &targets
                    && !r.target.as_ref().is_some_and(|t| targets.contains(t))
                {
                    continue;
                }
                if table.rows.len() >= limit {
                    table.cut += 1;
                    continue;
                }
                table.rows.push(vec![
                    utc(r.at_ms),
                    r.actor.clone(),
                    r.action.clone(),
                    r.target.clone().unwrap_or_default(),
                    r.source_ip.clone().unwrap_or_default(),
                    r.details.clone(),
                ]);
            }
            if page.len() < PAGE as usize {
                break;
            }
        }
        self.progress(report, 90).await;
        Ok(table)
    }

    async fn maintenance_table(&self, report: &Report, limit: usize) -> Result<Table, JobError> {
        let spec = &report.spec;
        let mut table = Table {
            title: "Gatehouse - maintenance records".into(),
            columns: vec![
                "opened (UTC)",
                "gate",
                "status",
                "opened by",
                "completed (UTC)",
                "completed by",
                "cycles",
                "summary",
                "parts",
                "notes",
            ],
            ..Table::default()
        };
        let mut before = None;
        let mut rows = Vec::new();
        loop {
            let page = self
                .maintenance
                .records(RecordQuery {
                    site: spec.site.clone(),
                    before,
                    limit: PAGE as usize,
                    ..RecordQuery::default()
                })
                .await?;
            let Some(last) = page.last() else {
                break;
            };
            before = Some(last.id);
            let done = page.len() < PAGE as usize
                || page.last().is_some_and(|r| r.opened_at_ms < spec.from_ms);
            for r in page {
                if r.opened_at_ms < spec.from_ms || r.opened_at_ms >= spec.to_ms {
                    continue;
                }
                rows.push(r);
            }
            if done {
                break;
            }
        }
        // Oldest first, as a log reads.
        rows.reverse();
        for r in rows {
            if table.rows.len() >= limit {
                table.cut += 1;
                continue;
            }
            table.rows.push(vec![
                utc(r.opened_at_ms),
                r.gate.to_string(),
                r.status.as_str().to_owned(),
                r.opened_by,
                r.completed_at_ms.map(utc).unwrap_or_default(),
                r.completed_by.unwrap_or_default(),
                r.cycles_at.map(|c| c.to_string()).unwrap_or_default(),
                r.work.summary,
                r.work.parts.join("; "),
                r.work.notes,
            ]);
        }
        self.progress(report, 90).await;
        Ok(table)
    }

    /// At the start of a month: each site's previous month, queued once.
    pub async fn schedule_monthly(&self, fleet: &Fleet) {
        if !self.monthly {
            return;
        }
        let now = wall_ms();
        let Some((from, to)) = previous_month(now) else {
            return;
        };
        let Some(records) = fleet.records().await else {
            return;
        };
        for site in &records.sites {
            for (kind, format) in [
                (ReportKind::Events, ReportFormat::Csv),
                (ReportKind::Maintenance, ReportFormat::Pdf),
            ] {
                let spec = ReportSpec {
                    kind,
                    site: Some(site.id.clone()),
                    from_ms: from,
                    to_ms: to,
                    format,
                };
                match self.reports.has_report(spec.clone(), to).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%error, "monthly reports: store unavailable; next round");
                        return;
                    }
                }
                let report = Report::queued(uuid::Uuid::new_v4(), spec, "system".into(), now);
                if let Err(error) = self.reports.insert_report(report).await {
                    tracing::warn!(%error, "monthly report not queued; next round");
                    return;
                }
            }
        }
    }
}

/// The calendar month (UTC) before the one `now_ms` falls in: [start, end) in ms.
pub fn previous_month(now_ms: u64) -> Option<(u64, u64)> {
    let now = jiff::Timestamp::from_millisecond(now_ms as i64).ok()?;
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let this_month = today.first_of_month();
    let last_month = this_month.checked_sub(jiff::Span::new().months(1)).ok()?;
    let at = |d: jiff::civil::Date| -> Option<u64> {
        let ms = d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_millisecond();
        u64::try_from(ms).ok()
    };
    Some((at(last_month)?, at(this_month)?))
}

/// An event's kind and a few words on it, for a report row.
fn describe(kind: &EventKind, fault_code: Option<u16>) -> (&'static str, String) {
    match *kind {
        EventKind::StateChanged { from } => (
            "state_changed",
            match fault_code {
                Some(code) => format!("from {} (fault code {code})", from.as_str()),
                None => format!("from {}", from.as_str()),
            },
        ),
        EventKind::Obstruction { obstructed } => (
            "obstruction",
            if obstructed { "obstructed" } else { "clear" }.into(),
        ),
        EventKind::AutoCloseWarning { closes_in_ms } => {
            ("auto_close_warning", format!("closes in {closes_in_ms} ms"))
        }
        EventKind::LeftOpen { open_for_ms } => {
            ("left_open", format!("open for {} s", open_for_ms / 1_000))
        }
        EventKind::LockedOut => ("locked_out", String::new()),
        EventKind::Unlocked => ("unlocked", String::new()),
        EventKind::HeldOpen => ("held_open", String::new()),
        EventKind::Released => ("released", String::new()),
        EventKind::MaintenanceDue { plan } => ("maintenance_due", format!("plan {plan}")),
        EventKind::MaintenanceOverdue { plan } => ("maintenance_overdue", format!("plan {plan}")),
        EventKind::CommandFinished { action, status, .. } => (
            "command_finished",
            match status {
                CommandStatus::Rejected(r) => {
                    format!("{} rejected: {}", action.as_str(), r.as_str())
                }
                CommandStatus::Failed(r) => format!("{} failed: {}", action.as_str(), r.as_str()),
                other => format!("{} {}", action.as_str(), status_word(other)),
            },
        ),
    }
}

fn status_word(status: CommandStatus) -> &'static str {
    match status {
        CommandStatus::Accepted => "accepted",
        CommandStatus::Completed => "completed",
        CommandStatus::Rejected(_) => "rejected",
        CommandStatus::Failed(_) => "failed",
        CommandStatus::TimedOut => "timed_out",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_month_is_a_whole_calendar_month_in_utc() {
        // 2026-12-07 10:54:46 UTC.
        let (from, to) = previous_month(1_796_641_286_000).unwrap();
        assert_eq!(utc(from), "2026-11-01 00:00:00 UTC");
        assert_eq!(utc(to), "2026-12-01 00:00:00 UTC");
        // January looks back into the previous year.
        let (from, to) = previous_month(1_799_000_000_000).unwrap();
        assert_eq!(utc(from), "2026-12-01 00:00:00 UTC");
        assert_eq!(utc(to), "2027-01-01 00:00:00 UTC");
    }
}
