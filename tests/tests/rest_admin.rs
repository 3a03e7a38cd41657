//! The admin half of the REST API end to end, over TCP in front of a runtime booted from a
//! SQLite store against the in-process simulator: users, grants, API keys, the fleet
//! configuration (sites, controllers, gates, applied to the running fleet), the audit log,
//! who may call each of these (CONTRACTS.md "Roles"), and the login and command rate limits.
//!
//! Each test builds its own rig (farm on ephemeral ports, store in its own temporary
//! directory, runtime, server on an ephemeral port) and tears it down.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::time::Duration;

use gatehouse_actors::access::{Role, UserId};
use gatehouse_actors::ids::GateId;
use gatehouse_api::changes::AccessChange;
use gatehouse_api::ws::WsConfig;
use gatehouse_sim::{ControllerSpec as SimControllerSpec, Farm, FarmSpec};
use gatehouse_tests::http::{Reply, RestRig, assert_error, assert_status, ids};
use gatehouse_tests::stack::{FleetText, StackSpec, now_ms, password_of, wait_closed};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(40);
const TRAVEL: Duration = Duration::from_millis(500);
const USERS: [(&str, Role); 4] = [
    ("admin", Role::Admin),
    ("op", Role::Operator),
    ("res", Role::Resident),
    ("view", Role::Viewer),
];

/// Farm, store, runtime and API server for one test, with a client in front.
struct Rig(RestRig);

impl Deref for Rig {
    type Target = RestRig;

    fn deref(&self) -> &RestRig {
        &self.0
    }
}

impl Rig {
    /// Site `north` with controller `north-ctl` (units 1–3 simulated) and gates n1, n2 on
    /// units 1 and 2; site `south` without controllers; the four users of [`USERS`].
    async fn start() -> Rig {
        let profiles =
            gatehouse_adapters::profile::ProfileSet::builtin().expect("the built-in profiles load");
        let farm = Farm::start(FarmSpec {
            controllers: vec![
                SimControllerSpec::new("north", "generic", [1, 2, 3]).with_travel(TRAVEL),
            ],
            profiles,
        })
        .await
        .expect("the farm starts");
        let north = farm.controller("north").unwrap().local_addr();
        let fleet = FleetText::default()
            .site("north", "North", "UTC")
            .site("south", "South", "Europe/Paris")
            .controller("north-ctl", "north", "generic", north)
            .gate("n1", "Gate n1", "north-ctl", 1)
            .gate("n2", "Gate n2", "north-ctl", 2);
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
        Rig(RestRig::start(farm, spec, WAIT).await)
    }

    async fn shutdown(self) {
        self.0.shutdown().await;
    }

    /// Sends `action` to `gate` under a new command id, without waiting.
    async fn command_now(&self, token: &str, gate: &str, action: &str) -> Reply {
        self.command(token, gate, Uuid::new_v4(), action, false)
            .await
    }
}

/// The changes announced so far.
fn announced(rx: &mut broadcast::Receiver<AccessChange>) -> Vec<AccessChange> {
    let mut out = Vec::new();
    while let Ok(change) = rx.try_recv() {
        out.push(change);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_created_read_updated_and_deleted_and_bad_requests_say_why() {
    let rig = Rig::start().await;
    let admin = rig.token("admin").await;
    let mut changes = rig.stack.app.changes.subscribe();

    let created = rig
        .post(
            &admin,
            "/api/v1/users",
            json!({ "username": "cleaner", "role": "resident", "password": "a-long-enough-password" }),
        )
        .await;
    assert_status(&created, 201);
    assert_eq!(
        created
            .body
            .as_object()
            .unwrap()
            .keys()
            .collect::<BTreeSet<_>>(),
        [
            "created_at_ms",
            "disabled",
            "email",
            "id",
            "password_set",
            "role",
            "username"
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<BTreeSet<_>>()
        .iter()
        .collect(),
        "no password hash on the wire: {created:?}"
    );
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["role"], "resident");
    assert_eq!(created.body["disabled"], false);
    let path = format!("/api/v1/users/{id}");

    let list = rig.get(&admin, "/api/v1/users").await;
    assert_status(&list, 200);
    let names: Vec<&str> = list.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "cleaner", "op", "res", "view"]);
    let one = rig.get(&admin, &path).await;
    assert_status(&one, 200);
    assert_eq!(one.body["username"], "cleaner");

    // The new user logs in; a password reset ends that session and changes the password.
    let login = rig.login("cleaner", "a-long-enough-password").await;
    assert_status(&login, 200);
    let refresh = login.body["refresh_token"].as_str().unwrap().to_owned();
    let reset = rig
        .patch(
            &admin,
            &path,
            json!({ "password": "another-long-password" }),
        )
        .await;
    assert_status(&reset, 200);
    let reply = rig
        .call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": refresh })),
        )
        .await;
    assert_eq!(
        reply.status, 401,
        "the reset revoked the session: {reply:?}"
    );
    assert_status(&rig.login("cleaner", "a-long-enough-password").await, 401);
    assert_status(&rig.login("cleaner", "another-long-password").await, 200);

    // Role change and disabling.
    let promoted = rig
        .patch(&admin, &path, json!({ "role": "operator" }))
        .await;
    assert_status(&promoted, 200);
    assert_eq!(promoted.body["role"], "operator");
    let disabled = rig.patch(&admin, &path, json!({ "disabled": true })).await;
    assert_status(&disabled, 200);
    assert_eq!(disabled.body["disabled"], true);
    assert_status(&rig.login("cleaner", "another-long-password").await, 401);
    let user = UserId(id.parse().unwrap());
    assert_eq!(
        announced(&mut changes),
        vec![AccessChange::User(user); 3],
        "password, role and disabled were each announced"
    );

    // Bad requests.
    let body = |username: &str, role: &str, password: &str| json!({ "username": username, "role": role, "password": password });
    for (request, status, code) in [
        (
            body("has space", "viewer", "long-enough-pw"),
            422,
            "invalid_username",
        ),
        (
            body("", "viewer", "long-enough-pw"),
            422,
            "invalid_username",
        ),
        (
            body("newbie", "boss", "long-enough-pw"),
            422,
            "invalid_role",
        ),
        (body("newbie", "viewer", "short"), 422, "weak_password"),
        (
            body("cleaner", "viewer", "long-enough-pw"),
            409,
            "username_taken",
        ),
        (
            json!({ "username": "x", "role": "viewer", "password": "long-enough-pw", "admin": true }),
            400,
            "invalid_body",
        ),
        (json!({ "username": "x" }), 400, "invalid_body"),
    ] {
        let reply = rig.post(&admin, "/api/v1/users", request.clone()).await;
        assert_error(&reply, status, code);
    }
    assert_error(
        &rig.patch(&admin, &path, json!({})).await,
        422,
        "empty_update",
    );
    assert_error(
        &rig.patch(&admin, &path, json!({ "role": "root" })).await,
        422,
        "invalid_role",
    );
    let nobody = format!("/api/v1/users/{}", Uuid::new_v4());
    assert_error(&rig.get(&admin, &nobody).await, 404, "unknown_user");
    assert_error(
        &rig.patch(&admin, &nobody, json!({ "disabled": true }))
            .await,
        404,
        "unknown_user",
    );
    assert_error(&rig.delete(&admin, &nobody).await, 404, "unknown_user");
    assert_error(
        &rig.get(&admin, "/api/v1/users/not-a-uuid").await,
        404,
        "unknown_user",
    );

    // The last enabled admin stays one.
    let me = format!("/api/v1/users/{}", rig.user("admin"));
    assert_error(
        &rig.patch(&admin, &me, json!({ "role": "viewer" })).await,
        409,
        "last_admin",
    );
    assert_error(
        &rig.patch(&admin, &me, json!({ "disabled": true })).await,
        409,
        "last_admin",
    );
    assert_error(&rig.delete(&admin, &me).await, 409, "last_admin");

    // Deletion.
    assert_status(&rig.delete(&admin, &path).await, 204);
    assert_error(&rig.get(&admin, &path).await, 404, "unknown_user");
    assert_eq!(announced(&mut changes), vec![AccessChange::User(user)]);
    rig.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Grants
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_give_a_resident_gates_and_sites_and_revoking_takes_them_away() {
    let rig = Rig::start().await;
    let admin = rig.token("admin").await;
    let res = rig.token("res").await;
    let resident = rig.user("res");
    let grants = format!("/api/v1/users/{resident}/grants");
    let mut changes = rig.stack.app.changes.subscribe();

    assert_error(&rig.get(&res, "/api/v1/gates/n1").await, 403, "forbidden");
    let list = rig.get(&admin, &grants).await;
    assert_status(&list, 200);
    assert_eq!(list.body["grants"], json!([]));

    let gate_grant = rig.post(&admin, &grants, json!({ "gate": "n1" })).await;
    assert_status(&gate_grant, 201);
    assert_eq!(gate_grant.body["gate"], "n1");
    assert_eq!(gate_grant.body["site"], Value::Null);
    assert_eq!(gate_grant.body["windows"], json!([]));
    assert_status(&rig.get(&res, "/api/v1/gates/n1").await, 200);
    assert_error(&rig.get(&res, "/api/v1/gates/n2").await, 403, "forbidden");

    let weekday_mornings = json!({ "days": 31, "start": 360, "end": 540 });
    let site_grant = rig
        .post(
            &admin,
            &grants,
            json!({ "site": "north", "windows": [weekday_mornings] }),
        )
        .await;
    assert_status(&site_grant, 201);
    assert_eq!(site_grant.body["site"], "north");
    assert_eq!(site_grant.body["windows"], json!([weekday_mornings]));
    assert_status(&rig.get(&res, "/api/v1/gates/n2").await, 200);
    let list = rig.get(&admin, &grants).await;
    assert_eq!(ids(&list.body["grants"]), {
        let mut v = vec![
            gate_grant.body["id"].as_str().unwrap().to_owned(),
            site_grant.body["id"].as_str().unwrap().to_owned(),
        ];
        v.sort();
        v
    });

    // Bad requests.
    for (request, code) in [
        (json!({}), "invalid_scope"),
        (json!({ "gate": "n1", "site": "north" }), "invalid_scope"),
        (json!({ "gate": "nope" }), "unknown_gate"),
        (json!({ "site": "nowhere" }), "unknown_site"),
        (
            json!({ "gate": "n1", "windows": [{ "days": 0, "start": 0, "end": 60 }] }),
            "invalid_window",
        ),
        (
            json!({ "gate": "n1", "windows": [{ "days": 1, "start": 1440, "end": 60 }] }),
            "invalid_window",
        ),
    ] {
        assert_error(&rig.post(&admin, &grants, request).await, 422, code);
    }
    assert_error(
        &rig.post(&admin, &grants, json!({ "gate": "Not A Slug" }))
            .await,
        400,
        "invalid_body",
    );
    let nobody = format!("/api/v1/users/{}/grants", Uuid::new_v4());
    assert_error(&rig.get(&admin, &nobody).await, 404, "unknown_user");
    assert_error(
        &rig.post(&admin, &nobody, json!({ "gate": "n1" })).await,
        404,
        "unknown_user",
    );

    // Revoking: the site grant first, then the gate grant; someone else's grant id is not
    // found under this user.
    let site_path = format!("{grants}/{}", site_grant.body["id"].as_str().unwrap());
    let other_user = format!(
        "/api/v1/users/{}/grants/{}",
        rig.user("view"),
        gate_grant.body["id"].as_str().unwrap()
    );
    assert_error(&rig.delete(&admin, &other_user).await, 404, "unknown_grant");
    assert_status(&rig.delete(&admin, &site_path).await, 204);
    assert_error(&rig.delete(&admin, &site_path).await, 404, "unknown_grant");
    assert_error(&rig.get(&res, "/api/v1/gates/n2").await, 403, "forbidden");
    let gate_path = format!("{grants}/{}", gate_grant.body["id"].as_str().unwrap());
    assert_status(&rig.delete(&admin, &gate_path).await, 204);
    assert_error(&rig.get(&res, "/api/v1/gates/n1").await, 403, "forbidden");
    assert_eq!(
        announced(&mut changes),
        vec![AccessChange::User(resident); 4],
        "two grants and two revocations"
    );
    rig.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_show_their_secret_once_are_admin_only_on_purpose_and_stop_working_when_revoked() {
    let rig = Rig::start().await;
    let admin = rig.token("admin").await;
    let mut changes = rig.stack.app.changes.subscribe();

    let created = rig
        .post(
            &admin,
            "/api/v1/api-keys",
            json!({ "name": "barrier sync", "role": "operator", "site": "north" }),
        )
        .await;
    assert_status(&created, 201);
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("ghk_"), "{created:?}");
    let key = created.body["api_key"].clone();
    assert_eq!(key["role"], "operator");
    assert_eq!(key["site"], "north");
    assert_eq!(key["revoked_at_ms"], Value::Null);
    let id = key["id"].as_str().unwrap().to_owned();

    // The key works, and its listing never shows the secret.
    rig.live_gates(&secret, &["n1", "n2"]).await;
    let list = rig.get(&admin, "/api/v1/api-keys").await;
    assert_status(&list, 200);
    assert_eq!(ids(&list.body["api_keys"]), std::slice::from_ref(&id));
    assert!(
        !list.body.to_string().contains(&secret[4..]) && !list.body.to_string().contains("secret"),
        "{list:?}"
    );

    for (request, code) in [
        (
            json!({ "name": "root", "role": "admin" }),
            "admin_key_unconfirmed",
        ),
        (json!({ "name": "x", "role": "superuser" }), "invalid_role"),
        (json!({ "name": "  ", "role": "viewer" }), "invalid_name"),
        (
            json!({ "name": "x", "role": "viewer", "site": "nowhere" }),
            "unknown_site",
        ),
    ] {
        assert_error(
            &rig.post(&admin, "/api/v1/api-keys", request).await,
            422,
            code,
        );
    }
    let root = rig
        .post(
            &admin,
            "/api/v1/api-keys",
            json!({ "name": "root", "role": "admin", "confirm_admin": true }),
        )
        .await;
    assert_status(&root, 201);
    assert_eq!(root.body["api_key"]["role"], "admin");
    let root_secret = root.body["secret"].as_str().unwrap().to_owned();
    assert_status(&rig.get(&root_secret, "/api/v1/users").await, 200);

    // Revoking.
    let path = format!("/api/v1/api-keys/{id}");
    assert_status(&rig.delete(&admin, &path).await, 204);
    assert_error(
        &rig.get(&secret, "/api/v1/gates").await,
        401,
        "unauthenticated",
    );
    assert_status(&rig.delete(&admin, &path).await, 204);
    let list = rig.get(&admin, "/api/v1/api-keys").await;
    let revoked = list.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert!(revoked["revoked_at_ms"].is_u64(), "{list:?}");
    assert_error(
        &rig.delete(&admin, &format!("/api/v1/api-keys/{}", Uuid::new_v4()))
            .await,
        404,
        "unknown_api_key",
    );
    assert_eq!(
        announced(&mut changes),
        vec![AccessChange::ApiKey(id.parse().unwrap())],
        "one revocation, announced once"
    );
    rig.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Fleet configuration
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_are_created_replaced_and_removed_once_empty() {
    let rig = Rig::start().await;
    let admin = rig.token("admin").await;

    let list = rig.get(&admin, "/api/v1/config/sites").await;
    assert_status(&list, 200);
    assert_eq!(ids(&list.body["sites"]), ["north", "south"]);

    let created = rig
        .post(
            &admin,
            "/api/v1/config/sites",
            json!({ "id": "east", "name": "East", "timezone": "Europe/Berlin" }),
        )
        .await;
    assert_status(&created, 201);
    assert_eq!(
        created.body,
        json!({ "id": "east", "name": "East", "timezone": "Europe/Berlin" })
    );
    let replaced = rig
        .put(
            &admin,
            "/api/v1/config/sites/east",
            json!({ "name": "East wing" }),
        )
        .await;
    assert_status(&replaced, 200);
    assert_eq!(
        replaced.body,
        json!({ "id": "east", "name": "East wing", "timezone": "UTC" })
    );
    let one = rig.get(&admin, "/api/v1/config/sites/east").await;
    assert_eq!(one.body, replaced.body);

    for (request, status, code) in [
        (json!({ "id": "east", "name": "again" }), 409, "site_exists"),
        (json!({ "name": "no id" }), 422, "missing_id"),
        (
            json!({ "id": "west", "name": "W", "timezone": "Mars/Olympus" }),
            422,
            "invalid_timezone",
        ),
        (
            json!({ "id": "West Side", "name": "W" }),
            400,
            "invalid_body",
        ),
    ] {
        let reply = rig.post(&admin, "/api/v1/config/sites", request).await;
        assert_error(&reply, status, code);
    }
    assert_error(
        &rig.put(
            &admin,
            "/api/v1/config/sites/east",
            json!({ "id": "west", "name": "W" }),
        )
        .await,
        422,
        "id_mismatch",
    );
    assert_error(
        &rig.put(&admin, "/api/v1/config/sites/west", json!({ "name": "W" }))
            .await,
        404,
        "unknown_site",
    );
    let unknown = assert_error(
        &rig.get(&admin, "/api/v1/config/sites/west").await,
        404,
        "unknown_site",
    );
    assert_eq!(unknown["details"], json!({ "site": "west" }));

    let in_use = rig.delete(&admin, "/api/v1/config/sites/north").await;
    let error = assert_error(&in_use, 409, "site_in_use");
    assert_eq!(error["details"]["controllers"], json!(["north-ctl"]));
    assert_status(&rig.delete(&admin, "/api/v1/config/sites/east").await, 204);
    assert_error(
        &rig.delete(&admin, "/api/v1/config/sites/east").await,
        404,
        "unknown_site",
    );
    let list = rig.get(&admin, "/api/v1/config/sites").await;
    assert_eq!(ids(&list.body["sites"]), ["north", "south"]);
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_and_gates_change_the_running_fleet_and_invalid_ones_are_refused() {
    let rig = Rig::start().await;
    let admin = rig.token("admin").await;
    let north = rig
        .farm
        .controller("north")
        .unwrap()
        .local_addr()
        .to_string();
    let mut changes = rig.stack.app.changes.subscribe();

    // A gate on the existing controller's free unit joins the running fleet.
    let gate = json!({ "id": "n3", "controller": "north-ctl", "unit": 3, "name": "Gate n3" });
    let created = rig.post(&admin, "/api/v1/config/gates", gate.clone()).await;
    assert_status(&created, 201);
    assert_eq!(created.body["travel_timeout_s"], 60, "the default");
    rig.live_gates(&admin, &["n1", "n2", "n3"]).await;
    wait_closed(&rig.stack.runtime, &GateId::new("n3").unwrap())
        .await
        .expect("n3 comes up closed");
    let listed = rig.get(&admin, "/api/v1/config/gates").await;
    assert_eq!(ids(&listed.body["gates"]), ["n1", "n2", "n3"]);

    for (request, status, code) in [
        (gate.clone(), 409, "gate_exists"),
        (
            json!({ "id": "n4", "controller": "north-ctl", "unit": 1 }),
            422,
            "invalid_configuration",
        ),
        (
            json!({ "id": "n4", "controller": "north-ctl", "unit": 0 }),
            422,
            "invalid_configuration",
        ),
        (
            json!({ "id": "n4", "controller": "north-ctl", "unit": 4, "travel_timeout_s": 0 }),
            422,
            "invalid_configuration",
        ),
        (
            json!({ "id": "n4", "controller": "ghost", "unit": 4 }),
            422,
            "unknown_controller",
        ),
        (
            json!({ "id": "n4", "controller": "north-ctl", "unit": 300 }),
            400,
            "invalid_body",
        ),
        (
            json!({ "controller": "north-ctl", "unit": 4 }),
            422,
            "missing_id",
        ),
    ] {
        let reply = rig.post(&admin, "/api/v1/config/gates", request).await;
        assert_error(&reply, status, code);
    }
    rig.live_gates(&admin, &["n1", "n2", "n3"]).await;

    // Replacing a gate restarts it with the new settings.
    let renamed = rig
        .put(
            &admin,
            "/api/v1/config/gates/n3",
            json!({ "controller": "north-ctl", "unit": 3, "name": "Back gate", "travel_timeout_s": 30 }),
        )
        .await;
    assert_status(&renamed, 200);
    assert_eq!(renamed.body["name"], "Back gate");
    let live = rig.get(&admin, "/api/v1/gates/n3").await;
    assert_eq!(live.body["name"], "Back gate", "{live:?}");
    assert_error(
        &rig.put(
            &admin,
            "/api/v1/config/gates/n9",
            json!({ "controller": "north-ctl", "unit": 3 }),
        )
        .await,
        404,
        "unknown_gate",
    );

    // Controllers: created on a site, validated, and refused while they have gates.
    let controller = json!({
        "id": "south-ctl", "site": "south", "profile": "came-zlb30", "endpoint": north,
    });
    for (request, status, code) in [
        (
            json!({ "id": "x-ctl", "site": "nowhere", "profile": "generic", "endpoint": north }),
            422,
            "unknown_site",
        ),
        (
            json!({ "id": "x-ctl", "site": "south", "profile": "no-such-profile", "endpoint": north }),
            422,
            "invalid_configuration",
        ),
        (
            json!({ "id": "x-ctl", "site": "south", "profile": "generic", "endpoint": "no-port" }),
            422,
            "invalid_configuration",
        ),
        (
            json!({ "id": "north-ctl", "site": "north", "profile": "generic", "endpoint": north }),
            409,
            "controller_exists",
        ),
    ] {
        let reply = rig
            .post(&admin, "/api/v1/config/controllers", request)
            .await;
        assert_error(&reply, status, code);
    }
    // Transports: each takes its own keys, and a key of another is named.
    for (request, field) in [
        (
            json!({ "id": "x-ctl", "site": "south", "profile": "generic", "transport": "rtu",
                    "serial": "/dev/ttyUSB7" }),
            "baud",
        ),
        (
            json!({ "id": "x-ctl", "site": "south", "profile": "generic", "transport": "rtu",
                    "serial": "/dev/ttyUSB7", "baud": 9600, "endpoint": north }),
            "endpoint",
        ),
        (
            json!({ "id": "x-ctl", "site": "south", "profile": "generic", "endpoint": north,
                    "parity": "odd" }),
            "parity",
        ),
        (
            json!({ "id": "x-ctl", "site": "south", "profile": "generic", "transport": "rtu",
                    "serial": "/dev/ttyUSB7", "baud": 9600, "data_bits": 7 }),
            "data_bits",
        ),
    ] {
        let reply = rig
            .post(&admin, "/api/v1/config/controllers", request)
            .await;
        let error = assert_error(&reply, 422, "invalid_configuration");
        assert_eq!(error["details"]["field"], field, "{error}");
    }
    assert_error(
        &rig.post(
            &admin,
            "/api/v1/config/controllers",
            json!({ "id": "x-ctl", "site": "south", "profile": "generic", "transport": "rs232",
                    "endpoint": north }),
        )
        .await,
        400,
        "invalid_body",
    );
    let serial = rig
        .post(
            &admin,
            "/api/v1/config/controllers",
            json!({ "id": "bus-ctl", "site": "south", "profile": "generic", "transport": "rtu",
                    "serial": "/dev/gatehouse-test-no-such-line", "baud": 19200 }),
        )
        .await;
    assert_status(&serial, 201);
    let stored = rig.get(&admin, "/api/v1/config/controllers/bus-ctl").await;
    assert_eq!(stored.body["transport"], "rtu");
    assert_eq!(stored.body["serial"], "/dev/gatehouse-test-no-such-line");
    assert_eq!(stored.body["baud"], 19200);
    assert!(
        stored.body.get("endpoint").is_none() && stored.body.get("parity").is_none(),
        "unset keys stay unset: {}",
        stored.body
    );
    assert_status(
        &rig.delete(&admin, "/api/v1/config/controllers/bus-ctl")
            .await,
        204,
    );
    assert_status(
        &rig.post(&admin, "/api/v1/config/controllers", controller.clone())
            .await,
        201,
    );
    let replaced = rig
        .put(
            &admin,
            "/api/v1/config/controllers/south-ctl",
            json!({ "site": "south", "profile": "generic", "endpoint": north, "poll_interval_ms": 500 }),
        )
        .await;
    assert_status(&replaced, 200);
    assert_eq!(replaced.body["poll_interval_ms"], 500);
    let one = rig
        .get(&admin, "/api/v1/config/controllers/south-ctl")
        .await;
    assert_eq!(one.body, replaced.body);
    let list = rig.get(&admin, "/api/v1/config/controllers").await;
    assert_eq!(ids(&list.body["controllers"]), ["north-ctl", "south-ctl"]);
    assert_status(
        &rig.post(
            &admin,
            "/api/v1/config/gates",
            json!({ "id": "s1", "controller": "south-ctl", "unit": 9 }),
        )
        .await,
        201,
    );
    rig.live_gates(&admin, &["n1", "n2", "n3", "s1"]).await;

    // A grant on s1 dies with it; its holder is told.
    let resident = rig.user("res");
    assert_status(
        &rig.post(
            &admin,
            &format!("/api/v1/users/{resident}/grants"),
            json!({ "gate": "s1" }),
        )
        .await,
        201,
    );
    let in_use = rig
        .delete(&admin, "/api/v1/config/controllers/south-ctl")
        .await;
    let error = assert_error(&in_use, 409, "controller_in_use");
    assert_eq!(error["details"]["gates"], json!(["s1"]));
    assert_error(
        &rig.delete(&admin, "/api/v1/config/sites/south").await,
        409,
        "site_in_use",
    );
    let _ = announced(&mut changes);
    assert_status(
        &rig.delete(&admin, "/api/v1/config/controllers/south-ctl?cascade=true")
            .await,
        204,
    );
    assert_eq!(
        announced(&mut changes),
        vec![AccessChange::Fleet, AccessChange::User(resident)],
        "the fleet change, then the grant holders of the removed gates"
    );
    let grants = rig
        .get(&admin, &format!("/api/v1/users/{resident}/grants"))
        .await;
    assert_eq!(grants.body["grants"], json!([]));
    rig.live_gates(&admin, &["n1", "n2", "n3"]).await;
    assert_error(
        &rig.get(&admin, "/api/v1/config/controllers/south-ctl")
            .await,
        404,
        "unknown_controller",
    );

    // Removing a gate stops it.
    assert_status(&rig.delete(&admin, "/api/v1/config/gates/n3").await, 204);
    rig.live_gates(&admin, &["n1", "n2"]).await;
    assert_error(
        &rig.get(&admin, "/api/v1/gates/n3").await,
        404,
        "unknown_gate",
    );
    assert_error(
        &rig.delete(&admin, "/api/v1/config/gates/n3").await,
        404,
        "unknown_gate",
    );
    assert_status(&rig.delete(&admin, "/api/v1/config/sites/south").await, 204);
    rig.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Who may call what
// ---------------------------------------------------------------------------------------------

/// Is this one of the admin routes (users, grants, API keys, configuration, audit)?
fn is_admin_route(path: &str) -> bool {
    [
        "/api/v1/users",
        "/api/v1/api-keys",
        "/api/v1/config/",
        "/api/v1/audit",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_may_administer_and_admins_and_operators_may_read_the_audit_log() {
    let rig = Rig::start().await;
    let admin = rig.token("admin").await;
    let user = Uuid::new_v4();
    let (grant, key) = (Uuid::new_v4(), Uuid::new_v4());
    // Requests that reach each handler with a well-formed body but change nothing for an
    // admin (unknown ids, invalid values).
    let requests: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/api/v1/users".into(), None),
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(json!({ "username": "x", "role": "viewer", "password": "short" })),
        ),
        (Method::GET, format!("/api/v1/users/{user}"), None),
        (
            Method::PATCH,
            format!("/api/v1/users/{user}"),
            Some(json!({ "disabled": true })),
        ),
        (Method::DELETE, format!("/api/v1/users/{user}"), None),
        (
            Method::POST,
            format!("/api/v1/users/{user}/invitation"),
            Some(json!({})),
        ),
        (Method::GET, format!("/api/v1/users/{user}/grants"), None),
        (
            Method::POST,
            format!("/api/v1/users/{user}/grants"),
            Some(json!({ "gate": "n1" })),
        ),
        (
            Method::DELETE,
            format!("/api/v1/users/{user}/grants/{grant}"),
            None,
        ),
        (Method::GET, "/api/v1/api-keys".into(), None),
        (
            Method::POST,
            "/api/v1/api-keys".into(),
            Some(json!({ "name": "x", "role": "admin" })),
        ),
        (Method::DELETE, format!("/api/v1/api-keys/{key}"), None),
        (Method::GET, "/api/v1/config/sites".into(), None),
        (
            Method::POST,
            "/api/v1/config/sites".into(),
            Some(json!({ "id": "north", "name": "x" })),
        ),
        (Method::GET, "/api/v1/config/sites/zz".into(), None),
        (
            Method::PUT,
            "/api/v1/config/sites/zz".into(),
            Some(json!({ "name": "x" })),
        ),
        (Method::DELETE, "/api/v1/config/sites/zz".into(), None),
        (Method::GET, "/api/v1/config/controllers".into(), None),
        (
            Method::POST,
            "/api/v1/config/controllers".into(),
            Some(
                json!({ "id": "north-ctl", "site": "north", "profile": "generic", "endpoint": "127.0.0.1:1" }),
            ),
        ),
        (Method::GET, "/api/v1/config/controllers/zz".into(), None),
        (
            Method::PUT,
            "/api/v1/config/controllers/zz".into(),
            Some(json!({ "site": "north", "profile": "generic", "endpoint": "127.0.0.1:1" })),
        ),
        (Method::DELETE, "/api/v1/config/controllers/zz".into(), None),
        (Method::GET, "/api/v1/config/gates".into(), None),
        (
            Method::POST,
            "/api/v1/config/gates".into(),
            Some(json!({ "id": "n1", "controller": "north-ctl", "unit": 1 })),
        ),
        (Method::GET, "/api/v1/config/gates/zz".into(), None),
        (
            Method::PUT,
            "/api/v1/config/gates/zz".into(),
            Some(json!({ "controller": "north-ctl", "unit": 1 })),
        ),
        (Method::DELETE, "/api/v1/config/gates/zz".into(), None),
        (Method::GET, "/api/v1/audit".into(), None),
    ];

    // Every admin route of the table is in the list above.
    let template = |path: &str| {
        path.replace(&user.to_string(), "{user}")
            .replace(&grant.to_string(), "{grant}")
            .replace(&key.to_string(), "{key}")
            .replace("sites/zz", "sites/{site}")
            .replace("controllers/zz", "controllers/{controller}")
            .replace("gates/zz", "gates/{gate}")
    };
    let covered: BTreeSet<(String, String)> = requests
        .iter()
        .map(|(m, p, _)| (m.as_str().to_string(), template(p)))
        .collect();
    let served: BTreeSet<(String, String)> = rig
        .stack
        .routes
        .iter()
        .filter(|(_, p)| is_admin_route(p))
        .cloned()
        .collect();
    assert_eq!(covered, served, "the matrix covers every admin route");

    let operator_key = rig
        .post(
            &admin,
            "/api/v1/api-keys",
            json!({ "name": "integration", "role": "operator" }),
        )
        .await;
    assert_status(&operator_key, 201);
    let operator_key = operator_key.body["secret"].as_str().unwrap().to_owned();
    // An admin key limited to one site: it never acts fleet-wide, so it may not administer
    // (which could mint itself an unlimited key) nor read the whole audit log.
    let site_admin_key = rig
        .post(
            &admin,
            "/api/v1/api-keys",
            json!({ "name": "north-admin", "role": "admin", "site": "north", "confirm_admin": true }),
        )
        .await;
    assert_status(&site_admin_key, 201);
    let site_admin_key = site_admin_key.body["secret"].as_str().unwrap().to_owned();
    let mut callers = vec![
        ("admin", admin.clone()),
        ("operator key", operator_key),
        ("north admin key", site_admin_key),
    ];
    for name in ["op", "res", "view"] {
        callers.push((name, rig.token(name).await));
    }

    // What an allowed caller gets for each probe: the handler's own answer (a list, or the
    // refusal of an unknown id or an invalid value), never an authorization error or a 5xx.
    let mut allowed_answers = Vec::new();
    for (method, path, body) in &requests {
        let anonymous = rig.call(method.clone(), path, None, body.clone()).await;
        assert_error(&anonymous, 401, "unauthenticated");
        for (who, token) in &callers {
            let reply = rig
                .call(method.clone(), path, Some(token), body.clone())
                .await;
            let may = *who == "admin"
                || (path == "/api/v1/audit" && matches!(*who, "op" | "operator key"));
            if may {
                let code = reply.body["error"]["code"].as_str().unwrap_or("-");
                allowed_answers.push(format!(
                    "{who} {method} {} {} {code}",
                    template(path),
                    reply.status
                ));
            } else {
                let error = assert_error(&reply, 403, "forbidden");
                let reason = if *who == "north admin key" {
                    "other_site"
                } else {
                    "role"
                };
                assert_eq!(error["details"]["reason"], reason, "{who} {method} {path}");
            }
        }
    }
    let expected: Vec<String> = [
        "admin GET /api/v1/users 200 -",
        "admin POST /api/v1/users 422 weak_password",
        "admin GET /api/v1/users/{user} 404 unknown_user",
        "admin PATCH /api/v1/users/{user} 404 unknown_user",
        "admin DELETE /api/v1/users/{user} 404 unknown_user",
        "admin POST /api/v1/users/{user}/invitation 404 unknown_user",
        "admin GET /api/v1/users/{user}/grants 404 unknown_user",
        "admin POST /api/v1/users/{user}/grants 404 unknown_user",
        "admin DELETE /api/v1/users/{user}/grants/{grant} 404 unknown_user",
        "admin GET /api/v1/api-keys 200 -",
        "admin POST /api/v1/api-keys 422 admin_key_unconfirmed",
        "admin DELETE /api/v1/api-keys/{key} 404 unknown_api_key",
        "admin GET /api/v1/config/sites 200 -",
        "admin POST /api/v1/config/sites 409 site_exists",
        "admin GET /api/v1/config/sites/{site} 404 unknown_site",
        "admin PUT /api/v1/config/sites/{site} 404 unknown_site",
        "admin DELETE /api/v1/config/sites/{site} 404 unknown_site",
        "admin GET /api/v1/config/controllers 200 -",
        "admin POST /api/v1/config/controllers 409 controller_exists",
        "admin GET /api/v1/config/controllers/{controller} 404 unknown_controller",
        "admin PUT /api/v1/config/controllers/{controller} 404 unknown_controller",
        "admin DELETE /api/v1/config/controllers/{controller} 404 unknown_controller",
        "admin GET /api/v1/config/gates 200 -",
        "admin POST /api/v1/config/gates 409 gate_exists",
        "admin GET /api/v1/config/gates/{gate} 404 unknown_gate",
        "admin PUT /api/v1/config/gates/{gate} 404 unknown_gate",
        "admin DELETE /api/v1/config/gates/{gate} 404 unknown_gate",
        "admin GET /api/v1/audit 200 -",
        "operator key GET /api/v1/audit 200 -",
        "op GET /api/v1/audit 200 -",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(allowed_answers, expected);
    // The admin's probes changed nothing.
    rig.live_gates(&admin, &["n1", "n2"]).await;
    let users = rig.get(&admin, "/api/v1/users").await;
    assert_eq!(users.body["users"].as_array().unwrap().len(), 4);
    rig.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_change_is_audited_and_the_log_pages_and_filters() {
    let rig = Rig::start().await;
    let admin = rig.token("admin").await;
    let started = now_ms();
    let mut created = Vec::new();
    for i in 0..5 {
        let reply = rig
            .post(
                &admin,
                "/api/v1/users",
                json!({ "username": format!("user{i}"), "role": "viewer", "password": "long-enough-pw" }),
            )
            .await;
        assert_status(&reply, 201);
        created.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    assert_status(
        &rig.put(
            &admin,
            "/api/v1/config/sites/south",
            json!({ "name": "South side" }),
        )
        .await,
        200,
    );

    // Page by two through everything: ids increase, nothing repeats, the end says so.
    let mut seen: Vec<Value> = Vec::new();
    let mut after = 0i64;
    loop {
        let page = rig
            .get(&admin, &format!("/api/v1/audit?after={after}&limit=2"))
            .await;
        assert_status(&page, 200);
        let records = page.body["records"].as_array().unwrap().clone();
        assert!(records.len() <= 2);
        seen.extend(records);
        match page.body["next"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    let ids: Vec<i64> = seen.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let all = rig.get(&admin, "/api/v1/audit?limit=500").await;
    assert_eq!(all.body["records"].as_array().unwrap().len(), seen.len());
    assert_eq!(all.body["next"], Value::Null);

    // Filters.
    let admin_actor = format!("user:{}", rig.user("admin"));
    let creates = rig.get(&admin, "/api/v1/audit?action=user.&limit=3").await;
    assert_status(&creates, 200);
    let page = creates.body["records"].as_array().unwrap();
    assert_eq!(page.len(), 3);
    for (record, id) in page.iter().zip(&created) {
        assert_eq!(record["action"], "user.create");
        assert_eq!(record["actor"], admin_actor.as_str());
        assert_eq!(record["target"], format!("user:{id}"));
        assert_eq!(record["source_ip"], "127.0.0.1");
        assert_eq!(record["details"]["role"], "viewer");
        assert!(record["details"]["username"].is_string());
    }
    let rest = rig
        .get(
            &admin,
            &format!(
                "/api/v1/audit?action=user.&after={}",
                creates.body["next"].as_i64().unwrap()
            ),
        )
        .await;
    assert_eq!(rest.body["records"].as_array().unwrap().len(), 2);
    assert_eq!(rest.body["next"], Value::Null);

    let site = rig.get(&admin, "/api/v1/audit?target=site:south").await;
    let records = site.body["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{site:?}");
    assert_eq!(records[0]["action"], "config.site.update");
    assert_eq!(records[0]["details"]["from"]["name"], "South");
    assert_eq!(records[0]["details"]["to"]["name"], "South side");

    let by_admin = rig
        .get(
            &admin,
            &format!("/api/v1/audit?actor={admin_actor}&since_ms={started}"),
        )
        .await;
    let actions: Vec<&str> = by_admin.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "user.create",
            "user.create",
            "user.create",
            "user.create",
            "user.create",
            "config.site.update"
        ]
    );
    let future = rig
        .get(
            &admin,
            &format!("/api/v1/audit?since_ms={}", now_ms() + 60_000),
        )
        .await;
    assert_eq!(future.body["records"], json!([]));
    assert_eq!(future.body["next"], Value::Null);
    assert_error(
        &rig.get(&admin, "/api/v1/audit?since_ms=10&until_ms=5")
            .await,
        422,
        "invalid_range",
    );
    assert_error(
        &rig.get(&admin, "/api/v1/audit?page=2").await,
        400,
        "invalid_query",
    );
    rig.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_login_failures_lock_the_account_with_retry_after() {
    let rig = Rig::start().await;
    // Five failures are free; the sixth locks the account.
    for i in 0..6 {
        let reply = rig.login("view", "wrong-password-here").await;
        assert_error(&reply, 401, "invalid_credentials");
        assert!(reply.retry_after.is_none(), "failure {i}: {reply:?}");
    }
    let locked = rig.login("view", &password_of("view")).await;
    let error = assert_error(&locked, 429, "rate_limited");
    let retry: u64 = locked
        .retry_after
        .as_deref()
        .expect("a Retry-After header")
        .parse()
        .expect("whole seconds");
    assert!((1..=30).contains(&retry), "{locked:?}");
    assert_eq!(error["details"]["retry_after_s"], retry);
    // Another account from the same address is not locked.
    assert_status(&rig.login("op", &password_of("op")).await, 200);
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_beyond_the_burst_are_refused_per_caller_and_gate_but_stop_never_is() {
    let rig = Rig::start().await;
    let op = rig.token("op").await;
    let admin = rig.token("admin").await;
    // Lockout and unlock take effect without moving the gate.
    for action in ["lockout", "unlock", "lockout", "unlock", "lockout"] {
        assert_status(&rig.command_now(&op, "n1", action).await, 202);
    }
    let refused = rig.command_now(&op, "n1", "unlock").await;
    let error = assert_error(&refused, 429, "rate_limited");
    let retry: u64 = refused.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{refused:?}");
    assert_eq!(error["details"]["retry_after_s"], retry);
    let stop = rig.command_now(&op, "n1", "stop").await;
    assert_ne!(stop.status, 429, "stop is never limited: {stop:?}");
    assert_status(&rig.command_now(&admin, "n1", "unlock").await, 202);
    assert_status(&rig.command_now(&op, "n2", "lockout").await, 202);
    rig.shutdown().await;
}
