//! The operators' endpoints on a live stack: the supervision tree at
//! `GET /api/v1/system/actors` (who may read it, and what it shows while a link breaks and
//! comes back). The metrics text is checked against promtool on the real binary
//! (`binary.rs`), since the recorder is process-wide.

use std::time::{Duration, Instant};

use gatehouse_sim::controller::Fault;
use gatehouse_tests::http::Http;
use gatehouse_tests::rig::Rig;
use reqwest::Method;
use serde_json::Value;

/// The longest a condition may take to become true.
const BOUND: Duration = Duration::from_secs(20);

async fn tree(rig: &Rig, user: Option<&str>) -> (u16, Value) {
    let token = user.map(|u| rig.stack.token(u));
    let reply = Http::new(rig.stack.addr, BOUND)
        .call(Method::GET, "/api/v1/system/actors", token.as_deref(), None)
        .await;
    (reply.status, reply.body)
}

/// The node at `path` (child ids from the root).
fn node<'a>(tree: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut at = &tree["root"];
    for id in path {
        at = at["children"].as_array()?.iter().find(|c| c["id"] == *id)?;
    }
    Some(at)
}

fn link<'a>(tree: &'a Value, controller: &str) -> Option<&'a Value> {
    node(
        tree,
        &["fleet", &format!("controller:{controller}"), "link"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_and_operators_read_the_tree_and_it_holds_every_node() {
    let rig = Rig::start().await;
    assert_eq!(tree(&rig, None).await.0, 401);
    assert_eq!(tree(&rig, Some("res")).await.0, 403);
    assert_eq!(tree(&rig, Some("view")).await.0, 403);
    let (status, t) = tree(&rig, Some("op")).await;
    assert_eq!(status, 200, "{t}");
    let (status, t) = tree(&rig, Some("admin")).await;
    assert_eq!(status, 200, "{t}");

    let top: Vec<&str> = t["root"]["children"]
        .as_array()
        .expect("the root's children")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(
        top,
        ["eventlog", "hub", "fleet", "sessions", "scheduler"],
        "{t}"
    );
    let north = node(&t, &["fleet", "controller:north-ctl"]).expect("north's subtree");
    let ids: Vec<&str> = north["children"]
        .as_array()
        .expect("north's children")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, ["gate:n1", "gate:n2", "gate:n3", "link"], "{t}");
    for c in ["north-ctl", "south-ctl"] {
        let l = link(&t, c).expect("the link node");
        assert_eq!(l["kind"], "link");
        assert_eq!(l["status"], "running");
        assert_eq!(l["link"]["state"], "connected", "{l}");
        assert_eq!(l["link"]["controller"], c);
    }
    // Sessions are counted, not listed.
    let sessions = node(&t, &["sessions"]).expect("the session supervisor");
    assert!(sessions["sessions"].is_u64(), "{sessions}");
    assert_eq!(sessions["children"], Value::Array(Vec::new()));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_broke_shows_its_restart_and_failure_and_comes_back_connected() {
    let rig = Rig::start().await;
    let before = tree(&rig, Some("op")).await.1;
    let restarts = |t: &Value| link(t, "north-ctl").and_then(|l| l["restarts"].as_u64());
    assert_eq!(restarts(&before), Some(0), "{before}");

    // The controller drops its connections: the link's transport fails, its supervisor
    // restarts it, and it connects again.
    rig.farm
        .controller("north")
        .expect("north")
        .inject(Fault::DropConnections)
        .await
        .expect("the fault is injected");
    let deadline = Instant::now() + BOUND;
    let after = loop {
        let (_, t) = tree(&rig, Some("op")).await;
        let back = link(&t, "north-ctl")
            .is_some_and(|l| l["status"] == "running" && l["link"]["state"] == "connected");
        if restarts(&t).is_some_and(|n| n >= 1) && back {
            break t;
        }
        assert!(Instant::now() < deadline, "the link did not come back: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let l = link(&after, "north-ctl").expect("the link node");
    let failure = &l["last_failure"];
    assert!(
        failure["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{l}"
    );
    assert!(
        failure["at"].as_str().is_some_and(|a| a.ends_with('Z')),
        "{l}"
    );
    // The neighbour saw nothing of it.
    assert_eq!(
        link(&after, "south-ctl").and_then(|l| l["restarts"].as_u64()),
        Some(0),
        "{after}"
    );
    rig.stop().await;
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref"
                    && let Some(r) = v.as_str()
                {
                    out.push(r.to_string());
                }
                refs(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_names_every_error_answer_and_the_allowed_values_of_its_enums() {
    let rig = Rig::start().await;
    let doc: Value = reqwest::get(rig.stack.url("/api/v1/openapi.json"))
        .await
        .expect("served")
        .json()
        .await
        .expect("JSON");
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .expect("a schema ref");
        assert!(schemas.contains_key(name), "{r} does not resolve");
    }
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            operations += 1;
            assert_eq!(
                op["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorEnvelope",
                "{method} {path}"
            );
        }
    }
    assert!(operations > 30, "{operations} operations");
    let action = &schemas["CommandRequest"]["properties"]["action"];
    assert_eq!(
        action["$ref"], "#/components/schemas/ActionName",
        "{action}"
    );
    let actions: Vec<&str> = schemas["ActionName"]["enum"]
        .as_array()
        .expect("an enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        actions,
        [
            "open",
            "close",
            "stop",
            "toggle",
            "hold_open",
            "release",
            "lockout",
            "unlock",
            "reset"
        ]
    );
    let roles: Vec<&str> = schemas["RoleName"]["enum"]
        .as_array()
        .expect("an enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(roles, ["admin", "operator", "resident", "viewer"]);
    rig.stop().await;
}
