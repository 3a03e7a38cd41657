//! The bus between nodes (`gatehouse_adapters::redis_bus`) against a real, private
//! `redis-server`, without the rest of a node: events cross from one node's bus to another's
//! view, a Redis restart raises a gap (followers refill from the store), and a command sent to
//! another node ends exactly once: `rejected{offline}` at once when no node listens for it,
//! `failed{failover}` when its controller's lease changes hands before the owner answers;
//! while Redis is away, a node follows the other nodes' committed events from the store.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_actors::cluster::{Lease, Ownership, Peers, RemoteCommand};
use gatehouse_actors::gate::{
    Action, Cause, CommandStatus, EventKind, FailReason, GateEvent, GateSnapshot, GateState,
    RejectReason,
};
use gatehouse_actors::ids::{CommandId, ControllerId, GateId, NodeId};
use gatehouse_actors::tree::bus::{EventSink, LocalBus};
use gatehouse_actors::tree::gate::{Ack, AckSink};
use gatehouse_adapters::redis_bus::RedisBus;
use gatehouse_tests::redis::RedisServer;

const WAIT: Duration = Duration::from_secs(20);

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn event(seq: u64) -> Arc<GateEvent> {
    Arc::new(GateEvent {
        gate: GateId::new("g-1").unwrap(),
        controller: ControllerId::new("c-1").unwrap(),
        seq,
        at_ms: 1,
        kind: EventKind::StateChanged {
            from: GateState::Closed,
        },
        cause: Cause::System,
        snapshot: GateSnapshot::default(),
    })
}

/// Waits (bounded) for the bus to reach Redis both ways.
async fn connected(bus: &RedisBus) {
    tokio::time::timeout(WAIT, async {
        while bus.health().problem().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the bus reaches Redis");
}

/// A sink that records every ack.
fn recorder() -> (AckSink, Arc<Mutex<Vec<CommandStatus>>>) {
    let seen: Arc<Mutex<Vec<CommandStatus>>> = Arc::default();
    let into = seen.clone();
    let sink: AckSink = Arc::new(move |_: &GateId, ack: Ack| into.lock().unwrap().push(ack.status));
    (sink, seen)
}

async fn acks_until(seen: &Mutex<Vec<CommandStatus>>, n: usize) -> Vec<CommandStatus> {
    tokio::time::timeout(WAIT, async {
        loop {
            let now = seen.lock().unwrap().clone();
            if now.len() >= n {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the acks in time")
}

fn command(owner: &str, epoch: u64, reply: AckSink) -> RemoteCommand {
    RemoteCommand {
        owner: node(owner),
        epoch,
        controller: ControllerId::new("c-1").unwrap(),
        gate: GateId::new("g-1").unwrap(),
        id: CommandId(uuid::Uuid::new_v4()),
        action: Action::Open,
        reply: Some(reply),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_nodes_and_a_redis_restart_raises_a_gap() {
    let mut redis = RedisServer::start();
    let (own_a, view_a, view_b) = (
        LocalBus::default(),
        LocalBus::default(),
        LocalBus::default(),
    );
    let a = RedisBus::start(&redis.url(), node("a"), "t1:", view_a.clone()).unwrap();
    let b = RedisBus::start(&redis.url(), node("b"), "t1:", view_b.clone()).unwrap();
    let _forward = a.forward(&own_a);
    connected(&a).await;
    connected(&b).await;

    let (mut on_a, mut on_b) = (view_a.subscribe(), view_b.subscribe());
    own_a.publish(event(1));
    own_a.publish(event(2));
    for rx in [&mut on_a, &mut on_b] {
        for seq in [1, 2] {
            let e = tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(e.seq, seq, "in commit order, here and on the other node");
        }
    }

    // Redis dies: both say so, and B is told to refill (a gap), again once Redis is back.
    let mut gaps = view_b.gaps();
    gaps.borrow_and_update();
    redis.stop();
    tokio::time::timeout(WAIT, async {
        while a.health().problem().is_none() || b.health().problem().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both notice Redis is gone");
    tokio::time::timeout(WAIT, gaps.changed())
        .await
        .expect("a gap while Redis is away")
        .unwrap();
    // Published while Redis is away: lost on the way, never delivered late or out of order.
    own_a.publish(event(3));
    redis.restart();
    connected(&a).await;
    connected(&b).await;
    gaps.borrow_and_update();
    own_a.publish(event(4));
    let e = tokio::time::timeout(WAIT, on_b.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        e.seq, 4,
        "after the outage, live again (3 is read from the store)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_away_other_nodes_events_come_from_the_store_without_a_gap_a_second() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = gatehouse_adapters::store::Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("events.db").display()
    ))
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let view = LocalBus::default();
    let b = RedisBus::start(&redis.url(), node("b"), "t3:", view.clone()).unwrap();
    b.follow_store(Arc::new(store.clone()));
    connected(&b).await;
    let mut on_b = view.subscribe();
    let mut gaps = view.gaps();
    gaps.borrow_and_update();

    // Redis goes away: one gap (the sessions catch up with the store once), then the node
    // follows the store itself.
    redis.stop();
    tokio::time::timeout(WAIT, gaps.changed())
        .await
        .expect("a gap when Redis goes")
        .unwrap();
    // It follows the store once it knows where the store's events end (and has raised the gap
    // that makes the sessions catch up to there).
    tokio::time::timeout(WAIT, async {
        while !b.health().following_store() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the node follows the store while Redis is away");
    let base = *gaps.borrow_and_update();
    // Another node commits events, one after the other: each reaches this node's view from
    // the store. Three in turn take more than a second: the sessions are not told to re-read
    // everything meanwhile (before, a gap came every second while Redis was away).
    for seq in 1..=3 {
        use gatehouse_actors::store::EventStore;
        store.append(vec![event(seq)]).await.unwrap();
        let e = tokio::time::timeout(WAIT, async {
            loop {
                let e = on_b.recv().await.unwrap();
                if e.seq == seq {
                    return e;
                }
            }
        })
        .await
        .expect("the event from the store");
        assert_eq!(e.gate.as_str(), "g-1");
    }
    assert_eq!(*gaps.borrow(), base, "no gap while following the store");
    redis.restart();
    connected(&b).await;
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_to_another_node_ends_exactly_once() {
    let redis = RedisServer::start();
    let a = RedisBus::start(&redis.url(), node("a"), "t2:", LocalBus::default()).unwrap();
    let ownership = Arc::new(Ownership::new(node("a"), Duration::from_secs(2)));
    let lease = |owner: &str, epoch: u64| Lease {
        controller: ControllerId::new("c-1").unwrap(),
        node: node(owner),
        epoch,
        left_ms: 1_000,
    };
    ownership.set_owners(&[lease("b", 7)]);
    connected(&a).await;

    // Nobody listens on b's channel: refused at once, nothing left waiting.
    let (sink, seen) = recorder();
    a.command(command("b", 7, sink));
    assert_eq!(
        acks_until(&seen, 1).await,
        vec![CommandStatus::Rejected(RejectReason::Offline)]
    );

    // b listens (a raw subscriber that never answers), then loses the controller's lease
    // before answering: the command fails over, once.
    let client = deadpool_redis::redis::Client::open(redis.url()).unwrap();
    let mut listener = client.get_async_pubsub().await.unwrap();
    listener.subscribe("t2:node:b").await.unwrap();
    a.follow_leases(ownership.clone());
    let (sink, seen) = recorder();
    a.command(command("b", 7, sink));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing while b holds the lease and is silent: {:?}",
        seen.lock().unwrap()
    );
    ownership.set_owners(&[lease("c", 8)]);
    assert_eq!(
        acks_until(&seen, 1).await,
        vec![CommandStatus::Failed(FailReason::Failover)]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "exactly one terminal outcome"
    );
    drop(listener);
}
