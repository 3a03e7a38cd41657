//! The audit log, for admins and operators: who did what, to what, when and from where,
//! oldest first, with a cursor (`after` → `next`) and filters.
//!
//! The store's port pages by id only, so filters are applied here over pages read from it.
//! That is bounded: one request reads at most [`MAX_SCAN`] records. When it stops there, the
//! answer may hold fewer records than asked for (even none) with a non-null `next`: keep
//! following `next` until it is null.

use gatehouse_actors::access::{AuditRecord, Operation};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::http::StatusCode;

use super::{allowed, unprocessable};
use crate::app::App;
use crate::json;
use crate::principal::store_error;
use crate::routing::{Outcome, Route};

/// Records per page, by default and at most.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 500;
/// Records read from the store per request, at most, when filtering.
pub const MAX_SCAN: usize = 10_000;
/// Records read per store query when filtering.
const SCAN_BATCH: u32 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Records with an id above this (0 or absent: from the start).
    pub after: Option<i64>,
    /// At most this many (default 100, at most 500).
    pub limit: Option<u32>,
    /// Only this actor (`user:<uuid>`, `key:<uuid>`, `system`).
    pub actor: Option<String>,
    /// Only actions starting with this (`user.`, `config.`, `gate.open`).
    pub action: Option<String>,
    /// Only this target (`user:<uuid>`, `gate:<id>`, `site:<id>`, `key:<uuid>`).
    pub target: Option<String>,
    /// Only records at or after this time (Unix milliseconds).
    pub since_ms: Option<u64>,
    /// Only records before this time (Unix milliseconds).
    pub until_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// The cursor: pass the last one seen as `after`.
    pub id: i64,
    pub at_ms: u64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub source_ip: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub records: Vec<AuditEntry>,
    /// The `after` for the next page, or null when there is nothing more.
    pub next: Option<i64>,
}

impl AuditQuery {
    fn filters(&self) -> bool {
        self.actor.is_some()
            || self.action.is_some()
            || self.target.is_some()
            || self.since_ms.is_some()
            || self.until_ms.is_some()
    }

    fn matches(&self, r: &AuditRecord) -> bool {
        self.actor.as_ref().is_none_or(|a| &r.actor == a)
            && self
                .action
                .as_ref()
                .is_none_or(|a| r.action.starts_with(a.as_str()))
            && self
                .target
                .as_ref()
                .is_none_or(|t| r.target.as_ref() == Some(t))
            && self.since_ms.is_none_or(|t| r.at_ms >= t)
            && self.until_ms.is_none_or(|t| r.at_ms < t)
    }
}

fn entry(id: i64, r: AuditRecord) -> AuditEntry {
    // Details are JSON objects as written; anything else is shown as the text it is.
    let details = serde_json::from_str(&r.details)
        .unwrap_or_else(|_| serde_json::Value::String(r.details.clone()));
    AuditEntry {
        id,
        at_ms: r.at_ms,
        actor: r.actor,
        action: r.action,
        target: r.target,
        source_ip: r.source_ip,
        details,
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    operation_id = "list_audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "Matching records, oldest first", body = AuditPage),
        (status = 403, description = "Neither admin nor operator"),
        (status = 422, description = "since_ms after until_ms"),
    ),
    security(("bearer" = [])),
)]
async fn list(query: AuditQuery, app: App, bearer: Option<String>) -> Outcome {
    allowed(&app, bearer, Operation::Operate).await?;
    if let (Some(since), Some(until)) = (query.since_ms, query.until_ms)
        && since > until
    {
        return Err(unprocessable(
            "invalid_range",
            "since_ms must not be after until_ms",
        ));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut cursor = query.after.unwrap_or(0).max(0);
    let batch = if query.filters() { SCAN_BATCH } else { limit };
    let mut records = Vec::new();
    let mut scanned = 0usize;
    let next = 'scan: loop {
        let page = app
            .access
            .audit_after(cursor, batch)
            .await
            .map_err(store_error)?;
        let end = (page.len() as u32) < batch;
        for (id, record) in page {
            cursor = id;
            scanned += 1;
            if query.matches(&record) {
                records.push(entry(id, record));
                if records.len() as u32 == limit {
                    break 'scan Some(id);
                }
            }
        }
        if end {
            break None;
        }
        if scanned >= MAX_SCAN {
            break Some(cursor);
        }
    };
    json::reply(StatusCode::OK, &AuditPage { records, next })
}

pub fn routes(app: &App) -> Vec<Route> {
    let a = app.clone();
    vec![Route::new::<__path_list, _>(move |_p| {
        warp::query::<AuditQuery>().and(a.caller()).then(list)
    })]
}
