//! Faults in the supervision tree's own nodes, injected under live WebSocket sessions: the
//! root's children are killed one at a time, and each is restarted (and says so in the log)
//! while the clients keep, or regain, every gate's events with no gap and no duplicate.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gatehouse_actors::supervision::SupervisorMsg;
use gatehouse_tests::rig::{
    Rig, WAIT, command, expect_every_committed_event, finished, seqs_of, snapshot_seqs, subscribe,
};
use gatehouse_tests::wsclient::{Ended, WsClient};
use ractor::{ActorCell, ActorRef};
use serde_json::json;
use uuid::Uuid;

/// Everything this test binary logs, for the tests that check a restart was reported.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(sink.clone()))
            .init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether a logged line contains every one of `parts`.
fn logged(logs: &Mutex<Vec<u8>>, parts: &[&str]) -> bool {
    let text = String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).to_string();
    text.lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

/// The running instance of the root's child `id`.
async fn child(root: &ActorRef<SupervisorMsg>, id: &str) -> Option<ActorCell> {
    ractor::call!(root, SupervisorMsg::Child, id.to_string()).expect("the root answers")
}

/// Waits (bounded) until the root runs a new instance of `id` (not `old`).
async fn restarted(root: &ActorRef<SupervisorMsg>, id: &str, old: &ActorCell) -> ActorCell {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(cell) = child(root, id).await
            && cell.get_id() != old.get_id()
        {
            return cell;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const GATES: [&str; 4] = ["n1", "n2", "n3", "s1"];

/// Gives `action` to every gate at once, and requires each to complete.
async fn command_every_gate(op: &mut WsClient, action: &str) {
    for gate in GATES {
        op.send(json!({"type": "command", "id": Uuid::new_v4(), "gate": gate, "action": action}))
            .await
            .unwrap();
    }
    for _ in GATES {
        let (f, _) = op
            .until(WAIT, |f| f["type"] == "ack" && f["status"] != "accepted")
            .await
            .unwrap();
        assert_eq!(f["status"], "completed", "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hub_is_restarted_and_live_sessions_resync_without_gap_or_duplicate() {
    let logs = logs();
    let rig = Rig::start().await;
    let mut watcher = rig.client("view").await;
    let snapshot = subscribe(&mut watcher, json!({"type": "subscribe", "gates": GATES})).await;
    let start = snapshot_seqs(&snapshot);
    let root = rig.stack.runtime.root().clone();
    let hub = child(&root, "hub").await.expect("the hub runs");

    // The hub dies, and four gates are locked out at once: lockout completes without a
    // write, so all of its events are committed while no hub follows the bus, and nothing
    // follows them that would show the watcher a gap. Only the restarted hub's resync can
    // bring them.
    let mut op = rig.client("op").await;
    hub.kill();
    command_every_gate(&mut op, "lockout").await;
    restarted(&root, "hub", &hub).await;
    expect_every_committed_event(&rig, &mut watcher, &start, &GATES).await;

    // And live events flow through the new hub.
    let mut start = std::collections::HashMap::new();
    for gate in GATES {
        let view = rig
            .stack
            .runtime
            .fleet
            .view(&gate.parse().unwrap())
            .await
            .unwrap();
        start.insert(gate.to_string(), view.committed);
    }
    command_every_gate(&mut op, "unlock").await;
    expect_every_committed_event(&rig, &mut watcher, &start, &GATES).await;
    let stats = rig.stack.app.sessions.stats();
    assert_eq!(stats.hub_restarts, 1, "{stats:?}");
    assert_eq!(stats.open, 2, "both sessions lived through it: {stats:?}");
    assert!(
        logged(&logs, &["child exited", "child=hub", "killed"]),
        "the hub's death is logged"
    );
    assert!(
        logged(&logs, &["child restarted", "child=hub"]),
        "the hub's restart is logged"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_supervisor_is_restarted_and_clients_resume_without_gap_or_duplicate() {
    let logs = logs();
    let rig = Rig::start().await;
    let mut c = rig.client("op").await;
    let snapshot = subscribe(&mut c, json!({"type": "subscribe", "gates": ["n2"]})).await;
    let mut last = snapshot["gates"][0]["seq"].as_u64().unwrap();
    let root = rig.stack.runtime.root().clone();
    let sessions = child(&root, "sessions").await.expect("the supervisor runs");

    // Its sessions die with it: the client is told (1011) or sees the connection drop.
    sessions.kill();
    let (ended, frames) = c.ended(WAIT).await.expect("the connection ends");
    assert!(
        matches!(ended, Ended::Closed(1011, _) | Ended::Dropped),
        "{ended:?}"
    );
    if let Some(&s) = seqs_of(&frames, "n2").last() {
        last = s;
    }

    // Meanwhile the gate moves, commanded over REST.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = http
        .post(rig.stack.url("/api/v1/gates/n2/commands?wait=true"))
        .bearer_auth(rig.stack.token("admin"))
        .json(&json!({"id": Uuid::new_v4(), "action": "open"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    restarted(&root, "sessions", &sessions).await;

    // The phone reconnects (bounded retries while the supervisor comes back) and resumes.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut c = loop {
        match WsClient::authed(rig.stack.addr, &rig.stack.token("op")).await {
            Ok((c, _)) => break c,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "no session: {e:#}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let snapshot = subscribe(
        &mut c,
        json!({"type": "subscribe", "id": "r", "gates": ["n2"], "since": {"n2": last}}),
    )
    .await;
    let head = snapshot["gates"][0]["seq"].as_u64().unwrap();
    assert!(
        head > last,
        "the gate moved while the client was away: {snapshot}"
    );
    assert_eq!(snapshot["gates"][0]["replay_from"], last + 1, "{snapshot}");
    let (_, frames) = command(&mut c, "n2", "close").await;
    let all = finished(&mut c, frames).await;
    let seqs = seqs_of(&all, "n2");
    let expected: Vec<u64> = (last + 1..last + 1 + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "no gap and no duplicate across the restart");
    assert!(
        seqs.iter().any(|&s| s > head),
        "live events followed the replay"
    );
    assert!(
        logged(&logs, &["child restarted", "child=sessions"]),
        "the supervisor's restart is logged"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_fleet_supervisor_is_restarted_with_every_controller_and_gates_keep_their_sequences()
 {
    let logs = logs();
    let rig = Rig::start().await;
    let mut watcher = rig.client("view").await;
    let snapshot = subscribe(&mut watcher, json!({"type": "subscribe", "gates": GATES})).await;
    let start = snapshot_seqs(&snapshot);
    let root = rig.stack.runtime.root().clone();
    let fleet = child(&root, "fleet").await.expect("the fleet runs");

    fleet.kill();
    restarted(&root, "fleet", &fleet).await;
    // Every gate is driven again: a command on each completes.
    let mut op = rig.client("op").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    for gate in GATES {
        loop {
            let (_, frames) = command(&mut op, gate, "open").await;
            let last = frames.last().unwrap();
            if last["status"] == "completed" {
                break;
            }
            // Right after the restart a gate may still be reconnecting (offline).
            assert!(
                tokio::time::Instant::now() < deadline,
                "{gate} never came back: {frames:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The restarted gates continued their sequences: the watcher sees no gap, no repeat.
    expect_every_committed_event(&rig, &mut watcher, &start, &GATES).await;
    assert!(
        logged(&logs, &["child restarted", "child=fleet"]),
        "the fleet's restart is logged"
    );
    rig.stop().await;
}
