//! `gatehouse-bench cluster`: three `gatehouse serve` nodes on one PostgreSQL database (a
//! scratch one on `GATEHOUSE_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432`) and a
//! private `redis-server`, a simulator farm, every request through node `n1`:
//! - **extra hop**: the REST command round trip (`stop`, answered at `accepted`: the
//!   controller confirmed the write) to gates `n1` drives, against gates another node drives
//!   (routed over Redis and back), alternating;
//! - **failover**: a node other than `n1` is killed with SIGKILL; for each of its gates, the
//!   time until a command through `n1` is accepted again (the lease expired, another node took
//!   the controller, connected and restored the gate); then the node is started again and the
//!   controllers spread back. Repeated `--rounds` times;
//! - **fan-out**: `--sessions` WebSocket sessions (the phones' process, `ws-clients`) spread
//!   evenly over the three nodes, each subscribed to one shared gate (driven by `n2`) and one
//!   of its own; commands move the shared gate, and each of its events is timed from its
//!   timestamp (set by the gate's actor on `n2`) to each phone reading it. Sessions on `n1`
//!   and `n3` get it over Redis, those on `n2` from its own bus.
//!
//! The binaries (`gatehouse`, `gatehouse-sim`) are this one's siblings: build them in the
//! same profile first.

use std::time::{Duration, Instant};

use anyhow::bail;
use gatehouse_actors::stats::Histogram;
use gatehouse_adapters::store::Store;
use gatehouse_tests::cluster::{NODES, Node, owners, prepare, start};
use gatehouse_tests::procs::Simulator;
use gatehouse_tests::redis::RedisServer;
use gatehouse_tests::{ScratchDatabase, pg_server};
use serde::Serialize;
use uuid::Uuid;

#[derive(clap::Args, Clone)]
pub struct ClusterSizes {
    /// CI size: a few controllers, one failover, a few commands.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 30)]
    controllers: usize,
    /// Commands of each kind (local, remote) for the extra hop.
    #[arg(long, default_value_t = 300)]
    commands: usize,
    /// Nodes killed, one after the other.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value_t = 2000)]
    lease_ttl_ms: u64,
    /// WebSocket sessions for the fan-out, spread over the three nodes.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Commands moving the shared gate during the fan-out (each makes several events).
    #[arg(long, default_value_t = 4)]
    fan_commands: usize,
}

#[derive(Debug, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Quantiles {
    /// Exactly, from every sample (the histogram's buckets are too coarse for seconds).
    fn exact(mut samples: Vec<Duration>) -> Quantiles {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len().max(1)) - 1;
            samples.get(i).map_or(0.0, |d| ms(*d))
        };
        Quantiles {
            count: samples.len() as u64,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: samples.last().map_or(0.0, |d| ms(*d)),
        }
    }

    fn of(h: &Histogram) -> Quantiles {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Quantiles {
            count: h.count(),
            p50_ms: ms(h.quantile(0.5)),
            p99_ms: ms(h.quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ClusterReport {
    pub controllers: usize,
    pub lease_ttl_ms: u64,
    /// Command → `accepted`, through n1, for gates n1 drives.
    pub local: Quantiles,
    /// The same for gates another node drives.
    pub remote: Quantiles,
    /// remote p50 − local p50.
    pub extra_hop_p50_ms: f64,
    /// Node killed → each of its gates accepting commands through n1 again.
    pub failover: Quantiles,
    pub failover_rounds: usize,
    /// Sessions in the fan-out, over the three nodes.
    pub sessions: usize,
    /// The shared gate's events during the fan-out (each one delivery per session).
    pub fan_events: u64,
    /// Event timestamp → a phone reading it, every delivery; and by node (n1, n2, n3; the
    /// gate is driven by n2).
    pub fanout: crate::ws::FanFigures,
}

const WAIT: Duration = Duration::from_secs(60);

async fn until_balanced(store: &Store, controllers: usize, nodes: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let o = owners(store).await;
        let held: usize = o.values().map(std::collections::BTreeSet::len).sum();
        let (lo, hi) = (controllers / nodes, controllers.div_ceil(nodes));
        if held == controllers
            && o.len() == nodes
            && o.values().all(|c| (lo..=hi).contains(&c.len()))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("never balanced: {o:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `stop` through `node`, answered at `accepted`: answers whether it was accepted.
async fn stop_accepted(node: &Node, gate: &str) -> bool {
    let reply = node
        .http
        .command(&node.token, gate, Uuid::new_v4(), "stop", false)
        .await;
    reply.status == 202 && reply.body["status"] == "accepted"
}

pub async fn run(sizes: ClusterSizes) -> anyhow::Result<ClusterReport> {
    let (controllers, commands, rounds, sessions, fan_commands) = if sizes.smoke {
        (6, 20, 1, 150, 2)
    } else {
        (
            sizes.controllers,
            sizes.commands,
            sizes.rounds,
            sizes.sessions,
            sizes.fan_commands.max(1),
        )
    };
    let database = ScratchDatabase::create(&pg_server(), "gh_bench_cluster")?;
    let url = database.url();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir()?;
    let sim = Simulator::spawn(controllers, 1, 500);
    prepare(
        dir.path(),
        &sim.fleet_file(1),
        &url,
        &redis.url(),
        sizes.lease_ttl_ms,
    );
    let store = Store::connect(&url).await?;
    let mut nodes = Vec::new();
    for n in NODES {
        nodes.push(start(dir.path(), n).await);
    }
    until_balanced(&store, controllers, 3).await?;
    eprintln!("{controllers} controllers balanced over 3 nodes");

    // Every gate answers before anything is timed.
    let gates: Vec<String> = (1..=controllers).map(|i| format!("sim-{i}-g1")).collect();
    let deadline = Instant::now() + WAIT;
    for g in &gates {
        while !stop_accepted(&nodes[0], g).await {
            if Instant::now() > deadline {
                bail!("{g} never accepted a command");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The extra hop, alternating local and remote gates.
    let o = owners(&store).await;
    let mine: Vec<&String> = gates
        .iter()
        .filter(|g| {
            o.get("n1")
                .is_some_and(|c| c.iter().any(|c| c == g.trim_end_matches("-g1")))
        })
        .collect();
    let theirs: Vec<&String> = gates.iter().filter(|g| !mine.contains(g)).collect();
    if mine.is_empty() || theirs.is_empty() {
        bail!(
            "n1 drives {} gates, the others {}",
            mine.len(),
            theirs.len()
        );
    }
    let (local, remote) = (Histogram::default(), Histogram::default());
    for i in 0..commands * 2 {
        let (gate, into) = if i % 2 == 0 {
            (mine[(i / 2) % mine.len()], &local)
        } else {
            (theirs[(i / 2) % theirs.len()], &remote)
        };
        let began = Instant::now();
        if stop_accepted(&nodes[0], gate).await {
            into.record(began.elapsed());
        }
    }
    let (local, remote) = (Quantiles::of(&local), Quantiles::of(&remote));
    eprintln!(
        "extra hop: local p50 {:.2} ms, remote p50 {:.2} ms",
        local.p50_ms, remote.p50_ms
    );

    let (fan_events, fanout) = fan_out(&nodes, &store, &o, &gates, sessions, fan_commands).await?;

    // Failover rounds.
    let mut failover: Vec<Duration> = Vec::new();
    for round in 0..rounds {
        let victim = 1 + round % 2;
        let name = NODES[victim];
        let had: Vec<String> = owners(&store)
            .await
            .get(name)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default();
        nodes[victim].proc.signal("KILL");
        let killed = Instant::now();
        nodes[victim].proc.wait_exit(WAIT);
        let mut pending: Vec<String> = had.iter().map(|c| format!("{c}-g1")).collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for g in pending {
                if stop_accepted(&nodes[0], &g).await {
                    failover.push(killed.elapsed());
                } else {
                    still.push(g);
                }
            }
            pending = still;
            if killed.elapsed() > WAIT {
                bail!("round {round}: never back: {pending:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "round {}: {name} killed; its {} gates back after {:?} at the latest",
            round + 1,
            had.len(),
            killed.elapsed()
        );
        nodes[victim] = start(dir.path(), name).await;
        until_balanced(&store, controllers, 3).await?;
    }
    for node in &nodes {
        node.proc.signal("TERM");
    }
    for node in &mut nodes {
        node.proc.wait_exit(WAIT);
    }
    store.close();
    drop(database);
    Ok(ClusterReport {
        controllers,
        lease_ttl_ms: sizes.lease_ttl_ms,
        extra_hop_p50_ms: remote.p50_ms - local.p50_ms,
        local,
        remote,
        failover: Quantiles::exact(failover),
        failover_rounds: rounds,
        sessions,
        fan_events,
        fanout,
    })
}

/// The fan-out phase: answers the shared gate's events and what the phones measured.
async fn fan_out(
    nodes: &[Node],
    store: &Store,
    owners: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    gates: &[String],
    sessions: usize,
    commands: usize,
) -> anyhow::Result<(u64, crate::ws::FanFigures)> {
    use gatehouse_actors::ids::GateId;
    use gatehouse_actors::store::EventStore;

    let Some(controller) = owners.get("n2").and_then(|c| c.iter().next()) else {
        bail!("n2 drives nothing: {owners:?}");
    };
    let fan = format!("{controller}-g1");
    let dir = tempfile::tempdir()?;
    let list = dir.path().join("gates");
    let own: Vec<&String> = gates.iter().filter(|g| **g != fan).collect();
    std::fs::write(
        &list,
        std::iter::once(&fan)
            .chain(own)
            .map(|g| format!("{g}\n"))
            .collect::<String>(),
    )?;
    let addrs: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut clients = crate::ws::Clients::spawn(&addrs, &nodes[0].token, &list)?;
    let began = Instant::now();
    let ready = tokio::task::block_in_place(|| clients.ask(&format!("connect {sessions}")))?;
    if ready.trim() != format!("ready {sessions}") {
        bail!("the phones answered {ready:?}");
    }
    eprintln!(
        "{sessions} sessions over 3 nodes up in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let gate = GateId::new(&fan)?;
    let before = store.latest(gate.clone()).await?.map_or(0, |e| e.event.seq);
    tokio::task::block_in_place(|| clients.ask("fan-start"))?;
    // Open and close in turn, each to its end (within the rate limit's burst of 5; a pause
    // between bursts otherwise).
    for i in 0..commands {
        if i > 0 && i % 5 == 0 {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let action = if i % 2 == 0 { "open" } else { "close" };
        let reply = nodes[1]
            .http
            .command(&nodes[1].token, &fan, Uuid::new_v4(), action, true)
            .await;
        if reply.body["status"] != "completed" {
            bail!("{action} on {fan}: {:?}", reply.body);
        }
    }
    let events = store.since(gate, before, 10_000).await?.len() as u64;
    let answer = tokio::task::block_in_place(|| {
        clients.ask(&format!("fan-report {}", events * sessions as u64))
    })?;
    let figures: crate::ws::FanFigures = serde_json::from_str(&answer)?;
    eprintln!("fan-out: {events} events, {answer}");
    drop(clients);
    Ok((events, figures))
}

pub fn print_text(r: &ClusterReport) {
    println!(
        "cluster: 3 nodes, {} controllers, lease TTL {} ms",
        r.controllers, r.lease_ttl_ms
    );
    println!(
        "  command → accepted through n1, gate on n1:         p50 {:.2} ms  p99 {:.2} ms  ({} commands)",
        r.local.p50_ms, r.local.p99_ms, r.local.count
    );
    println!(
        "  command → accepted through n1, gate on another:    p50 {:.2} ms  p99 {:.2} ms  ({} commands)",
        r.remote.p50_ms, r.remote.p99_ms, r.remote.count
    );
    println!("  extra hop (p50 difference): {:.2} ms", r.extra_hop_p50_ms);
    let f = &r.fanout;
    println!(
        "  fan-out, one gate (driven by n2) to {} sessions over 3 nodes: {} events, {} of {} deliveries; event → phone p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        r.sessions,
        r.fan_events,
        f.delivered,
        f.expected,
        f.latency.p50_ms,
        f.latency.p99_ms,
        f.latency.max_ms
    );
    for (name, l) in NODES.iter().zip(&f.by_node) {
        println!(
            "    sessions on {name}: p50 {:.1} ms  p99 {:.1} ms  ({} deliveries)",
            l.p50_ms, l.p99_ms, l.count
        );
    }
    println!(
        "  failover, node killed → its gates accept commands again: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms  ({} gates over {} rounds)",
        r.failover.p50_ms,
        r.failover.p99_ms,
        r.failover.max_ms,
        r.failover.count,
        r.failover_rounds
    );
}
