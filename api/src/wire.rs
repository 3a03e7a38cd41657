//! The JSON spelling of events, gate state and command statuses (pinned in
//! `docs/websocket-protocol.md`). Events and statuses read the same on REST and the WebSocket;
//! REST's gate body is its own typed schema (`id`, `name`, `controller` besides the state), the
//! WebSocket's gate state is [`gate_state`].
//!
//! Events are flat objects: the event's own fields (`gate`, `seq`, `at_ms`, `kind` and the
//! kind's fields) next to the gate's state right after it (`state`, `flags`, `position`,
//! `fault_code`, `latched_fault`, `cycles`) and its `cause` (the command id, `local` or
//! `system`).

use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::gate::{Cause, CommandStatus, EventKind, GateSnapshot};
use serde_json::{Map, Value, json};

/// A command status as `(status, reason)`; the reason only for the last three statuses.
pub fn status(status: CommandStatus) -> (&'static str, Option<&'static str>) {
    status.wire()
}

/// `command id`, `local` or `system`.
pub fn cause(cause: Cause) -> String {
    match cause {
        Cause::Command(id) => id.to_string(),
        Cause::Local => "local".into(),
        Cause::System => "system".into(),
    }
}

/// The gate's state fields, added to `out`.
pub fn put_state(out: &mut Map<String, Value>, snapshot: &GateSnapshot) {
    out.insert("state".into(), snapshot.state.as_str().into());
    out.insert(
        "flags".into(),
        json!({
            "obstructed": snapshot.flags.obstructed,
            "locked_out": snapshot.flags.locked_out,
            "held_open": snapshot.flags.held_open,
        }),
    );
    out.insert("position".into(), json!(snapshot.position));
    out.insert("fault_code".into(), json!(snapshot.fault_code));
    out.insert(
        "latched_fault".into(),
        json!(snapshot.latched_fault.map(|r| r.as_str())),
    );
    out.insert("cycles".into(), json!(snapshot.cycles));
}

/// A gate's state at `seq`: `{gate, seq, state, flags, …}`.
pub fn gate_state(gate: &str, seq: u64, snapshot: &GateSnapshot) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("gate".into(), gate.into());
    out.insert("seq".into(), seq.into());
    put_state(&mut out, snapshot);
    out
}

/// An event, flat.
pub fn event(event: &GateEvent) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("gate".into(), event.gate.as_str().into());
    out.insert("seq".into(), event.seq.into());
    out.insert("at_ms".into(), event.at_ms.into());
    let kind = match event.kind {
        EventKind::StateChanged { from } => {
            out.insert("from".into(), from.as_str().into());
            "state_changed"
        }
        EventKind::Obstruction { obstructed } => {
            out.insert("obstructed".into(), obstructed.into());
            "obstruction"
        }
        EventKind::AutoCloseWarning { closes_in_ms } => {
            out.insert("closes_in_ms".into(), closes_in_ms.into());
            "auto_close_warning"
        }
        EventKind::LeftOpen { open_for_ms } => {
            out.insert("open_for_ms".into(), open_for_ms.into());
            "left_open"
        }
        EventKind::LockedOut => "locked_out",
        EventKind::Unlocked => "unlocked",
        EventKind::HeldOpen => "held_open",
        EventKind::Released => "released",
        EventKind::MaintenanceDue { plan } => {
            out.insert("plan".into(), plan.to_string().into());
            "maintenance_due"
        }
        EventKind::MaintenanceOverdue { plan } => {
            out.insert("plan".into(), plan.to_string().into());
            "maintenance_overdue"
        }
        EventKind::CommandFinished {
            command,
            action,
            status: s,
        } => {
            let (s, reason) = status(s);
            out.insert("command".into(), command.to_string().into());
            out.insert("action".into(), action.as_str().into());
            out.insert("status".into(), s.into());
            if let Some(reason) = reason {
                out.insert("reason".into(), reason.into());
            }
            "command_finished"
        }
    };
    out.insert("kind".into(), kind.into());
    out.insert("cause".into(), cause(event.cause).into());
    put_state(&mut out, &event.snapshot);
    out
}

#[cfg(test)]
mod tests {
    use gatehouse_actors::gate::{Action, FailReason, GateState};
    use gatehouse_actors::ids::{CommandId, ControllerId, GateId};

    use super::*;

    fn sample(kind: EventKind, cause: Cause) -> GateEvent {
        GateEvent {
            gate: "north".parse::<GateId>().unwrap(),
            controller: "c1".parse::<ControllerId>().unwrap(),
            seq: 7,
            at_ms: 1_700_000_000_000,
            kind,
            cause,
            snapshot: GateSnapshot {
                state: GateState::Open,
                position: Some(100),
                ..GateSnapshot::default()
            },
        }
    }

    #[test]
    fn an_event_is_flat_with_its_state_and_cause() {
        let id = CommandId(uuid::Uuid::new_v4());
        let e = event(&sample(
            EventKind::StateChanged {
                from: GateState::Opening,
            },
            Cause::Command(id),
        ));
        let v = Value::Object(e);
        assert_eq!(v["gate"], "north");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["kind"], "state_changed");
        assert_eq!(v["from"], "opening");
        assert_eq!(v["state"], "open");
        assert_eq!(v["position"], 100);
        assert_eq!(v["flags"]["obstructed"], false);
        assert_eq!(v["cause"], id.to_string());
        assert!(v.get("snapshot").is_none(), "{v}");
    }

    #[test]
    fn a_finished_command_carries_status_and_reason_as_strings() {
        let id = CommandId(uuid::Uuid::new_v4());
        let v = Value::Object(event(&sample(
            EventKind::CommandFinished {
                command: id,
                action: Action::Close,
                status: CommandStatus::Failed(FailReason::TravelTimeout),
            },
            Cause::System,
        )));
        assert_eq!(v["kind"], "command_finished");
        assert_eq!(v["command"], id.to_string());
        assert_eq!(v["action"], "close");
        assert_eq!(v["status"], "failed");
        assert_eq!(v["reason"], "travel_timeout");
        assert_eq!(v["cause"], "system");
    }
}

/// The names the wire accepts and sends, as enums for the OpenAPI document: fields typed
/// `String` in the handlers (so that a wrong value gets our own error, naming the field) are
/// documented with these, so that clients and schema-driven tools know the allowed values.
pub mod names {
    use utoipa::ToSchema;

    /// A gate action.
    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    #[allow(dead_code)]
    pub enum ActionName {
        Open,
        Close,
        Stop,
        Toggle,
        HoldOpen,
        Release,
        Lockout,
        Unlock,
        Reset,
    }

    /// A role.
    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    #[allow(dead_code)]
    pub enum RoleName {
        Admin,
        Operator,
        Resident,
        Viewer,
    }

    /// A command's status.
    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    #[allow(dead_code)]
    pub enum StatusName {
        Pending,
        Accepted,
        Completed,
        Rejected,
        Failed,
        TimedOut,
    }

    /// How a controller is reached.
    #[derive(ToSchema)]
    #[schema(rename_all = "kebab-case")]
    #[allow(dead_code)]
    pub enum TransportName {
        Tcp,
        RtuOverTcp,
        Rtu,
    }

    /// A serial line's parity.
    #[derive(ToSchema)]
    #[schema(rename_all = "lowercase")]
    #[allow(dead_code)]
    pub enum ParityName {
        None,
        Even,
        Odd,
    }

    /// What a notification rule listens for.
    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    #[allow(dead_code)]
    pub enum TriggerName {
        Fault,
        Obstruction,
        LeftOpen,
        LinkDown,
        MaintenanceDue,
        MaintenanceOverdue,
        LoginLockout,
    }

    /// Where a gate stands against a maintenance plan.
    #[derive(ToSchema)]
    #[schema(rename_all = "lowercase")]
    #[allow(dead_code)]
    pub enum LevelName {
        Ok,
        Due,
        Overdue,
    }
}
