//! One command path: the same matrix of commands (every role and API keys, granted and not,
//! inside and outside a grant's time window, a site-limited key on another site, a caller
//! over its rate limit, a reused command id, an unknown gate) is given once over REST and once
//! over the WebSocket, each on a fresh stack. Both doors must reach the same decision, the one
//! CONTRACTS.md asks for, and leave the same audit records.

use std::collections::HashMap;

use gatehouse_actors::access::{AccessStore, ApiKeyRecord, Grant, GrantScope, Role, WeeklyWindow};
use gatehouse_api::auth::secrets;
use gatehouse_tests::rig::{Rig, WAIT};
use gatehouse_tests::stack::now_ms;
use gatehouse_tests::wsclient::WsClient;
use serde_json::{Value, json};
use uuid::Uuid;

/// Who gives a command: a user of the rig, or one of the API keys made here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    User(&'static str),
    Key(&'static str),
}

/// The API keys: (name, fixed id, site limit). Operators, all of them.
const KEYS: [(&str, u128, Option<&str>); 3] = [
    ("ops-key", 0x1001, None),
    ("north-key", 0x1002, Some("north")),
    ("south-key", 0x1003, Some("south")),
];

/// A command of the matrix. The ids are fixed so that both runs use the same ones.
struct Case {
    who: Who,
    action: &'static str,
    gate: &'static str,
    id: u128,
    /// The decision CONTRACTS.md asks for.
    expect: &'static str,
}

const fn case(
    who: Who,
    action: &'static str,
    gate: &'static str,
    id: u128,
    expect: &'static str,
) -> Case {
    Case {
        who,
        action,
        gate,
        id,
        expect,
    }
}

use Who::{Key, User};

/// The matrix, in order (later cases depend on earlier ones: the rate limit, the reused id).
/// The resident holds n1 (always), n2 (a window around now) and n3 (a window later today);
/// s1 is on the other site. `stop`, `lockout` and `unlock` move nothing.
const CASES: [Case; 24] = [
    case(User("admin"), "stop", "n1", 1, "completed"),
    case(User("admin"), "lockout", "n2", 2, "completed"),
    case(User("admin"), "unlock", "n2", 3, "completed"),
    case(User("op"), "stop", "s1", 4, "completed"),
    case(User("op"), "unlock", "n3", 5, "completed"),
    case(User("res"), "stop", "n1", 6, "completed"),
    case(User("res"), "stop", "n2", 7, "completed"),
    case(User("res"), "stop", "n3", 8, "forbidden:outside_window"),
    case(User("res"), "stop", "s1", 9, "forbidden:no_grant"),
    case(User("res"), "unlock", "n1", 10, "forbidden:role"),
    case(User("view"), "stop", "n1", 11, "forbidden:role"),
    case(User("view"), "lockout", "n1", 12, "forbidden:role"),
    case(Key("ops-key"), "stop", "s1", 13, "completed"),
    case(Key("north-key"), "stop", "n1", 14, "completed"),
    case(Key("south-key"), "stop", "n1", 15, "forbidden:other_site"),
    case(Key("south-key"), "stop", "s1", 16, "completed"),
    // A burst of five per caller and gate (the unlock above was the first), then the limit.
    case(User("op"), "release", "n3", 18, "completed"),
    case(User("op"), "release", "n3", 19, "completed"),
    case(User("op"), "release", "n3", 20, "completed"),
    case(User("op"), "release", "n3", 21, "completed"),
    case(User("op"), "release", "n3", 22, "rate_limited"),
    // Id 4 named a stop on s1: the same again is a retry, on another gate a conflict.
    case(User("op"), "stop", "s1", 4, "completed"),
    case(User("op"), "stop", "n1", 4, "rejected:id_conflict"),
    case(User("admin"), "stop", "nope", 23, "unknown_gate"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    Rest,
    WebSocket,
}

/// Grants and keys the matrix needs, on `rig`'s store. Answers each key's secret.
async fn prepare(rig: &Rig) -> HashMap<&'static str, String> {
    let minute = ((now_ms() / 60_000) % 1440) as u16;
    let window = |from: u16, to: u16| WeeklyWindow {
        days: 0x7f,
        start: (minute + from) % 1440,
        end: (minute + to) % 1440,
    };
    let res = rig.stack.users["res"].0;
    for (gate, windows) in [
        ("n2", vec![window(1440 - 60, 60)]),
        ("n3", vec![window(120, 180)]),
    ] {
        rig.stack
            .store
            .create_grant(
                Grant {
                    id: Uuid::new_v4(),
                    user: res,
                    scope: GrantScope::Gate(gate.parse().unwrap()),
                    windows,
                },
                now_ms(),
            )
            .await
            .unwrap();
    }
    let mut secrets_by_name = HashMap::new();
    for (name, id, site) in KEYS {
        let secret = secrets::api_key();
        rig.stack
            .store
            .create_api_key(ApiKeyRecord {
                id: Uuid::from_u128(id),
                name: name.to_string(),
                hash: secrets::digest(&secret),
                role: Role::Operator,
                site: site.map(|s| s.parse().unwrap()),
                created_at_ms: now_ms(),
                revoked_at_ms: None,
            })
            .await
            .unwrap();
        secrets_by_name.insert(name, secret);
    }
    secrets_by_name
}

/// `status` or `status:reason` of a command status body or ack.
fn status(v: &Value) -> String {
    match v["reason"].as_str() {
        Some(reason) => format!("{}:{reason}", v["status"].as_str().unwrap()),
        None => v["status"].as_str().unwrap().to_string(),
    }
}

/// `code` or `code:reason` of an error.
fn refusal(e: &Value) -> String {
    match e["details"]["reason"].as_str() {
        Some(reason) => format!("{}:{reason}", e["code"].as_str().unwrap()),
        None => e["code"].as_str().unwrap().to_string(),
    }
}

/// Runs the matrix through `door`; answers each case's decision.
async fn run(rig: &Rig, door: Door) -> Vec<String> {
    let keys = prepare(rig).await;
    let token = |who: Who| match who {
        User(name) => rig.stack.token(name),
        Key(name) => keys[name].clone(),
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut sockets: HashMap<Who, WsClient> = HashMap::new();
    let mut decisions = Vec::new();
    for c in &CASES {
        let id = Uuid::from_u128(c.id);
        let decision = match door {
            Door::Rest => {
                let r = http
                    .post(
                        rig.stack
                            .url(&format!("/api/v1/gates/{}/commands?wait=true", c.gate)),
                    )
                    .bearer_auth(token(c.who))
                    .json(&json!({"id": id, "action": c.action}))
                    .send()
                    .await
                    .unwrap();
                let code = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                match code {
                    200 | 202 => status(&body),
                    _ => refusal(&body["error"]),
                }
            }
            Door::WebSocket => {
                let ws = match sockets.entry(c.who) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let (ws, _) = WsClient::authed(rig.stack.addr, &token(c.who))
                            .await
                            .unwrap();
                        v.insert(ws)
                    }
                };
                ws.send(json!({"type": "command", "id": id, "gate": c.gate, "action": c.action}))
                    .await
                    .unwrap();
                let sid = id.to_string();
                let (last, _) = ws
                    .until(WAIT, |f| {
                        f["id"] == sid.as_str()
                            && (f["type"] == "error"
                                || (f["type"] == "ack" && f["status"] != "accepted"))
                    })
                    .await
                    .unwrap();
                if last["type"] == "ack" {
                    status(&last)
                } else {
                    refusal(&last)
                }
            }
        };
        decisions.push(decision);
    }
    decisions
}

/// The command audit records of `rig`, with actors by name, in commit order; waits (bounded)
/// until `count` of them are committed (they go through the event log's group commit).
async fn command_audit(rig: &Rig, count: usize) -> Vec<(String, String, Option<String>, Value)> {
    let mut names: HashMap<String, String> = rig
        .stack
        .users
        .iter()
        .map(|(name, (id, _))| (format!("user:{id}"), name.to_string()))
        .collect();
    for (name, id, _) in KEYS {
        names.insert(format!("key:{}", Uuid::from_u128(id)), name.to_string());
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let records: Vec<_> = rig
            .stack
            .store
            .audit_after(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.action.starts_with("gate."))
            .collect();
        if records.len() >= count {
            return records
                .into_iter()
                .map(|r| {
                    assert_eq!(r.source_ip.as_deref(), Some("127.0.0.1"), "{r:?}");
                    (
                        names[&r.actor].clone(),
                        r.action,
                        r.target,
                        serde_json::from_str(&r.details).unwrap(),
                    )
                })
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {count} command audit records: {records:?}",
            records.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_websocket_decide_every_command_alike_and_audit_it_alike() {
    let (rest_rig, ws_rig) = tokio::join!(Rig::start(), Rig::start());
    let (rest, ws) = tokio::join!(run(&rest_rig, Door::Rest), run(&ws_rig, Door::WebSocket));
    let expected: Vec<String> = CASES.iter().map(|c| c.expect.to_string()).collect();
    for (i, c) in CASES.iter().enumerate() {
        assert_eq!(
            (rest[i].as_str(), ws[i].as_str()),
            (c.expect, c.expect),
            "case {i}: {:?} {} {} (REST, WebSocket)",
            c.who,
            c.action,
            c.gate
        );
    }
    assert_eq!(rest, expected);

    // A record for each command that reached its gate, a retry included (it was given), and
    // none for a refusal or a conflict (nothing was done).
    let given = CASES.iter().filter(|c| c.expect == "completed").count();
    let (rest_audit, ws_audit) = tokio::join!(
        command_audit(&rest_rig, given),
        command_audit(&ws_rig, given)
    );
    assert_eq!(rest_audit.len(), given, "{rest_audit:?}");
    let strip_via = |records: &[(String, String, Option<String>, Value)], via: &str| {
        records
            .iter()
            .map(|(who, action, target, details)| {
                assert_eq!(details["via"], via, "{details}");
                let mut details = details.clone();
                details.as_object_mut().unwrap().remove("via");
                (who.clone(), action.clone(), target.clone(), details)
            })
            .collect::<Vec<_>>()
    };
    let rest_audit = strip_via(&rest_audit, "rest");
    let ws_audit = strip_via(&ws_audit, "websocket");
    assert_eq!(
        rest_audit, ws_audit,
        "the same audit records from both doors"
    );
    // And they say who did what to which gate, with the command's id.
    let mine: Vec<_> = CASES
        .iter()
        .filter(|c| c.expect == "completed")
        .map(|c| {
            let who = match c.who {
                User(n) | Key(n) => n.to_string(),
            };
            (
                who,
                format!("gate.{}", c.action),
                Some(format!("gate:{}", c.gate)),
                json!({"command": Uuid::from_u128(c.id).to_string()}),
            )
        })
        .collect();
    assert_eq!(rest_audit, mine);

    rest_rig.stop().await;
    ws_rig.stop().await;
}
