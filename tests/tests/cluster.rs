//! Scale-out: three `gatehouse serve` nodes (`[cluster]`) on one PostgreSQL database and one
//! (private) Redis, the fleet imported once before they start, a simulator farm of 30
//! controllers, WebSocket sessions on two nodes following every gate, and commands sent
//! through two nodes to every gate, whichever node drives it. Every controller is driven by
//! exactly one node, the nodes share them evenly, and:
//! - a command sent to any node reaches the gate's node, and its outcome comes back;
//! - Redis restarted under command load: the cluster settles, and nothing is lost;
//! - a node paused past its lease TTL (SIGSTOP) loses its controllers to the others, and
//!   after SIGCONT it drives none of them until it takes some back;
//! - a node killed with SIGKILL under command load loses its controllers to the others
//!   within the TTL;
//! - a node stopped with SIGTERM hands its controllers over at once;
//! - a command id used through one node is refused for another gate through another, and
//!   failed logins spread over two nodes lock the account on both.
//!
//! Through all of it: every command gets exactly one terminal outcome, every one told
//! `completed` is in the log once, the sessions see every event of every gate in order with
//! no gap and no duplicate, and no controller is ever written on two connections in
//! alternation (the simulator records each write's connection).
//!
//! Timings are asserted against the configured TTL with generous margins (the machine is
//! shared); the figures measured are printed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_actors::gate::{CommandStatus, EventKind};
use gatehouse_actors::ids::GateId;
use gatehouse_actors::store::EventStore;
use gatehouse_adapters::store::Store;
use gatehouse_tests::cluster::{NODES, Node, owners, prepare, start};
use gatehouse_tests::http::Http;
use gatehouse_tests::procs::{Simulator, Stream, tail};
use gatehouse_tests::redis::RedisServer;
use gatehouse_tests::wsclient::WsClient;
use gatehouse_tests::{ScratchDatabase, pg_server};
use serde_json::json;
use uuid::Uuid;

const CONTROLLERS: usize = 30;
const TTL: Duration = Duration::from_millis(2_000);
const WAIT: Duration = Duration::from_secs(60);
/// Commands on one gate are spaced by this (the API allows a burst of 5 per caller and
/// gate, then one every 2 s).
const PACE: Duration = Duration::from_millis(2_100);

/// Waits (bounded) until the live leases satisfy `done`; answers them and how long it took.
async fn leases_until(
    store: &Store,
    what: &str,
    done: impl Fn(&BTreeMap<String, BTreeSet<String>>) -> bool,
) -> (BTreeMap<String, BTreeSet<String>>, Duration) {
    let start = Instant::now();
    loop {
        let now = owners(store).await;
        if done(&now) {
            return (now, start.elapsed());
        }
        assert!(start.elapsed() < WAIT, "{what}: never; leases {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn counts(owners: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, usize> {
    owners.iter().map(|(n, c)| (n.clone(), c.len())).collect()
}

fn held(owners: &BTreeMap<String, BTreeSet<String>>) -> usize {
    owners.values().map(BTreeSet::len).sum()
}

/// The gates a node lists and says are not offline, by its REST API: since every node lists
/// every gate, the live ones are those the bus or the store show up, wherever driven.
async fn gate_states(http: &Http, token: &str) -> BTreeMap<String, String> {
    let reply = http.get(token, "/api/v1/gates").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["id"].as_str().unwrap().to_owned(),
                g["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A node's readiness check `name`: `ready` or `degraded`.
async fn readiness_of(http: &Http, name: &str) -> String {
    let reply = http.call(reqwest::Method::GET, "/readyz", None, None).await;
    let check = reply.body["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no {name} check: {:?}", reply.body));
    if check.get("degraded").is_some() {
        "degraded".into()
    } else if check["ready"] == true {
        "ready".into()
    } else {
        "not_ready".into()
    }
}

/// What a session saw of each gate: the snapshot's seq, then each event's.
#[derive(Debug, Default, Clone)]
struct Seen {
    snapshot: Option<u64>,
    events: Vec<u64>,
}

/// A WebSocket session following every gate of the site, recording what it sees.
struct Follower {
    seen: Arc<Mutex<BTreeMap<String, Seen>>>,
    /// Set when the session ended or misbehaved.
    broken: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    async fn start(node: &Node) -> Follower {
        let (mut ws, _) = WsClient::authed(node.addr, &node.token).await.unwrap();
        ws.send(json!({"type": "subscribe", "id": "all", "sites": ["site"]}))
            .await
            .unwrap();
        let (snapshot, _) = ws.until(WAIT, |f| f["type"] == "snapshot").await.unwrap();
        let seen: Arc<Mutex<BTreeMap<String, Seen>>> = Arc::default();
        for g in snapshot["gates"].as_array().unwrap() {
            seen.lock().unwrap().insert(
                g["gate"].as_str().unwrap().to_owned(),
                Seen {
                    snapshot: g["seq"].as_u64(),
                    events: Vec::new(),
                },
            );
        }
        assert_eq!(seen.lock().unwrap().len(), CONTROLLERS, "{snapshot}");
        let broken: Arc<Mutex<Option<String>>> = Arc::default();
        let (into, why) = (seen.clone(), broken.clone());
        let task = tokio::spawn(async move {
            loop {
                match ws.recv_within(Duration::from_secs(3_600)).await {
                    Ok(frame) if frame["type"] == "event" => {
                        let gate = frame["gate"].as_str().unwrap_or_default().to_owned();
                        let seq = frame["seq"].as_u64().unwrap_or_default();
                        into.lock()
                            .unwrap()
                            .entry(gate)
                            .or_default()
                            .events
                            .push(seq);
                    }
                    Ok(frame) if frame["type"] == "error" => {
                        *why.lock().unwrap() = Some(format!("error frame: {frame}"));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        *why.lock().unwrap() = Some(format!("session ended: {e:#}"));
                        return;
                    }
                }
            }
        });
        Follower { seen, broken, task }
    }

    fn seen(&self) -> BTreeMap<String, Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// One command sent under load, and what its caller was told.
#[derive(Debug, Clone)]
struct Sent {
    id: Uuid,
    gate: String,
    via: usize,
    status: u16,
    outcome: String,
}

/// Commands to every gate, through nodes `via` in turn, each gate paced by [`PACE`], until
/// `stop` is set; each with `?wait=true`, so that its answer is its terminal outcome.
fn command_load(
    nodes: &[Node],
    via: Vec<usize>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sent>>> {
    (1..=CONTROLLERS)
        .map(|i| {
            let gate = format!("sim-{i}-g1");
            let clients: Vec<(usize, Http, String)> = via
                .iter()
                .map(|&n| (n, Http::new(nodes[n].addr, WAIT), nodes[n].token.clone()))
                .collect();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut sent = Vec::new();
                let mut turn = i;
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let (via, http, token) = &clients[turn % clients.len()];
                    let action = if turn % 2 == 0 { "open" } else { "close" };
                    turn += 1;
                    let id = Uuid::new_v4();
                    let reply = http.command(token, &gate, id, action, true).await;
                    sent.push(Sent {
                        id,
                        gate: gate.clone(),
                        via: *via,
                        status: reply.status,
                        outcome: reply.body["status"].as_str().unwrap_or_default().to_owned()
                            + &reply.body["reason"]
                                .as_str()
                                .map(|r| format!("{{{r}}}"))
                                .unwrap_or_default(),
                    });
                    let rest = PACE.saturating_sub(began.elapsed());
                    tokio::time::sleep(rest).await;
                }
                sent
            })
        })
        .collect()
}

/// Each controller's writes, in the order it took them, as the connection each came on.
fn writers(sim: &Simulator) -> BTreeMap<String, Vec<String>> {
    sim.controllers
        .iter()
        .map(|(name, _)| {
            let from = sim
                .query(&format!("writes {name} 1000"))
                .iter()
                .map(|line| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix("from="))
                        .unwrap_or_else(|| panic!("no writer in {line:?}"))
                        .to_owned()
                })
                .collect();
            (name.clone(), from)
        })
        .collect()
}

/// A controller written on connection A, then B, then A again had two writers at once.
fn interleaved(writes: &[String]) -> Option<String> {
    let mut done: BTreeSet<&String> = BTreeSet::new();
    let mut current: Option<&String> = None;
    for w in writes {
        if current != Some(w) {
            if done.contains(w) {
                return Some(format!(
                    "{w} wrote again after another connection: {writes:?}"
                ));
            }
            if let Some(c) = current {
                done.insert(c);
            }
            current = Some(w);
        }
    }
    None
}

#[test]
fn interleaved_writers_are_caught() {
    let w = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(interleaved(&w(&["a", "a", "b", "b", "c"])).is_none());
    assert!(interleaved(&w(&["a", "b", "a"])).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_are_owned_once_balanced_and_fail_over_within_the_lease() {
    let database = ScratchDatabase::create(&pg_server(), "gh_cluster").expect("a database");
    let url = database.url();
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::spawn(CONTROLLERS, 1, 500);
    // The fleet and the one user, once, before any node starts.
    prepare(
        dir.path(),
        &sim.fleet_file(1),
        &url,
        &redis.url(),
        TTL.as_millis() as u64,
    );
    let store = Store::connect(&url).await.unwrap();

    let mut nodes = Vec::new();
    for n in NODES {
        nodes.push(start(dir.path(), n).await);
    }
    // Every controller held once, evenly (12 over 3).
    let (balanced, took) = leases_until(&store, "an even split", |o| {
        o.len() == 3 && o.values().all(|c| c.len() == CONTROLLERS / 3)
    })
    .await;
    println!("balanced in {took:?}: {:?}", counts(&balanced));
    // Every node lists every gate, and sees each live once its holder drives it.
    let every: BTreeSet<String> = (1..=CONTROLLERS).map(|i| format!("sim-{i}-g1")).collect();
    let deadline = Instant::now() + WAIT;
    for node in &nodes {
        loop {
            let states = gate_states(&node.http, &node.token).await;
            assert_eq!(states.keys().cloned().collect::<BTreeSet<_>>(), every);
            if states.values().all(|s| s != "offline" && s != "unknown") {
                break;
            }
            assert!(Instant::now() < deadline, "states: {states:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(readiness_of(&node.http, "cluster_bus").await, "ready");
    }

    // One token is good on every node (one signing key), so a load balancer may send a
    // client's requests anywhere.
    for node in &nodes {
        let reply = node.http.get(&nodes[0].token, "/api/v1/auth/me").await;
        assert_eq!(
            reply.status, 200,
            "n1's token on {}: {:?}",
            node.addr, reply.body
        );
    }

    // Sessions on two nodes follow every gate.
    let followers = [
        Follower::start(&nodes[0]).await,
        Follower::start(&nodes[1]).await,
    ];

    // A fleet change made on one node reaches the others: n1 renames a gate n2 drives; n2
    // lists the new name and drives the gate again, restarted from the new configuration.
    let on_n2 = owners(&store).await["n2"].iter().next().unwrap().clone();
    let renamed = format!("{on_n2}-g1");
    let reply = nodes[0]
        .http
        .put(
            &nodes[0].token,
            &format!("/api/v1/config/gates/{renamed}"),
            json!({"controller": on_n2, "unit": 1, "name": "Renamed on n1"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = nodes[1]
            .http
            .get(&nodes[1].token, &format!("/api/v1/gates/{renamed}"))
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        if reply.body["name"] == "Renamed on n1"
            && reply.body["state"] != "offline"
            && reply.body["state"] != "unknown"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 never took the change: {:?}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    leases_until(&store, "every controller held after the change", |o| {
        held(o) == CONTROLLERS
    })
    .await;
    // n1 routes to it once its keeper has read the new lease (until then: rejected{offline}).
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = nodes[0]
            .http
            .command(&nodes[0].token, &renamed, Uuid::new_v4(), "stop", false)
            .await;
        if reply.body["status"] == "accepted" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1 never reached {renamed}: {:?}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A command through n1 reaches each gate, wherever it is driven; the extra hop is timed
    // (first status, `accepted`, without waiting for the travel).
    let (mut here, mut there) = (Vec::new(), Vec::new());
    let owner_now = owners(&store).await;
    for (round, gate) in every.iter().enumerate() {
        let controller = gate.trim_end_matches("-g1");
        let local = owner_now.get("n1").is_some_and(|c| c.contains(controller));
        let action = if round % 2 == 0 { "open" } else { "close" };
        let began = Instant::now();
        let reply = nodes[0]
            .http
            .command(&nodes[0].token, gate, Uuid::new_v4(), action, false)
            .await;
        let took = began.elapsed();
        assert_eq!(reply.status, 202, "{gate}: {:?}", reply.body);
        assert_eq!(reply.body["status"], "accepted", "{gate}: {:?}", reply.body);
        if local {
            here.push(took)
        } else {
            there.push(took)
        }
    }
    here.sort();
    there.sort();
    println!(
        "command to accepted through n1: gate on n1 p50 {:?} ({} sent), gate on another node p50 {:?} ({} sent)",
        here[here.len() / 2],
        here.len(),
        there[there.len() / 2],
        there.len()
    );

    // Command load through n1 and n2 from here on.
    let stop = Arc::new(AtomicBool::new(false));
    let load = command_load(&nodes, vec![0, 1], stop.clone());
    tokio::time::sleep(PACE * 2).await;

    // Redis dies and comes back, empty, under load: the nodes say so, and settle.
    redis.stop();
    let deadline = Instant::now() + WAIT;
    while readiness_of(&nodes[0].http, "cluster_bus").await != "degraded" {
        assert!(Instant::now() < deadline, "n1 never noticed Redis was gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(PACE).await;
    redis.restart();
    let back = Instant::now();
    for node in &nodes {
        while readiness_of(&node.http, "cluster_bus").await != "ready" {
            assert!(
                Instant::now() < back + WAIT,
                "a node never found Redis again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "every node back on Redis {:?} after its restart",
        back.elapsed()
    );
    assert_eq!(
        held(&owners(&store).await),
        CONTROLLERS,
        "a Redis restart moves no lease"
    );
    tokio::time::sleep(PACE * 2).await;

    // n3 pauses past its TTL: the others take its controllers; woken, it drives none of
    // them (its own deadline passed while it slept) until it takes some back.
    nodes[2].proc.signal("STOP");
    let (moved, took) = leases_until(&store, "n3's controllers on n1 and n2", |o| {
        !o.contains_key("n3") && held(o) == CONTROLLERS
    })
    .await;
    println!(
        "paused node's controllers taken over in {took:?}: {:?}",
        counts(&moved)
    );
    assert!(took <= TTL * 3, "{took:?}");
    nodes[2].proc.signal("CONT");
    // It rejoins and gets its share back, a few at a time.
    leases_until(&store, "n3's share back", |o| {
        o.get("n3").is_some_and(|c| c.len() == CONTROLLERS / 3) && held(o) == CONTROLLERS
    })
    .await;
    tokio::time::sleep(PACE * 2).await;

    // n3 dies under load: its controllers are driven by the others within the lease.
    let n3_had = owners(&store).await["n3"].clone();
    nodes[2].proc.signal("KILL");
    nodes[2].proc.wait_exit(WAIT);
    let killed = Instant::now();
    let (after, _) = leases_until(&store, "n3's controllers taken over", |o| {
        !o.contains_key("n3") && held(o) == CONTROLLERS
    })
    .await;
    let took = killed.elapsed();
    println!(
        "killed node's controllers taken over in {took:?}: {:?}",
        counts(&after)
    );
    assert!(took <= TTL * 2 + Duration::from_secs(2), "{took:?}");
    // Its gates are driven again: commands through n1 complete on each of them.
    for c in &n3_had {
        let gate = format!("{c}-g1");
        let deadline = Instant::now() + WAIT;
        loop {
            let states = gate_states(&nodes[0].http, &nodes[0].token).await;
            if states.get(&gate).is_some_and(|s| s != "offline") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{gate} never came back: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(PACE * 2).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent: Vec<Sent> = Vec::new();
    for task in load {
        sent.extend(task.await.unwrap());
    }

    // Exactly one terminal outcome each, never silence; most completed.
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for s in &sent {
        assert_eq!(s.status, 200, "{s:?}: no terminal outcome within the wait");
        *outcomes.entry(s.outcome.clone()).or_default() += 1;
    }
    println!("{} commands under load: {outcomes:?}", sent.len());
    let completed: Vec<&Sent> = sent.iter().filter(|s| s.outcome == "completed").collect();
    assert!(
        completed.len() * 2 > sent.len(),
        "most commands complete: {outcomes:?}"
    );
    assert!(
        completed.iter().any(|s| s.via == 1),
        "commands through n2 complete too"
    );

    // Every gate's history, and what the sessions saw of it.
    let mut finished: BTreeMap<(String, Uuid), Vec<CommandStatus>> = BTreeMap::new();
    let mut heads: BTreeMap<String, u64> = BTreeMap::new();
    for gate in &every {
        let events = store
            .since(GateId::new(gate).unwrap(), 0, 100_000)
            .await
            .unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.event.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{gate}: one unbroken sequence"
        );
        heads.insert(gate.clone(), seqs.len() as u64);
        for e in &events {
            if let EventKind::CommandFinished {
                command, status, ..
            } = e.event.kind
            {
                finished
                    .entry((gate.clone(), command.0))
                    .or_default()
                    .push(status);
            }
        }
    }
    for s in &completed {
        assert_eq!(
            finished.get(&(s.gate.clone(), s.id)).map(Vec::as_slice),
            Some(&[CommandStatus::Completed][..]),
            "{s:?}: told completed, so in the log once as completed"
        );
    }
    // The sessions catch up with the store (bounded), and saw each gate's events in order,
    // none missing, none twice.
    for (name, follower) in ["n1", "n2"].iter().zip(&followers) {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = follower.seen();
            let behind: Vec<_> = heads
                .iter()
                .filter(|(g, head)| {
                    let s = &seen[*g];
                    s.events.last().copied().or(s.snapshot).unwrap_or(0) < **head
                })
                .collect();
            if behind.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the session on {name} never caught up: {behind:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(*follower.broken.lock().unwrap(), None, "session on {name}");
        for (gate, s) in follower.seen() {
            let from = s.snapshot.unwrap_or(0);
            let want: Vec<u64> = (from + 1..=heads[&gate]).collect();
            assert_eq!(s.events, want, "{gate} on {name}'s session");
        }
        follower.task.abort();
    }

    // No controller was ever written on one connection, then another, then the first again.
    let writes = writers(&sim);
    for (controller, w) in &writes {
        assert!(!w.is_empty(), "{controller}: never written");
        if let Some(problem) = interleaved(w) {
            panic!("{controller}: {problem}");
        }
    }
    let nodes_writing: BTreeSet<String> = writes
        .values()
        .flatten()
        .filter_map(|w| w.rsplit_once(':').map(|(ip, _)| ip.to_owned()))
        .collect();
    println!("writers seen by the simulator: {nodes_writing:?}");
    assert_eq!(
        nodes_writing.len(),
        3,
        "every node wrote: {nodes_writing:?}"
    );

    // What one node learns binds the others (n1 and n2 are alive; n3 was killed).
    // A command id is one command across gates and nodes: used through n1 for one gate, it
    // is refused through n2 for another (the store has it, not only n1's memory).
    let id = Uuid::new_v4();
    let first = nodes[0]
        .http
        .command(&nodes[0].token, "sim-1-g1", id, "stop", false)
        .await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert_ne!(first.body["reason"], "id_conflict", "{:?}", first.body);
    let reused = nodes[1]
        .http
        .command(&nodes[1].token, "sim-2-g1", id, "stop", false)
        .await;
    assert_eq!(
        (&reused.body["status"], &reused.body["reason"]),
        (&json!("rejected"), &json!("id_conflict")),
        "the id reused through another node: {:?}",
        reused.body
    );
    // Failed logins spread over n1 and n2 lock the account on both: five are free in all,
    // the sixth locks (neither node alone saw more than three).
    for attempt in 0..6 {
        let reply = nodes[attempt % 2].http.login("mallory", "guess").await;
        assert_eq!(reply.status, 401, "attempt {attempt}: {:?}", reply.body);
    }
    for node in &nodes[..2] {
        let reply = node.http.login("mallory", "guess").await;
        assert_eq!(reply.status, 429, "locked everywhere: {:?}", reply.body);
    }

    // n2 leaves (SIGTERM): its controllers go to n1 at once, well inside the TTL.
    nodes[1].proc.signal("TERM");
    let asked = Instant::now();
    let (all_n1, _) = leases_until(&store, "everything on n1", |o| {
        o.len() == 1 && o.get("n1").is_some_and(|c| c.len() == CONTROLLERS)
    })
    .await;
    let took = asked.elapsed();
    println!("handover after SIGTERM in {took:?}: {:?}", counts(&all_n1));
    // Immediate: n2 stops its subtrees, releases its leases and says so on the bus, and n1
    // takes them at once, waiting neither for an expiry nor for its next round.
    assert!(
        took < Duration::from_secs(1),
        "a handover waits for no expiry and no round: {took:?}"
    );
    assert!(nodes[1].proc.wait_exit(WAIT).success());
    assert!(
        nodes[0]
            .proc
            .count(Stream::Err, &["another node released its leases"])
            >= 1,
        "n1 heard n2's release on the bus: {}",
        tail(&nodes[0].proc.lines(Stream::Err), 30)
    );

    nodes[0].proc.signal("TERM");
    assert!(nodes[0].proc.wait_exit(WAIT).success());
    store.close();
    drop(database);
}
