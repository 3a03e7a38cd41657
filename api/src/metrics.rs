//! `GET /metrics` (CONTRACTS.md, "HTTP"): the Prometheus text format, at the root, on the
//! API's port. Open by default, as Prometheus expects (keep it behind the network boundary);
//! with `[metrics] token`, a bearer token is required.
//!
//! The exporter belongs to the runtime, which hands over a [`MetricsExport`]: rendering, and
//! the gauges read at scrape time (links, the event log's queue). This module adds the
//! sessions' gauges, which only the API knows, and serves the text.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use gatehouse_actors::telemetry::names;
use warp::Filter;
use warp::http::StatusCode;
use warp::http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use warp::reply::Reply;

use crate::app::App;
use crate::error::ApiError;
use crate::routing::{Outcome, Route};

/// Prometheus' text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the runtime hands the API to serve `/metrics`.
#[derive(Clone)]
pub struct MetricsExport {
    /// Refreshes the scrape-time gauges and renders every metric.
    pub render: Arc<dyn Fn() -> String + Send + Sync>,
    /// A bearer token the scraper must send, if configured.
    pub token: Option<String>,
}

/// Equal length and content, in time that depends on the length only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The sessions' gauges, read from the hub at scrape time.
fn session_gauges(app: &App) {
    let stats = &app.sessions.hub().stats;
    metrics::gauge!(names::SESSIONS).set(app.sessions.hub().open_sessions() as f64);
    metrics::gauge!(names::SESSIONS_AUTHENTICATED)
        .set(stats.authenticated.load(Ordering::Relaxed).max(0) as f64);
    metrics::gauge!(names::SESSION_SUBSCRIPTIONS)
        .set(stats.subscriptions.load(Ordering::Relaxed).max(0) as f64);
    metrics::counter!(names::SESSION_EVENT_LOSSES).absolute(stats.lagged.load(Ordering::Relaxed));
    metrics::counter!(names::SESSION_GAP_REFILLS)
        .absolute(stats.gap_refills.load(Ordering::Relaxed));
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    operation_id = "metrics",
    summary = "Prometheus metrics (docs/metrics.md)",
    responses(
        (status = 200, description = "The Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "A metrics token is configured and was not sent"),
        (status = 404, description = "Metrics are turned off (`[metrics] enabled = false`)"),
    ),
)]
async fn scrape(
    export: Option<MetricsExport>,
    app: Option<App>,
    authorization: Option<String>,
) -> Outcome {
    let Some(export) = export else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "metrics are turned off in this process's configuration",
        ));
    };
    if let Some(token) = &export.token {
        let sent = authorization
            .as_deref()
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(sent.as_bytes(), token.as_bytes()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this endpoint needs the metrics bearer token",
            )
            .with_header(
                warp::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            ));
        }
    }
    if let Some(app) = &app {
        session_gauges(app);
    }
    // Rendering walks every series; keep it off the async workers.
    let render = export.render.clone();
    let text = tokio::task::spawn_blocking(move || render())
        .await
        .map_err(ApiError::internal)?;
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    Ok(response)
}

pub fn routes(export: Option<MetricsExport>, app: Option<App>) -> Vec<Route> {
    vec![Route::new::<__path_scrape, _>(move |_p| {
        let (export, app) = (export.clone(), app.clone());
        warp::any()
            .map(move || (export.clone(), app.clone()))
            .untuple_one()
            .and(warp::header::optional::<String>(AUTHORIZATION.as_str()))
            .then(scrape)
    })]
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!same(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}
