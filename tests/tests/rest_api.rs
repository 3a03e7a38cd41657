//! The REST API end to end: the real route table served over TCP, in front of a runtime booted
//! from a SQLite store against the in-process simulator farm. Logins, refresh-token rotation
//! with reuse detection, logout, bearer authentication, gate reads, commands (accepted,
//! waited for, idempotent by id), event paging, and who may do what (CONTRACTS.md "Roles").
//!
//! Each test builds its own rig (farm, store, runtime, server) and tears it down, so that the
//! tests run in parallel without seeing each other's gates move.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::time::Duration;

use gatehouse_actors::access::{AccessStore, Grant, GrantScope, Role, WeeklyWindow};
use gatehouse_actors::gate::HwOp;
use gatehouse_actors::ids::GateId;
use gatehouse_api::auth::tokens::TokenKeys;
use gatehouse_api::ws::WsConfig;
use gatehouse_sim::{ControllerSpec as SimControllerSpec, Farm, FarmSpec, Fault};
use gatehouse_tests::http::{Reply, RestRig, assert_error, ids, keys_of, send, set};
use gatehouse_tests::stack::{FleetText, StackSpec, now_ms, password_of};
use serde_json::{Value, json};
use uuid::Uuid;

/// Bounds every wait in these tests. Longer than the API's own bound on `?wait=true` (30 s),
/// so that a command that waits its full bound still gets its answer.
const WAIT: Duration = Duration::from_secs(40);

/// Simulated full travel: a command completes within about a second.
const TRAVEL: Duration = Duration::from_millis(500);

const NORTH_GATES: [&str; 3] = ["n1", "n2", "n3"];
const SOUTH_GATES: [&str; 2] = ["s1", "s2"];
const USERS: [(&str, Role); 4] = [
    ("admin", Role::Admin),
    ("op", Role::Operator),
    ("res", Role::Resident),
    ("view", Role::Viewer),
];

fn gate_id(s: &str) -> GateId {
    GateId::new(s).expect("a valid slug")
}

/// A weekly window that is closed today and on the days either side of it (in any time
/// zone): one hour on the day three days from now, in UTC.
fn never_now_window() -> WeeklyWindow {
    let days_since_epoch = now_ms() / 86_400_000;
    // 1970-01-01 was a Thursday; 0 = Monday.
    let today = ((days_since_epoch + 3) % 7) as u8;
    let other = (today + 3) % 7;
    WeeklyWindow {
        days: 1 << other,
        start: 0,
        end: 60,
    }
}

/// Farm, store, runtime and API server for one test, with a client in front.
struct Rig(RestRig);

impl Deref for Rig {
    type Target = RestRig;

    fn deref(&self) -> &RestRig {
        &self.0
    }
}

impl Rig {
    async fn start() -> Rig {
        let profiles =
            gatehouse_adapters::profile::ProfileSet::builtin().expect("the built-in profiles load");
        let farm = Farm::start(FarmSpec {
            controllers: vec![
                SimControllerSpec::new("north", "generic", [1, 2, 3]).with_travel(TRAVEL),
                SimControllerSpec::new("south", "came-zlb30", [1, 2]).with_travel(TRAVEL),
            ],
            profiles,
        })
        .await
        .expect("the farm starts");
        let north = farm.controller("north").unwrap().local_addr();
        let south = farm.controller("south").unwrap().local_addr();
        let mut fleet = FleetText::default()
            .site("north", "North", "UTC")
            .site("south", "South", "UTC")
            .controller("north-ctl", "north", "generic", north)
            .controller("south-ctl", "south", "came-zlb30", south);
        for (gates, controller) in [(&NORTH_GATES[..], "north-ctl"), (&SOUTH_GATES, "south-ctl")] {
            for (unit, g) in gates.iter().enumerate() {
                fleet = fleet.gate(g, &format!("Gate {g}"), controller, unit as u8 + 1);
            }
        }
        // Users straight into the store; every gate up and closed before the stack answers.
        let spec = StackSpec {
            fleet: fleet.text(),
            users: USERS.to_vec(),
            ws: WsConfig::default(),
            wait_closed: true,
            bus_capacity: None,
            maintenance_check: gatehouse_tests::stack::TEST_MAINTENANCE_CHECK,
            notify: None,
            blobs: None,
            monthly_reports: false,
        };
        let rig = RestRig::start(farm, spec, WAIT).await;

        // Grants name gates, which exist in the store once the boot has seeded the fleet.
        let resident = rig.user("res");
        for (gate, windows) in [("n1", vec![]), ("n2", vec![never_now_window()])] {
            rig.stack
                .store
                .create_grant(
                    Grant {
                        id: Uuid::new_v4(),
                        user: resident,
                        scope: GrantScope::Gate(gate_id(gate)),
                        windows,
                    },
                    now_ms(),
                )
                .await
                .expect("the grant is created");
        }
        Rig(rig)
    }

    async fn shutdown(self) {
        self.0.shutdown().await;
    }

    /// The id of `user`, as the API spells it.
    fn user_id(&self, user: &str) -> String {
        self.user(user).to_string()
    }

    /// Sends `action` with `?wait=true` and asserts it completed.
    async fn complete(&self, token: &str, gate: &str, action: &str) -> Reply {
        let id = Uuid::new_v4();
        let reply = self.command(token, gate, id, action, true).await;
        assert_eq!(reply.status, 200, "{action} on {gate}: {reply:?}");
        assert_eq!(
            reply.body["status"], "completed",
            "{action} on {gate}: {reply:?}"
        );
        reply
    }

    /// Polls the gate through the API until its state is `state`.
    async fn wait_api_state(&self, token: &str, gate: &str, state: &str) -> Value {
        let path = format!("/api/v1/gates/{gate}");
        let waited = format!("{gate} reach {state}");
        self.until(token, &path, &waited, |body| {
            (body["state"] == state).then(|| body.clone())
        })
        .await
    }

    /// Reads the gate's first 50 events until `found` picks something out of them.
    async fn wait_events<T>(
        &self,
        token: &str,
        gate: &str,
        found: impl Fn(&[Value]) -> Option<T>,
    ) -> T {
        let path = format!("/api/v1/gates/{gate}/events?after=0&limit=50");
        self.until(token, &path, "what was looked for", |body| {
            let events = body["events"]
                .as_array()
                .unwrap_or_else(|| panic!("no `events` array: {body}"));
            found(events)
        })
        .await
    }

    /// Accepted `open` writes the simulator received for a north unit.
    fn open_writes(&self, unit: u8) -> usize {
        self.farm
            .controller("north")
            .unwrap()
            .writes()
            .iter()
            .filter(|w| w.unit == unit && w.op == Some(HwOp::Open) && w.accepted)
            .count()
    }
}

/// Asserts one gate object of the wire format.
#[track_caller]
fn assert_gate_object(gate: &Value, id: &str) {
    assert_eq!(
        keys_of(gate),
        set(&[
            "id",
            "site",
            "controller",
            "name",
            "state",
            "flags",
            "position",
            "fault_code",
            "cycles",
            "seq"
        ]),
        "{gate}"
    );
    assert_eq!(gate["id"], id, "{gate}");
    let (site, controller) = if id.starts_with('n') {
        ("north", "north-ctl")
    } else {
        ("south", "south-ctl")
    };
    assert_eq!(gate["site"], site, "{gate}");
    assert_eq!(gate["controller"], controller, "{gate}");
    assert_eq!(gate["name"], format!("Gate {id}"), "{gate}");
    assert!(gate["state"].is_string(), "{gate}");
    assert_eq!(
        keys_of(&gate["flags"]),
        set(&["obstructed", "locked_out", "held_open"]),
        "{gate}"
    );
    for flag in ["obstructed", "locked_out", "held_open"] {
        assert!(gate["flags"][flag].is_boolean(), "{gate}");
    }
    assert!(
        gate["position"].is_null() || gate["position"].is_u64(),
        "{gate}"
    );
    assert!(
        gate["fault_code"].is_null() || gate["fault_code"].is_u64(),
        "{gate}"
    );
    assert!(
        gate["cycles"].is_null() || gate["cycles"].is_u64(),
        "{gate}"
    );
    assert!(gate["seq"].is_u64(), "{gate}");
}

/// Whether an event belongs to command `id`, whichever way the cause is spelled (the
/// contract's bare id; `{"command": id}`; or a `command_finished` event's `command` field).
fn names_command(event: &Value, id: Uuid) -> bool {
    let id = id.to_string();
    event["cause"] == id.as_str()
        || event["cause"]["command"] == id.as_str()
        || event["command"] == id.as_str()
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_answers_tokens_and_the_user_and_refuses_wrong_passwords_and_unknown_users_alike() {
    let rig = Rig::start().await;
    let before = now_ms() / 1000;

    let reply = rig.login("op", &password_of("op")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = &reply.body;
    assert_eq!(
        keys_of(body),
        set(&[
            "access_token",
            "token_type",
            "expires_at",
            "refresh_token",
            "user"
        ]),
        "{body}"
    );
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert!(
        body["access_token"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert!(
        body["refresh_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    let expires_at = body["expires_at"]
        .as_u64()
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        expires_at > before && expires_at <= now_ms() / 1000 + 24 * 3600,
        "expires_at is in unix seconds, in the near future: {body}"
    );
    assert_eq!(
        keys_of(&body["user"]),
        set(&["id", "username", "role"]),
        "{body}"
    );
    assert_eq!(body["user"]["id"], rig.user_id("op"), "{body}");
    assert_eq!(body["user"]["username"], "op", "{body}");
    assert_eq!(body["user"]["role"], "operator", "{body}");

    // The access token works.
    let token = body["access_token"].as_str().unwrap();
    let me = rig.get(token, "/api/v1/auth/me").await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(
        me.body,
        json!({"id": rig.user_id("op"), "username": "op", "role": "operator"})
    );

    // A wrong password and an unknown user get the same answer.
    let wrong = rig.login("op", "not-the-password-at-all").await;
    let unknown = rig.login("nobody", &password_of("op")).await;
    let wrong_error = assert_error(&wrong, 401, "invalid_credentials");
    let unknown_error = assert_error(&unknown, 401, "invalid_credentials");
    assert_eq!(wrong_error["message"], unknown_error["message"]);
    assert_eq!(wrong_error["details"], unknown_error["details"]);
    assert_ne!(
        wrong.request_id, unknown.request_id,
        "request ids are per request"
    );

    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_the_token_and_a_reused_token_revokes_its_whole_family() {
    let rig = Rig::start().await;
    let login = rig.login("admin", &password_of("admin")).await;
    assert_eq!(login.status, 200, "{login:?}");
    let first = login.body["refresh_token"].as_str().unwrap().to_owned();

    // Rotation: a new access token and a new refresh token, same shape as a login.
    let rotated = rig
        .post_anonymous("/api/v1/auth/refresh", json!({ "refresh_token": first }))
        .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    assert_eq!(
        keys_of(&rotated.body),
        set(&[
            "access_token",
            "token_type",
            "expires_at",
            "refresh_token",
            "user"
        ]),
        "{rotated:?}"
    );
    assert_eq!(rotated.body["token_type"], "Bearer");
    assert_eq!(rotated.body["user"]["username"], "admin");
    assert_eq!(rotated.body["user"]["role"], "admin");
    let second = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first, "refresh hands out a new refresh token");
    let access = rotated.body["access_token"].as_str().unwrap();
    assert_eq!(rig.get(access, "/api/v1/auth/me").await.status, 200);

    // The second one rotates once more: a chain works, not just one step.
    let rotated = rig
        .post_anonymous("/api/v1/auth/refresh", json!({ "refresh_token": second }))
        .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let third = rotated.body["refresh_token"].as_str().unwrap().to_owned();

    // Presenting a used token again: reuse, and the family's newest token dies with it.
    let reused = rig
        .post_anonymous("/api/v1/auth/refresh", json!({ "refresh_token": first }))
        .await;
    assert_error(&reused, 401, "refresh_token_reused");
    let newest = rig
        .post_anonymous("/api/v1/auth/refresh", json!({ "refresh_token": third }))
        .await;
    assert_error(&newest, 401, "invalid_refresh_token");

    // Another login starts a new family, unaffected.
    let fresh = rig.login("admin", &password_of("admin")).await;
    let fresh_token = fresh.body["refresh_token"].as_str().unwrap().to_owned();
    let ok = rig
        .post_anonymous(
            "/api/v1/auth/refresh",
            json!({ "refresh_token": fresh_token }),
        )
        .await;
    assert_eq!(ok.status, 200, "a new family is not revoked: {ok:?}");

    // Garbage.
    let garbage = rig
        .post_anonymous(
            "/api/v1/auth/refresh",
            json!({ "refresh_token": "not-a-token-we-ever-issued" }),
        )
        .await;
    assert_error(&garbage, 401, "invalid_refresh_token");

    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_answers_204_and_its_refresh_token_is_refused_afterwards() {
    let rig = Rig::start().await;
    let login = rig.login("view", &password_of("view")).await;
    assert_eq!(login.status, 200, "{login:?}");
    let refresh = login.body["refresh_token"].as_str().unwrap().to_owned();

    let out = rig
        .post_anonymous("/api/v1/auth/logout", json!({ "refresh_token": refresh }))
        .await;
    assert_eq!(out.status, 204, "{out:?}");
    assert_eq!(out.body, Value::Null, "a 204 has no body: {out:?}");

    let after = rig
        .post_anonymous("/api/v1/auth/refresh", json!({ "refresh_token": refresh }))
        .await;
    assert_eq!(after.status, 401, "{after:?}");
    let code = after.body["error"]["code"].as_str().unwrap_or_default();
    assert!(
        code == "invalid_refresh_token" || code == "refresh_token_reused",
        "a logged-out token is refused as invalid (or reused): {after:?}"
    );
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_and_the_gate_endpoints_need_a_valid_bearer_token() {
    let rig = Rig::start().await;
    let admin = rig.user_id("admin");

    // An expired token, signed by the server's own key.
    let an_hour_ago = now_ms() / 1000 - 3600;
    let (expired, _) = rig
        .stack
        .keys
        .issue(&admin, Role::Admin, an_hour_ago)
        .expect("a token");
    // A well-formed token from a key the server does not know.
    let stranger = TokenKeys::ephemeral().expect("another key");
    let (foreign, _) = stranger
        .issue(&admin, Role::Admin, now_ms() / 1000)
        .expect("a token");

    for path in ["/api/v1/auth/me", "/api/v1/gates", "/api/v1/gates/n1"] {
        let none = send(rig.client.get(rig.url(path))).await;
        assert_error(&none, 401, "unauthenticated");
        for (what, token) in [
            ("garbage", "garbage.token.here"),
            ("expired", expired.as_str()),
            ("foreign", foreign.as_str()),
        ] {
            let reply = rig.get(token, path).await;
            assert_eq!(reply.status, 401, "{what} token on {path}: {reply:?}");
            assert_error(&reply, 401, "unauthenticated");
        }
        // Not a bearer scheme.
        let basic = send(
            rig.client
                .get(rig.url(path))
                .header("authorization", "Basic YWRtaW46YWRtaW4="),
        )
        .await;
        assert_error(&basic, 401, "unauthenticated");
    }
    let commanded = send(
        rig.client
            .post(rig.url("/api/v1/gates/n1/commands"))
            .json(&json!({"id": Uuid::new_v4(), "action": "open"})),
    )
    .await;
    assert_error(&commanded, 401, "unauthenticated");

    // A current token of the server's key works, for every role.
    for (name, role) in USERS {
        let token = rig.token(name).await;
        let me = rig.get(&token, "/api/v1/auth/me").await;
        assert_eq!(me.status, 200, "{me:?}");
        assert_eq!(
            me.body,
            json!({"id": rig.user_id(name), "username": name, "role": role.as_str()})
        );
    }
    rig.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Reading gates
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_list_shows_every_gate_to_staff_and_only_granted_gates_to_a_resident() {
    let rig = Rig::start().await;
    let all: Vec<String> = ["n1", "n2", "n3", "s1", "s2"].map(String::from).to_vec();
    for user in ["admin", "op", "view"] {
        let token = rig.token(user).await;
        let reply = rig.get(&token, "/api/v1/gates").await;
        assert_eq!(reply.status, 200, "{user}: {reply:?}");
        assert_eq!(keys_of(&reply.body), set(&["gates"]), "{reply:?}");
        assert_eq!(ids(&reply.body["gates"]), all, "{user}: {reply:?}");
        for gate in reply.body["gates"].as_array().unwrap() {
            let id = gate["id"].as_str().unwrap();
            assert_gate_object(gate, id);
            assert_eq!(gate["state"], "closed", "{gate}");
            assert_eq!(
                gate["flags"],
                json!({"obstructed": false, "locked_out": false, "held_open": false})
            );
            assert!(
                gate["seq"].as_u64().unwrap() >= 1,
                "booting logged an event: {gate}"
            );
        }
    }
    let resident = rig.token("res").await;
    let reply = rig.get(&resident, "/api/v1/gates").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        ids(&reply.body["gates"]),
        vec!["n1".to_string(), "n2".to_string()],
        "a resident sees its granted gates, the one outside its window included: {reply:?}"
    );
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_one_gate_answers_its_object_404_when_unknown_and_403_to_an_ungranted_resident() {
    let rig = Rig::start().await;
    let admin = rig.token("admin").await;
    for id in ["n1", "s2"] {
        let reply = rig.get(&admin, &format!("/api/v1/gates/{id}")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_gate_object(&reply.body, id);
        // The same object as the list's, as far as a closed idle gate goes.
        let seq = rig
            .stack
            .runtime
            .fleet
            .view(&gate_id(id))
            .await
            .unwrap()
            .seq;
        assert_eq!(reply.body["seq"], seq, "{reply:?}");
    }

    let unknown = rig.get(&admin, "/api/v1/gates/nope").await;
    assert_error(&unknown, 404, "unknown_gate");
    // Not a slug at all: still a 404 (or a 400), never a 500.
    let bad = rig.get(&admin, "/api/v1/gates/NOT_A_SLUG").await;
    assert!(
        bad.status == 404 || bad.status == 400,
        "an invalid gate id: {bad:?}"
    );

    let resident = rig.token("res").await;
    for id in ["n1", "n2"] {
        let reply = rig.get(&resident, &format!("/api/v1/gates/{id}")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_gate_object(&reply.body, id);
    }
    for id in ["n3", "s1"] {
        let reply = rig.get(&resident, &format!("/api/v1/gates/{id}")).await;
        assert_error(&reply, 403, "forbidden");
        let events = rig
            .get(
                &resident,
                &format!("/api/v1/gates/{id}/events?after=0&limit=50"),
            )
            .await;
        assert_error(&events, 403, "forbidden");
    }
    let viewer = rig.token("view").await;
    let reply = rig.get(&viewer, "/api/v1/gates/s1").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    rig.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_answered_202_at_once_and_then_moves_the_gate() {
    let rig = Rig::start().await;
    let op = rig.token("op").await;
    let id = Uuid::new_v4();

    let reply = rig.command(&op, "n1", id, "open", false).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(
        keys_of(&reply.body),
        set(&["id", "gate", "action", "status"]),
        "{reply:?}"
    );
    assert_eq!(reply.body["id"], id.to_string());
    assert_eq!(reply.body["gate"], "n1");
    assert_eq!(reply.body["action"], "open");
    let status = reply.body["status"].as_str().unwrap_or_default();
    assert!(
        status == "accepted" || status == "pending",
        "without wait, the status is accepted or pending: {reply:?}"
    );

    let gate = rig.wait_api_state(&op, "n1", "open").await;
    assert_eq!(gate["position"], 100, "{gate}");
    assert_eq!(rig.open_writes(1), 1);

    // The outcome is in the event log, attributed to the command (the terminal event may
    // still be on its way to the store when the state already reads open).
    let finished = rig
        .wait_events(&op, "n1", |events| {
            let finished: Vec<Value> = events
                .iter()
                .filter(|e| e["kind"] == "command_finished")
                .cloned()
                .collect();
            (!finished.is_empty()).then_some(finished)
        })
        .await;
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(
        finished[0]["cause"],
        id.to_string(),
        "cause is the command id (CONTRACTS.md, WebSocket `event`): {}",
        finished[0]
    );

    // With ?wait=true the answer is the terminal status.
    let reply = rig.command(&op, "n1", Uuid::new_v4(), "close", true).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["status"], "completed", "{reply:?}");
    assert_eq!(reply.body["action"], "close");
    assert!(
        reply.body.get("reason").is_none_or(Value::is_null),
        "completed carries no reason: {reply:?}"
    );
    let gate = rig.get(&op, "/api/v1/gates/n1").await;
    assert_eq!(
        gate.body["state"], "closed",
        "after a completed close: {gate:?}"
    );
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_command_id_returns_the_first_status_and_moves_the_gate_once() {
    let rig = Rig::start().await;
    let op = rig.token("op").await;
    let id = Uuid::new_v4();

    let first = rig.command(&op, "n2", id, "open", true).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["status"], "completed", "{first:?}");

    // Same id, same action, waiting: the first command's outcome, no second write.
    let again = rig.command(&op, "n2", id, "open", true).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["status"], "completed", "{again:?}");
    assert_eq!(again.body["id"], id.to_string());
    // Same id, same action, not waiting: the command's current status, which is terminal.
    let again = rig.command(&op, "n2", id, "open", false).await;
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(again.body["status"], "completed", "{again:?}");
    assert_eq!(rig.open_writes(2), 1, "the gate moved once");

    // Same id, another action: rejected, id_conflict; the gate does not close.
    let conflict = rig.command(&op, "n2", id, "close", true).await;
    assert_eq!(conflict.status, 200, "{conflict:?}");
    assert_eq!(conflict.body["status"], "rejected", "{conflict:?}");
    assert_eq!(conflict.body["reason"], "id_conflict", "{conflict:?}");
    let conflict = rig.command(&op, "n2", id, "close", false).await;
    assert_eq!(conflict.body["status"], "rejected", "{conflict:?}");
    assert_eq!(conflict.body["reason"], "id_conflict", "{conflict:?}");
    assert_eq!(
        conflict.status, 202,
        "without wait the answer is 202: {conflict:?}"
    );
    // Same id on another gate: not a second command either.
    let conflict = rig.command(&op, "n3", id, "open", true).await;
    assert_eq!(conflict.body["status"], "rejected", "{conflict:?}");
    assert_eq!(conflict.body["reason"], "id_conflict", "{conflict:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gate = rig.get(&op, "/api/v1/gates/n2").await;
    assert_eq!(gate.body["state"], "open", "{gate:?}");
    let other = rig.get(&op, "/api/v1/gates/n3").await;
    assert_eq!(
        other.body["state"], "closed",
        "the other gate did not move: {other:?}"
    );

    // Two clients sending one new id at once, both waiting: one command, one write, and both
    // are told its outcome.
    let shared = Uuid::new_v4();
    let (a, b) = tokio::join!(
        rig.command(&op, "n1", shared, "open", true),
        rig.command(&op, "n1", shared, "open", true),
    );
    for reply in [&a, &b] {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body["status"], "completed", "{reply:?}");
    }
    assert_eq!(
        rig.open_writes(1),
        1,
        "concurrent retries moved the gate once"
    );

    // The same id on another gate is another gate's business: the command ids the contract
    // pins are per command, so this is at least not a server error.
    let elsewhere = rig.command(&op, "n3", id, "open", true).await;
    assert!(elsewhere.status < 500, "{elsewhere:?}");

    // One command_finished event for the id on n2, not one per request.
    let events = rig
        .get(&op, "/api/v1/gates/n2/events?after=0&limit=50")
        .await;
    let finished = events.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "command_finished" && names_command(e, id))
        .count();
    assert_eq!(finished, 1, "{events:?}");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_validated_and_authorized_per_role_grant_and_window() {
    let rig = Rig::start().await;
    let op = rig.token("op").await;
    let view = rig.token("view").await;
    let res = rig.token("res").await;

    // Malformed bodies.
    let unknown_action = rig
        .command(&op, "n1", Uuid::new_v4(), "launch", false)
        .await;
    assert_eq!(unknown_action.status, 400, "{unknown_action:?}");
    assert!(
        unknown_action.body["error"]["code"].is_string(),
        "{unknown_action:?}"
    );
    let not_a_uuid = send(
        rig.client
            .post(rig.url("/api/v1/gates/n1/commands"))
            .bearer_auth(&op)
            .json(&json!({"id": "twelve", "action": "open"})),
    )
    .await;
    assert_eq!(not_a_uuid.status, 400, "{not_a_uuid:?}");
    let unknown_gate = rig
        .command(&op, "nope", Uuid::new_v4(), "open", false)
        .await;
    assert_error(&unknown_gate, 404, "unknown_gate");

    // A viewer may not command.
    let reply = rig
        .command(&view, "n1", Uuid::new_v4(), "open", false)
        .await;
    assert_error(&reply, 403, "forbidden");

    // A resident: its grant without windows always; outside its window never; no grant never;
    // lockout never.
    let reply = rig.command(&res, "n1", Uuid::new_v4(), "open", true).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["status"], "completed", "{reply:?}");
    let reply = rig.command(&res, "n2", Uuid::new_v4(), "open", false).await;
    let error = assert_error(&reply, 403, "forbidden");
    assert_eq!(error["details"]["reason"], "outside_window", "{reply:?}");
    let reply = rig.command(&res, "n3", Uuid::new_v4(), "open", false).await;
    assert_error(&reply, 403, "forbidden");
    let reply = rig
        .command(&res, "n1", Uuid::new_v4(), "lockout", false)
        .await;
    assert_error(&reply, 403, "forbidden");
    assert_eq!(rig.open_writes(2), 0, "refused commands write nothing");
    assert_eq!(rig.open_writes(3), 0, "refused commands write nothing");

    // An operator locks a gate out; motion is then rejected with a reason; unlock restores it.
    let reply = rig.complete(&op, "n3", "lockout").await;
    assert_eq!(reply.body["action"], "lockout");
    let gate = rig.get(&op, "/api/v1/gates/n3").await;
    assert_eq!(gate.body["flags"]["locked_out"], true, "{gate:?}");
    let refused = rig.command(&op, "n3", Uuid::new_v4(), "open", true).await;
    assert_eq!(refused.status, 200, "{refused:?}");
    assert_eq!(refused.body["status"], "rejected", "{refused:?}");
    assert_eq!(refused.body["reason"], "locked_out", "{refused:?}");
    rig.complete(&op, "n3", "unlock").await;
    let gate = rig.get(&op, "/api/v1/gates/n3").await;
    assert_eq!(gate.body["flags"]["locked_out"], false, "{gate:?}");
    rig.complete(&op, "n3", "open").await;
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix_for_list_read_open_and_lockout_follows_the_contract() {
    let rig = Rig::start().await;
    // (user, list, read n1, open n1, lockout n1): the HTTP status with ?wait=true.
    let matrix: [(&str, u16, u16, u16, u16); 4] = [
        ("admin", 200, 200, 200, 200),
        ("op", 200, 200, 200, 200),
        ("res", 200, 200, 200, 403),
        ("view", 200, 200, 403, 403),
    ];
    let mut seen = Vec::new();
    for (user, _, _, _, _) in matrix {
        let token = rig.token(user).await;
        let list = rig.get(&token, "/api/v1/gates").await.status;
        let read = rig.get(&token, "/api/v1/gates/n1").await.status;
        let open = rig
            .command(&token, "n1", Uuid::new_v4(), "open", true)
            .await;
        if open.status == 200 {
            assert_eq!(open.body["status"], "completed", "{user} open: {open:?}");
        }
        let lockout = rig
            .command(&token, "n1", Uuid::new_v4(), "lockout", true)
            .await;
        if lockout.status == 200 {
            assert_eq!(
                lockout.body["status"], "completed",
                "{user} lockout: {lockout:?}"
            );
            // Undo, so that the next role's open is not refused by the lockout.
            rig.complete(&token, "n1", "unlock").await;
        }
        for (reply, what) in [(&open, "open"), (&lockout, "lockout")] {
            if reply.status == 403 {
                assert_error(reply, 403, "forbidden");
            } else {
                assert!(reply.status < 300, "{user} {what}: {reply:?}");
            }
        }
        seen.push((user, list, read, open.status, lockout.status));
    }
    assert_eq!(seen, matrix.to_vec());

    // The same without waiting: 202 where permitted.
    let op = rig.token("op").await;
    let reply = rig
        .command(&op, "n3", Uuid::new_v4(), "lockout", false)
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_and_failed_outcomes_carry_their_reason() {
    let rig = Rig::start().await;
    let op = rig.token("op").await;
    let res = rig.token("res").await;
    let north = rig.farm.controller("north").unwrap();

    // rejected: a gate in fault refuses motion.
    north
        .inject(Fault::MotorFault { unit: 3, code: 42 })
        .await
        .expect("injected");
    let gate = rig.wait_api_state(&op, "n3", "fault").await;
    assert_eq!(gate["fault_code"], 42, "{gate}");
    let refused = rig.command(&op, "n3", Uuid::new_v4(), "open", true).await;
    assert_eq!(refused.status, 200, "{refused:?}");
    assert_eq!(refused.body["status"], "rejected", "{refused:?}");
    assert_eq!(refused.body["reason"], "fault", "{refused:?}");
    // reset is for operators and admins, never residents.
    let reply = rig
        .command(&res, "n1", Uuid::new_v4(), "reset", false)
        .await;
    assert_error(&reply, 403, "forbidden");
    rig.complete(&op, "n3", "reset").await;
    rig.wait_api_state(&op, "n3", "closed").await;

    // failed: the photo-eye sees something during the close warning. The close is answered
    // at once (accepted once the warning is on); asking again with the same id and
    // ?wait=true gives its outcome.
    rig.complete(&op, "n2", "open").await;
    let close = Uuid::new_v4();
    let first = rig.command(&op, "n2", close, "close", false).await;
    assert_eq!(first.status, 202, "{first:?}");
    assert_eq!(first.body["status"], "accepted", "{first:?}");
    north
        .inject(Fault::Obstruct { unit: 2, on: true })
        .await
        .expect("injected");
    let outcome = rig.command(&op, "n2", close, "close", true).await;
    assert_eq!(outcome.status, 200, "{outcome:?}");
    assert_eq!(outcome.body["status"], "failed", "{outcome:?}");
    assert_eq!(outcome.body["reason"], "obstructed", "{outcome:?}");
    let gate = rig.wait_api_state(&op, "n2", "open").await;
    assert_eq!(gate["flags"]["obstructed"], true, "{gate}");

    // rejected again, for the obstruction this time, and nothing written.
    let refused = rig.command(&op, "n2", Uuid::new_v4(), "close", true).await;
    assert_eq!(refused.body["status"], "rejected", "{refused:?}");
    assert_eq!(refused.body["reason"], "obstructed", "{refused:?}");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_write_is_never_confirmed_times_out_with_a_reason() {
    let rig = Rig::start().await;
    let op = rig.token("op").await;
    // The controller swallows writes for a while (its status keeps answering): the write is
    // never confirmed. One unanswered request is a lost reply, not an outage.
    rig.farm
        .controller("north")
        .unwrap()
        .inject(Fault::DropWrites {
            duration: Duration::from_secs(30),
        })
        .await
        .expect("injected");
    let reply = rig.command(&op, "n1", Uuid::new_v4(), "open", true).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["status"], "timed_out", "{reply:?}");
    assert!(
        reply.body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "CONTRACTS.md: rejected, failed and timed_out carry a reason code: {reply:?}"
    );
    // The gate never went offline, and nothing moved.
    let gate = rig.get(&op, "/api/v1/gates/n1").await;
    assert_eq!(gate.body["state"], "closed", "{gate:?}");
    // Once the controller takes writes again, the gate is commanded as usual.
    rig.farm.controller("north").unwrap().clear();
    rig.complete(&op, "n1", "open").await;
    rig.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_page_in_seq_order_without_gaps_or_duplicates() {
    let rig = Rig::start().await;
    let op = rig.token("op").await;
    for action in ["open", "close", "open", "close"] {
        rig.complete(&op, "n3", action).await;
    }

    // Everything at once.
    let all = rig
        .get(&op, "/api/v1/gates/n3/events?after=0&limit=50")
        .await;
    assert_eq!(all.status, 200, "{all:?}");
    assert_eq!(keys_of(&all.body), set(&["events", "next"]), "{all:?}");
    let events = all.body["events"].as_array().unwrap().clone();
    assert!(events.len() >= 9, "boot + 4 commands: {all:?}");
    assert!(events.len() < 50, "fits in one page: {all:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (seqs[0]..seqs[0] + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seq order, no gaps");
    assert_eq!(seqs[0], 1, "a fresh store starts each gate at seq 1");
    assert_eq!(
        seqs.last().copied(),
        rig.stack
            .runtime
            .fleet
            .view(&gate_id("n3"))
            .await
            .unwrap()
            .seq
            .into(),
        "the log reaches the gate's current seq"
    );
    for e in &events {
        assert_eq!(e["gate"], "n3", "{e}");
        assert!(e["kind"].is_string(), "{e}");
        assert!(e.get("cause").is_some(), "{e}");
    }
    assert!(
        all.body["next"].is_null(),
        "a short last page has no next: {all:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"] == "command_finished")
            .count(),
        4,
        "{all:?}"
    );

    // Pages of 3, following `next`.
    let mut paged = Vec::new();
    let mut after = 0u64;
    for _ in 0..100 {
        let page = rig
            .get(
                &op,
                &format!("/api/v1/gates/n3/events?after={after}&limit=3"),
            )
            .await;
        assert_eq!(page.status, 200, "{page:?}");
        let items = page.body["events"].as_array().unwrap();
        assert!(items.len() <= 3, "limit is honoured: {page:?}");
        paged.extend(items.iter().cloned());
        match page.body["next"].as_u64() {
            Some(next) => {
                assert_eq!(
                    Some(next),
                    items.last().and_then(|e| e["seq"].as_u64()),
                    "next is the page's last seq: {page:?}"
                );
                after = next;
            }
            None => {
                assert!(page.body["next"].is_null(), "{page:?}");
                break;
            }
        }
    }
    assert_eq!(
        paged, events,
        "paging gives the same events, none twice, none left out"
    );

    // From the middle.
    let mid = seqs[5];
    let rest = rig
        .get(
            &op,
            &format!("/api/v1/gates/n3/events?after={mid}&limit=50"),
        )
        .await;
    let rest_seqs: Vec<u64> = rest.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(rest_seqs, seqs[6..].to_vec(), "{rest:?}");

    // Other gates' events are not mixed in.
    let n1 = rig
        .get(&op, "/api/v1/gates/n1/events?after=0&limit=50")
        .await;
    assert!(
        n1.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["gate"] == "n1"),
        "{n1:?}"
    );
    assert!(
        n1.body["events"].as_array().unwrap().len() < events.len(),
        "{n1:?}"
    );

    // Residents read their granted gates' events; unknown gates are 404.
    let res = rig.token("res").await;
    let mine = rig
        .get(&res, "/api/v1/gates/n1/events?after=0&limit=50")
        .await;
    assert_eq!(mine.status, 200, "{mine:?}");
    let unknown = rig
        .get(&op, "/api/v1/gates/nope/events?after=0&limit=50")
        .await;
    assert_error(&unknown, 404, "unknown_gate");
    rig.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id_and_errors_repeat_it() {
    let rig = Rig::start().await;
    // `send` asserts x-request-id on every answer; these cover every endpoint and outcome.
    let admin = rig.token("admin").await;
    let login = rig.login("admin", &password_of("admin")).await;
    let refresh = login.body["refresh_token"].as_str().unwrap().to_owned();
    let replies = vec![
        rig.login("admin", "wrong-password-123").await,
        rig.post_anonymous("/api/v1/auth/refresh", json!({"refresh_token": "x"}))
            .await,
        rig.post_anonymous("/api/v1/auth/logout", json!({"refresh_token": refresh}))
            .await,
        rig.get(&admin, "/api/v1/auth/me").await,
        rig.get("bad", "/api/v1/auth/me").await,
        rig.get(&admin, "/api/v1/gates").await,
        rig.get(&admin, "/api/v1/gates/n1").await,
        rig.get(&admin, "/api/v1/gates/nope").await,
        rig.get(&admin, "/api/v1/gates/n1/events?after=0&limit=5")
            .await,
        rig.command(&admin, "n1", Uuid::new_v4(), "stop", false)
            .await,
        rig.command(&admin, "n1", Uuid::new_v4(), "fly", false)
            .await,
    ];
    let mut ids = BTreeSet::new();
    for reply in &replies {
        if reply.status >= 400 {
            assert_eq!(
                reply.body["error"]["request_id"],
                reply.request_id.as_str(),
                "{reply:?}"
            );
        }
        ids.insert(reply.request_id.clone());
    }
    assert_eq!(ids.len(), replies.len(), "each request has its own id");

    // A client's own id is echoed (the skeleton's rule) on these endpoints too.
    let mine = send(
        rig.client
            .get(rig.url("/api/v1/gates"))
            .bearer_auth(&admin)
            .header("x-request-id", "client-chosen-42"),
    )
    .await;
    assert_eq!(mine.status, 200);
    assert_eq!(mine.request_id, "client-chosen-42");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_routes_served_including_the_application() {
    let rig = Rig::start().await;
    let document: serde_json::Value = rig
        .client
        .get(rig.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("the document is served")
        .json()
        .await
        .expect("the document is JSON");
    let mut documented = gatehouse_api::routing::document_entries(&document);
    let mut served = rig.stack.routes.clone();
    documented.sort();
    served.sort();
    assert_eq!(
        documented, served,
        "a route is served but not documented, or the other way round"
    );
    for (method, path) in [
        ("POST", "/api/v1/auth/login"),
        ("POST", "/api/v1/gates/{gate}/commands"),
        ("GET", "/api/v1/gates/{gate}/events"),
    ] {
        assert!(
            served.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is not served"
        );
    }
}
