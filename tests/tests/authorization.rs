//! The whole authorization matrix of CONTRACTS.md ("Roles") over REST: every caller (the four
//! roles, an operator API key, a site-limited key on its own site and on another, a viewer key)
//! against every gate action, reading a gate and its events, subscribing, the audit log, the
//! live tree and the configuration; then credentials that must stop working at once (a
//! demoted or disabled user's token that has not expired, a revoked key) and tokens that were
//! never ours (HS256 signed with a guessable secret, `alg: none`, another issuer).
//!
//! Only the authorization decision is checked here (403, or not 403): what an admitted
//! command then does is `command_path.rs`'s and `rest_api.rs`'s business.

use std::collections::HashMap;

use gatehouse_actors::access::{AccessStore, ApiKeyRecord, Role, UserId};
use gatehouse_api::auth::secrets;
use gatehouse_tests::http::Http;
use gatehouse_tests::rig::{Rig, WAIT};
use gatehouse_tests::stack::now_ms;
use gatehouse_tests::wsclient::WsClient;
use serde_json::{Value, json};
use uuid::Uuid;

/// The API keys made here: (name, role, site limit).
const KEYS: [(&str, Role, Option<&str>); 3] = [
    ("ops-key", Role::Operator, None),
    ("north-key", Role::Operator, Some("north")),
    ("viewer-key", Role::Viewer, None),
];

const ACTIONS: [&str; 9] = [
    "open",
    "close",
    "stop",
    "toggle",
    "hold_open",
    "release",
    "lockout",
    "unlock",
    "reset",
];

/// Actions a resident may give on a granted gate.
const MOVES: [&str; 6] = ["open", "close", "stop", "toggle", "hold_open", "release"];

struct Callers {
    bearer: HashMap<&'static str, String>,
}

impl Callers {
    async fn new(rig: &Rig) -> Callers {
        let mut bearer = HashMap::new();
        for user in ["admin", "op", "res", "view"] {
            bearer.insert(user, rig.stack.token(user));
        }
        for (name, role, site) in KEYS {
            let secret = secrets::api_key();
            rig.stack
                .store
                .create_api_key(ApiKeyRecord {
                    id: Uuid::new_v4(),
                    name: name.to_string(),
                    hash: secrets::digest(&secret),
                    role,
                    site: site.map(|s| s.parse().unwrap()),
                    created_at_ms: now_ms(),
                    revoked_at_ms: None,
                })
                .await
                .expect("the key is stored");
            bearer.insert(name, secret);
        }
        Callers { bearer }
    }
}

async fn status(rig: &Rig, method: &str, path: &str, bearer: &str, body: Option<Value>) -> u16 {
    Http::new(rig.stack.addr, WAIT)
        .call(method.parse().unwrap(), path, Some(bearer), body)
        .await
        .status
}

/// Allowed (`true`) or refused with 403 (`false`); anything else fails the test.
async fn allowed(rig: &Rig, method: &str, path: &str, bearer: &str, body: Option<Value>) -> bool {
    match status(rig, method, path, bearer, body).await {
        403 => false,
        s if (200..300).contains(&s) => true,
        s => panic!("{method} {path}: {s} is neither allowed nor forbidden"),
    }
}

/// Whether `who` may give `action` on `gate`, by CONTRACTS.md's table.
fn may_command(who: &str, action: &str, gate: &str) -> bool {
    match who {
        "admin" | "op" | "ops-key" => true,
        // Limited to its site's gates.
        "north-key" => gate.starts_with('n'),
        // Granted gate n1 only, and no lockout, unlock or reset.
        "res" => gate == "n1" && MOVES.contains(&action),
        "view" | "viewer-key" => false,
        _ => unreachable!("{who}"),
    }
}

fn may_read(who: &str, gate: &str) -> bool {
    match who {
        "admin" | "op" | "ops-key" | "view" | "viewer-key" => true,
        "north-key" => gate.starts_with('n'),
        "res" => gate == "n1",
        _ => unreachable!("{who}"),
    }
}

const WHO: [&str; 7] = [
    "admin",
    "op",
    "res",
    "view",
    "ops-key",
    "north-key",
    "viewer-key",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_against_every_action_read_and_admin_door_follows_the_roles_table() {
    let rig = Rig::start().await;
    let callers = Callers::new(&rig).await;
    let mut wrong = Vec::new();

    // Commands: every action on a gate of each site. Each caller gives at most five limited
    // commands per gate (the rate limit's burst); `stop` is never limited.
    for who in WHO {
        let bearer = &callers.bearer[who];
        for action in ACTIONS {
            for gate in ["n1", "n2", "s1"] {
                let body = json!({"id": Uuid::new_v4(), "action": action});
                let path = format!("/api/v1/gates/{gate}/commands");
                let status = status(&rig, "POST", &path, bearer, Some(body)).await;
                let decided = match status {
                    403 => false,
                    202 | 200 => true,
                    // Over the rate limit: authorized (the limit is checked after), not the
                    // decision under test; only possible for callers allowed to command.
                    429 => true,
                    s => panic!("{who} {action} {gate}: {s}"),
                };
                if decided != may_command(who, action, gate) {
                    wrong.push(format!("{who} {action} {gate}: {status}"));
                }
            }
        }
    }

    // Reads: a gate, its events.
    for who in WHO {
        let bearer = &callers.bearer[who];
        for gate in ["n1", "n2", "s1"] {
            for path in [
                format!("/api/v1/gates/{gate}"),
                format!("/api/v1/gates/{gate}/events?after=0&limit=5"),
            ] {
                if allowed(&rig, "GET", &path, bearer, None).await != may_read(who, gate) {
                    wrong.push(format!("{who} GET {path}"));
                }
            }
        }
    }

    // Staff doors: the audit log and the tree (admin, operator), the configuration, users
    // and keys (admin only; an operator key is not an admin).
    for who in WHO {
        let bearer = &callers.bearer[who];
        // A site-limited key sees its own site only, so not these fleet-wide views.
        let staff = matches!(who, "admin" | "op" | "ops-key");
        for path in ["/api/v1/audit?limit=1", "/api/v1/system/actors"] {
            if allowed(&rig, "GET", path, bearer, None).await != staff {
                wrong.push(format!("{who} GET {path}"));
            }
        }
        for path in [
            "/api/v1/config/sites",
            "/api/v1/config/controllers",
            "/api/v1/users",
            "/api/v1/api-keys",
        ] {
            if allowed(&rig, "GET", path, bearer, None).await != (who == "admin") {
                wrong.push(format!("{who} GET {path}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "decisions against the roles table:\n{}",
        wrong.join("\n")
    );

    // Subscribing, on the WebSocket: a site-limited key and a resident get their own gates
    // and are refused the others.
    for (who, mine, other) in [("north-key", "n2", "s1"), ("res", "n1", "n2")] {
        let (mut client, _) = WsClient::authed(rig.stack.addr, &callers.bearer[who])
            .await
            .expect("connects and authenticates");
        let snapshot = answer(
            &mut client,
            json!({"type": "subscribe", "id": "a", "gates": [mine]}),
        )
        .await;
        assert_eq!(snapshot["type"], "snapshot", "{who}: {snapshot}");
        let refused = answer(
            &mut client,
            json!({"type": "subscribe", "id": "b", "gates": [other]}),
        )
        .await;
        assert_eq!(
            refused["type"], "error",
            "{who} subscribing to {other}: {refused}"
        );
        assert_eq!(refused["code"], "forbidden", "{who}: {refused}");
    }
    rig.stop().await;
}

/// The answer to a request frame (by its `id`): a snapshot or an error.
async fn answer(client: &mut WsClient, request: Value) -> Value {
    let id = request["id"].clone();
    client.send(request).await.expect("sent");
    let (frame, _) = client
        .until(WAIT, |f| {
            f["id"] == id && (f["type"] == "snapshot" || f["type"] == "error")
        })
        .await
        .expect("answered");
    frame
}

async fn set_user(rig: &Rig, admin: &str, user: UserId, change: Value) {
    let path = format!("/api/v1/users/{}", user.0);
    let reply = Http::new(rig.stack.addr, WAIT)
        .patch(admin, &path, change.clone())
        .await;
    assert_eq!(reply.status, 200, "{change}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_or_disabled_users_unexpired_token_and_a_revoked_key_lose_their_rights_at_once() {
    let rig = Rig::start().await;
    let admin = rig.stack.token("admin");
    let op = rig.stack.token("op");
    let lockout = || Some(json!({"id": Uuid::new_v4(), "action": "lockout"}));
    let path = "/api/v1/gates/n2/commands";
    assert!(allowed(&rig, "POST", path, &op, lockout()).await);

    // Demoted to viewer: the same, unexpired token now reads but may not command.
    let op_id = rig.stack.users["op"].0;
    set_user(&rig, &admin, op_id, json!({"role": "viewer"})).await;
    assert!(!allowed(&rig, "POST", path, &op, lockout()).await);
    assert!(allowed(&rig, "GET", "/api/v1/gates/n2", &op, None).await);
    assert!(!allowed(&rig, "GET", "/api/v1/audit?limit=1", &op, None).await);

    // Disabled: the token is refused outright.
    set_user(&rig, &admin, op_id, json!({"disabled": true})).await;
    assert_eq!(
        status(&rig, "GET", "/api/v1/gates/n2", &op, None).await,
        401
    );

    // A revoked API key.
    let secret = secrets::api_key();
    let key = Uuid::new_v4();
    rig.stack
        .store
        .create_api_key(ApiKeyRecord {
            id: key,
            name: "short-lived".into(),
            hash: secrets::digest(&secret),
            role: Role::Operator,
            site: None,
            created_at_ms: now_ms(),
            revoked_at_ms: None,
        })
        .await
        .expect("stored");
    assert!(allowed(&rig, "GET", "/api/v1/gates/n1", &secret, None).await);
    let revoked = status(
        &rig,
        "DELETE",
        &format!("/api/v1/api-keys/{key}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(revoked, 204);
    assert_eq!(
        status(&rig, "GET", "/api/v1/gates/n1", &secret, None).await,
        401
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_were_never_ours_are_refused() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let rig = Rig::start().await;
    let admin = rig.stack.users["admin"].0;
    let now = now_ms() / 1000;
    let claims = |iss: &str| {
        json!({
            "sub": admin.0.to_string(), "role": "admin", "iss": iss, "aud": "gatehouse-api",
            "iat": now, "exp": now + 600, "jti": Uuid::new_v4().to_string(),
        })
    };
    // Algorithm confusion: HMAC with what an attacker can know or guess (the key id, which
    // every token carries; an empty secret).
    let mut forged = Vec::new();
    for secret in [rig.stack.keys.kid().as_bytes(), b"".as_slice()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(rig.stack.keys.kid().to_string());
        forged.push(
            jsonwebtoken::encode(
                &header,
                &claims("gatehouse"),
                &EncodingKey::from_secret(secret),
            )
            .expect("encodes"),
        );
    }
    // `alg: none`, unsigned.
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    forged.push(format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": rig.stack.keys.kid()})),
        b64(&claims("gatehouse"))
    ));
    // Our own signature over a token whose payload was swapped afterwards.
    let real = rig.stack.token("view");
    let parts: Vec<&str> = real.split('.').collect();
    forged.push(format!(
        "{}.{}.{}",
        parts[0],
        b64(&claims("gatehouse")),
        parts[2]
    ));
    for token in forged {
        assert_eq!(
            status(&rig, "GET", "/api/v1/users", &token, None).await,
            401,
            "{token}"
        );
    }
    rig.stop().await;
}
