//! Reports (admin; CONTRACTS.md lists no other role for them): ask for one (events, audit or
//! maintenance records of a period, optionally one site, as CSV or PDF), watch its progress,
//! download it: through a presigned link where the blob store makes them (S3), else streamed
//! by this endpoint. The scheduler generates them in the background.

use std::net::IpAddr;

use gatehouse_actors::blob::PRESIGN_TTL;
use gatehouse_actors::clock::wall_ms;
use gatehouse_actors::ids::SiteId;
use gatehouse_actors::report::{Report, ReportFormat, ReportKind, ReportSpec, ReportStatus};
use gatehouse_actors::store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::http::StatusCode;

use super::admin::{admin, audit, unprocessable};
use crate::app::App;
use crate::principal::store_error;
use crate::routing::{Outcome, PathParams, Route};
use crate::{ApiError, client_ip, json};

pub const DEFAULT_REPORTS: usize = 50;
pub const MAX_REPORTS: usize = 500;

#[derive(Debug, Serialize, ToSchema)]
pub struct ReportBody {
    pub id: String,
    /// events, audit or maintenance.
    pub kind: String,
    pub site: Option<String>,
    pub from_ms: u64,
    pub to_ms: u64,
    /// csv or pdf.
    pub format: String,
    /// queued, running, done or failed.
    pub status: String,
    /// 0 to 100.
    pub progress: u8,
    pub rows: u64,
    /// Bytes, once done.
    pub size: Option<u64>,
    pub error: Option<String>,
    pub requested_by: String,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// Where to download it from, once done (this API's path).
    pub download: Option<String>,
    pub file_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReportPage {
    pub reports: Vec<ReportBody>,
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReport {
    /// events, audit or maintenance.
    #[schema(example = "events")]
    pub kind: String,
    /// One site (absent: the whole fleet).
    #[schema(value_type = Option<String>)]
    pub site: Option<SiteId>,
    /// The period: from (included) to (excluded), Unix milliseconds; at most 366 days.
    pub from_ms: u64,
    pub to_ms: u64,
    /// csv or pdf.
    #[schema(example = "csv")]
    pub format: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportsQuery {
    pub before: Option<String>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<usize>,
}

fn body(r: &Report) -> ReportBody {
    ReportBody {
        id: r.id.to_string(),
        kind: r.spec.kind.as_str().to_owned(),
        site: r.spec.site.as_ref().map(|s| s.to_string()),
        from_ms: r.spec.from_ms,
        to_ms: r.spec.to_ms,
        format: r.spec.format.as_str().to_owned(),
        status: r.status.as_str().to_owned(),
        progress: r.progress,
        rows: r.rows,
        size: r.size,
        error: r.error.clone(),
        requested_by: r.requested_by.clone(),
        created_at_ms: r.created_at_ms,
        finished_at_ms: r.finished_at_ms,
        download: (r.status == ReportStatus::Done)
            .then(|| format!("/api/v1/reports/{}/download", r.id)),
        file_name: r.spec.file_name(r.id),
    }
}

fn unknown_report(raw: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_report",
        format!("no report {raw}"),
    )
    .with_details(json!({ "report": raw }))
}

async fn find(app: &App, raw: &str) -> Result<Report, ApiError> {
    let id = raw.parse::<uuid::Uuid>().map_err(|_| unknown_report(raw))?;
    app.reports
        .report(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| unknown_report(raw))
}

use crate::files::no_store as no_files;
use crate::paging::{Page, invalid_query};

#[utoipa::path(
    post,
    path = "/api/v1/reports",
    tag = "reports",
    operation_id = "create_report",
    request_body = CreateReport,
    responses(
        (status = 202, description = "Queued; generated in the background", body = ReportBody),
        (status = 403, description = "Not an admin"),
        (status = 422, description = "An unknown kind, format or site, or a period that is empty or longer than 366 days"),
        (status = 503, description = "No blob store on this node"),
    ),
    security(("bearer" = [])),
)]
async fn create(app: App, bearer: Option<String>, ip: IpAddr, request: CreateReport) -> Outcome {
    let caller = admin(&app, bearer).await?;
    if app.blobs.is_none() {
        return Err(no_files());
    }
    let field = |field: &'static str, message: String| {
        unprocessable("invalid_report", message).with_details(json!({ "field": field }))
    };
    let kind = ReportKind::parse(&request.kind)
        .ok_or_else(|| field("kind", "kind is events, audit or maintenance".into()))?;
    let format = ReportFormat::parse(&request.format)
        .ok_or_else(|| field("format", "format is csv or pdf".into()))?;
    if let Some(site) = &request.site {
        let known = app
            .fleet
            .records()
            .await
            .is_some_and(|r| r.sites.iter().any(|s| &s.id == site));
        if !known {
            return Err(unprocessable("unknown_site", format!("no site {site}"))
                .with_details(json!({ "field": "site", "site": site })));
        }
    }
    let spec = ReportSpec {
        kind,
        site: request.site.clone(),
        from_ms: request.from_ms,
        to_ms: request.to_ms,
        format,
    };
    spec.validate().map_err(|(f, why)| field(f, why))?;
    let report = Report::queued(uuid::Uuid::new_v4(), spec, caller.actor.clone(), wall_ms());
    app.reports
        .insert_report(report.clone())
        .await
        .map_err(store_error)?;
    app.scheduler.wake_reports();
    let created = body(&report);
    audit(
        &app,
        &caller,
        ip,
        "report.create",
        format!("report:{}", report.id),
        json!({ "kind": &created.kind, "site": &created.site, "from_ms": created.from_ms,
                "to_ms": created.to_ms, "format": &created.format }),
    )
    .await;
    json::reply(StatusCode::ACCEPTED, &created)
}

#[utoipa::path(
    get,
    path = "/api/v1/reports",
    tag = "reports",
    operation_id = "list_reports",
    params(ReportsQuery),
    responses(
        (status = 200, description = "Reports, newest first", body = ReportPage),
        (status = 400, description = "A bad cursor or limit"),
        (status = 403, description = "Not an admin"),
    ),
    security(("bearer" = [])),
)]
async fn list(query: ReportsQuery, app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let page = Page::of(
        query.limit,
        query.before.as_deref(),
        DEFAULT_REPORTS,
        MAX_REPORTS,
    )?;
    let reports = app
        .reports
        .reports(page.before, page.fetch())
        .await
        .map_err(|e| match e {
            StoreError::Rejected(why) => invalid_query("before", why),
            other => store_error(other),
        })?;
    let (reports, next) = page.split(reports, |r| r.id.to_string());
    let reports = reports.iter().map(body).collect();
    json::reply(StatusCode::OK, &ReportPage { reports, next })
}

#[utoipa::path(
    get,
    path = "/api/v1/reports/{report}",
    tag = "reports",
    operation_id = "get_report",
    params(("report" = String, Path, description = "Report id (UUID)")),
    responses(
        (status = 200, description = "The report and its progress", body = ReportBody),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such report"),
    ),
    security(("bearer" = [])),
)]
async fn get(params: PathParams, app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let report = find(&app, params.get("report")?).await?;
    json::reply(StatusCode::OK, &body(&report))
}

#[utoipa::path(
    get,
    path = "/api/v1/reports/{report}/download",
    tag = "reports",
    operation_id = "download_report",
    params(("report" = String, Path, description = "Report id (UUID)"), crate::files::DownloadQuery),
    responses(
        (status = 200, description = "The file (CSV or PDF), streamed; with `link=true`, where to fetch it", content((Vec<u8> = "text/csv"), (Vec<u8> = "application/pdf"), (crate::files::DownloadLink = "application/json"))),
        (status = 303, description = "A presigned link to the file in the bucket (S3), valid 15 minutes"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such report, or its file is gone"),
        (status = 409, description = "Not done yet"),
        (status = 503, description = "The blob store is unavailable; retry"),
    ),
    security(("bearer" = [])),
)]
async fn download(
    params: PathParams,
    query: crate::files::DownloadQuery,
    app: App,
    bearer: Option<String>,
) -> Outcome {
    admin(&app, bearer).await?;
    let raw = params.get("report")?;
    let report = find(&app, raw).await?;
    let (ReportStatus::Done, Some(key)) = (report.status, report.blob_key.as_deref()) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "report_not_ready",
            format!("the report is {}", report.status.as_str()),
        )
        .with_details(json!({ "status": report.status.as_str(), "progress": report.progress })));
    };
    let blobs = app.blobs.as_ref().ok_or_else(no_files)?;
    crate::files::download(
        blobs.as_ref(),
        key,
        &report.spec.file_name(report.id),
        PRESIGN_TTL,
        query,
    )
    .await
    .map_err(|e| e.unwrap_or_else(|| unknown_report(raw)))
}

pub fn routes(app: &App) -> Vec<Route> {
    let (a, b, c, d) = (app.clone(), app.clone(), app.clone(), app.clone());
    vec![
        Route::new::<__path_create, _>(move |_p| {
            a.caller()
                .and(client_ip())
                .and(json::body::<CreateReport>())
                .then(create)
        }),
        Route::new::<__path_list, _>(move |_p| {
            warp::query::<ReportsQuery>().and(b.caller()).then(list)
        }),
        Route::new::<__path_get, _>(move |p| p.and(c.caller()).then(get)),
        Route::new::<__path_download, _>(move |p| {
            p.and(warp::query::<crate::files::DownloadQuery>())
                .and(d.caller())
                .then(download)
        }),
    ]
}
