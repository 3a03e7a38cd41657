//! The WebSocket protocol end to end (`/api/v1/ws`, `gatehouse.v1`): a real tungstenite client
//! against the real route table, sessions and runtime, over Modbus TCP to the in-process
//! simulator. Authentication and its failures, subscriptions with snapshots, commands with
//! their acks, resume with `since` without gap or duplicate, who may see and do what, bad
//! input that keeps the connection, and every close code the protocol names.

use std::time::Duration;

use gatehouse_actors::access::Role;
use gatehouse_api::auth::tokens::TokenKeys;
use gatehouse_api::changes::AccessChange;
use gatehouse_api::ws::WsConfig;
use gatehouse_tests::rig::{
    Rig, WAIT, alive, command, expect_every_committed_event, finished, seqs_of, snapshot_seqs,
    subscribe,
};
use gatehouse_tests::stack::now_ms;
use gatehouse_tests::wsclient::{Ended, WsClient};
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_in_subscribe_command_and_watch_the_gate_move() {
    let rig = Rig::start().await;
    let (mut c, ok) = WsClient::authed(rig.stack.addr, &rig.stack.token("op"))
        .await
        .unwrap();
    assert_eq!(ok["id"], "a");
    assert_eq!(ok["role"], "operator");
    assert!(ok["expires_at"].as_u64().unwrap() > now_ms() / 1000);

    let snapshot = subscribe(
        &mut c,
        json!({"type": "subscribe", "id": "s", "gates": ["n1"]}),
    )
    .await;
    assert_eq!(snapshot["id"], "s");
    let gates = snapshot["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 1);
    assert_eq!(gates[0]["gate"], "n1");
    assert_eq!(gates[0]["site"], "north");
    assert_eq!(gates[0]["state"], "closed");
    let start = gates[0]["seq"].as_u64().unwrap();

    let (id, frames) = command(&mut c, "n1", "open").await;
    let sid = id.to_string();
    let acks: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "ack" && f["id"] == sid.as_str())
        .collect();
    assert_eq!(acks.len(), 2, "{frames:?}");
    assert_eq!(acks[0]["status"], "accepted");
    assert_eq!(acks[0]["gate"], "n1");
    assert_eq!(acks[1]["status"], "completed", "{frames:?}");
    let events: Vec<&Value> = frames.iter().filter(|f| f["type"] == "event").collect();
    assert!(
        events.iter().any(|e| e["kind"] == "state_changed"
            && e["state"] == "opening"
            && e["cause"] == sid.as_str()),
        "the gate was seen opening because of the command: {frames:?}"
    );
    let seqs = seqs_of(&frames, "n1");
    let expected: Vec<u64> = (start + 1..start + 1 + seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "live events follow the snapshot without gaps"
    );

    // The `open` state and the command's finish reach the client too (the terminal ack is
    // only sent once they are committed, but may overtake their delivery).
    let all = finished(&mut c, frames).await;
    assert!(
        all.iter()
            .any(|f| f["type"] == "event" && f["state"] == "open"),
        "{all:?}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_since_replays_the_missed_events_then_goes_live_without_gap_or_duplicate() {
    let rig = Rig::start().await;
    let mut c = rig.client("op").await;
    let snapshot = subscribe(&mut c, json!({"type": "subscribe", "gates": ["n2"]})).await;
    let mut last = snapshot["gates"][0]["seq"].as_u64().unwrap();
    let (_, frames) = command(&mut c, "n2", "open").await;
    if let Some(&s) = seqs_of(&frames, "n2").last() {
        last = s;
    }
    // The tunnel: the connection drops without a goodbye.
    drop(c);

    // Meanwhile the gate moves (commanded by someone else).
    let mut other = rig.client("admin").await;
    command(&mut other, "n2", "close").await;
    command(&mut other, "n2", "open").await;

    let mut c = rig.client("op").await;
    let snapshot = subscribe(
        &mut c,
        json!({"type": "subscribe", "id": "r", "gates": ["n2"], "since": {"n2": last}}),
    )
    .await;
    let head = snapshot["gates"][0]["seq"].as_u64().unwrap();
    assert!(head > last + 2, "events were missed: {snapshot}");
    assert_eq!(snapshot["gates"][0]["replay_from"], last + 1, "{snapshot}");

    // The replay, then live events after another command: one contiguous run.
    let (_, frames) = command(&mut c, "n2", "close").await;
    let all = finished(&mut c, frames).await;
    let seqs = seqs_of(&all, "n2");
    let expected: Vec<u64> = (last + 1..last + 1 + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "no gap and no duplicate across the drop");
    assert!(
        seqs.iter().any(|&s| s > head),
        "live events followed the replay"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_with_an_error_and_the_connection_stays() {
    let rig = Rig::start().await;
    let mut c = rig.client("op").await;
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "malformed_json"),
        ("[1,2]".into(), "invalid_message"),
        (r#"{"id":"1"}"#.into(), "invalid_message"),
        (r#"{"type":"fly","id":"2"}"#.into(), "unknown_type"),
        (
            r#"{"type":"ping","id":"3","extra":true}"#.into(),
            "invalid_message",
        ),
        (
            r#"{"type":"subscribe","id":"4","gates":"n1"}"#.into(),
            "invalid_message",
        ),
        (
            r#"{"type":"subscribe","id":"5","gates":["nope"]}"#.into(),
            "unknown_gate",
        ),
        (
            r#"{"type":"subscribe","id":"6","sites":["atlantis"]}"#.into(),
            "unknown_site",
        ),
        (
            r#"{"type":"subscribe","id":"7","gates":["n1"],"since":{"n2":1}}"#.into(),
            "invalid_message",
        ),
        (
            r#"{"type":"command","id":"not-a-uuid","gate":"n1","action":"open"}"#.into(),
            "invalid_message",
        ),
        (
            format!(
                r#"{{"type":"command","id":"{}","gate":"n1","action":"fly"}}"#,
                Uuid::new_v4()
            ),
            "unknown_action",
        ),
        (
            format!(
                r#"{{"type":"command","id":"{}","gate":"nowhere","action":"open"}}"#,
                Uuid::new_v4()
            ),
            "unknown_gate",
        ),
    ];
    for (text, code) in cases {
        c.send_text(text.clone()).await.unwrap();
        let error = c.recv().await.unwrap();
        assert_eq!(error["type"], "error", "{text} → {error}");
        assert_eq!(error["code"], code, "{text} → {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        alive(&mut c).await;
    }
    // The id is echoed where there was one.
    c.send_text(r#"{"type":"fly","id":"echo-me"}"#.into())
        .await
        .unwrap();
    assert_eq!(c.recv().await.unwrap()["id"], "echo-me");
    // A binary frame is refused, not fatal.
    use futures::SinkExt;
    c.socket
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![0xde, 0xad].into(),
        ))
        .await
        .unwrap();
    assert_eq!(c.recv().await.unwrap()["code"], "invalid_message");
    alive(&mut c).await;
    // Nothing moved.
    assert_eq!(
        rig.stack
            .runtime
            .fleet
            .view(&"n1".parse().unwrap())
            .await
            .unwrap()
            .snapshot
            .state,
        gatehouse_actors::gate::GateState::Closed
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_close_with_4401() {
    let rig = Rig::start().await;
    let addr = rig.stack.addr;
    let other_keys = TokenKeys::ephemeral().unwrap();
    let (forged, _) = other_keys
        .issue(
            &rig.stack.users["admin"].0.to_string(),
            Role::Admin,
            now_ms() / 1000,
        )
        .unwrap();
    // alg "none": a header and claims with no signature.
    let b64 = |v: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(
            json!({"sub": rig.stack.users["admin"].0.to_string(), "role": "admin",
                   "iss": "gatehouse", "aud": "gatehouse", "iat": now_ms() / 1000,
                   "exp": now_ms() / 1000 + 600, "jti": "x"})
        )
    );
    let expired = rig.stack.token_at("op", now_ms() / 1000 - 3600);
    for (what, token) in [
        ("forged with another key", forged),
        ("alg none", none),
        ("expired", expired),
        ("garbage", "garbage".to_string()),
        ("unknown API key", "ghk_0000000000000000".to_string()),
    ] {
        let mut c = WsClient::connect(addr).await.unwrap();
        c.send(json!({"type": "auth", "id": "x", "token": token}))
            .await
            .unwrap();
        let (end, frames) = c.ended(WAIT).await.unwrap();
        assert_eq!(
            end,
            Ended::Closed(4401, "unauthenticated".into()),
            "{what}: {frames:?}"
        );
        assert_eq!(frames.len(), 1, "{what}: {frames:?}");
        assert_eq!(frames[0]["type"], "error");
        assert_eq!(frames[0]["code"], "unauthenticated", "{what}");
        assert_eq!(frames[0]["id"], "x", "{what}");
    }
    // Anything but auth first.
    let mut c = WsClient::connect(addr).await.unwrap();
    c.send(json!({"type": "subscribe", "gates": ["n1"]}))
        .await
        .unwrap();
    let (end, _) = c.ended(WAIT).await.unwrap();
    assert!(matches!(end, Ended::Closed(4401, _)), "{end:?}");
    // No subprotocol: the upgrade is refused.
    assert!(WsClient::connect_with(addr, None).await.is_err());
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residents_follow_and_command_only_their_granted_gates() {
    let rig = Rig::start().await;
    let mut c = rig.client("res").await;
    c.send(json!({"type": "subscribe", "id": "1", "gates": ["n2"]}))
        .await
        .unwrap();
    let e = c.recv().await.unwrap();
    assert_eq!(
        (e["type"].clone(), e["code"].clone()),
        ("error".into(), "forbidden".into()),
        "{e}"
    );
    assert_eq!(e["details"]["reason"], "no_grant", "{e}");
    // A site brings only the granted gates of it.
    let snapshot = subscribe(&mut c, json!({"type": "subscribe", "sites": ["north"]})).await;
    let gates: Vec<&str> = snapshot["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["gate"].as_str().unwrap())
        .collect();
    assert_eq!(gates, vec!["n1"]);
    let id = Uuid::new_v4();
    c.send(json!({"type": "command", "id": id, "gate": "n3", "action": "open"}))
        .await
        .unwrap();
    let e = c.until(WAIT, |f| f["type"] == "error").await.unwrap().0;
    assert_eq!(e["code"], "forbidden");
    assert_eq!(e["id"], id.to_string());
    let (_, frames) = command(&mut c, "n1", "open").await;
    assert_eq!(frames.last().unwrap()["status"], "completed", "{frames:?}");

    // Viewers watch and never command.
    let mut v = rig.client("view").await;
    subscribe(&mut v, json!({"type": "subscribe", "gates": ["n2", "s1"]})).await;
    let (_, frames) = command(&mut v, "n2", "open").await;
    let last = frames.last().unwrap();
    assert_eq!(last["code"], "forbidden", "{frames:?}");
    assert_eq!(last["details"]["reason"], "role");
    // Operators may lock out; residents may not.
    let (_, frames) = command(&mut c, "n1", "lockout").await;
    assert_eq!(frames.last().unwrap()["code"], "forbidden");
    let mut op = rig.client("op").await;
    let (_, frames) = command(&mut op, "n3", "lockout").await;
    assert_eq!(frames.last().unwrap()["status"], "completed", "{frames:?}");
    let (_, frames) = command(&mut op, "n3", "open").await;
    assert_eq!(frames.last().unwrap()["status"], "rejected");
    assert_eq!(frames.last().unwrap()["reason"], "locked_out");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_closes_the_live_session_with_4403() {
    let rig = Rig::start().await;
    let mut c = rig.client("res").await;
    subscribe(&mut c, json!({"type": "subscribe", "gates": ["n1"]})).await;
    // An unrelated change (another user) leaves the session alone.
    rig.stack
        .app
        .changes
        .announce(AccessChange::User(rig.stack.users["op"].0));
    alive(&mut c).await;

    // The admin revokes the resident's grant over REST.
    let reply = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .delete(rig.stack.url(&format!(
            "/api/v1/users/{}/grants/{}",
            rig.stack.users["res"].0, rig.grant
        )))
        .bearer_auth(rig.stack.token("admin"))
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success(), "{reply:?}");
    let (end, frames) = c.ended(WAIT).await.unwrap();
    assert!(matches!(end, Ended::Closed(4403, _)), "{end:?} {frames:?}");
    let error = frames
        .iter()
        .find(|f| f["type"] == "error")
        .expect("an error first");
    assert_eq!(error["code"], "grant_revoked");
    assert_eq!(error["details"]["gates"], json!(["n1"]));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_oversized_flooding_and_shutdown_close_with_their_codes() {
    let rig = Rig::start_with(WsConfig {
        idle_timeout: Duration::from_millis(1500),
        ..WsConfig::default()
    })
    .await;
    // Idle: nothing sent for the idle timeout.
    let mut idle = rig.client("op").await;
    let (end, frames) = idle.ended(WAIT).await.unwrap();
    assert!(matches!(end, Ended::Closed(4408, _)), "{end:?}");
    assert_eq!(frames.last().unwrap()["code"], "idle_timeout");

    // Pinging keeps it open past the timeout.
    let mut busy = rig.client("op").await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        alive(&mut busy).await;
    }

    // A frame over the limit.
    let mut big = rig.client("op").await;
    big.send_text(format!(
        r#"{{"type":"ping","id":"{}"}}"#,
        "x".repeat(64 * 1024)
    ))
    .await
    .unwrap();
    let (end, _) = big.ended(WAIT).await.unwrap();
    assert!(matches!(end, Ended::Closed(4413, _)), "{end:?}");

    // Flooding: far more frames than the per-connection rate.
    let mut flood = rig.client("op").await;
    for i in 0..200 {
        if flood
            .send(json!({"type": "ping", "id": i.to_string()}))
            .await
            .is_err()
        {
            break;
        }
    }
    let (end, _) = flood.ended(WAIT).await.unwrap();
    assert!(matches!(end, Ended::Closed(4429, _)), "{end:?}");

    // Shutdown: 4500, resume elsewhere.
    let mut last = rig.client("op").await;
    alive(&mut busy).await;
    let Rig { farm, stack, .. } = rig;
    let stopping = tokio::spawn(stack.shutdown());
    for c in [&mut last, &mut busy] {
        let (end, _) = c.ended(WAIT).await.unwrap();
        assert!(matches!(end, Ended::Closed(4500, _)), "{end:?}");
    }
    stopping.await.unwrap();
    farm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_renewed_in_session_or_the_session_closes_with_4401() {
    let rig = Rig::start().await;
    // Issued 15 minutes minus 2 seconds ago: expires in about 2 s.
    let issued = now_ms() / 1000 - (15 * 60 - 2);
    let (mut renewing, _) = WsClient::authed(rig.stack.addr, &rig.stack.token_at("op", issued))
        .await
        .unwrap();
    let (mut lapsing, _) = WsClient::authed(rig.stack.addr, &rig.stack.token_at("op", issued))
        .await
        .unwrap();
    renewing
        .send(json!({"type": "auth", "id": "renew", "token": rig.stack.token("op")}))
        .await
        .unwrap();
    let ok = renewing.recv().await.unwrap();
    assert_eq!(
        (ok["type"].clone(), ok["id"].clone()),
        ("auth_ok".into(), "renew".into())
    );
    // Another user's token cannot take over the session.
    let (end, frames) = lapsing.ended(WAIT).await.unwrap();
    assert!(matches!(end, Ended::Closed(4401, _)), "{end:?}");
    assert_eq!(frames.last().unwrap()["code"], "token_expired");
    tokio::time::sleep(Duration::from_secs(1)).await;
    alive(&mut renewing).await;
    renewing
        .send(json!({"type": "auth", "id": "swap", "token": rig.stack.token("admin")}))
        .await
        .unwrap();
    let (end, frames) = renewing.ended(WAIT).await.unwrap();
    assert!(matches!(end, Ended::Closed(4401, _)), "{end:?}");
    assert_eq!(frames.last().unwrap()["code"], "identity_mismatch");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_beyond_the_per_gate_limit_are_refused_but_stop_always_goes_through() {
    let rig = Rig::start().await;
    let mut c = rig.client("op").await;
    let burst = rig.stack.app.limits.limits().command.burst;
    let mut refused = None;
    let mut first = None;
    for i in 0..=burst {
        let action = if i % 2 == 0 { "lockout" } else { "unlock" };
        let (id, frames) = command(&mut c, "n3", action).await;
        first.get_or_insert(id);
        let last = frames.last().unwrap().clone();
        if last["type"] == "error" {
            refused = Some((i, last));
            break;
        }
        assert_eq!(last["status"], "completed", "{frames:?}");
    }
    let (i, error) = refused.expect("the burst ran out");
    assert_eq!(i, burst, "exactly the burst was let through");
    assert_eq!(error["code"], "rate_limited");
    assert!(
        error["details"]["retry_after_ms"].as_u64().unwrap() > 0,
        "{error}"
    );
    // A retry of an admitted command (a phone resending after a drop) is not refused: it gets
    // that command's outcome again.
    let first = first.unwrap();
    c.send(json!({"type": "command", "id": first, "gate": "n3", "action": "lockout"}))
        .await
        .unwrap();
    let (again, _) = c
        .until(WAIT, |f| {
            f["id"] == first.to_string().as_str()
                && (f["type"] == "error" || f["status"] != "accepted")
        })
        .await
        .unwrap();
    assert_eq!(
        (again["type"].as_str(), again["status"].as_str()),
        (Some("ack"), Some("completed")),
        "{again}"
    );
    // The same id for another gate is not a second command: rejected, id_conflict.
    c.send(json!({"type": "command", "id": first, "gate": "n2", "action": "lockout"}))
        .await
        .unwrap();
    let (conflict, _) = c
        .until(WAIT, |f| f["id"] == first.to_string().as_str())
        .await
        .unwrap();
    assert_eq!(
        (
            conflict["status"].as_str(),
            conflict["reason"].as_str(),
            conflict["gate"].as_str()
        ),
        (Some("rejected"), Some("id_conflict"), Some("n2")),
        "{conflict}"
    );
    // Another gate has its own budget, and stop is never refused.
    let (_, frames) = command(&mut c, "n2", "lockout").await;
    assert_eq!(frames.last().unwrap()["status"], "completed");
    let (_, frames) = command(&mut c, "n3", "stop").await;
    assert_eq!(frames.last().unwrap()["type"], "ack", "{frames:?}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_coalesced_then_cut_off_with_4509_and_others_are_unaffected()
{
    use std::sync::Arc;

    use gatehouse_actors::gate::GateEvent;
    use gatehouse_actors::gate::{Cause, EventKind, GateSnapshot, GateState};
    use gatehouse_actors::tree::bus::EventSink;

    let rig = Rig::start_with(WsConfig {
        write_stall: Duration::from_secs(1),
        ..WsConfig::default()
    })
    .await;
    // The stuck phone: a tiny receive window, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(rig.stack.addr).await.unwrap();
    let mut stuck = WsClient::handshake(tcp, rig.stack.addr, Some("gatehouse.v1"))
        .await
        .unwrap();
    stuck
        .send(json!({"type": "auth", "token": rig.stack.token("op")}))
        .await
        .unwrap();
    subscribe(
        &mut stuck,
        json!({"type": "subscribe", "gates": ["n1", "n2"]}),
    )
    .await;
    // A healthy phone on the same gate.
    let mut healthy = rig.client("view").await;
    subscribe(&mut healthy, json!({"type": "subscribe", "gates": ["n1"]})).await;

    // A storm of events on n1 (injected on the bus, as committed events arrive).
    let bus = rig.stack.runtime.bus.clone();
    let storm = 20_000u64;
    for seq in 1_000..1_000 + storm {
        bus.publish(Arc::new(GateEvent {
            gate: "n1".parse().unwrap(),
            controller: "north-ctl".parse().unwrap(),
            seq,
            at_ms: now_ms(),
            kind: EventKind::LeftOpen { open_for_ms: seq },
            cause: Cause::System,
            snapshot: GateSnapshot {
                state: GateState::Open,
                position: Some((seq % 100) as u8),
                ..GateSnapshot::default()
            },
        }));
        if seq % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The healthy client sees the newest state: every event, or coalesced snapshots.
    let newest = 1_000 + storm - 1;
    healthy
        .until(WAIT, |f| {
            (f["type"] == "event" && f["seq"] == newest)
                || (f["type"] == "snapshot"
                    && f["gates"]
                        .as_array()
                        .is_some_and(|g| g.iter().any(|g| g["seq"] == newest)))
        })
        .await
        .expect("the healthy client keeps up");
    alive(&mut healthy).await;

    // The stuck one is cut off within the stall time, having been coalesced first.
    let deadline = tokio::time::Instant::now() + WAIT;
    while rig.stack.app.sessions.stats().too_slow == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never cut off: {:?}",
            rig.stack.app.sessions.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = rig.stack.app.sessions.stats();
    assert!(stats.coalesced > 0, "{stats:?}");
    // Once it reads again, it learns why (within the close linger): 4509, resume with since.
    let (end, _) = stuck.ended(WAIT).await.unwrap();
    assert!(matches!(end, Ended::Closed(4509, _)), "{end:?}");
    rig.stop().await;
}

/// The same policy on both doors: for every role and every kind of operation, the WebSocket
/// allows exactly what REST allows (CONTRACTS.md "Roles").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_allows_exactly_what_rest_allows_for_every_role() {
    let rig = Rig::start().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // (operation, gate): reads of a granted and an ungranted gate; a motion command (stop:
    // allowed in any state, moves nothing) and a maintenance command (unlock), each on a
    // granted and an ungranted gate.
    let operations = [
        ("read", "n1"),
        ("read", "n2"),
        ("stop", "n1"),
        ("stop", "n2"),
        ("unlock", "n1"),
        ("unlock", "n3"),
    ];
    let mut table = Vec::new();
    for user in ["admin", "op", "res", "view"] {
        let token = rig.stack.token(user);
        let mut ws = rig.client(user).await;
        for (op, gate) in operations {
            let rest_allowed = if op == "read" {
                let r = http
                    .get(rig.stack.url(&format!("/api/v1/gates/{gate}")))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => true,
                    403 => false,
                    other => panic!("{user} {op} {gate}: REST answered {other}"),
                }
            } else {
                let r = http
                    .post(
                        rig.stack
                            .url(&format!("/api/v1/gates/{gate}/commands?wait=true")),
                    )
                    .bearer_auth(&token)
                    .json(&json!({"id": Uuid::new_v4(), "action": op}))
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 | 202 => true,
                    403 => false,
                    other => panic!("{user} {op} {gate}: REST answered {other}"),
                }
            };
            let ws_allowed = if op == "read" {
                ws.send(json!({"type": "subscribe", "id": "r", "gates": [gate]}))
                    .await
                    .unwrap();
                let (answer, _) = ws.until(WAIT, |f| f["id"] == "r").await.unwrap();
                match (answer["type"].as_str(), answer["code"].as_str()) {
                    (Some("snapshot"), _) => true,
                    (Some("error"), Some("forbidden")) => false,
                    _ => panic!("{user} {op} {gate}: WebSocket answered {answer}"),
                }
            } else {
                let (_, frames) = command(&mut ws, gate, op).await;
                let last = frames.last().unwrap();
                match (last["type"].as_str(), last["code"].as_str()) {
                    (Some("ack"), _) => true,
                    (Some("error"), Some("forbidden")) => false,
                    _ => panic!("{user} {op} {gate}: WebSocket answered {frames:?}"),
                }
            };
            assert_eq!(
                rest_allowed, ws_allowed,
                "{user} {op} {gate}: REST and WebSocket disagree"
            );
            table.push(format!(
                "{user} {op} {gate} {}",
                if ws_allowed { "yes" } else { "no" }
            ));
        }
    }
    // And the policy itself, as CONTRACTS.md has it (the resident holds a grant for n1 only).
    let expected: Vec<String> = [
        "admin read n1 yes",
        "admin read n2 yes",
        "admin stop n1 yes",
        "admin stop n2 yes",
        "admin unlock n1 yes",
        "admin unlock n3 yes",
        "op read n1 yes",
        "op read n2 yes",
        "op stop n1 yes",
        "op stop n2 yes",
        "op unlock n1 yes",
        "op unlock n3 yes",
        "res read n1 yes",
        "res read n2 no",
        "res stop n1 yes",
        "res stop n2 no",
        "res unlock n1 no",
        "res unlock n3 no",
        "view read n1 yes",
        "view read n2 yes",
        "view stop n1 no",
        "view stop n2 no",
        "view unlock n1 no",
        "view unlock n3 no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(table, expected);
    rig.stop().await;
}

/// The hub loses events when it falls behind the bus (here: a bus that holds 2); every session
/// then fills from the event store, and still sees each gate's events once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_hub_loses_events_sessions_fill_them_from_the_store_without_gap_or_duplicate() {
    let rig = Rig::start_on(WsConfig::default(), Some(2)).await;
    let mut watcher = rig.client("view").await;
    let snapshot = subscribe(
        &mut watcher,
        json!({"type": "subscribe", "gates": ["n1", "n2", "n3", "s1"]}),
    )
    .await;
    let start = snapshot_seqs(&snapshot);
    // Four gates moving at once: their events are committed (and published) in batches
    // larger than the bus holds.
    let mut op = rig.client("op").await;
    for round in ["open", "close"] {
        for gate in ["n1", "n2", "n3", "s1"] {
            op.send(
                json!({"type": "command", "id": Uuid::new_v4(), "gate": gate, "action": round}),
            )
            .await
            .unwrap();
        }
        let mut done = 0;
        while done < 4 {
            let (f, _) = op
                .until(WAIT, |f| f["type"] == "ack" && f["status"] != "accepted")
                .await
                .unwrap();
            assert_eq!(f["status"], "completed", "{f}");
            done += 1;
        }
    }
    // The watcher ends up with every committed event of every gate, once, in order.
    expect_every_committed_event(&rig, &mut watcher, &start, &["n1", "n2", "n3", "s1"]).await;
    assert!(
        rig.stack.app.sessions.stats().hub_lagged > 0,
        "the hub did fall behind: {:?}",
        rig.stack.app.sessions.stats()
    );
    rig.stop().await;
}

/// Events lost on their way to the sessions (a gap raised on the bus, as when Redis drops
/// between nodes) cost one read of the followed gates' heads, shared by every session: the
/// sessions already at those heads read nothing more, and the streams go on without gap or
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_of_events_costs_one_heads_read_for_all_sessions_and_none_per_session() {
    const WATCHERS: usize = 12;
    let rig = Rig::start().await;
    let gates = ["n1", "n2", "s1"];
    let mut watchers = Vec::new();
    let mut starts = Vec::new();
    for _ in 0..WATCHERS {
        let mut w = rig.client("view").await;
        let snapshot = subscribe(&mut w, json!({"type": "subscribe", "gates": gates})).await;
        starts.push(snapshot_seqs(&snapshot));
        watchers.push(w);
    }
    let stats = || rig.stack.app.sessions.stats();
    let before = stats();
    // The gates are at rest: every session holds each gate's head from its snapshot.
    rig.stack.runtime.bus.signal_gap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while stats().gap_checks < before.gap_checks + WATCHERS as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "every session checks its gates after the loss: {:?}",
            stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = stats();
    assert_eq!(
        after.hub_lagged - before.hub_lagged,
        1,
        "one loss counted: {after:?}"
    );
    assert_eq!(
        after.gap_head_reads - before.gap_head_reads,
        1,
        "one heads read for {WATCHERS} sessions: {after:?}"
    );
    assert_eq!(
        after.gap_refills, before.gap_refills,
        "no session was behind, so none read a gate's events: {after:?}"
    );
    // The streams go on: a gate moved now reaches every session, every event once, in order.
    let mut op = rig.client("op").await;
    let (_, frames) = command(&mut op, "n1", "open").await;
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "ack" && f["status"] == "completed"),
        "{frames:?}"
    );
    for (w, start) in watchers.iter_mut().zip(&starts) {
        expect_every_committed_event(&rig, w, start, &gates).await;
    }
    rig.stop().await;
}

/// A password reset over REST ends the account's live sessions (4401); a change that leaves
/// the password alone (here: a role change that still reads the gate) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_reset_ends_live_sessions_and_a_harmless_change_does_not() {
    let rig = Rig::start().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let admin = rig.stack.token("admin");
    let op = rig.stack.users["op"].0;
    let mut c = rig.client("op").await;
    subscribe(&mut c, json!({"type": "subscribe", "gates": ["n1"]})).await;

    let patch = |body: Value| {
        http.patch(rig.stack.url(&format!("/api/v1/users/{op}")))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let reply = patch(json!({"role": "viewer"})).await.unwrap();
    assert!(reply.status().is_success(), "{reply:?}");
    // Now a viewer: commands are refused on the same session, once the notice has reached
    // it (it travels through the hub; the session is not closed meanwhile).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, frames) = command(&mut c, "n1", "stop").await;
        let last = frames.last().unwrap();
        if last["code"] == "forbidden" {
            break;
        }
        assert_eq!(last["status"], "completed", "still an operator: {frames:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the role change never reached the session"
        );
    }
    alive(&mut c).await;

    let reply = patch(json!({"password": "a-brand-new-long-password"}))
        .await
        .unwrap();
    assert!(reply.status().is_success(), "{reply:?}");
    let (end, frames) = c.ended(WAIT).await.unwrap();
    assert!(matches!(end, Ended::Closed(4401, _)), "{end:?}");
    assert_eq!(frames.last().unwrap()["code"], "credentials_changed");
    rig.stop().await;
}

/// A gate removed from the fleet over REST is dropped from live subscriptions with a
/// `gate_removed` error; the session and its other gates carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_removed_from_the_fleet_leaves_live_subscriptions_with_a_notice() {
    let rig = Rig::start().await;
    let mut c = rig.client("op").await;
    subscribe(&mut c, json!({"type": "subscribe", "gates": ["n2", "n3"]})).await;
    let reply = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .delete(rig.stack.url("/api/v1/config/gates/n3"))
        .bearer_auth(rig.stack.token("admin"))
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success(), "{reply:?}");
    let (notice, _) = c.until(WAIT, |f| f["type"] == "error").await.unwrap();
    assert_eq!(notice["code"], "gate_removed", "{notice}");
    assert_eq!(notice["details"]["gates"], json!(["n3"]));
    alive(&mut c).await;
    // The remaining gate still streams.
    let (_, frames) = command(&mut c, "n2", "open").await;
    let all = finished(&mut c, frames).await;
    assert!(
        all.iter()
            .any(|f| f["type"] == "event" && f["gate"] == "n2"),
        "{all:?}"
    );
    rig.stop().await;
}
