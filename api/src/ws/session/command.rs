//! `command`: decoded here, admitted and sent by the one command path (`crate::commands`),
//! acks back through the session's mailbox.

use std::sync::Arc;

use gatehouse_actors::gate::{Action, CommandStatus, RejectReason};
use gatehouse_actors::ids::GateId;
use gatehouse_actors::tree::gate::AckSink;
use serde_json::json;

use super::{SessionState, api_error};
use crate::commands::{self, Submitted, Via};
use crate::wire;
use crate::ws::msg::SessionMsg;
use crate::ws::protocol;

impl SessionState {
    pub(super) async fn command(&mut self, id: uuid::Uuid, gate: &str, action: &str) {
        let request = id.to_string();
        let rid = Some(request.as_str());
        let Ok(action) = action.parse::<Action>() else {
            return self.error(
                rid,
                "unknown_action",
                &format!("unknown action {action:?}"),
                Some(json!({ "field": "action" })),
            );
        };
        let Ok(gate_id) = gate.parse::<GateId>() else {
            let e = crate::policy::unknown_gate(gate);
            return self.send(api_error(rid, &e));
        };
        let me = self.me.clone();
        let acks: AckSink = Arc::new(move |gate: &GateId, ack| {
            let _ = me.send_message(SessionMsg::Ack {
                gate: gate.clone(),
                ack,
            });
        });
        let caller = self.caller().clone();
        let command = commands::Command {
            caller: &caller,
            gate: &gate_id,
            action,
            id,
            ip: self.ip,
            via: Via::WebSocket,
        };
        match commands::submit(&self.app, command, acks).await {
            Ok(Submitted::Sent) => {}
            Ok(Submitted::IdConflict) => {
                let (status, reason) =
                    wire::status(CommandStatus::Rejected(RejectReason::IdConflict));
                self.send(protocol::ack(&request, gate_id.as_str(), status, reason));
            }
            Err(refusal) => {
                let e = refusal.error(gate_id.as_str());
                self.send(api_error(rid, &e));
            }
        }
    }
}
