//! Scale-out, ownership: three `gatehouse serve` nodes (`[cluster]`) on one PostgreSQL
//! database, the fleet imported once before they start, a simulator farm of 12 controllers.
//! Every controller is driven by exactly one node, the nodes share them evenly, and:
//! - a node paused past its lease TTL (SIGSTOP) loses its controllers to the others, and
//!   after SIGCONT it drives none of them until it takes some back;
//! - a node killed with SIGKILL loses its controllers to the others within the TTL;
//! - a node stopped with SIGTERM hands its controllers over at once.
//!
//! Timings are asserted against the configured TTL with generous margins (the machine is
//! shared); the figures measured are printed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gatehouse_actors::cluster::{Lease, LeaseStore};
use gatehouse_adapters::store::Store;
use gatehouse_tests::http::Http;
use gatehouse_tests::procs::{Proc, Simulator, add_user, bin, serve_api};
use gatehouse_tests::{ScratchDatabase, pg_server};

const CONTROLLERS: usize = 12;
const TTL: Duration = Duration::from_millis(2_000);
const WAIT: Duration = Duration::from_secs(60);
const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Node `n<i>`'s configuration: its own data directory, and its own loopback address for
/// controller connections (127.0.0.1<i>).
fn config(dir: &Path, node: &str, database: &str) -> std::path::PathBuf {
    let data = dir.join(node);
    std::fs::create_dir_all(&data).unwrap();
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n[database]\nurl = {database:?}\n\n\
             [data]\ndir = {:?}\n\n[cluster]\nnode_id = {node:?}\nlease_ttl_ms = {}\n\
             bind = \"127.0.0.1{}\"\n",
            data.display().to_string(),
            TTL.as_millis(),
            node.trim_start_matches('n'),
        ),
    )
    .unwrap();
    path
}

/// The live leases, by node.
async fn owners(store: &Store) -> BTreeMap<String, BTreeSet<String>> {
    let leases: Vec<Lease> = store.leases().await.unwrap();
    let mut by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in leases.into_iter().filter(|l| l.left_ms > 0) {
        by.entry(l.node.to_string())
            .or_default()
            .insert(l.controller.to_string());
    }
    by
}

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

/// The gates a node drives and says are not offline, by its REST API.
async fn live_gates(http: &Http, token: &str) -> BTreeSet<String> {
    let reply = http.get(token, "/api/v1/gates").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["gates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["state"] != "offline")
        .map(|g| g["id"].as_str().unwrap().to_owned())
        .collect()
}

struct Node {
    proc: Proc,
    http: Http,
    token: String,
}

async fn start(dir: &Path, name: &str) -> Node {
    let config = dir.join(format!("{name}.toml"));
    let (proc, addr): (Proc, SocketAddr) = serve_api(dir, &config);
    let http = Http::new(addr, WAIT);
    let reply = http.login("chief", "chief-password-1").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let token = reply.body["access_token"].as_str().unwrap().to_owned();
    Node { proc, http, token }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_are_owned_once_balanced_and_fail_over_within_the_lease() {
    let database = ScratchDatabase::create(&pg_server(), "gh_cluster").expect("a database");
    let url = database.url();
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::spawn(CONTROLLERS, 1, 500);
    std::fs::write(dir.path().join("fleet.toml"), sim.fleet_file(1)).unwrap();
    let configs: Vec<_> = NODES.iter().map(|n| config(dir.path(), n, &url)).collect();
    // The fleet and the one user, once, before any node starts.
    let mut import = Proc::spawn(
        "gatehouse fleet import",
        Command::new(bin("gatehouse"))
            .args(["fleet", "import", "fleet.toml", "--config"])
            .arg(&configs[0])
            .current_dir(dir.path()),
    );
    assert!(import.finish(WAIT).success(), "{}", import.transcript());
    add_user(
        dir.path(),
        &configs[0],
        "chief",
        "admin",
        "chief-password-1",
    );
    let store = Store::connect(&url).await.unwrap();

    let mut nodes = Vec::new();
    for n in NODES {
        nodes.push(start(dir.path(), n).await);
    }
    // Every controller held once, evenly (12 over 3), and every gate live on its holder.
    let (balanced, took) = leases_until(&store, "an even split", |o| {
        o.len() == 3 && o.values().all(|c| c.len() == CONTROLLERS / 3)
    })
    .await;
    println!("balanced in {took:?}: {:?}", counts(&balanced));
    let every: BTreeSet<String> = (1..=CONTROLLERS).map(|i| format!("sim-{i}-g1")).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut seen = BTreeSet::new();
        let mut twice = Vec::new();
        for node in &nodes {
            for g in live_gates(&node.http, &node.token).await {
                if !seen.insert(g.clone()) {
                    twice.push(g);
                }
            }
        }
        assert!(twice.is_empty(), "driven by two nodes: {twice:?}");
        if seen == every {
            break;
        }
        assert!(Instant::now() < deadline, "live gates: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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
    let deadline = Instant::now() + WAIT;
    loop {
        // Whatever n3 drives now it must hold a live lease for.
        let live = live_gates(&nodes[2].http, &nodes[2].token).await;
        let now = owners(&store).await;
        let mine = now.get("n3").cloned().unwrap_or_default();
        let stray: Vec<&String> = live
            .iter()
            .filter(|g| !mine.contains(g.trim_end_matches("-g1")))
            .collect();
        if stray.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n3 still drives {stray:?} without their leases ({now:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It rejoins and gets its share back, a few at a time.
    leases_until(&store, "n3's share back", |o| {
        o.get("n3").is_some_and(|c| c.len() == CONTROLLERS / 3) && held(o) == CONTROLLERS
    })
    .await;

    // n3 dies: its controllers are driven by the others within the lease.
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
    let survivors = &nodes[..2];
    let deadline = Instant::now() + WAIT;
    loop {
        let mut live = BTreeSet::new();
        for node in survivors {
            live.extend(live_gates(&node.http, &node.token).await);
        }
        if n3_had.iter().all(|c| live.contains(&format!("{c}-g1"))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n3's gates never came back: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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
    assert!(took < TTL, "a handover waits for no expiry: {took:?}");
    assert!(nodes[1].proc.wait_exit(WAIT).success());

    nodes[0].proc.signal("TERM");
    assert!(nodes[0].proc.wait_exit(WAIT).success());

    // Each gate's history, written by up to four holders in turn, is one sequence: no seq
    // twice, none missing (a new holder continues after the last committed event, and what
    // the paused node tried to write after losing its leases was refused, not stored).
    for gate in &every {
        let id = gatehouse_actors::ids::GateId::new(gate).unwrap();
        let events = gatehouse_actors::store::EventStore::since(&store, id, 0, 10_000)
            .await
            .unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.event.seq).collect();
        assert!(!seqs.is_empty(), "{gate}: no events");
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{gate}: one unbroken sequence"
        );
    }
    store.close();
    drop(database);
}
