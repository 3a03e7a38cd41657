//! Probes at the root (CONTRACTS.md, "HTTP"): `GET /healthz` says the process serves HTTP at
//! all (liveness: restart me if this fails), `GET /readyz` says whether it should get traffic
//! (readiness: the store is reachable, the event log keeps up, the fleet has started).
//!
//! What "ready" means belongs to the runtime, which implements [`Readiness`]; this crate only
//! renders the verdict. Checks are synchronous and should read state the runtime already keeps
//! (an atomic flag, the event log's health): a probe is called every few seconds by every load
//! balancer and must not itself wait on the database.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;
use warp::Filter;
use warp::http::StatusCode;

use crate::json;
use crate::routing::{Outcome, Route};

/// One named readiness condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Stable, snake_case (`database`, `event_log`, `links`).
    pub name: &'static str,
    pub ready: bool,
    /// Why it is not ready, for the people reading the probe's body.
    pub reason: Option<String>,
    /// Set while the node serves but something is degraded (a link down, a backlog): the
    /// probe stays 200, so that a load balancer does not drain every node at once.
    pub degraded: Option<String>,
    /// What the check saw when all is well (`3 of 3 connected`).
    pub detail: Option<String>,
}

impl Check {
    pub fn ready(name: &'static str) -> Check {
        Check {
            name,
            ready: true,
            reason: None,
            degraded: None,
            detail: None,
        }
    }

    pub fn not_ready(name: &'static str, reason: impl Into<String>) -> Check {
        Check {
            name,
            ready: false,
            reason: Some(reason.into()),
            degraded: None,
            detail: None,
        }
    }

    /// Serving, with something the operator should look at.
    pub fn degraded(name: &'static str, why: impl Into<String>) -> Check {
        Check {
            degraded: Some(why.into()),
            ..Check::ready(name)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Check {
        self.detail = Some(detail.into());
        self
    }
}

/// The runtime's view of whether this process should receive traffic.
pub trait Readiness: Send + Sync + 'static {
    /// Every condition, ready or not. Ready overall when all are (or there are none).
    fn checks(&self) -> Vec<Check>;
}

/// Lets a closure serve as the readiness source (tests, simple wiring).
impl<F> Readiness for F
where
    F: Fn() -> Vec<Check> + Send + Sync + 'static,
{
    fn checks(&self) -> Vec<Check> {
        self()
    }
}

/// `GET /healthz`'s body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `GET /readyz`'s body, for 200 and 503 alike: probes read the status code, people the checks.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessReport {
    /// `ready`, `degraded` (serving; some check says what to look at) or `not_ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    pub checks: Vec<CheckReport>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckReport {
    pub name: &'static str,
    pub ready: bool,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What is degraded while this node still serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    operation_id = "healthz",
    summary = "Liveness: the process serves HTTP",
    responses((status = 200, description = "Alive", body = Health)),
)]
async fn healthz() -> Outcome {
    json::reply(StatusCode::OK, &Health { status: "ok" })
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    operation_id = "readyz",
    summary = "Readiness: the process should receive traffic",
    responses(
        (status = 200, description = "Ready, or degraded but serving (the checks say what)", body = ReadinessReport),
        (status = 503, description = "Not ready; the failing checks say why", body = ReadinessReport),
    ),
)]
async fn readyz(readiness: Arc<dyn Readiness>) -> Outcome {
    let checks = readiness.checks();
    let ready = checks.iter().all(|check| check.ready);
    let degraded = checks.iter().any(|check| check.degraded.is_some());
    let report = ReadinessReport {
        status: match (ready, degraded) {
            (false, _) => "not_ready",
            (true, true) => "degraded",
            (true, false) => "ready",
        },
        checks: checks
            .into_iter()
            .map(|check| CheckReport {
                name: check.name,
                ready: check.ready,
                reason: check.reason,
                degraded: check.degraded,
                detail: check.detail,
            })
            .collect(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json::reply(status, &report)
}

/// The probe routes.
pub fn routes(readiness: Arc<dyn Readiness>) -> Vec<Route> {
    vec![
        Route::new::<__path_healthz, _>(|_params| warp::any().then(healthz)),
        Route::new::<__path_readyz, _>(move |_params| {
            warp::any().map(move || readiness.clone()).then(readyz)
        }),
    ]
}
