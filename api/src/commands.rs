//! The one command path, shared by REST and the WebSocket: locate the gate, read its site's
//! local time, authorize, rate limit and check the id, send the command to the gate, and hand
//! its audit record to the event log. It answers a typed [`Refusal`] that each transport
//! renders in its own wire format; acks come back through the [`AckSink`] the transport
//! gives.
//!
//! Decided once, here:
//! - the order of the checks (an unknown gate before the caller's rights, the rights before
//!   the rate limit, so a refused caller spends no quota);
//! - a reused command id on another gate or with another action ends at once as
//!   `rejected{id_conflict}`, never a second command, and is not audited (nothing was done);
//! - the audit record of a command the gate received is queued on the event log: it never
//!   delays `accepted` (nothing here waits on the database), is committed with the gate's
//!   events, and is retried with them while the database is away;
//! - a session awaits each submission before it reads its next frame, so that its commands
//!   reach a gate in the order they were sent. The only waits are the admission's (the
//!   cluster's shared rate limit in Redis and the command id's claim in the store), each
//!   bounded, and neither ever refuses a command because its store is away.

use std::net::IpAddr;
use std::time::Duration;

use gatehouse_actors::access::{AuditRecord, Denial, Operation};
use gatehouse_actors::clock::wall_ms;
use gatehouse_actors::gate::{Action, CommandStatus, RejectReason};
use gatehouse_actors::ids::{CommandId, GateId};
use gatehouse_actors::tree::gate::{Ack, AckSink};

use crate::ApiError;
use crate::app::App;
use crate::policy::{self, forbidden, unknown_gate};
use crate::principal::Caller;
use crate::ratelimit::Admitted;

/// Which transport a command came by (recorded in its audit record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Rest,
    WebSocket,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Rest => "rest",
            Via::WebSocket => "websocket",
        }
    }
}

/// A command as a transport decoded it.
#[derive(Debug, Clone)]
pub struct Command<'a> {
    pub caller: &'a Caller,
    pub gate: &'a GateId,
    pub action: Action,
    /// The client's id: the idempotency key.
    pub id: uuid::Uuid,
    pub ip: IpAddr,
    pub via: Via,
}

/// What became of a command that was not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// The gate has it; acks follow through the sink (a retried id gets the first command's).
    Sent,
    /// The id names another recent command (another gate or action): its outcome is
    /// `rejected{id_conflict}` now, and nothing was sent.
    IdConflict,
}

/// Why a command was refused before it reached the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownGate,
    Forbidden(Denial),
    /// Too many commands by this caller on this gate; retry after this long.
    RateLimited(Duration),
}

impl Refusal {
    /// The refusal in the one error shape (REST sends it as is; the WebSocket as an `error`
    /// frame).
    pub fn error(self, gate: &str) -> ApiError {
        match self {
            Refusal::UnknownGate => unknown_gate(gate),
            Refusal::Forbidden(denial) => forbidden(denial),
            Refusal::RateLimited(wait) => {
                let mut e = crate::ratelimit::rate_limited(wait, "commands on this gate");
                e.details["retry_after_ms"] = serde_json::json!(wait.as_millis() as u64);
                e
            }
        }
    }
}

/// Admits `command` and sends it to its gate, acks to `acks`.
pub async fn submit(app: &App, command: Command<'_>, acks: AckSink) -> Result<Submitted, Refusal> {
    let Command {
        caller,
        gate,
        action,
        id,
        ip,
        via,
    } = command;
    let at = policy::locate(app, gate).ok_or(Refusal::UnknownGate)?;
    policy::may(app, caller, Operation::Command(action), gate, &at.site)
        .map_err(Refusal::Forbidden)?;
    match app
        .limits
        .admit_command(&caller.actor, gate, action, id)
        .await
    {
        Ok(Admitted::New | Admitted::Retry) => {}
        Ok(Admitted::Conflict) => return Ok(Submitted::IdConflict),
        Err(wait) => return Err(Refusal::RateLimited(wait)),
    }
    app.fleet
        .command(gate, CommandId(id), action, Some(acks))
        .map_err(|_| Refusal::UnknownGate)?;
    audit(
        app,
        AuditRecord {
            at_ms: wall_ms(),
            actor: caller.actor.clone(),
            action: format!("gate.{}", action.as_str()),
            target: Some(format!("gate:{gate}")),
            source_ip: Some(ip.to_string()),
            details: serde_json::json!({ "command": id.to_string(), "via": via.as_str() })
                .to_string(),
        },
    );
    Ok(Submitted::Sent)
}

/// Submits `command` (as [`submit`]) with acks collected here, and waits up to `limit` for
/// its first status, or with `terminal` for its terminal one; answers the last heard (none
/// when nothing came in time). For REST, whose answer is one status.
pub async fn submit_and_wait(
    app: &App,
    command: Command<'_>,
    limit: Duration,
    terminal: bool,
) -> Result<Option<CommandStatus>, Refusal> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Ack>();
    let sink: AckSink = std::sync::Arc::new(move |_: &GateId, ack| {
        let _ = tx.send(ack);
    });
    if submit(app, command, sink).await? == Submitted::IdConflict {
        // The id names another command lately (another gate or action): never a second.
        return Ok(Some(CommandStatus::Rejected(RejectReason::IdConflict)));
    }
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = None;
    // Until the terminal status (or the first one); a gate that went away or the bound
    // running out ends it with what is known.
    while let Ok(Some(ack)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        last = Some(ack.status);
        if ack.status.is_terminal() || !terminal {
            break;
        }
    }
    Ok(last)
}

/// Queues a command's audit record on the event log. A fleet without one (tools and tests
/// that run without a store's event log) writes it straight away in a task, logging a
/// failure with the record.
fn audit(app: &App, record: AuditRecord) {
    if let Some(log) = &app.fleet.context().eventlog {
        log.audit(record);
        return;
    }
    let access = app.access.clone();
    tokio::spawn(async move {
        if let Err(e) = access.audit(record.clone()).await {
            tracing::error!(error = %e, ?record, "a command's audit record was not written");
        }
    });
}
