//! Maintenance end to end: plans over REST, the scheduler raising due and overdue events on
//! the gate's own stream as the simulated gate's cycle counter moves, a record that locks the
//! gate out through the command path and unlocks it on completion, the roles table, and bad
//! input. Against the WebSocket rig (two simulated controllers, four users).

use std::collections::HashMap;

use gatehouse_tests::http::{Http, assert_error, assert_status};
use gatehouse_tests::rig::{Rig, WAIT, subscribe};
use serde_json::{Value, json};
use uuid::Uuid;

/// Opens then closes `gate`, each command waited for: one cycle.
async fn cycle(http: &Http, token: &str, gate: &str) {
    for action in ["open", "close"] {
        let reply = http
            .command(token, gate, Uuid::new_v4(), action, true)
            .await;
        assert_status(&reply, 200);
        assert_eq!(reply.body["status"], "completed", "{action}: {reply:?}");
    }
}

/// The status entry of `gate` against `plan`, once `found` accepts it.
async fn entry_when(
    http: &Http,
    token: &str,
    gate: &str,
    plan: &str,
    waited: &str,
    found: impl Fn(&Value) -> bool,
) -> Value {
    http.until(
        token,
        &format!("/api/v1/maintenance/status?gate={gate}"),
        waited,
        |body| {
            body["entries"]
                .as_array()?
                .iter()
                .find(|e| e["plan"] == plan && found(e))
                .cloned()
        },
    )
    .await
}

/// How many events of each kind `gate` has committed.
async fn event_kinds(http: &Http, token: &str, gate: &str) -> HashMap<String, usize> {
    let reply = http
        .get(
            token,
            &format!("/api/v1/gates/{gate}/events?after=0&limit=500"),
        )
        .await;
    assert_status(&reply, 200);
    let mut kinds = HashMap::new();
    for e in reply.body["events"].as_array().expect("events") {
        *kinds
            .entry(e["kind"].as_str().expect("a kind").to_owned())
            .or_default() += 1;
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_crossing_its_plan_is_due_then_overdue_once_each_and_its_service_restarts_it() {
    let rig = Rig::start().await;
    let http = Http::new(rig.stack.addr, WAIT);
    let admin = rig.stack.token("admin");
    let op = rig.stack.token("op");

    // Due one cycle before the limit of two.
    let created = http
        .post(
            &admin,
            "/api/v1/maintenance/plans",
            json!({ "gate": "n2", "title": "Springs", "every_cycles": 2, "warn_cycles": 1 }),
        )
        .await;
    assert_status(&created, 201);
    let plan = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["gate"], "n2");
    assert_eq!(created.body["site"], Value::Null);

    // The scheduler starts counting from the gate's counter as it is now.
    let start = entry_when(&http, &op, "n2", &plan, "the count to start", |e| {
        e["cycles_since"] == 0
    })
    .await;
    assert_eq!(start["level"], "ok");
    assert_eq!(start["cycles_left"], 2);

    let mut phone = rig.client("op").await;
    subscribe(
        &mut phone,
        json!({ "type": "subscribe", "id": "s", "gates": ["n2"] }),
    )
    .await;

    cycle(&http, &op, "n2").await;
    let (due, _) = phone
        .until(WAIT, |f| {
            f["type"] == "event" && f["kind"] == "maintenance_due"
        })
        .await
        .expect("a maintenance_due event");
    assert_eq!(due["gate"], "n2");
    assert_eq!(due["plan"], plan.as_str());
    assert_eq!(due["cause"], "system");

    cycle(&http, &op, "n2").await;
    let (overdue, between) = phone
        .until(WAIT, |f| {
            f["type"] == "event" && f["kind"] == "maintenance_overdue"
        })
        .await
        .expect("a maintenance_overdue event");
    assert_eq!(overdue["plan"], plan.as_str());
    assert!(
        !between.iter().any(|f| f["kind"] == "maintenance_due"),
        "due is raised once per interval: {between:?}"
    );
    let listed = entry_when(&http, &op, "n2", &plan, "overdue in the status", |e| {
        e["level"] == "overdue"
    })
    .await;
    assert_eq!(listed["cycles_left"], 0);
    let overdue_only = http
        .get(&op, "/api/v1/maintenance/status?level=overdue")
        .await;
    assert_status(&overdue_only, 200);
    let gates: Vec<&str> = overdue_only.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["gate"].as_str().unwrap())
        .collect();
    assert_eq!(gates, ["n2"], "the fleet's overdue list");

    // The technician locks the gate out for the work: through the command path.
    let opened = http
        .post(
            &op,
            "/api/v1/maintenance/records",
            json!({ "gate": "n2", "plan": plan, "lockout": true, "notes": "on site" }),
        )
        .await;
    assert_status(&opened, 201);
    assert_eq!(opened.body["record"]["status"], "open");
    assert_eq!(opened.body["command"]["action"], "lockout");
    assert_eq!(opened.body["command"]["status"], "completed");
    let record = opened.body["record"]["id"].as_str().unwrap().to_owned();
    let gate = http.get(&op, "/api/v1/gates/n2").await;
    assert_eq!(gate.body["flags"]["locked_out"], true);
    let refused = http.command(&op, "n2", Uuid::new_v4(), "open", true).await;
    assert_eq!(refused.body["status"], "rejected");
    assert_eq!(refused.body["reason"], "locked_out");

    let done = http
        .post(
            &op,
            &format!("/api/v1/maintenance/records/{record}/complete"),
            json!({ "summary": "Replaced both springs", "parts": ["spring 2x"] }),
        )
        .await;
    assert_status(&done, 200);
    assert_eq!(done.body["record"]["status"], "completed");
    assert_eq!(done.body["record"]["parts"], json!(["spring 2x"]));
    assert_eq!(done.body["command"]["action"], "unlock");
    assert_eq!(done.body["command"]["status"], "completed");
    let gate = http.get(&op, "/api/v1/gates/n2").await;
    assert_eq!(gate.body["flags"]["locked_out"], false);
    assert_eq!(
        done.body["record"]["cycles_at"], gate.body["cycles"],
        "the counter at completion is recorded"
    );
    let restarted = entry_when(&http, &op, "n2", &plan, "the count to restart", |e| {
        e["level"] == "ok"
    })
    .await;
    assert_eq!(restarted["cycles_since"], 0);

    // Completed once: a second completion is refused.
    let again = http
        .post(
            &op,
            &format!("/api/v1/maintenance/records/{record}/complete"),
            json!({}),
        )
        .await;
    assert_error(&again, 409, "record_completed");

    // One cycle into the new interval: due again (a new interval, a new event).
    cycle(&http, &op, "n2").await;
    phone
        .until(WAIT, |f| {
            f["type"] == "event" && f["kind"] == "maintenance_due"
        })
        .await
        .expect("due again in the new interval");

    let kinds = event_kinds(&http, &op, "n2").await;
    assert_eq!(kinds.get("maintenance_due"), Some(&2), "{kinds:?}");
    assert_eq!(kinds.get("maintenance_overdue"), Some(&1), "{kinds:?}");
    assert_eq!(kinds.get("locked_out"), Some(&1), "{kinds:?}");
    assert_eq!(kinds.get("unlocked"), Some(&1), "{kinds:?}");

    // The record, its lockout and unlock are in the audit log, under the operator.
    let audit = http.get(&admin, "/api/v1/audit?target=gate:n2").await;
    let actions: Vec<&str> = audit.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for expected in [
        "gate.lockout",
        "maintenance.record.open",
        "gate.unlock",
        "maintenance.record.complete",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let listed = http
        .get(&op, "/api/v1/maintenance/records?gate=n2&status=completed")
        .await;
    assert_status(&listed, 200);
    assert_eq!(listed.body["records"][0]["id"], record.as_str());
    assert_eq!(listed.body["next"], Value::Null);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_plans_are_the_default_for_gates_without_plans_of_their_own() {
    let rig = Rig::start().await;
    let http = Http::new(rig.stack.addr, WAIT);
    let op = rig.stack.token("op");
    let site_plan = http
        .post(
            &op,
            "/api/v1/maintenance/plans",
            json!({ "site": "north", "title": "Annual inspection", "every_days": 365,
                    "warn_days": 30 }),
        )
        .await;
    assert_status(&site_plan, 201);
    let own = http
        .post(
            &op,
            "/api/v1/maintenance/plans",
            json!({ "gate": "n1", "title": "Springs", "every_cycles": 20000 }),
        )
        .await;
    assert_status(&own, 201);
    let titles = |body: &Value| -> Vec<String> {
        body["plans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["title"].as_str().unwrap().to_owned())
            .collect()
    };
    let n1 = http.get(&op, "/api/v1/maintenance/plans?gate=n1").await;
    assert_eq!(titles(&n1.body), ["Springs"]);
    let n3 = http.get(&op, "/api/v1/maintenance/plans?gate=n3").await;
    assert_eq!(titles(&n3.body), ["Annual inspection"]);
    let s1 = http.get(&op, "/api/v1/maintenance/plans?gate=s1").await;
    assert!(titles(&s1.body).is_empty());
    let north = http.get(&op, "/api/v1/maintenance/plans?site=north").await;
    assert_eq!(titles(&north.body).len(), 2);

    // The status lists each gate of the site against the plan that applies to it.
    let status = http
        .until(
            &op,
            "/api/v1/maintenance/status?site=north",
            "three gates",
            |b| {
                let entries = b["entries"].as_array()?;
                (entries.len() == 3).then(|| entries.clone())
            },
        )
        .await;
    let by_gate: HashMap<&str, &str> = status
        .iter()
        .map(|e| (e["gate"].as_str().unwrap(), e["title"].as_str().unwrap()))
        .collect();
    assert_eq!(by_gate["n1"], "Springs");
    assert_eq!(by_gate["n2"], "Annual inspection");
    assert_eq!(by_gate["n3"], "Annual inspection");
    let inspection = status
        .iter()
        .find(|e| e["gate"] == "n2")
        .expect("n2 is listed");
    // Whole days left, rounded down: 364 once a millisecond has passed since the start.
    let left = inspection["days_left"].as_i64().unwrap();
    assert!((364..=365).contains(&left), "{inspection}");

    // Replaced: the new interval applies; deleted: the gates fall back to nothing.
    let id = site_plan.body["id"].as_str().unwrap();
    let replaced = http
        .put(
            &op,
            &format!("/api/v1/maintenance/plans/{id}"),
            json!({ "title": "Inspection", "every_days": 180 }),
        )
        .await;
    assert_status(&replaced, 200);
    assert_eq!(replaced.body["site"], "north");
    assert_eq!(replaced.body["every_days"], 180);
    assert_status(
        &http
            .delete(&op, &format!("/api/v1/maintenance/plans/{id}"))
            .await,
        204,
    );
    let n3 = http.get(&op, "/api/v1/maintenance/plans?gate=n3").await;
    assert!(titles(&n3.body).is_empty());
    assert_error(
        &http
            .delete(&op, &format!("/api/v1/maintenance/plans/{id}"))
            .await,
        404,
        "unknown_plan",
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_residents_see_nothing_and_bad_input_says_what_to_fix() {
    let rig = Rig::start().await;
    let http = Http::new(rig.stack.addr, WAIT);
    let op = rig.stack.token("op");
    let view = rig.stack.token("view");
    let res = rig.stack.token("res");
    let plan = json!({ "gate": "n1", "title": "Springs", "every_cycles": 1000 });

    // Roles (CONTRACTS.md): admin and operator write, viewer reads, residents nothing.
    let denied = http
        .post(&view, "/api/v1/maintenance/plans", plan.clone())
        .await;
    assert_error(&denied, 403, "forbidden");
    let created = http.post(&op, "/api/v1/maintenance/plans", plan).await;
    assert_status(&created, 201);
    for path in [
        "/api/v1/maintenance/plans",
        "/api/v1/maintenance/status",
        "/api/v1/maintenance/records",
    ] {
        assert_status(&http.get(&view, path).await, 200);
        assert_error(&http.get(&res, path).await, 403, "forbidden");
    }
    let record = http
        .post(
            &view,
            "/api/v1/maintenance/records",
            json!({ "gate": "n1", "completed": true }),
        )
        .await;
    assert_error(&record, 403, "forbidden");

    // Bad input: the field to fix.
    let cases = [
        (
            json!({ "gate": "n1", "site": "north", "title": "x", "every_days": 1 }),
            422,
            "invalid_scope",
            None,
        ),
        (
            json!({ "title": "x", "every_days": 1 }),
            422,
            "invalid_scope",
            None,
        ),
        (
            json!({ "gate": "nope", "title": "x", "every_days": 1 }),
            422,
            "unknown_gate",
            Some("gate"),
        ),
        (
            json!({ "site": "east", "title": "x", "every_days": 1 }),
            422,
            "unknown_site",
            Some("site"),
        ),
        (
            json!({ "gate": "n1", "title": "x" }),
            422,
            "invalid_maintenance",
            Some("every_cycles"),
        ),
        (
            json!({ "gate": "n1", "title": "x", "every_cycles": 10, "warn_cycles": 10 }),
            422,
            "invalid_maintenance",
            Some("warn_cycles"),
        ),
        (
            json!({ "gate": "n1", "title": "", "every_days": 3 }),
            422,
            "invalid_maintenance",
            Some("title"),
        ),
        (
            json!({ "gate": "n1", "title": "x", "every_days": -3 }),
            400,
            "invalid_body",
            None,
        ),
        (
            json!({ "gate": "n1", "title": "x", "every_days": 3, "color": "red" }),
            400,
            "invalid_body",
            None,
        ),
    ];
    for (body, status, code, field) in cases {
        let reply = http
            .post(&op, "/api/v1/maintenance/plans", body.clone())
            .await;
        let error = assert_error(&reply, status, code);
        if let Some(field) = field {
            assert_eq!(error["details"]["field"], field, "{body}: {reply:?}");
        }
    }

    let other_plan = http
        .post(
            &op,
            "/api/v1/maintenance/plans",
            json!({ "gate": "s1", "title": "Chain", "every_days": 90 }),
        )
        .await;
    assert_status(&other_plan, 201);
    let record_cases = [
        (
            json!({ "gate": "n1", "plan": other_plan.body["id"], "completed": true }),
            422,
            "invalid_maintenance",
        ),
        (
            json!({ "gate": "n1", "lockout": true, "completed": true }),
            422,
            "invalid_maintenance",
        ),
        (
            json!({ "gate": "n1", "completed": true, "parts": [""] }),
            422,
            "invalid_maintenance",
        ),
        (json!({ "gate": "nope" }), 404, "unknown_gate"),
    ];
    for (body, status, code) in record_cases {
        let reply = http
            .post(&op, "/api/v1/maintenance/records", body.clone())
            .await;
        assert_error(&reply, status, code);
    }
    for (path, status, code) in [
        (
            "/api/v1/maintenance/records?status=done",
            400,
            "invalid_query",
        ),
        ("/api/v1/maintenance/records?limit=0", 400, "invalid_query"),
        (
            "/api/v1/maintenance/records?before=xyz",
            400,
            "invalid_query",
        ),
        (
            "/api/v1/maintenance/records?before=5a4b4f5e-0000-4000-8000-000000000000",
            400,
            "invalid_query",
        ),
        (
            "/api/v1/maintenance/status?level=late",
            400,
            "invalid_query",
        ),
        ("/api/v1/maintenance/records/xyz", 404, "unknown_record"),
        ("/api/v1/maintenance/plans/xyz", 404, "unknown_plan"),
        ("/api/v1/maintenance/plans?gate=nope", 404, "unknown_gate"),
    ] {
        assert_error(&http.get(&op, path).await, status, code);
    }
    // Nothing was recorded by the refused requests.
    let records = http.get(&op, "/api/v1/maintenance/records").await;
    assert_eq!(records.body["records"], json!([]));
    rig.stop().await;
}
