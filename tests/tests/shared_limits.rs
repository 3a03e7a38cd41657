//! Rate limits and login lockouts shared over Redis (`gatehouse_adapters::redis_limits`)
//! between two nodes' limiters, against a real, private `redis-server`: a command burst, a
//! run of failed logins and password-reset requests spread over both nodes count once; a
//! success on one node clears the account on both; while Redis is away each node limits on its
//! own (and answers without waiting on Redis); and sharing resumes once Redis is back.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::gate::Action;
use gatehouse_actors::ids::GateId;
use gatehouse_adapters::redis_limits::RedisLimits;
use gatehouse_api::ratelimit::{Admitted, RateLimits};
use gatehouse_tests::redis::RedisServer;
use uuid::Uuid;

const ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
/// A bound on anything that should be quick, so that a hang fails instead of stalling CI.
const BOUND: Duration = Duration::from_secs(20);

fn node(redis: &RedisServer) -> RateLimits {
    let shared = RedisLimits::new(&redis.url(), "test:").expect("limits on redis");
    RateLimits::default().shared_with(Arc::new(shared))
}

async fn open(limits: &RateLimits, gate: &GateId) -> Result<Admitted, Duration> {
    limits
        .admit_command("user:a", gate, Action::Open, Uuid::new_v4())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_shared_between_nodes_and_each_decides_alone_while_redis_is_away() {
    tokio::time::timeout(Duration::from_secs(120), scenario())
        .await
        .expect("the scenario ran within its bound");
}

async fn scenario() {
    let mut redis = RedisServer::start();
    let (n1, n2) = (node(&redis), node(&redis));
    let gate = GateId::new("front").unwrap();

    // A burst of 5 per caller and gate, spread over both nodes: 3 through n1, 2 through n2,
    // then both refuse (each alone has burst left). Stop is never limited.
    for _ in 0..3 {
        assert_eq!(open(&n1, &gate).await, Ok(Admitted::New));
    }
    for _ in 0..2 {
        assert_eq!(open(&n2, &gate).await, Ok(Admitted::New));
    }
    for limits in [&n1, &n2] {
        let wait = open(limits, &gate)
            .await
            .expect_err("the shared burst is spent");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert_eq!(
            limits
                .admit_command("user:a", &gate, Action::Stop, Uuid::new_v4())
                .await,
            Ok(Admitted::New)
        );
    }
    // Another caller, and another gate, have their own.
    assert_eq!(
        n2.admit_command("user:b", &gate, Action::Open, Uuid::new_v4())
            .await,
        Ok(Admitted::New)
    );
    assert_eq!(
        open(&n2, &GateId::new("back").unwrap()).await,
        Ok(Admitted::New)
    );

    // Failed logins for one account, alternating between the nodes: five are free in all,
    // the sixth locks it on both, and says so once.
    for i in 0..5 {
        let limits = if i % 2 == 0 { &n1 } else { &n2 };
        assert_eq!(limits.login_allowed("alice", ADDR).await, Ok(()));
        assert_eq!(limits.login_failed("alice", ADDR).await, (false, false));
    }
    assert_eq!(n2.login_failed("alice", ADDR).await, (true, false));
    for limits in [&n1, &n2] {
        let wait = limits
            .login_allowed("Alice", IpAddr::V4(Ipv4Addr::LOCALHOST))
            .await
            .expect_err("locked on both nodes, from anywhere, whatever the case");
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
    }
    // ...until a success clears it (an admin reset, a link): on both.
    n1.login_succeeded("alice").await;
    assert_eq!(n2.login_allowed("alice", ADDR).await, Ok(()));

    // Password-reset requests for one account: 3 in all.
    for limits in [&n1, &n2, &n1] {
        assert_eq!(limits.link_request("bob", ADDR).await, Ok(()));
    }
    assert!(n2.link_request("bob", ADDR).await.is_err());

    // Redis goes away: each node limits on its own, and answers without hanging on it.
    redis.stop();
    let gate = GateId::new("side").unwrap();
    let during = tokio::time::timeout(BOUND, async {
        let mut admitted = 0;
        for _ in 0..8 {
            if open(&n1, &gate).await.is_ok() {
                admitted += 1;
            }
        }
        admitted
    })
    .await
    .expect("no call waits on the missing Redis for long");
    assert_eq!(during, 5, "n1's own burst, no more");
    assert_eq!(open(&n2, &gate).await, Ok(Admitted::New), "n2's own table");

    // Redis is back (empty): sharing resumes once the nodes reach it again.
    redis.restart();
    let deadline = tokio::time::Instant::now() + BOUND;
    for round in 0.. {
        // A fresh gate each round, so that only sharing can refuse: three commands through
        // each node, and with sharing the sixth is refused.
        let gate = GateId::new(&format!("garage-{round}")).unwrap();
        let mut refused = 0;
        for limits in [&n1, &n2, &n1, &n2, &n1, &n2] {
            if open(limits, &gate).await.is_err() {
                refused += 1;
            }
        }
        if refused > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes never shared their limits again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
