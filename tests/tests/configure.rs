//! Configuration changes at run time: persisted first, then applied to the live tree by
//! restarting only the controller subtrees they touch; refused whole when any part is bad; and
//! a restarted process builds the same tree from the store.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::gate::GateState;
use gatehouse_actors::ids::{ControllerId, GateId, SiteId};
use gatehouse_actors::store::{ControllerRecord, FleetChange, FleetStore, GateRecord};
use gatehouse_actors::tree::FleetError;
use gatehouse_actors::tree::bus::LocalBus;
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_adapters::store::Store;
use gatehouse_runtime::Runtime;
use gatehouse_runtime::fleet_file::FleetFile;
use gatehouse_sim::{ControllerSpec as SimControllerSpec, Farm, FarmSpec};
use gatehouse_tests::drive::wait_state;

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("a valid slug")
}

fn actor_of(runtime: &Runtime, gate: &GateId) -> Option<ractor::ActorId> {
    runtime
        .fleet
        .context()
        .directory
        .gate(gate)
        .map(|r| r.get_id())
}

fn gate(gate: &str, controller: &str, unit: u8) -> GateRecord {
    GateRecord {
        id: id(gate),
        controller: id(controller),
        unit,
        name: String::new(),
        travel_timeout_s: 30,
        auto_close_after_s: None,
        left_open_alert_after_s: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_changes_touch_only_their_controllers_and_survive_a_restart() {
    let profiles = ProfileSet::builtin().unwrap();
    let farm = Farm::start(FarmSpec {
        controllers: vec![
            SimControllerSpec::new("north", "generic", [1, 2]),
            SimControllerSpec::new("south", "came-zlb30", [1, 2]),
        ],
        profiles: profiles.clone(),
    })
    .await
    .unwrap();
    let north = farm.controller("north").unwrap().local_addr();
    let south = farm.controller("south").unwrap().local_addr();
    let seed = FleetFile::parse(
        "seed",
        &format!(
            r#"
[[site]]
id = "site"
name = "Site"

[[controller]]
id = "north"
site = "site"
profile = "generic"
endpoint = "{north}"

[[gate]]
id = "n1"
controller = "north"
unit = 1

[[gate]]
id = "n2"
controller = "north"
unit = 2
"#
        ),
        &profiles,
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/gatehouse.db", dir.path().display());
    let store = Arc::new(Store::connect(&url).await.unwrap());
    store.migrate().await.unwrap();
    let runtime = Runtime::boot(
        store.clone(),
        profiles.clone(),
        Some(&seed),
        LocalBus::default(),
    )
    .await
    .unwrap();
    let (n1, n2) = (id::<GateId>("n1"), id::<GateId>("n2"));
    wait_state(&runtime, &n1, GateState::Closed).await;
    wait_state(&runtime, &n2, GateState::Closed).await;
    let n1_actor = actor_of(&runtime, &n1);

    // Add a controller with two gates: they come online; the other controller's actors stay.
    let south_record = ControllerRecord {
        id: id("south"),
        site: id::<SiteId>("site"),
        profile: "came-zlb30".into(),
        transport: gatehouse_actors::store::Transport::Tcp,
        endpoint: south.to_string(),
        serial: Default::default(),
        request_timeout_ms: None,
        inter_frame_delay_ms: None,
        poll_interval_ms: None,
        timeouts_before_down: None,
    };
    runtime
        .fleet
        .configure(vec![
            FleetChange::UpsertController(south_record.clone()),
            FleetChange::UpsertGate(gate("s1", "south", 1)),
            FleetChange::UpsertGate(gate("s2", "south", 2)),
        ])
        .await
        .unwrap();
    let (s1, s2) = (id::<GateId>("s1"), id::<GateId>("s2"));
    wait_state(&runtime, &s1, GateState::Closed).await;
    wait_state(&runtime, &s2, GateState::Closed).await;
    assert_eq!(
        actor_of(&runtime, &n1),
        n1_actor,
        "an unrelated gate actor was restarted"
    );

    // A batch with one bad change is refused whole: nothing stored, nothing changed.
    let before = store.load_fleet().await.unwrap();
    let err = runtime
        .fleet
        .configure(vec![
            FleetChange::UpsertGate(gate("s3", "south", 3)),
            FleetChange::UpsertGate(gate("s4", "south", 1)), // unit 1 is s1's
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, FleetError::Config(ref e) if e.field == "unit" && e.id == "s4"),
        "{err}"
    );
    assert_eq!(store.load_fleet().await.unwrap(), before);
    assert!(actor_of(&runtime, &id("s3")).is_none());
    let err = runtime
        .fleet
        .configure(vec![FleetChange::RemoveController(id::<ControllerId>(
            "south",
        ))])
        .await
        .unwrap_err();
    assert!(
        matches!(err, FleetError::Invalid(ref m) if m.contains("still has gates")),
        "{err}"
    );

    // Changing a gate restarts its controller's subtree only; its sequence carries on.
    let seq_before = runtime.fleet.view(&s1).await.unwrap().seq;
    let mut changed = gate("s1", "south", 1);
    changed.auto_close_after_s = Some(60);
    runtime
        .fleet
        .configure(vec![FleetChange::UpsertGate(changed)])
        .await
        .unwrap();
    wait_state(&runtime, &s1, GateState::Closed).await;
    assert!(runtime.fleet.view(&s1).await.unwrap().seq > seq_before);
    assert_eq!(actor_of(&runtime, &n1), n1_actor);

    // Removing a gate stops its actor.
    runtime
        .fleet
        .configure(vec![FleetChange::RemoveGate(s2.clone())])
        .await
        .unwrap();
    assert!(actor_of(&runtime, &s2).is_none());
    let expected = runtime.fleet.records().await.unwrap();
    runtime.shutdown(Duration::from_secs(10)).await;

    // A new process builds the same tree from the store, the fleet file no longer applied.
    let runtime = Runtime::boot(
        store.clone(),
        profiles.clone(),
        Some(&seed),
        LocalBus::default(),
    )
    .await
    .unwrap();
    assert_eq!(runtime.fleet.records().await.unwrap(), expected);
    for g in ["n1", "n2", "s1"] {
        wait_state(&runtime, &id(g), GateState::Closed).await;
    }
    assert!(
        actor_of(&runtime, &s2).is_none(),
        "a removed gate stays removed"
    );
    runtime.shutdown(Duration::from_secs(10)).await;
    farm.shutdown().await;
}
