//! `kill -9` of `gatehouse serve` under load from real clients: REST callers waiting on
//! `?wait=true` and a WebSocket session, commanding eight gates on two simulated controllers.
//! Every outcome a client was told `completed` must be in the event log exactly once after the
//! kill, every gate's stored sequence must run without a gap, and a restarted server must
//! carry on from there (its next event continues the sequence) and remember the command ids
//! used before the kill.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_actors::gate::{CommandStatus, EventKind};
use gatehouse_actors::ids::GateId;
use gatehouse_tests::drive::stored_events;
use gatehouse_tests::http::Http;
use gatehouse_tests::procs::{Proc, Simulator, Stream, add_user, bin};
use gatehouse_tests::wsclient::WsClient;
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

const UNITS: u8 = 4;
const PASSWORD: &str = "kill-nine-password-31";
/// Outcomes told before the kill: enough that some commands are surely in flight too.
const TOLD_BEFORE_KILL: usize = 12;
const WAIT: Duration = Duration::from_secs(60);

/// A `stop` with command id `id` on `gate`, answered (with `wait`, at its terminal status).
async fn stop(base: &str, token: &str, gate: &GateId, id: Uuid, wait: bool) -> Value {
    let query = if wait { "?wait=true" } else { "" };
    reqwest::Client::new()
        .post(format!("{base}/api/v1/gates/{gate}/commands{query}"))
        .bearer_auth(token)
        .json(&json!({"id": id, "action": "stop"}))
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("json")
}

fn serve(dir: &Path, config: &Path) -> (Proc, String) {
    let mut proc = Proc::spawn(
        "gatehouse serve",
        Command::new(bin("gatehouse"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .current_dir(dir),
    );
    let line = proc.wait_for(Stream::Err, "API on http://", 1);
    let start = line.find("http://").expect("a URL");
    let url = &line[start..];
    let base = url[..url.find("/api/v1").expect("the API path")].to_string();
    // Every gate reconciled from its first poll (closed at first, wherever left later).
    proc.wait_for(Stream::Err, "offline -> ", 2 * usize::from(UNITS));
    (proc, base)
}

async fn login(base: &str) -> String {
    let addr = base
        .trim_start_matches("http://")
        .parse()
        .expect("an address");
    let reply = Http::new(addr, WAIT).login("ops", PASSWORD).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["access_token"]
        .as_str()
        .expect("a token")
        .to_string()
}

/// Command ids told `completed`, by whoever was told.
type Told = Arc<Mutex<Vec<(Uuid, GateId, &'static str)>>>;

/// Opens and closes `gate` over REST with `?wait=true` until the server goes away.
async fn rest_client(base: String, token: String, gate: GateId, told: Told) {
    let client = reqwest::Client::new();
    for action in ["open", "close"].iter().cycle() {
        let id = Uuid::new_v4();
        let sent = client
            .post(format!("{base}/api/v1/gates/{gate}/commands?wait=true"))
            .bearer_auth(&token)
            .json(&json!({"id": id, "action": action}))
            .send()
            .await;
        let Ok(response) = sent else { return };
        let Ok(body) = response.json::<Value>().await else {
            return;
        };
        if body["status"] == "completed" {
            told.lock().unwrap().push((id, gate.clone(), "rest"));
        }
    }
}

/// The same over one WebSocket session, across `gates`.
async fn ws_client(addr: std::net::SocketAddr, token: String, gates: Vec<GateId>, told: Told) {
    let Ok((mut client, _)) = WsClient::authed(addr, &token).await else {
        return;
    };
    for (gate, action) in gates.iter().cycle().zip(["open", "close"].iter().cycle()) {
        let id = Uuid::new_v4();
        let frame = json!({"type": "command", "id": id, "gate": gate.as_str(), "action": action});
        if client.send(frame).await.is_err() {
            return;
        }
        let sid = id.to_string();
        let terminal = client
            .until(WAIT, |f| {
                f["id"] == sid.as_str()
                    && (f["type"] == "error" || (f["type"] == "ack" && f["status"] != "accepted"))
            })
            .await;
        let Ok((ack, _)) = terminal else { return };
        if ack["status"] == "completed" {
            told.lock().unwrap().push((id, gate.clone(), "websocket"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_told_to_rest_and_websocket_clients_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let sim = Simulator::spawn(2, UNITS, 800);
    std::fs::write(dir.path().join("fleet.toml"), sim.fleet_file(UNITS)).expect("fleet file");
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[fleet]\nfile = \"fleet.toml\"\n",
    )
    .expect("config");
    add_user(dir.path(), &config, "ops", "operator", PASSWORD);
    let (mut server, base) = serve(dir.path(), &config);
    let token = login(&base).await;
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().expect("addr");

    let gates: Vec<GateId> = sim
        .controllers
        .iter()
        .flat_map(|(name, _)| (1..=UNITS).map(move |u| format!("{name}-g{u}").parse().unwrap()))
        .collect();
    let told: Told = Arc::default();
    let mut clients = Vec::new();
    // REST on sim-1's gates, one caller per gate; the WebSocket on sim-2's.
    for gate in &gates[..usize::from(UNITS)] {
        clients.push(tokio::spawn(rest_client(
            base.clone(),
            token.clone(),
            gate.clone(),
            told.clone(),
        )));
    }
    clients.push(tokio::spawn(ws_client(
        addr,
        token.clone(),
        gates[usize::from(UNITS)..].to_vec(),
        told.clone(),
    )));

    let deadline = Instant::now() + WAIT;
    while told.lock().unwrap().len() < TOLD_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "only {} outcomes within {WAIT:?}\n{}",
            told.lock().unwrap().len(),
            server.transcript()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.signal("KILL");
    server.try_wait_exit(Duration::from_secs(10));
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(10), client).await;
    }
    let told = told.lock().unwrap().clone();
    let by = |door| told.iter().filter(|(_, _, d)| *d == door).count();
    assert!(
        by("rest") > 0 && by("websocket") > 0,
        "both doors were told outcomes: {told:?}"
    );

    // Every told outcome is stored exactly once, as completed; every gate is gap-free.
    let db = dir.path().join("data/gatehouse.db");
    let events = stored_events(&db).await;
    let mut finished: HashMap<Uuid, Vec<CommandStatus>> = HashMap::new();
    for (gate, list) in &events {
        let seqs: Vec<u64> = list.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{gate}");
        for e in list {
            if let EventKind::CommandFinished {
                command, status, ..
            } = e.kind
            {
                finished.entry(command.0).or_default().push(status);
            }
        }
    }
    for (id, gate, door) in &told {
        assert_eq!(
            finished.get(id).map(Vec::as_slice),
            Some([CommandStatus::Completed].as_slice()),
            "{door} was told {id} on {gate} completed"
        );
    }

    // A restarted server carries every gate's sequence on.
    let last: HashMap<GateId, u64> = events
        .iter()
        .map(|(g, l)| (g.clone(), l.last().map_or(0, |e| e.seq)))
        .collect();
    let (mut server, base) = serve(dir.path(), &config);
    let token = login(&base).await;
    let gate = &gates[0];
    let answer = stop(&base, &token, gate, Uuid::new_v4(), true).await;
    assert!(
        matches!(
            answer["status"].as_str(),
            Some("completed" | "rejected" | "failed")
        ),
        "{answer}"
    );
    // A command id outlives the process: one told before the kill, used again after the
    // restart for another gate, is refused as a conflict, never a second command.
    let (told_id, told_gate, _) = &told[0];
    let other = gates
        .iter()
        .find(|g| *g != told_gate)
        .expect("another gate");
    let answer = stop(&base, &token, other, *told_id, false).await;
    assert_eq!(
        (&answer["status"], &answer["reason"]),
        (&json!("rejected"), &json!("id_conflict")),
        "{answer}"
    );
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    let events = stored_events(&db).await;
    for (gate, list) in &events {
        let seqs: Vec<u64> = list.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{gate}");
        assert!(
            seqs.len() as u64 > last[gate],
            "{gate} logged again after the restart"
        );
    }
    drop(sim);
}
