//! The WebSocket test rig: two simulated controllers (north: gates n1, n2, n3; south: s1) on
//! two sites, a whole stack with four users (admin, op, res, view; the resident holds a grant
//! for n1), and the helpers the WebSocket tests share.

use std::time::Duration;

use gatehouse_actors::access::{AccessStore, Grant, GrantScope, Role};
use gatehouse_api::ws::WsConfig;
use gatehouse_sim::{ControllerSpec as SimControllerSpec, Farm, FarmSpec};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::stack::{Stack, StackSpec, now_ms};
use crate::wsclient::WsClient;

pub const WAIT: Duration = Duration::from_secs(30);
pub const TRAVEL: Duration = Duration::from_millis(400);

pub struct Rig {
    pub farm: Farm,
    pub stack: Stack,
    /// The resident's grant (gate n1, no time windows).
    pub grant: Uuid,
}

impl Rig {
    pub async fn start() -> Rig {
        Self::start_with(WsConfig::default()).await
    }

    pub async fn start_with(ws: WsConfig) -> Rig {
        Self::start_on(ws, None).await
    }

    pub async fn start_on(ws: WsConfig, bus_capacity: Option<usize>) -> Rig {
        Self::start_full(ws, bus_capacity, None, None).await
    }

    /// With its files in `blobs`, and each site's previous month queued as reports.
    pub async fn start_reporting(
        blobs: std::sync::Arc<dyn gatehouse_actors::blob::BlobStore>,
    ) -> Rig {
        Self::start_full(WsConfig::default(), None, None, Some(blobs)).await
    }

    /// With a notifier that sends mail as `notify` says.
    pub async fn start_notifying(notify: gatehouse_runtime::boot::NotifySetup) -> Rig {
        Self::start_full(WsConfig::default(), None, Some(notify), None).await
    }

    async fn start_full(
        ws: WsConfig,
        bus_capacity: Option<usize>,
        notify: Option<gatehouse_runtime::boot::NotifySetup>,
        blobs: Option<std::sync::Arc<dyn gatehouse_actors::blob::BlobStore>>,
    ) -> Rig {
        let profiles = gatehouse_adapters::profile::ProfileSet::builtin().unwrap();
        let farm = Farm::start(FarmSpec {
            controllers: vec![
                SimControllerSpec::new("north", "generic", [1, 2, 3]).with_travel(TRAVEL),
                SimControllerSpec::new("south", "generic", [1]).with_travel(TRAVEL),
            ],
            profiles,
        })
        .await
        .expect("the farm starts");
        let north = farm.controller("north").unwrap().local_addr();
        let south = farm.controller("south").unwrap().local_addr();
        let fleet = format!(
            r#"
[[site]]
id = "north"
name = "North"
timezone = "UTC"

[[site]]
id = "south"
name = "South"
timezone = "UTC"

[[controller]]
id = "north-ctl"
site = "north"
profile = "generic"
endpoint = "{north}"
poll_interval_ms = 200

[[controller]]
id = "south-ctl"
site = "south"
profile = "generic"
endpoint = "{south}"
poll_interval_ms = 200

[[gate]]
id = "n1"
controller = "north-ctl"
unit = 1

[[gate]]
id = "n2"
controller = "north-ctl"
unit = 2

[[gate]]
id = "n3"
controller = "north-ctl"
unit = 3

[[gate]]
id = "s1"
controller = "south-ctl"
unit = 1
"#
        );
        let stack = Stack::start(StackSpec {
            fleet,
            users: vec![
                ("admin", Role::Admin),
                ("op", Role::Operator),
                ("res", Role::Resident),
                ("view", Role::Viewer),
            ],
            ws,
            wait_closed: true,
            bus_capacity,
            maintenance_check: crate::stack::TEST_MAINTENANCE_CHECK,
            notify,
            monthly_reports: blobs.is_some(),
            blobs,
        })
        .await
        .expect("the stack starts");
        let grant = Uuid::new_v4();
        stack
            .store
            .create_grant(
                Grant {
                    id: grant,
                    user: stack.users["res"].0,
                    scope: GrantScope::Gate("n1".parse().unwrap()),
                    windows: Vec::new(),
                },
                now_ms(),
            )
            .await
            .expect("the grant");
        Rig { farm, stack, grant }
    }

    pub async fn client(&self, user: &str) -> WsClient {
        WsClient::authed(self.stack.addr, &self.stack.token(user))
            .await
            .expect("connects and authenticates")
            .0
    }

    pub async fn stop(self) {
        self.stack.shutdown().await;
        self.farm.shutdown().await;
    }
}

/// Subscribes and answers the snapshot.
pub async fn subscribe(c: &mut WsClient, request: Value) -> Value {
    c.send(request).await.unwrap();
    let (snapshot, before) = c
        .until(WAIT, |f| f["type"] == "snapshot" || f["type"] == "error")
        .await
        .unwrap();
    assert_eq!(snapshot["type"], "snapshot", "{snapshot} after {before:?}");
    snapshot
}

/// Sends a command; answers every frame up to and including its terminal ack.
pub async fn command(c: &mut WsClient, gate: &str, action: &str) -> (Uuid, Vec<Value>) {
    let id = Uuid::new_v4();
    c.send(json!({"type": "command", "id": id, "gate": gate, "action": action}))
        .await
        .unwrap();
    let sid = id.to_string();
    let (last, mut before) = c
        .until(WAIT, |f| {
            f["id"] == sid.as_str()
                && (f["type"] == "error" || (f["type"] == "ack" && f["status"] != "accepted"))
        })
        .await
        .unwrap();
    before.push(last);
    (id, before)
}

/// `frames`, plus what follows until a `command_finished` event has been seen.
pub async fn finished(c: &mut WsClient, mut frames: Vec<Value>) -> Vec<Value> {
    let done = |f: &Value| f["type"] == "event" && f["kind"] == "command_finished";
    if !frames.iter().any(done) {
        let (last, before) = c.until(WAIT, done).await.unwrap();
        frames.extend(before);
        frames.push(last);
    }
    frames
}

/// Pings and expects the pong: the connection is alive and in order.
pub async fn alive(c: &mut WsClient) {
    c.send(json!({"type": "ping", "id": "alive"}))
        .await
        .unwrap();
    let (pong, _) = c
        .until(WAIT, |f| f["type"] == "pong")
        .await
        .expect("a pong");
    assert_eq!(pong["id"], "alive");
}

pub fn seqs_of(frames: &[Value], gate: &str) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "event" && f["gate"] == gate)
        .map(|f| f["seq"].as_u64().unwrap())
        .collect()
}

/// Each gate's seq in a `snapshot` answer.
pub fn snapshot_seqs(snapshot: &Value) -> std::collections::HashMap<String, u64> {
    snapshot["gates"]
        .as_array()
        .expect("a snapshot lists gates")
        .iter()
        .map(|g| {
            (
                g["gate"].as_str().expect("a gate id").to_string(),
                g["seq"].as_u64().expect("a seq"),
            )
        })
        .collect()
}

/// Reads `watcher`'s events until, for each of `gates`, it has seen the gate's committed head
/// (bounded by [`WAIT`]); then checks that each gate's events are exactly `start + 1 ..= head`
/// once each and in order: no gap and no duplicate.
pub async fn expect_every_committed_event(
    rig: &Rig,
    watcher: &mut WsClient,
    start: &std::collections::HashMap<String, u64>,
    gates: &[&str],
) {
    let mut seen: std::collections::HashMap<String, Vec<u64>> = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut complete = true;
        for gate in gates {
            let head = rig
                .stack
                .runtime
                .fleet
                .view(&gate.parse().expect("a gate id"))
                .await
                .expect("the gate runs")
                .committed;
            let last = seen
                .get(*gate)
                .and_then(|s| s.last())
                .copied()
                .unwrap_or(start[*gate]);
            if last < head {
                complete = false;
            }
        }
        if complete {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing events: {seen:?}"
        );
        if let Ok(f) = watcher.recv_within(Duration::from_millis(500)).await
            && f["type"] == "event"
        {
            seen.entry(f["gate"].as_str().expect("a gate").to_string())
                .or_default()
                .push(f["seq"].as_u64().expect("a seq"));
        }
    }
    for (gate, seqs) in &seen {
        let first = start[gate.as_str()] + 1;
        let expected: Vec<u64> = (first..first + seqs.len() as u64).collect();
        assert_eq!(seqs, &expected, "{gate}: contiguous, no duplicate");
    }
}
