//! The `gatehouse.v1` protocol: client frames as parsed, server frames as written, close
//! codes. `docs/websocket-protocol.md` is the document for client authors; this file and it
//! must say the same.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The subprotocol a client must ask for.
pub const SUBPROTOCOL: &str = "gatehouse.v1";

/// Close codes (CONTRACTS.md, "WebSocket").
pub mod close {
    /// RFC 6455: the client broke the framing rules (an unmasked frame, reserved bits, an
    /// orphan continuation, a fragmented or over-long control frame, an unknown opcode).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// RFC 6455: a text frame that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Not authenticated, the token expired, or the account went away.
    pub const UNAUTHENTICATED: u16 = 4401;
    /// A grant the session relied on was revoked.
    pub const GRANT_REVOKED: u16 = 4403;
    /// Nothing received for the idle timeout.
    pub const IDLE: u16 = 4408;
    /// A frame or message over the size limit.
    pub const TOO_LARGE: u16 = 4413;
    /// Frames sent faster than the per-connection limit.
    pub const RATE_LIMITED: u16 = 4429;
    /// The server is shutting down: resume elsewhere.
    pub const SHUTTING_DOWN: u16 = 4500;
    /// The client did not read fast enough: resume with `since`.
    pub const TOO_SLOW: u16 = 4509;
}

/// A client frame, once parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    Auth {
        id: Option<String>,
        token: String,
    },
    Subscribe {
        id: Option<String>,
        gates: Vec<String>,
        sites: Vec<String>,
        since: BTreeMap<String, u64>,
    },
    Unsubscribe {
        id: Option<String>,
        gates: Vec<String>,
        sites: Vec<String>,
    },
    Command {
        id: uuid::Uuid,
        gate: String,
        action: String,
    },
    Ping {
        id: Option<String>,
    },
}

impl ClientMsg {
    /// The request's id, as the client spelled it.
    pub fn id(&self) -> Option<String> {
        match self {
            ClientMsg::Auth { id, .. }
            | ClientMsg::Subscribe { id, .. }
            | ClientMsg::Unsubscribe { id, .. }
            | ClientMsg::Ping { id } => id.clone(),
            ClientMsg::Command { id, .. } => Some(id.to_string()),
        }
    }
}

/// Why a frame was refused, as an `error` frame. The connection stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
    /// The request's `id`, when one could be read.
    pub id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthBody {
    id: Option<String>,
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    id: Option<String>,
    #[serde(default)]
    gates: Vec<String>,
    #[serde(default)]
    sites: Vec<String>,
    #[serde(default)]
    since: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeBody {
    id: Option<String>,
    #[serde(default)]
    gates: Vec<String>,
    #[serde(default)]
    sites: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandBody {
    id: String,
    gate: String,
    action: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingBody {
    id: Option<String>,
}

/// Parses one text frame. Every failure names what is wrong and echoes the request's `id`
/// when the frame had a readable one.
pub fn parse(text: &str) -> Result<ClientMsg, FrameError> {
    let fail = |code, message: String, id: Option<String>| FrameError { code, message, id };
    let mut value: Value = serde_json::from_str(text)
        .map_err(|e| fail("malformed_json", format!("not JSON: {e}"), None))?;
    let Some(object) = value.as_object_mut() else {
        return Err(fail(
            "invalid_message",
            "a frame must be a JSON object".into(),
            None,
        ));
    };
    let id = object.get("id").and_then(Value::as_str).map(str::to_string);
    let kind = match object.remove("type") {
        Some(Value::String(kind)) => kind,
        Some(_) => {
            return Err(fail(
                "invalid_message",
                "`type` must be a string".into(),
                id,
            ));
        }
        None => return Err(fail("invalid_message", "`type` is missing".into(), id)),
    };
    fn body<T: serde::de::DeserializeOwned>(
        value: Value,
        id: &Option<String>,
    ) -> Result<T, FrameError> {
        serde_path_to_error::deserialize(value).map_err(|e| FrameError {
            code: "invalid_message",
            message: match e.path().to_string().as_str() {
                "." => e.inner().to_string(),
                path => format!("{path}: {}", e.inner()),
            },
            id: id.clone(),
        })
    }
    match kind.as_str() {
        "auth" => {
            let b: AuthBody = body(value, &id)?;
            Ok(ClientMsg::Auth {
                id: b.id,
                token: b.token,
            })
        }
        "subscribe" => {
            let b: SubscribeBody = body(value, &id)?;
            if b.gates.is_empty() && b.sites.is_empty() {
                return Err(fail(
                    "invalid_message",
                    "name at least one gate or site".into(),
                    id,
                ));
            }
            Ok(ClientMsg::Subscribe {
                id: b.id,
                gates: b.gates,
                sites: b.sites,
                since: b.since,
            })
        }
        "unsubscribe" => {
            let b: UnsubscribeBody = body(value, &id)?;
            if b.gates.is_empty() && b.sites.is_empty() {
                return Err(fail(
                    "invalid_message",
                    "name at least one gate or site".into(),
                    id,
                ));
            }
            Ok(ClientMsg::Unsubscribe {
                id: b.id,
                gates: b.gates,
                sites: b.sites,
            })
        }
        "command" => {
            let b: CommandBody = body(value, &id)?;
            let uuid = b.id.parse::<uuid::Uuid>().map_err(|_| {
                fail(
                    "invalid_message",
                    "id: a command's id must be a UUID".into(),
                    Some(b.id.clone()),
                )
            })?;
            Ok(ClientMsg::Command {
                id: uuid,
                gate: b.gate,
                action: b.action,
            })
        }
        "ping" => {
            let b: PingBody = body(value, &id)?;
            Ok(ClientMsg::Ping { id: b.id })
        }
        other => Err(fail(
            "unknown_type",
            format!("unknown message type {other:?} (auth, subscribe, unsubscribe, command, ping)"),
            id,
        )),
    }
}

/// A server frame of `kind` with `fields`, and the request `id` when it answers one.
pub fn frame(kind: &str, id: Option<&str>, fields: Map<String, Value>) -> String {
    let mut out = Map::with_capacity(fields.len() + 2);
    out.insert("type".into(), kind.into());
    if let Some(id) = id {
        out.insert("id".into(), id.into());
    }
    out.extend(fields);
    Value::Object(out).to_string()
}

/// An `error` frame.
pub fn error(id: Option<&str>, code: &str, message: &str, details: Option<Value>) -> String {
    let mut fields = Map::new();
    fields.insert("code".into(), code.into());
    fields.insert("message".into(), message.into());
    if let Some(details) = details {
        fields.insert("details".into(), details);
    }
    frame("error", id, fields)
}

/// An `ack` for command `id` on `gate`.
pub fn ack(id: &str, gate: &str, status: &str, reason: Option<&str>) -> String {
    let mut fields = Map::new();
    fields.insert("gate".into(), gate.into());
    fields.insert("status".into(), status.into());
    if let Some(reason) = reason {
        fields.insert("reason".into(), reason.into());
    }
    frame("ack", Some(id), fields)
}

/// `{"type":"ok","id":…}` and friends with no fields.
pub fn bare(kind: &str, id: Option<&str>) -> String {
    frame(kind, id, Map::new())
}

pub fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// `{"type":"auth_ok","id":…,"expires_at":…}`.
pub fn auth_ok(id: Option<&str>, expires_at: Option<u64>, role: &str) -> String {
    frame(
        "auth_ok",
        id,
        fields(json!({ "expires_at": expires_at, "role": role })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_type_parses() {
        assert_eq!(
            parse(r#"{"type":"auth","token":"t"}"#).unwrap(),
            ClientMsg::Auth {
                id: None,
                token: "t".into()
            }
        );
        let id = uuid::Uuid::new_v4();
        assert_eq!(
            parse(&format!(
                r#"{{"type":"command","id":"{id}","gate":"g","action":"open"}}"#
            ))
            .unwrap(),
            ClientMsg::Command {
                id,
                gate: "g".into(),
                action: "open".into()
            }
        );
        let ClientMsg::Subscribe { since, gates, .. } =
            parse(r#"{"type":"subscribe","id":"1","gates":["a"],"since":{"a":4}}"#).unwrap()
        else {
            panic!("a subscribe");
        };
        assert_eq!(gates, vec!["a".to_string()]);
        assert_eq!(since.get("a"), Some(&4));
        assert_eq!(
            parse(r#"{"type":"ping","id":"p"}"#).unwrap(),
            ClientMsg::Ping {
                id: Some("p".into())
            }
        );
    }

    #[test]
    fn bad_frames_say_what_is_wrong_and_echo_the_id() {
        assert_eq!(parse("{not json").unwrap_err().code, "malformed_json");
        assert_eq!(parse("[1]").unwrap_err().code, "invalid_message");
        assert_eq!(parse(r#"{"id":"1"}"#).unwrap_err().id.as_deref(), Some("1"));
        let e = parse(r#"{"type":"fly","id":"7"}"#).unwrap_err();
        assert_eq!((e.code, e.id.as_deref()), ("unknown_type", Some("7")));
        let e = parse(r#"{"type":"ping","id":"8","extra":1}"#).unwrap_err();
        assert_eq!(e.code, "invalid_message");
        assert!(e.message.contains("extra"), "{e:?}");
        let e = parse(r#"{"type":"subscribe","id":"9","gates":"a"}"#).unwrap_err();
        assert!(e.message.contains("gates"), "{e:?}");
        let e = parse(r#"{"type":"subscribe","id":"9"}"#).unwrap_err();
        assert_eq!(e.code, "invalid_message");
        let e = parse(r#"{"type":"command","id":"x","gate":"g","action":"open"}"#).unwrap_err();
        assert!(e.message.contains("UUID"), "{e:?}");
        let e = parse(r#"{"type":"subscribe","gates":["a"],"since":{"a":-1}}"#).unwrap_err();
        assert!(e.message.contains("since"), "{e:?}");
    }
}
