//! The live supervision tree, for admins and operators (CONTRACTS.md, "HTTP"): every
//! supervisor and child with its kind, status, restart count and last failure, and for each
//! link its phase, since when, and when it tries again. Read from the running tree at each
//! request (one message per supervisor; see `gatehouse_actors::tree::inspect`).

use std::collections::HashMap;

use gatehouse_actors::access::Operation;
use gatehouse_actors::supervision::Restart;
use gatehouse_actors::tree::inspect::{self, TreeNode};
use serde::Serialize;
use utoipa::ToSchema;
use warp::Filter;
use warp::http::StatusCode;

use super::allowed;
use crate::app::App;
use crate::error::ApiError;
use crate::json;
use crate::routing::{Outcome, Route};

/// The whole tree.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActorTree {
    /// When the tree was read (RFC 3339).
    pub generated_at: String,
    pub root: ActorNode,
}

/// One supervisor or child.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActorNode {
    /// The child id in its supervisor (`controller:north`, `gate:north-1`, `link`).
    pub id: String,
    /// `root`, `eventlog`, `hub`, `fleet`, `controller`, `gate`, `link`, `sessions`.
    pub kind: String,
    /// `running`, `restarting` (waiting out its restart backoff) or `unknown` (its
    /// supervisor did not answer in time).
    pub status: String,
    /// `permanent`, `transient` or `temporary`.
    pub restart: String,
    /// Restarts since its supervisor started.
    pub restarts: u64,
    pub last_failure: Option<Failure>,
    /// Its children, when it is a supervisor.
    #[schema(no_recursion)]
    pub children: Vec<ActorNode>,
    /// For the session supervisor: live sessions (counted, not listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<usize>,
    /// For a link: where it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkNode>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Failure {
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LinkNode {
    pub controller: String,
    /// `connecting`, `connected`, `unreachable` or `restarting`.
    pub state: String,
    /// Since when it is in this state (RFC 3339).
    pub since: String,
    /// Connection attempts failed in a row.
    pub failures: u32,
    /// Time to the next connection attempt, while unreachable.
    pub retry_in_ms: Option<u64>,
    /// Why the last connection failed or broke.
    pub last_error: Option<String>,
}

fn rfc3339(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn node(n: TreeNode, now_ms: u64) -> ActorNode {
    ActorNode {
        id: n.id,
        kind: n.kind,
        status: n.status.to_string(),
        restart: match n.restart {
            Restart::Permanent => "permanent",
            Restart::Transient => "transient",
            Restart::Temporary => "temporary",
        }
        .to_string(),
        restarts: n.restarts,
        last_failure: n.last_failure.map(|(reason, at)| Failure {
            reason,
            at: rfc3339(at),
        }),
        children: n.children.into_iter().map(|c| node(c, now_ms)).collect(),
        sessions: n.count,
        link: n.link.map(|(controller, s)| LinkNode {
            controller: controller.to_string(),
            state: s.phase.as_str().to_string(),
            since: rfc3339(s.since_ms),
            failures: s.failures,
            retry_in_ms: s.retry_at_ms.map(|at| at.saturating_sub(now_ms)),
            last_error: s.last_error,
        }),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/system/actors",
    tag = "system",
    operation_id = "actor_tree",
    summary = "The live supervision tree",
    responses(
        (status = 200, description = "Every supervisor and child, with restarts and link states", body = ActorTree),
        (status = 401, description = "No valid credentials"),
        (status = 403, description = "Neither admin nor operator"),
        (status = 503, description = "This process runs no supervision tree"),
    ),
    security(("bearer" = [])),
)]
async fn actors(app: App, bearer: Option<String>) -> Outcome {
    allowed(&app, bearer, Operation::Operate).await?;
    let Some(root) = &app.root else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "tree_unavailable",
            "this process runs no supervision tree",
        ));
    };
    let links: HashMap<_, _> = app.fleet.context().link_stats().into_iter().collect();
    let tree = inspect::walk(root, &links).await;
    let now_ms = gatehouse_actors::clock::wall_ms();
    json::reply(
        StatusCode::OK,
        &ActorTree {
            generated_at: rfc3339(now_ms),
            root: node(tree, now_ms),
        },
    )
}

pub fn routes(app: &App) -> Vec<Route> {
    let a = app.clone();
    vec![Route::new::<__path_actors, _>(move |_p| {
        a.caller().then(actors)
    })]
}
