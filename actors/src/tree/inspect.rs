//! The live supervision tree as operators see it (`GET /api/v1/system/actors`): every
//! supervisor and child with its kind, status, restart count and last failure, and for links
//! their phase and next connection attempt.
//!
//! The walk asks each supervisor once for its children and their running instances
//! ([`SupervisorMsg::ChildCells`]), so it costs one message per supervisor (about one per
//! controller), not one per actor. The session supervisor's children are counted, not listed:
//! they are thousands of short-lived phones, and the tree is for the runtime's own structure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorCell, ActorRef};

use super::link::{LinkStats, LinkStatus};
use crate::ids::ControllerId;
use crate::supervision::{ChildInfo, Restart, SupervisorMsg};
use crate::telemetry::kind_of;

/// How long one supervisor may take to answer before its subtree is reported as unknown.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Supervisors whose children are counted rather than listed.
const COUNTED: &[&str] = &["sessions"];

/// One node of the tree.
#[derive(Debug, Clone)]
pub struct TreeNode {
    pub id: String,
    pub kind: String,
    /// `running`, `restarting` (waiting out its backoff) or `unknown` (did not answer).
    pub status: &'static str,
    pub restart: Restart,
    pub restarts: u64,
    /// The last failure's reason and wall-clock ms.
    pub last_failure: Option<(String, u64)>,
    pub children: Vec<TreeNode>,
    /// For a supervisor whose children are counted, not listed.
    pub count: Option<usize>,
    /// For a link: its controller and status.
    pub link: Option<(ControllerId, LinkStatus)>,
}

/// Walks the tree under `root`. `links` are the fleet's link figures by controller.
pub async fn walk(
    root: &ActorRef<SupervisorMsg>,
    links: &HashMap<ControllerId, Arc<LinkStats>>,
) -> TreeNode {
    let mut node = TreeNode {
        id: "root".into(),
        kind: "root".into(),
        status: "running",
        restart: Restart::Permanent,
        restarts: 0,
        last_failure: None,
        children: Vec::new(),
        count: None,
        link: None,
    };
    fill(&mut node, root.get_cell(), links).await;
    node
}

fn fill<'a>(
    node: &'a mut TreeNode,
    supervisor: ActorCell,
    links: &'a HashMap<ControllerId, Arc<LinkStats>>,
) -> crate::ports::BoxFuture<'a, ()> {
    Box::pin(async move {
        let supervisor: ActorRef<SupervisorMsg> = supervisor.into();
        let asked = supervisor
            .call(SupervisorMsg::ChildCells, Some(ASK_TIMEOUT))
            .await;
        let Ok(ractor::rpc::CallResult::Success(children)) = asked else {
            node.status = "unknown";
            return;
        };
        if COUNTED.contains(&node.id.as_str()) {
            node.count = Some(children.iter().filter(|(_, cell)| cell.is_some()).count());
            return;
        }
        let controller = node
            .id
            .strip_prefix("controller:")
            .and_then(|c| ControllerId::new(c).ok());
        let now_ms = crate::clock::wall_ms();
        for (info, cell) in children {
            let mut child = leaf(&info, now_ms);
            if child.kind == "link"
                && let Some(c) = &controller
                && let Some(stats) = links.get(c)
            {
                child.link = Some((c.clone(), stats.status()));
            }
            if let Some(cell) = cell
                && cell.is_message_type_of::<SupervisorMsg>() == Some(true)
            {
                fill(&mut child, cell, links).await;
            }
            node.children.push(child);
        }
    })
}

fn leaf(info: &ChildInfo, now_ms: u64) -> TreeNode {
    TreeNode {
        id: info.id.clone(),
        kind: kind_of(&info.id).to_string(),
        status: if info.running {
            "running"
        } else {
            "restarting"
        },
        restart: info.restart,
        restarts: info.restarts,
        last_failure: info
            .last_failure
            .as_ref()
            .map(|(why, ago)| (why.clone(), now_ms.saturating_sub(ago.as_millis() as u64))),
        children: Vec::new(),
        count: None,
        link: None,
    }
}
