//! Supervision behaviour, driven by tokio's paused clock: children are killed by panic and by
//! `Err`, and each strategy, the restart policies, escalation and the backoff timing are
//! checked against virtual time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gatehouse_actors::supervision::*;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

/// A child that logs each start and dies on request.
struct Probe;

enum ProbeMsg {
    Panic,
    Fail,
    Stop,
}

struct ProbeArgs {
    id: String,
    log: mpsc::UnboundedSender<(String, Instant)>,
}

impl Actor for Probe {
    type Msg = ProbeMsg;
    type State = ();
    type Arguments = ProbeArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ProbeMsg>,
        args: ProbeArgs,
    ) -> Result<(), ActorProcessingErr> {
        let _ = args.log.send((args.id, Instant::now()));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ProbeMsg>,
        msg: ProbeMsg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProbeMsg::Panic => panic!("probe told to panic"),
            ProbeMsg::Fail => Err("probe told to fail".into()),
            ProbeMsg::Stop => {
                myself.stop(Some("done".into()));
                Ok(())
            }
        }
    }
}

/// A parent that reports its supervision events, to see escalation.
struct Parent;

impl Actor for Parent {
    type Msg = ();
    type State = mpsc::UnboundedSender<String>;
    type Arguments = mpsc::UnboundedSender<String>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, err) = event {
            let _ = tx.send(err.to_string());
        }
        Ok(())
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

struct Tree {
    sup: ActorRef<SupervisorMsg>,
    prefix: String,
    log: mpsc::UnboundedReceiver<(String, Instant)>,
    tx: mpsc::UnboundedSender<(String, Instant)>,
}

fn spec(strategy: Strategy, max_restarts: u32, backoff: Backoff) -> SupervisorSpec {
    SupervisorSpec {
        strategy,
        intensity: Intensity {
            max_restarts,
            within: Duration::from_secs(10),
        },
        backoff,
    }
}

fn child(
    prefix: &str,
    id: &str,
    restart: Restart,
    tx: &mpsc::UnboundedSender<(String, Instant)>,
) -> ChildSpec {
    let tx = tx.clone();
    let owned = id.to_string();
    ChildSpec::actor(id, restart, Some(format!("{prefix}-{id}")), move || {
        (
            Probe,
            ProbeArgs {
                id: owned.clone(),
                log: tx.clone(),
            },
        )
    })
}

impl Tree {
    async fn start(
        spec: SupervisorSpec,
        children: &[(&str, Restart)],
        parent: Option<&ActorRef<()>>,
        observer: Option<Observer>,
    ) -> Tree {
        let prefix = format!("sup-test-{}", UNIQUE.fetch_add(1, Ordering::Relaxed));
        let (tx, log) = mpsc::unbounded_channel();
        let children = children
            .iter()
            .map(|(id, r)| child(&prefix, id, *r, &tx))
            .collect();
        let args = SupervisorArgs {
            spec,
            children,
            observer,
        };
        let sup = match parent {
            Some(p) => Actor::spawn_linked(None, Supervisor, args, p.get_cell()).await,
            None => Actor::spawn(None, Supervisor, args).await,
        }
        .expect("supervisor starts")
        .0;
        let mut tree = Tree {
            sup,
            prefix,
            log,
            tx,
        };
        let started = tree.drain().await;
        assert_eq!(started.len(), tree.children().await.len());
        tree
    }

    fn send(&self, id: &str, msg: ProbeMsg) {
        let name = format!("{}-{id}", self.prefix);
        let cell = ractor::registry::where_is(name).expect("child is registered");
        ActorRef::<ProbeMsg>::from(cell)
            .send_message(msg)
            .expect("child alive");
    }

    /// The next start, within a (virtual) minute.
    async fn next_start(&mut self) -> (String, Instant) {
        timeout(Duration::from_secs(60), self.log.recv())
            .await
            .expect("a child restarted")
            .expect("log open")
    }

    /// Every start that happens until the tree is quiet for a (virtual) 5 s.
    async fn drain(&mut self) -> Vec<String> {
        let mut ids = Vec::new();
        while let Ok(Some((id, _))) = timeout(Duration::from_secs(5), self.log.recv()).await {
            ids.push(id);
        }
        ids
    }

    async fn children(&self) -> Vec<ChildInfo> {
        ractor::call!(self.sup, SupervisorMsg::Children).expect("supervisor answers")
    }
}

const NO_DELAY: Backoff = Backoff::IMMEDIATE;

#[tokio::test(start_paused = true)]
async fn one_for_one_restarts_only_the_child_that_panicked_or_returned_err() {
    let mut t = Tree::start(
        spec(Strategy::OneForOne, 10, NO_DELAY),
        &[("a", Restart::Permanent), ("b", Restart::Permanent)],
        None,
        None,
    )
    .await;
    t.send("a", ProbeMsg::Panic);
    assert_eq!(t.drain().await, vec!["a"]);
    t.send("a", ProbeMsg::Fail);
    assert_eq!(t.drain().await, vec!["a"]);
    let info = t.children().await;
    assert_eq!(info[0].restarts, 2);
    assert_eq!(info[1].restarts, 0);
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_restarts_the_failed_child_and_those_started_after_it() {
    let mut t = Tree::start(
        spec(Strategy::RestForOne, 10, NO_DELAY),
        &[
            ("a", Restart::Permanent),
            ("b", Restart::Permanent),
            ("c", Restart::Permanent),
        ],
        None,
        None,
    )
    .await;
    t.send("b", ProbeMsg::Panic);
    assert_eq!(t.drain().await, vec!["b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn one_for_all_restarts_every_child_in_start_order() {
    let mut t = Tree::start(
        spec(Strategy::OneForAll, 10, NO_DELAY),
        &[
            ("a", Restart::Permanent),
            ("b", Restart::Permanent),
            ("c", Restart::Permanent),
        ],
        None,
        None,
    )
    .await;
    t.send("b", ProbeMsg::Fail);
    assert_eq!(t.drain().await, vec!["a", "b", "c"]);
    assert!(t.children().await.iter().all(|c| c.running));
}

#[tokio::test(start_paused = true)]
async fn transient_children_restart_on_failure_only_and_temporary_never() {
    let mut t = Tree::start(
        spec(Strategy::OneForOne, 10, NO_DELAY),
        &[
            ("transient", Restart::Transient),
            ("temporary", Restart::Temporary),
            ("permanent", Restart::Permanent),
        ],
        None,
        None,
    )
    .await;
    t.send("transient", ProbeMsg::Panic);
    assert_eq!(t.drain().await, vec!["transient"]);
    t.send("transient", ProbeMsg::Stop);
    t.send("temporary", ProbeMsg::Panic);
    t.send("permanent", ProbeMsg::Stop);
    assert_eq!(t.drain().await, vec!["permanent"]);
    let ids: Vec<String> = t.children().await.into_iter().map(|c| c.id).collect();
    assert_eq!(
        ids,
        vec!["permanent"],
        "exited children that stay down are forgotten"
    );
}

#[tokio::test(start_paused = true)]
async fn exceeding_the_restart_intensity_stops_the_children_and_escalates_to_the_parent() {
    let (tx, mut failures) = mpsc::unbounded_channel();
    let (parent, _) = Actor::spawn(None, Parent, tx).await.expect("parent");
    let mut t = Tree::start(
        spec(Strategy::OneForOne, 2, NO_DELAY),
        &[("a", Restart::Permanent), ("b", Restart::Permanent)],
        Some(&parent),
        None,
    )
    .await;
    for _ in 0..2 {
        t.send("a", ProbeMsg::Panic);
        assert_eq!(t.drain().await, vec!["a"]);
    }
    t.send("a", ProbeMsg::Panic);
    let why = timeout(Duration::from_secs(60), failures.recv())
        .await
        .expect("parent told")
        .expect("open");
    assert!(why.contains("exceeded 2 restarts"), "{why}");
    assert!(
        t.drain().await.is_empty(),
        "nothing restarts after escalation"
    );
    assert!(
        ractor::registry::where_is(format!("{}-b", t.prefix)).is_none(),
        "siblings are stopped on escalation"
    );
}

#[tokio::test(start_paused = true)]
async fn restarts_back_off_exponentially_up_to_the_cap_and_reset_after_a_stable_run() {
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(400),
        factor: 2.0,
        jitter: 0.0,
        reset_after: Duration::from_secs(30),
    };
    let mut t = Tree::start(
        spec(Strategy::OneForOne, 100, backoff),
        &[("a", Restart::Permanent)],
        None,
        None,
    )
    .await;
    let mut delays = Vec::new();
    for _ in 0..5 {
        let failed_at = Instant::now();
        t.send("a", ProbeMsg::Panic);
        let (_, started_at) = t.next_start().await;
        delays.push(started_at.duration_since(failed_at).as_millis());
    }
    assert_eq!(delays, vec![100, 200, 400, 400, 400]);

    // Up for longer than `reset_after`: the next failure starts from `initial` again.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let failed_at = Instant::now();
    t.send("a", ProbeMsg::Fail);
    let (_, started_at) = t.next_start().await;
    assert_eq!(started_at.duration_since(failed_at).as_millis(), 100);
}

#[tokio::test(start_paused = true)]
async fn a_child_waiting_out_its_backoff_is_reported_as_not_running() {
    let backoff = Backoff {
        initial: Duration::from_secs(5),
        ..Backoff::IMMEDIATE
    };
    let backoff = Backoff {
        max: Duration::from_secs(5),
        ..backoff
    };
    let mut t = Tree::start(
        spec(Strategy::OneForOne, 10, backoff),
        &[("a", Restart::Permanent)],
        None,
        None,
    )
    .await;
    t.send("a", ProbeMsg::Panic);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!t.children().await[0].running);
    t.next_start().await;
    assert!(t.children().await[0].running);
}

#[tokio::test(start_paused = true)]
async fn the_observer_hears_exits_and_restarts() {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    let observer: Observer = Arc::new(move |e: &ChildEvent| {
        sink.lock().expect("lock").push(e.clone());
    });
    let mut t = Tree::start(
        spec(Strategy::OneForOne, 10, NO_DELAY),
        &[("link", Restart::Permanent)],
        None,
        Some(observer),
    )
    .await;
    t.send("link", ProbeMsg::Fail);
    t.drain().await;
    let events = events.lock().expect("lock").clone();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0], ChildEvent::Started { id: "link".into() });
    assert!(
        matches!(&events[1], ChildEvent::Exited { id, failed: true, reason } if id == "link" && reason.contains("probe told to fail"))
    );
    assert_eq!(events[2], ChildEvent::Started { id: "link".into() });
}

#[tokio::test(start_paused = true)]
async fn children_can_be_added_and_removed_at_run_time() {
    let mut t = Tree::start(spec(Strategy::OneForOne, 10, NO_DELAY), &[], None, None).await;
    let c = child(&t.prefix, "late", Restart::Permanent, &t.tx);
    let r = ractor::call!(t.sup, SupervisorMsg::StartChild, c.clone()).expect("answer");
    assert_eq!(r, Ok(()));
    assert_eq!(t.drain().await, vec!["late"]);
    let dup = ractor::call!(t.sup, SupervisorMsg::StartChild, c).expect("answer");
    assert_eq!(dup, Err(SupervisorError::DuplicateChild("late".into())));
    let removed =
        ractor::call!(t.sup, SupervisorMsg::StopChild, "late".to_string()).expect("answer");
    assert!(removed);
    assert!(
        t.drain().await.is_empty(),
        "a removed child is not restarted"
    );
    assert!(t.children().await.is_empty());
}

#[test]
fn jittered_delays_stay_within_their_band_and_under_the_cap() {
    let b = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(30),
        factor: 2.0,
        jitter: 0.25,
        reset_after: Duration::from_secs(60),
    };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut distinct = std::collections::HashSet::new();
    for attempt in 0..40 {
        let nominal = b.nominal(attempt);
        assert!(nominal <= b.max);
        for _ in 0..50 {
            let d = b.delay(attempt, &mut rng);
            assert!(
                d <= nominal && d >= nominal.mul_f64(0.75),
                "{d:?} vs {nominal:?}"
            );
            distinct.insert(d);
        }
    }
    assert_eq!(b.nominal(0), Duration::from_millis(100));
    assert_eq!(b.nominal(3), Duration::from_millis(800));
    assert_eq!(b.nominal(39), Duration::from_secs(30));
    assert!(distinct.len() > 100, "jitter actually varies the delay");
}
