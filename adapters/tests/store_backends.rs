//! The SQL store against real databases: every case runs twice, on SQLite in a temporary
//! directory and on PostgreSQL in a database of its own (created per test, dropped after it,
//! so tests run in parallel). PostgreSQL is `postgres://postgres@127.0.0.1:5432/` unless
//! `GATEHOUSE_TEST_PG_URL` says otherwise; when it cannot be reached the tests fail rather
//! than skip, because a silently skipped backend is an untested one.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::gate::{
    Action, Cause, CommandStatus, EventKind, FailReason, GateFlags, GateSnapshot, GateState,
    RejectReason,
};
use gatehouse_actors::ids::{CommandId, ControllerId, GateId, SiteId};
use gatehouse_actors::maintenance::{
    Level, MaintenanceStore, Plan, PlanDraft, PlanScope, Progress, Record, RecordQuery,
    RecordStatus, Work,
};
use gatehouse_actors::notify::{
    Mail, MailQuery, MailStatus, NotifyStore, Rendered, Rule, RuleDraft, Trigger,
};
use gatehouse_actors::store::{
    ControllerRecord, EventStore, FleetChange, FleetRecords, FleetStore, GateHead, GateRecord,
    SiteRecord, StoreError,
};
use gatehouse_adapters::store::{Backend, Store};

// ---- harness --------------------------------------------------------------------------------

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/";

fn pg_base_url() -> String {
    std::env::var("GATEHOUSE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// `base` with its database name replaced by `db` (query parameters kept).
fn with_database(base: &str, db: &str) -> String {
    let (scheme, rest) = base.split_once("://").expect("a postgres:// URL");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    format!("{scheme}://{authority}/{db}{query}")
}

async fn pg_admin() -> AsyncPgConnection {
    let base = pg_base_url();
    let url = with_database(&base, "postgres");
    match AsyncPgConnection::establish(&url).await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {base} ({e}). The store tests need it: start it \
             with `pg_ctlcluster --skip-systemctl-redirect 15 main start`, or point \
             GATEHOUSE_TEST_PG_URL at another server."
        ),
    }
}

/// What a test gets: a migrated store and the URL it was opened with.
struct Ctx {
    store: Store,
    url: String,
}

/// What must be removed after a test.
enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(String),
}

async fn open(backend: Backend) -> (Ctx, Cleanup) {
    let (url, cleanup) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            // A nested path: connect must create the missing directory.
            let path = dir.path().join("state").join("gatehouse.db");
            (format!("sqlite://{}", path.display()), Cleanup::Sqlite(dir))
        }
        Backend::Postgres => {
            let name = format!("gh_test_{}", uuid::Uuid::new_v4().simple());
            let mut admin = pg_admin().await;
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create the test database");
            (
                with_database(&pg_base_url(), &name),
                Cleanup::Postgres(name),
            )
        }
    };
    let store = Store::connect(&url).await.expect("connect");
    assert_eq!(store.backend(), backend);
    // Every migration of the backend's folder runs on a fresh database.
    let folder = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let migrations = std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../migrations/{folder}")),
    )
    .expect("the migrations folder")
    .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
    .count();
    assert!(migrations >= 2, "{migrations} migrations found");
    assert_eq!(
        store.migrate().await.expect("migrate"),
        migrations,
        "a fresh database"
    );
    (Ctx { store, url }, cleanup)
}

async fn clean(cleanup: Cleanup) {
    if let Cleanup::Postgres(name) = cleanup {
        let mut admin = pg_admin().await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .expect("drop the test database");
    }
}

/// Runs `test` against a fresh store of `backend`, and cleans up even when it panics.
async fn run<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (ctx, cleanup) = open(backend).await;
    let store = ctx.store.clone();
    let outcome = tokio::spawn(test(ctx)).await;
    store.close();
    clean(cleanup).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Declares each named `async fn(Ctx)` as two tests, `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread")]
                async fn sqlite() {
                    super::run(gatehouse_adapters::store::Backend::Sqlite, super::$name).await;
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn postgres() {
                    super::run(gatehouse_adapters::store::Backend::Postgres, super::$name).await;
                }
            }
        )*
    };
}

on_both_backends!(
    migrate_is_idempotent,
    fleet_round_trip,
    apply_is_all_or_nothing,
    removing_a_parent_with_children_is_rejected,
    events_round_trip,
    retried_batch_is_not_stored_twice,
    gate_and_seq_are_unique,
    finished_commands_filter_by_time,
    maintenance_plans_round_trip,
    maintenance_progress_starts_once_and_levels_only_rise,
    completing_a_record_restarts_its_plan_once,
    maintenance_records_page_newest_first,
    removing_a_gate_takes_its_plans_and_keeps_its_records,
    notification_rules_round_trip,
    reports_left_running_by_dead_nodes_are_queued_again,
    the_outbox_dedupes_within_its_window_and_keeps_what_it_was_told,
    an_outbox_message_is_claimed_by_one_notifier_at_a_time,
    a_command_id_is_claimed_once_across_gates_and_racing_stores,
);

// ---- fixtures -------------------------------------------------------------------------------

fn site(id: &str) -> SiteRecord {
    SiteRecord {
        id: SiteId::new(id).unwrap(),
        name: format!("Site {id}"),
        timezone: "Europe/Paris".into(),
    }
}

fn controller(id: &str, site: &str) -> ControllerRecord {
    ControllerRecord {
        id: ControllerId::new(id).unwrap(),
        site: SiteId::new(site).unwrap(),
        profile: "came-zbx".into(),
        transport: gatehouse_actors::store::Transport::Tcp,
        endpoint: "127.0.0.1:1502".into(),
        serial: Default::default(),
        request_timeout_ms: Some(800),
        inter_frame_delay_ms: None,
        poll_interval_ms: Some(250),
        timeouts_before_down: Some(5),
    }
}

/// A controller on a serial line, with some keys left to their defaults (stored as unset).
fn serial_controller(id: &str, site: &str) -> ControllerRecord {
    let mut c = controller(id, site);
    c.transport = gatehouse_actors::store::Transport::Rtu;
    c.endpoint.clear();
    c.serial = gatehouse_actors::store::SerialSettings {
        device: Some("/dev/ttyUSB0".into()),
        baud: Some(19_200),
        parity: Some(gatehouse_actors::store::Parity::None),
        data_bits: None,
        stop_bits: Some(2),
    };
    c
}

fn gate(id: &str, controller: &str, unit: u8) -> GateRecord {
    GateRecord {
        id: GateId::new(id).unwrap(),
        controller: ControllerId::new(controller).unwrap(),
        unit,
        name: format!("Gate {id}"),
        travel_timeout_s: 45,
        auto_close_after_s: Some(120),
        left_open_alert_after_s: None,
    }
}

/// Two sites, two controllers on the first, three gates.
fn sample_fleet() -> FleetRecords {
    FleetRecords {
        sites: vec![site("north"), site("south")],
        controllers: vec![controller("c1", "north"), controller("c2", "north")],
        gates: vec![
            gate("g1", "c1", 1),
            gate("g2", "c1", 2),
            gate("g3", "c2", 1),
        ],
    }
}

fn upserts(fleet: &FleetRecords) -> Vec<FleetChange> {
    let mut changes: Vec<FleetChange> = fleet
        .sites
        .iter()
        .cloned()
        .map(FleetChange::UpsertSite)
        .collect();
    changes.extend(
        fleet
            .controllers
            .iter()
            .cloned()
            .map(FleetChange::UpsertController),
    );
    changes.extend(fleet.gates.iter().cloned().map(FleetChange::UpsertGate));
    changes
}

fn event(gate: &str, seq: u64, at_ms: u64, kind: EventKind, cause: Cause) -> Arc<GateEvent> {
    Arc::new(GateEvent {
        gate: GateId::new(gate).unwrap(),
        controller: ControllerId::new("c1").unwrap(),
        seq,
        at_ms,
        kind,
        cause,
        snapshot: GateSnapshot {
            state: GateState::Open,
            flags: GateFlags {
                obstructed: seq.is_multiple_of(2),
                locked_out: false,
                held_open: seq.is_multiple_of(3),
            },
            position: Some(100),
            fault_code: None,
            latched_fault: None,
            cycles: Some(1_000 + seq),
        },
    })
}

fn finished(
    gate: &str,
    seq: u64,
    at_ms: u64,
    action: Action,
    status: CommandStatus,
) -> Arc<GateEvent> {
    let command = CommandId::random();
    event(
        gate,
        seq,
        at_ms,
        EventKind::CommandFinished {
            command,
            action,
            status,
        },
        Cause::Command(command),
    )
}

/// One event of every kind, cause and terminal status, for gate `g1`, seq 1..
fn every_kind() -> Vec<Arc<GateEvent>> {
    let command = CommandId::random();
    let kinds = vec![
        (
            EventKind::StateChanged {
                from: GateState::Closed,
            },
            Cause::Command(command),
        ),
        (EventKind::Obstruction { obstructed: true }, Cause::Local),
        (
            EventKind::AutoCloseWarning {
                closes_in_ms: 5_000,
            },
            Cause::System,
        ),
        (
            EventKind::LeftOpen {
                open_for_ms: 600_000,
            },
            Cause::System,
        ),
        (EventKind::LockedOut, Cause::Command(CommandId::random())),
        (EventKind::Unlocked, Cause::Command(CommandId::random())),
        (EventKind::HeldOpen, Cause::Local),
        (EventKind::Released, Cause::System),
        (
            EventKind::MaintenanceDue {
                plan: uuid::Uuid::new_v4(),
            },
            Cause::System,
        ),
        (
            EventKind::MaintenanceOverdue {
                plan: uuid::Uuid::new_v4(),
            },
            Cause::System,
        ),
    ];
    let statuses = [
        CommandStatus::Completed,
        CommandStatus::Rejected(RejectReason::NoEntrapmentProtection),
        CommandStatus::Failed(FailReason::TravelTimeout),
        CommandStatus::TimedOut,
    ];
    let mut events: Vec<Arc<GateEvent>> = kinds
        .into_iter()
        .enumerate()
        .map(|(i, (kind, cause))| event("g1", i as u64 + 1, 1_000 + i as u64, kind, cause))
        .collect();
    for (i, status) in statuses.into_iter().enumerate() {
        let seq = events.len() as u64 + 1;
        events.push(finished(
            "g1",
            seq,
            2_000 + i as u64,
            Action::ALL[i],
            status,
        ));
    }
    // The latest event carries no cycle count: heads must report the one before.
    let mut last = (*event(
        "g1",
        events.len() as u64 + 1,
        3_000,
        EventKind::Released,
        Cause::Local,
    ))
    .clone();
    last.snapshot.cycles = None;
    last.snapshot.state = GateState::Offline;
    events.push(Arc::new(last));
    events
}

// ---- fleet ----------------------------------------------------------------------------------

async fn migrate_is_idempotent(ctx: Ctx) {
    assert_eq!(ctx.store.migrate().await.unwrap(), 0);
    // A second process opening the same database finds nothing to do either.
    let other = Store::connect(&ctx.url).await.unwrap();
    assert_eq!(other.migrate().await.unwrap(), 0);
    other.close();
}

async fn fleet_round_trip(ctx: Ctx) {
    let store = ctx.store;
    assert_eq!(store.load_fleet().await.unwrap(), FleetRecords::default());

    let fleet = sample_fleet();
    // Out of order on purpose: references are checked at the end of the batch.
    let mut changes = upserts(&fleet);
    changes.reverse();
    store.apply(changes).await.unwrap();
    assert_eq!(store.load_fleet().await.unwrap(), fleet);

    // Upserts replace, including clearing optional settings.
    let mut c1 = controller("c1", "south");
    c1.transport = gatehouse_actors::store::Transport::RtuOverTcp;
    c1.request_timeout_ms = None;
    c1.inter_frame_delay_ms = Some(5);
    let mut g2 = gate("g2", "c2", 7);
    g2.auto_close_after_s = None;
    g2.left_open_alert_after_s = Some(u64::from(u32::MAX) + 1);
    store
        .apply(vec![
            FleetChange::UpsertController(c1.clone()),
            FleetChange::UpsertController(serial_controller("d1", "south")),
            FleetChange::UpsertGate(g2.clone()),
        ])
        .await
        .unwrap();
    let mut expected = fleet.clone();
    expected.controllers[0] = c1;
    expected.controllers.push(serial_controller("d1", "south"));
    expected.gates[1] = g2;
    assert_eq!(store.load_fleet().await.unwrap(), expected);

    // Removing children first, then parents, in one batch.
    store
        .apply(vec![
            FleetChange::RemoveGate(GateId::new("g1").unwrap()),
            FleetChange::RemoveGate(GateId::new("g2").unwrap()),
            FleetChange::RemoveGate(GateId::new("g3").unwrap()),
            FleetChange::RemoveController(ControllerId::new("c1").unwrap()),
            FleetChange::RemoveController(ControllerId::new("c2").unwrap()),
            FleetChange::RemoveController(ControllerId::new("d1").unwrap()),
            FleetChange::RemoveSite(SiteId::new("north").unwrap()),
            FleetChange::RemoveSite(SiteId::new("south").unwrap()),
        ])
        .await
        .unwrap();
    assert_eq!(store.load_fleet().await.unwrap(), FleetRecords::default());
}

fn rejected(result: Result<(), StoreError>, needle: &str) {
    match result {
        Err(StoreError::Rejected(message)) => {
            assert!(
                message.contains(needle),
                "{message:?} should mention {needle:?}"
            )
        }
        other => panic!("expected a rejection mentioning {needle:?}, got {other:?}"),
    }
}

async fn apply_is_all_or_nothing(ctx: Ctx) {
    let store = ctx.store;
    let fleet = sample_fleet();
    store.apply(upserts(&fleet)).await.unwrap();

    // Good changes first, then a gate on a controller that does not exist.
    let result = store
        .apply(vec![
            FleetChange::UpsertSite(site("east")),
            FleetChange::UpsertController(controller("c3", "east")),
            FleetChange::RemoveGate(GateId::new("g3").unwrap()),
            FleetChange::UpsertGate(gate("g4", "nowhere", 1)),
        ])
        .await;
    rejected(result, "gate g4 refers to unknown controller nowhere");
    assert_eq!(store.load_fleet().await.unwrap(), fleet);

    // A controller on a missing site.
    let result = store
        .apply(vec![FleetChange::UpsertController(controller(
            "c3", "atlantis",
        ))])
        .await;
    rejected(result, "controller c3 refers to unknown site atlantis");

    // A unit already taken on the same controller: the database's constraint.
    let result = store
        .apply(vec![
            FleetChange::UpsertSite(site("west")),
            FleetChange::UpsertGate(gate("g5", "c1", 2)),
        ])
        .await;
    assert!(matches!(result, Err(StoreError::Rejected(_))), "{result:?}");

    // A site removed while a controller added in the same batch still points at it.
    let result = store
        .apply(vec![
            FleetChange::UpsertSite(site("west")),
            FleetChange::UpsertController(controller("c9", "west")),
            FleetChange::RemoveController(ControllerId::new("c9").unwrap()),
            FleetChange::UpsertController(controller("c8", "south")),
            FleetChange::RemoveSite(SiteId::new("south").unwrap()),
        ])
        .await;
    rejected(result, "site south still has controllers: c8");
    assert_eq!(store.load_fleet().await.unwrap(), fleet);
}

async fn removing_a_parent_with_children_is_rejected(ctx: Ctx) {
    let store = ctx.store;
    let fleet = sample_fleet();
    store.apply(upserts(&fleet)).await.unwrap();

    let result = store
        .apply(vec![FleetChange::RemoveController(
            ControllerId::new("c1").unwrap(),
        )])
        .await;
    rejected(result, "controller c1 still has gates: g1, g2");
    let result = store
        .apply(vec![FleetChange::RemoveSite(SiteId::new("north").unwrap())])
        .await;
    rejected(result, "site north still has controllers: c1, c2");
    let result = store
        .apply(vec![FleetChange::RemoveGate(
            GateId::new("missing").unwrap(),
        )])
        .await;
    rejected(result, "no gate missing");
    assert_eq!(store.load_fleet().await.unwrap(), fleet);

    // Once its gates are gone (in the same batch, before it), the controller goes.
    store
        .apply(vec![
            FleetChange::RemoveGate(GateId::new("g3").unwrap()),
            FleetChange::RemoveController(ControllerId::new("c2").unwrap()),
        ])
        .await
        .unwrap();
    let loaded = store.load_fleet().await.unwrap();
    assert_eq!(loaded.controllers, vec![controller("c1", "north")]);
    assert_eq!(loaded.gates.len(), 2);
}

// ---- events ---------------------------------------------------------------------------------

async fn events_round_trip(ctx: Ctx) {
    let store = ctx.store;
    assert!(store.heads().await.unwrap().is_empty());
    assert!(store.after(0, 10).await.unwrap().is_empty());

    let g1 = every_kind();
    let g2: Vec<Arc<GateEvent>> = (1..=3)
        .map(|seq| {
            event(
                "g2",
                seq,
                500 + seq,
                EventKind::StateChanged {
                    from: GateState::Unknown,
                },
                Cause::System,
            )
        })
        .collect();
    // Two batches, interleaving gates the way the writer does.
    let (first, second) = g1.split_at(5);
    let mut batch: Vec<Arc<GateEvent>> = first.to_vec();
    batch.push(g2[0].clone());
    store.append(batch).await.unwrap();
    let mut batch: Vec<Arc<GateEvent>> = g2[1..].to_vec();
    batch.extend(second.iter().cloned());
    store.append(batch).await.unwrap();
    store.append(Vec::new()).await.unwrap();

    let since: Vec<GateEvent> = store
        .since(GateId::new("g1").unwrap(), 0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.event)
        .collect();
    let expected: Vec<GateEvent> = g1.iter().map(|e| (**e).clone()).collect();
    assert_eq!(since, expected);

    // Resume in the middle, with a limit.
    let page = store.since(GateId::new("g1").unwrap(), 3, 2).await.unwrap();
    let seqs: Vec<u64> = page.iter().map(|s| s.event.seq).collect();
    assert_eq!(seqs, vec![4, 5]);
    assert!(
        store
            .since(GateId::new("g1").unwrap(), u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .since(GateId::new("nope").unwrap(), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Global order: ids increase, every event exactly once, paging picks up where it stopped.
    let all = store.after(0, 1_000).await.unwrap();
    assert_eq!(all.len(), g1.len() + g2.len());
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    let (head, tail) = all.split_at(4);
    let rest = store.after(head[3].id, 1_000).await.unwrap();
    assert_eq!(rest, tail);
    assert!(
        store
            .after(all[all.len() - 1].id, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let mut got: Vec<GateEvent> = all.into_iter().map(|s| s.event).collect();
    got.sort_by(|a, b| (a.gate.as_str(), a.seq).cmp(&(b.gate.as_str(), b.seq)));
    let mut want: Vec<GateEvent> = g1.iter().chain(g2.iter()).map(|e| (**e).clone()).collect();
    want.sort_by(|a, b| (a.gate.as_str(), a.seq).cmp(&(b.gate.as_str(), b.seq)));
    assert_eq!(got, want);

    let last = g1.len() as u64;
    assert_eq!(
        store.heads().await.unwrap(),
        vec![
            (
                GateId::new("g1").unwrap(),
                // The last event has no cycles; the one before has 1000 + its seq.
                GateHead {
                    seq: last,
                    cycles: Some(1_000 + last - 1),
                },
            ),
            (
                GateId::new("g2").unwrap(),
                GateHead {
                    seq: 3,
                    cycles: Some(1_003),
                },
            ),
        ]
    );
    // The heads of some gates only, as a node taking a controller reads them: the same
    // answers, and nothing for a gate without events.
    let all = store.heads().await.unwrap();
    let some = store
        .heads_of(vec![
            GateId::new("g2").unwrap(),
            GateId::new("quiet").unwrap(),
        ])
        .await
        .unwrap();
    assert_eq!(some, vec![all[1].clone()]);
    let both = store
        .heads_of(vec![GateId::new("g1").unwrap(), GateId::new("g2").unwrap()])
        .await
        .unwrap();
    assert_eq!(both, all);
    // Their seqs alone, in one grouped query (what sessions check after a loss of events).
    let mut seqs = store
        .head_seqs(vec![
            GateId::new("quiet").unwrap(),
            GateId::new("g2").unwrap(),
            GateId::new("g1").unwrap(),
        ])
        .await
        .unwrap();
    seqs.sort();
    assert_eq!(
        seqs,
        vec![
            (GateId::new("g1").unwrap(), last),
            (GateId::new("g2").unwrap(), 3)
        ]
    );
}

async fn retried_batch_is_not_stored_twice(ctx: Ctx) {
    let store = ctx.store;
    let batch = every_kind();
    store.append(batch.clone()).await.unwrap();
    store.append(batch.clone()).await.unwrap();
    // A retry that overlaps: half old, half new.
    let mut overlap: Vec<Arc<GateEvent>> = batch[batch.len() - 3..].to_vec();
    let next = batch.len() as u64 + 1;
    overlap.push(event(
        "g1",
        next,
        9_000,
        EventKind::LockedOut,
        Cause::System,
    ));
    store.append(overlap).await.unwrap();

    let stored = store.after(0, 1_000).await.unwrap();
    let seqs: Vec<u64> = stored.iter().map(|s| s.event.seq).collect();
    assert_eq!(seqs, (1..=next).collect::<Vec<_>>());
}

async fn gate_and_seq_are_unique(ctx: Ctx) {
    let store = ctx.store;
    let first = event("g1", 5, 100, EventKind::HeldOpen, Cause::Local);
    let impostor = event("g1", 5, 200, EventKind::Released, Cause::System);
    let other_gate = event("g2", 5, 300, EventKind::Released, Cause::System);
    store.append(vec![first.clone()]).await.unwrap();
    // The same (gate, seq) twice within one batch, and against a stored row.
    store
        .append(vec![impostor.clone(), other_gate.clone(), impostor])
        .await
        .unwrap();

    let g1 = store
        .since(GateId::new("g1").unwrap(), 0, 10)
        .await
        .unwrap();
    assert_eq!(g1.len(), 1);
    assert_eq!(g1[0].event, *first);
    let g2 = store
        .since(GateId::new("g2").unwrap(), 0, 10)
        .await
        .unwrap();
    assert_eq!(g2.len(), 1);
    assert_eq!(g2[0].event, *other_gate);
}

async fn finished_commands_filter_by_time(ctx: Ctx) {
    let store = ctx.store;
    let early = finished("g1", 1, 1_000, Action::Open, CommandStatus::Completed);
    let noise = event("g1", 2, 2_500, EventKind::LockedOut, Cause::System);
    let edge = finished(
        "g2",
        1,
        2_000,
        Action::Close,
        CommandStatus::Failed(FailReason::Obstructed),
    );
    let late = finished(
        "g1",
        3,
        3_000,
        Action::HoldOpen,
        CommandStatus::Rejected(RejectReason::Offline),
    );
    store
        .append(vec![early.clone(), noise, edge.clone(), late.clone()])
        .await
        .unwrap();

    let got = store.finished_commands(2_000).await.unwrap();
    let want: Vec<(GateId, u64, u64, CommandId, Action, CommandStatus)> = [edge, late]
        .iter()
        .map(|e| match e.kind {
            EventKind::CommandFinished {
                command,
                action,
                status,
            } => (e.gate.clone(), e.seq, e.at_ms, command, action, status),
            _ => unreachable!(),
        })
        .collect();
    let got: Vec<(GateId, u64, u64, CommandId, Action, CommandStatus)> = got
        .into_iter()
        .map(|f| (f.gate, f.seq, f.at_ms, f.id, f.action, f.status))
        .collect();
    assert_eq!(got, want);
    assert_eq!(store.finished_commands(0).await.unwrap().len(), 3);
    assert!(store.finished_commands(3_001).await.unwrap().is_empty());
    assert!(store.finished_commands(u64::MAX).await.unwrap().is_empty());
}

// ---- unavailability -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_postgres_is_unavailable() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let base = pg_base_url();
    let (_, rest) = base.split_once("://").unwrap();
    let user = rest.split_once('@').map_or("postgres", |(u, _)| u);
    let url = format!("postgres://{user}@127.0.0.1:1/gatehouse");
    match Store::connect(&url).await {
        Err(e @ StoreError::Unavailable(_)) => assert!(e.is_transient()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unopenable_sqlite_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory should be.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let url = format!("sqlite://{}", blocker.join("db.sqlite").display());
    match Store::connect(&url).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// WAL is a property of the file, so another connection can see it.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_database_is_in_wal_mode() {
    use diesel::{Connection, QueryableByName, RunQueryDsl, SqliteConnection};
    #[derive(QueryableByName)]
    struct Mode {
        #[diesel(sql_type = diesel::sql_types::Text)]
        journal_mode: String,
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.close();
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    let mode: Mode = diesel::sql_query("PRAGMA journal_mode")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(mode.journal_mode, "wal");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_memory_sqlite_is_refused() {
    assert!(matches!(
        Store::connect("sqlite://:memory:").await,
        Err(StoreError::Other(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_url_scheme_is_refused() {
    match Store::connect("mysql://localhost/x").await {
        Err(StoreError::Other(m)) => assert!(m.contains("unsupported database URL"), "{m}"),
        other => panic!("expected Other, got {other:?}"),
    }
}

/// The server ends the store's sessions (a restart or failover looks the same from here):
/// calls report a transient error at worst, and the pool reconnects by itself.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_sessions_killed_by_the_server_are_transient() {
    run(Backend::Postgres, |ctx: Ctx| async move {
        let store = ctx.store;
        store.apply(upserts(&sample_fleet())).await.unwrap();
        let name = ctx.url.rsplit('/').next().unwrap().to_owned();
        let mut admin = pg_admin().await;
        admin
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ))
            .await
            .unwrap();
        let mut recovered = false;
        for _ in 0..3 {
            match store.load_fleet().await {
                Ok(fleet) => {
                    assert_eq!(fleet, sample_fleet());
                    recovered = true;
                    break;
                }
                Err(e) => assert!(e.is_transient(), "expected a transient error, got {e:?}"),
            }
        }
        assert!(recovered, "the pool did not reconnect");
    })
    .await;
}

/// Sessions ended while a statement runs: the call that was cut off reports a transient
/// error (the event log writer retries those), never a permanent one.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_sessions_killed_mid_statement_are_transient() {
    run(Backend::Postgres, |ctx: Ctx| async move {
        let store = ctx.store;
        let name = ctx.url.rsplit('/').next().unwrap().to_owned();
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for round in 0..40u64 {
                    let batch: Vec<Arc<GateEvent>> = (0..2_000)
                        .map(|i| {
                            event(
                                &format!("gate-{i}"),
                                round + 1,
                                i,
                                EventKind::Released,
                                Cause::System,
                            )
                        })
                        .collect();
                    outcomes.push(store.append(batch).await);
                }
                outcomes
            })
        };
        let mut admin = pg_admin().await;
        while !writer.is_finished() {
            admin
                .batch_execute(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ))
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        }
        let outcomes = writer.await.unwrap();
        let failed_rounds: Vec<u64> = (1..)
            .zip(&outcomes)
            .filter_map(|(round, outcome)| match outcome {
                Ok(()) => None,
                Err(e) => {
                    assert!(e.is_transient(), "expected a transient error, got {e:?}");
                    Some(round)
                }
            })
            .collect();
        assert!(
            !failed_rounds.is_empty(),
            "no append was cut off; the test proved nothing"
        );

        // Each batch is all or nothing. A failed round is usually absent, but may be whole:
        // a session ended between the server's commit and its reply leaves the client not
        // knowing, which is why appends are idempotent and retried.
        let stored = store.after(0, 1_000_000).await.unwrap();
        for round in 1..=40u64 {
            let count = stored.iter().filter(|s| s.event.seq == round).count();
            if failed_rounds.contains(&round) {
                assert!(count == 0 || count == 2_000, "round {round}: {count} rows");
            } else {
                assert_eq!(count, 2_000, "round {round}");
            }
        }
    })
    .await;
}

// ---- throughput -----------------------------------------------------------------------------

/// `cargo test -p gatehouse-adapters --release --test store_backends -- --ignored --nocapture`
async fn append_throughput(ctx: Ctx) {
    const EVENTS: u64 = 50_000;
    const BATCH: usize = 500;
    let store = ctx.store;
    let events: Vec<Arc<GateEvent>> = (0..EVENTS)
        .map(|i| {
            let gate = format!("gate-{}", i % 200);
            event(
                &gate,
                i / 200 + 1,
                1_700_000_000_000 + i,
                EventKind::StateChanged {
                    from: GateState::Closed,
                },
                Cause::System,
            )
        })
        .collect();
    let started = Instant::now();
    for batch in events.chunks(BATCH) {
        store.append(batch.to_vec()).await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "{}: {EVENTS} events in batches of {BATCH}: {:.2} s, {:.0} events/s",
        store.backend(),
        elapsed.as_secs_f64(),
        EVENTS as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(store.heads().await.unwrap().len(), 200);
}

mod throughput {
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a measurement; run with --ignored --nocapture"]
    async fn sqlite() {
        super::run(
            gatehouse_adapters::store::Backend::Sqlite,
            super::append_throughput,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a measurement; run with --ignored --nocapture"]
    async fn postgres() {
        super::run(
            gatehouse_adapters::store::Backend::Postgres,
            super::append_throughput,
        )
        .await;
    }
}

// ---- maintenance ----------------------------------------------------------------------------

fn plan(scope: PlanScope, title: &str, every_cycles: Option<u64>, at_ms: u64) -> Plan {
    Plan::new(
        uuid::Uuid::new_v4(),
        PlanDraft {
            scope,
            title: title.into(),
            every_cycles,
            every_days: Some(365),
            warn_cycles: 0,
            warn_days: 30,
        },
        at_ms,
    )
}

fn g(id: &str) -> GateId {
    GateId::new(id).unwrap()
}

fn open_record(gate: &str, plan: Option<uuid::Uuid>, at_ms: u64) -> Record {
    Record {
        id: uuid::Uuid::new_v4(),
        gate: g(gate),
        site: SiteId::new("north").unwrap(),
        plan,
        status: RecordStatus::Open,
        opened_at_ms: at_ms,
        opened_by: "user:tech".into(),
        lockout: true,
        completed_at_ms: None,
        completed_by: None,
        cycles_at: None,
        work: Work::default(),
        attachments: Vec::new(),
    }
}

fn completed(mut r: Record, at_ms: u64, cycles: Option<u64>) -> Record {
    r.status = RecordStatus::Completed;
    r.completed_at_ms = Some(at_ms);
    r.completed_by = Some("user:tech".into());
    r.cycles_at = cycles;
    r.work = Work {
        summary: "springs replaced".into(),
        parts: vec!["spring 2x".into(), "roller".into()],
        notes: "line one\nline two".into(),
    };
    r
}

async fn maintenance_plans_round_trip(ctx: Ctx) {
    let store = ctx.store;
    store.apply(upserts(&sample_fleet())).await.unwrap();
    let by_gate = plan(PlanScope::Gate(g("g1")), "springs", Some(20_000), 1_000);
    let by_site = plan(
        PlanScope::Site(SiteId::new("north").unwrap()),
        "inspection",
        None,
        2_000,
    );
    store.put_plan(by_gate.clone()).await.unwrap();
    store.put_plan(by_site.clone()).await.unwrap();
    assert_eq!(
        store.plans().await.unwrap(),
        vec![by_gate.clone(), by_site.clone()]
    );

    // Replaced in place: same id, new fields.
    let revised = by_gate.revised(
        PlanDraft {
            scope: by_gate.scope.clone(),
            title: "springs and rollers".into(),
            every_cycles: Some(15_000),
            every_days: None,
            warn_cycles: 500,
            warn_days: 0,
        },
        3_000,
    );
    store.put_plan(revised.clone()).await.unwrap();
    assert_eq!(
        store.plans().await.unwrap(),
        vec![revised.clone(), by_site.clone()]
    );

    // A plan for a gate or site that does not exist is refused, naming it.
    let nowhere = plan(PlanScope::Gate(g("missing")), "x", Some(1), 4_000);
    rejected(store.put_plan(nowhere).await, "unknown gate missing");
    let nowhere = plan(
        PlanScope::Site(SiteId::new("east").unwrap()),
        "x",
        Some(1),
        4_000,
    );
    rejected(store.put_plan(nowhere).await, "unknown site east");

    assert!(store.delete_plan(by_site.id).await.unwrap());
    assert!(!store.delete_plan(by_site.id).await.unwrap());
    assert_eq!(store.plans().await.unwrap(), vec![revised]);
}

async fn maintenance_progress_starts_once_and_levels_only_rise(ctx: Ctx) {
    let store = ctx.store;
    store.apply(upserts(&sample_fleet())).await.unwrap();
    let p = plan(PlanScope::Gate(g("g1")), "springs", Some(100), 0);
    store.put_plan(p.clone()).await.unwrap();
    let first = Progress {
        plan: p.id,
        gate: g("g1"),
        since_ms: 10,
        since_cycles: None,
        announced: Level::Ok,
    };
    store.start_progress(first.clone()).await.unwrap();
    // A second start (another round that raced) does not move the start.
    store
        .start_progress(Progress {
            since_ms: 99,
            since_cycles: Some(7),
            ..first.clone()
        })
        .await
        .unwrap();
    assert_eq!(store.progress().await.unwrap(), vec![first.clone()]);

    // The first counter reported fills in; a later one does not replace it.
    store.first_cycles(p.id, g("g1"), 500).await.unwrap();
    store.first_cycles(p.id, g("g1"), 900).await.unwrap();
    let now = store.progress().await.unwrap();
    assert_eq!(now[0].since_cycles, Some(500));

    store
        .announced(p.id, g("g1"), Level::Overdue)
        .await
        .unwrap();
    store.announced(p.id, g("g1"), Level::Due).await.unwrap();
    assert_eq!(store.progress().await.unwrap()[0].announced, Level::Overdue);
}

async fn completing_a_record_restarts_its_plan_once(ctx: Ctx) {
    let store = ctx.store;
    store.apply(upserts(&sample_fleet())).await.unwrap();
    let p = plan(PlanScope::Gate(g("g1")), "springs", Some(100), 0);
    store.put_plan(p.clone()).await.unwrap();
    store
        .start_progress(Progress {
            plan: p.id,
            gate: g("g1"),
            since_ms: 10,
            since_cycles: Some(0),
            announced: Level::Ok,
        })
        .await
        .unwrap();
    store
        .announced(p.id, g("g1"), Level::Overdue)
        .await
        .unwrap();

    let open = open_record("g1", Some(p.id), 1_000);
    store.insert_record(open.clone()).await.unwrap();
    assert_eq!(store.record(open.id).await.unwrap(), Some(open.clone()));
    // Opening restarts nothing.
    assert_eq!(store.progress().await.unwrap()[0].since_ms, 10);

    let done = completed(open.clone(), 5_000, Some(140));
    store.complete_record(done.clone()).await.unwrap();
    assert_eq!(store.record(open.id).await.unwrap(), Some(done.clone()));
    assert_eq!(
        store.progress().await.unwrap(),
        vec![Progress {
            plan: p.id,
            gate: g("g1"),
            since_ms: 5_000,
            since_cycles: Some(140),
            announced: Level::Ok,
        }]
    );
    // A second completion (another technician's, a retried request) is refused and changes
    // nothing.
    let again = completed(open.clone(), 9_000, Some(150));
    rejected(store.complete_record(again).await, "is not open");
    assert_eq!(store.record(open.id).await.unwrap(), Some(done));
    assert_eq!(store.progress().await.unwrap()[0].since_ms, 5_000);

    // A record of work already done, inserted completed, restarts its plan too.
    let direct = completed(open_record("g1", Some(p.id), 20_000), 20_000, Some(300));
    store.insert_record(direct).await.unwrap();
    assert_eq!(store.progress().await.unwrap()[0].since_cycles, Some(300));
    // A record naming a plan that does not exist is refused.
    let stray = open_record("g1", Some(uuid::Uuid::new_v4()), 30_000);
    rejected(store.insert_record(stray).await, "unknown plan");
}

async fn maintenance_records_page_newest_first(ctx: Ctx) {
    let store = ctx.store;
    store.apply(upserts(&sample_fleet())).await.unwrap();
    // Two records share an opening time: the id orders them.
    let mut all = Vec::new();
    for (i, at) in [100u64, 200, 200, 300, 400].into_iter().enumerate() {
        let mut r = open_record(if i % 2 == 0 { "g1" } else { "g2" }, None, at);
        if i == 4 {
            r = completed(r, 500, None);
        }
        store.insert_record(r.clone()).await.unwrap();
        all.push(r);
    }
    let mut expected = all.clone();
    expected.sort_by_key(|r| std::cmp::Reverse((r.opened_at_ms, r.id)));
    let page = |before: Option<uuid::Uuid>| RecordQuery {
        before,
        limit: 2,
        ..RecordQuery::default()
    };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let got = store.records(page(before)).await.unwrap();
        if got.is_empty() {
            break;
        }
        before = got.last().map(|r| r.id);
        seen.extend(got);
    }
    assert_eq!(
        seen, expected,
        "every record once, newest first, across pages"
    );

    let only_g1 = store
        .records(RecordQuery {
            gate: Some(g("g1")),
            limit: 10,
            ..RecordQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(only_g1.len(), 3);
    assert!(only_g1.iter().all(|r| r.gate == g("g1")));
    let open = store
        .records(RecordQuery {
            status: Some(RecordStatus::Open),
            limit: 10,
            ..RecordQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(open.len(), 4);
    let elsewhere = store
        .records(RecordQuery {
            site: Some(SiteId::new("south").unwrap()),
            limit: 10,
            ..RecordQuery::default()
        })
        .await
        .unwrap();
    assert!(elsewhere.is_empty());
    let unknown_cursor = store.records(page(Some(uuid::Uuid::new_v4()))).await;
    assert!(matches!(unknown_cursor, Err(StoreError::Rejected(_))));
}

async fn removing_a_gate_takes_its_plans_and_keeps_its_records(ctx: Ctx) {
    let store = ctx.store;
    store.apply(upserts(&sample_fleet())).await.unwrap();
    let p = plan(PlanScope::Gate(g("g3")), "springs", Some(100), 0);
    store.put_plan(p.clone()).await.unwrap();
    store
        .start_progress(Progress {
            plan: p.id,
            gate: g("g3"),
            since_ms: 0,
            since_cycles: Some(0),
            announced: Level::Ok,
        })
        .await
        .unwrap();
    let r = completed(open_record("g3", Some(p.id), 100), 200, Some(10));
    store.insert_record(r.clone()).await.unwrap();
    store
        .apply(vec![FleetChange::RemoveGate(g("g3"))])
        .await
        .unwrap();
    assert!(store.plans().await.unwrap().is_empty());
    assert!(store.progress().await.unwrap().is_empty());
    let kept = store
        .record(r.id)
        .await
        .unwrap()
        .expect("the record outlives its gate");
    assert_eq!(kept.gate, g("g3"));
    assert_eq!(kept.plan, None, "its plan went with the gate");
}

// ---- notifications --------------------------------------------------------------------------

async fn notification_rules_round_trip(ctx: Ctx) {
    use gatehouse_actors::access::{AccessStore, Role, UserId, UserRecord};
    let store = ctx.store;
    store.apply(upserts(&sample_fleet())).await.unwrap();
    let user = UserRecord {
        id: UserId(uuid::Uuid::new_v4()),
        username: "oncall".into(),
        password_hash: "x".into(),
        role: Role::Operator,
        created_at_ms: 1,
        disabled: false,
        email: Some("oncall@example.org".into()),
    };
    store.create_user(user.clone()).await.unwrap();
    assert_eq!(
        store.user(user.id).await.unwrap().unwrap().email.as_deref(),
        Some("oncall@example.org")
    );
    let rule = Rule::new(
        uuid::Uuid::new_v4(),
        RuleDraft {
            trigger: Trigger::Obstruction,
            site: Some(SiteId::new("north").unwrap()),
            after_s: 120,
            users: vec![user.id],
            roles: vec![Role::Admin, Role::Operator],
        },
        5,
    );
    store.put_rule(rule.clone()).await.unwrap();
    let everywhere = Rule::new(
        uuid::Uuid::new_v4(),
        RuleDraft {
            trigger: Trigger::LoginLockout,
            site: None,
            after_s: 0,
            users: vec![],
            roles: vec![Role::Admin],
        },
        6,
    );
    store.put_rule(everywhere.clone()).await.unwrap();
    assert_eq!(store.rules().await.unwrap(), vec![rule.clone(), everywhere]);
    let stranger = Rule::new(
        uuid::Uuid::new_v4(),
        RuleDraft {
            users: vec![UserId(uuid::Uuid::new_v4())],
            ..RuleDraft {
                trigger: Trigger::Fault,
                site: None,
                after_s: 0,
                users: vec![],
                roles: vec![],
            }
        },
        7,
    );
    rejected(store.put_rule(stranger).await, "unknown user");
    assert!(store.delete_rule(rule.id).await.unwrap());
    assert!(!store.delete_rule(rule.id).await.unwrap());
}

async fn reports_left_running_by_dead_nodes_are_queued_again(ctx: Ctx) {
    use gatehouse_actors::report::{
        Report, ReportFormat, ReportKind, ReportSpec, ReportStatus, ReportStore,
    };
    let store = ctx.store;
    let spec = ReportSpec {
        kind: ReportKind::Events,
        site: None,
        from_ms: 0,
        to_ms: 1_000,
        format: ReportFormat::Csv,
    };
    let mut ids = Vec::new();
    for (i, claimer) in ["n1", "n2", "local"].iter().enumerate() {
        let report = Report::queued(
            uuid::Uuid::new_v4(),
            spec.clone(),
            "system".into(),
            i as u64,
        );
        ids.push(report.id);
        store.insert_report(report).await.unwrap();
        let claimed = store
            .claim_report(claimer.to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claimed.id, ids[i], "the oldest queued first");
        assert_eq!(claimed.status, ReportStatus::Running);
    }
    assert!(store.claim_report("n1".into()).await.unwrap().is_none());
    // n1 is alive: its report keeps running; n2's and the lone node's go back to the queue.
    assert_eq!(
        store
            .requeue_running(Some(vec!["n1".into(), "n3".into()]))
            .await
            .unwrap(),
        2
    );
    let status = |id| {
        let store = store.clone();
        async move { store.report(id).await.unwrap().unwrap().status }
    };
    assert_eq!(status(ids[0]).await, ReportStatus::Running);
    assert_eq!(status(ids[1]).await, ReportStatus::Queued);
    assert_eq!(status(ids[2]).await, ReportStatus::Queued);
    // A node alone puts back everything running.
    assert_eq!(store.requeue_running(None).await.unwrap(), 1);
    assert_eq!(status(ids[0]).await, ReportStatus::Queued);
}

async fn an_outbox_message_is_claimed_by_one_notifier_at_a_time(ctx: Ctx) {
    let store = ctx.store;
    let rendered = Rendered {
        subject: "s".into(),
        text: "t".into(),
        html: "h".into(),
    };
    let mail = Mail::new("k".into(), "a@example.org", &rendered, 1_000);
    assert_eq!(
        store.enqueue(vec![mail.clone()], 0, 1_000).await.unwrap(),
        1
    );
    // Not due yet: nobody claims it.
    assert!(!store.claim(mail.id, 999, 61_000).await.unwrap());
    // Two notifiers racing: one gets it, and while claimed it is not due to anyone.
    let (a, b) = tokio::join!(
        store.claim(mail.id, 2_000, 62_000),
        store.claim(mail.id, 2_000, 62_000)
    );
    assert!(a.unwrap() ^ b.unwrap(), "exactly one claim wins");
    assert!(store.due(61_999, 10).await.unwrap().is_empty());
    // The claimant died mid-send: at the claim's end it is due and claimable again.
    assert_eq!(store.due(62_000, 10).await.unwrap().len(), 1);
    assert!(store.claim(mail.id, 62_000, 122_000).await.unwrap());
    // Recorded as sent: never claimed again.
    let mut sent = mail.clone();
    sent.status = MailStatus::Sent;
    sent.attempts = 1;
    sent.sent_at_ms = Some(62_500);
    store.attempted(sent).await.unwrap();
    assert!(!store.claim(mail.id, 500_000, 560_000).await.unwrap());
    assert!(
        !store
            .claim(uuid::Uuid::new_v4(), 500_000, 560_000)
            .await
            .unwrap()
    );
}

async fn the_outbox_dedupes_within_its_window_and_keeps_what_it_was_told(ctx: Ctx) {
    let store = ctx.store;
    let rendered = Rendered {
        subject: "[Gatehouse] Gate fault: gate g1".into(),
        text: "text".into(),
        html: "<p>html</p>".into(),
    };
    let mail = |to: &str, at: u64| Mail::new("fault:gate:g1".into(), to, &rendered, at);
    // Two recipients queued; within the window the same key and recipient is not queued
    // again, another recipient is, and after the window it is again.
    let queued = store
        .enqueue(
            vec![mail("a@example.org", 1_000), mail("b@example.org", 1_000)],
            60_000,
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(queued, 2);
    let queued = store
        .enqueue(
            vec![mail("a@example.org", 30_000), mail("c@example.org", 30_000)],
            60_000,
            30_000,
        )
        .await
        .unwrap();
    assert_eq!(queued, 1, "a@ was told 29 s ago");
    let queued = store
        .enqueue(vec![mail("a@example.org", 61_001)], 60_000, 61_001)
        .await
        .unwrap();
    assert_eq!(queued, 1, "the window has passed");
    assert_eq!(store.pending().await.unwrap(), 4);

    // Due oldest first; an attempt's outcome is kept.
    let due = store.due(30_000, 10).await.unwrap();
    assert_eq!(due.len(), 3);
    assert!(due.iter().all(|m| m.next_attempt_at_ms <= 30_000));
    let mut failed_once = due[0].clone();
    failed_once.attempts = 1;
    failed_once.next_attempt_at_ms = 90_000;
    failed_once.last_error = Some("connection refused".into());
    store.attempted(failed_once.clone()).await.unwrap();
    let mut sent = due[1].clone();
    sent.attempts = 1;
    sent.status = MailStatus::Sent;
    sent.sent_at_ms = Some(31_000);
    store.attempted(sent.clone()).await.unwrap();
    assert_eq!(
        store.due(60_000, 10).await.unwrap().len(),
        1,
        "one retried later, one sent"
    );
    assert_eq!(
        store.due(90_000, 10).await.unwrap().len(),
        3,
        "and the retry, and the one queued after the window"
    );
    assert_eq!(store.pending().await.unwrap(), 3);

    let all = store
        .mails(MailQuery {
            limit: 10,
            ..MailQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    assert!(
        all.windows(2)
            .all(|w| w[0].created_at_ms >= w[1].created_at_ms),
        "newest first"
    );
    let kept = all.iter().find(|m| m.id == failed_once.id).unwrap();
    assert_eq!(kept, &failed_once);
    let sent_only = store
        .mails(MailQuery {
            status: Some(MailStatus::Sent),
            limit: 10,
            ..MailQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(sent_only, vec![sent]);
    let page = store
        .mails(MailQuery {
            before: Some(all[1].id),
            limit: 10,
            ..MailQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page, all[2..].to_vec());
}

// ---- cluster leases (PostgreSQL) -----------------------------------------------------------

mod leases {
    use std::collections::HashMap;
    use std::sync::Arc;

    use gatehouse_actors::cluster::{Fence, LeaseStore};
    use gatehouse_actors::gate::{Cause, EventKind, GateState};
    use gatehouse_actors::ids::{ControllerId, NodeId};
    use gatehouse_actors::store::{EventStore, FleetStore, StoreError};
    use gatehouse_adapters::store::{Backend, Store};

    use super::{Ctx, event, run, sample_fleet, upserts};

    fn n(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn c(name: &str) -> ControllerId {
        ControllerId::new(name).unwrap()
    }

    async fn fleet(store: &Store) {
        store.apply(upserts(&sample_fleet())).await.unwrap();
    }

    /// Waits (bounded) until `controller`'s lease has expired by the database's clock.
    async fn expired(store: &Store, controller: &ControllerId) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let leases = store.leases().await.unwrap();
            let lease = leases.iter().find(|l| &l.controller == controller).unwrap();
            if lease.left_ms == 0 {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{lease:?}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    async fn one_holder_and_growing_epochs(ctx: Ctx) {
        let store = ctx.store;
        fleet(&store).await;
        let live = store.heartbeat(n("n1"), 5_000, false).await.unwrap();
        assert_eq!(live.len(), 1);
        let live = store.heartbeat(n("n2"), 5_000, true).await.unwrap();
        assert_eq!(
            live.iter()
                .map(|i| (i.node.as_str(), i.draining))
                .collect::<Vec<_>>(),
            [("n1", false), ("n2", true)]
        );

        let e1 = store
            .acquire(n("n1"), c("c1"), 5_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.acquire(n("n2"), c("c1"), 5_000).await.unwrap(), None);
        assert_eq!(
            store.acquire(n("n1"), c("c1"), 5_000).await.unwrap(),
            None,
            "held already"
        );
        // Only the holder, with its epoch, renews.
        assert!(
            store
                .renew(n("n2"), vec![(c("c1"), e1)], 5_000)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .renew(n("n1"), vec![(c("c1"), e1 + 1)], 5_000)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .renew(n("n1"), vec![(c("c1"), e1)], 5_000)
                .await
                .unwrap(),
            [c("c1")]
        );

        // Released: another node takes it at once, with a greater epoch.
        store.release(n("n2"), vec![c("c1")]).await.unwrap();
        assert_eq!(
            store.acquire(n("n2"), c("c1"), 5_000).await.unwrap(),
            None,
            "not n2's to release"
        );
        store.release(n("n1"), vec![c("c1")]).await.unwrap();
        let e2 = store
            .acquire(n("n2"), c("c1"), 5_000)
            .await
            .unwrap()
            .unwrap();
        assert!(e2 > e1, "{e2} > {e1}");
        assert!(
            store
                .renew(n("n1"), vec![(c("c1"), e1)], 5_000)
                .await
                .unwrap()
                .is_empty()
        );

        // Expired: never renewed, free to anyone, with a greater epoch again.
        let e3 = store.acquire(n("n1"), c("c2"), 1).await.unwrap().unwrap();
        assert!(e3 > e2);
        expired(&store, &c("c2")).await;
        assert!(
            store
                .renew(n("n1"), vec![(c("c2"), e3)], 5_000)
                .await
                .unwrap()
                .is_empty()
        );
        let e4 = store
            .acquire(n("n2"), c("c2"), 5_000)
            .await
            .unwrap()
            .unwrap();
        assert!(e4 > e3);
        let leases = store.leases().await.unwrap();
        let by: HashMap<&str, (&str, u64)> = leases
            .iter()
            .map(|l| (l.controller.as_str(), (l.node.as_str(), l.epoch)))
            .collect();
        assert_eq!(by["c1"], ("n2", e2));
        assert_eq!(by["c2"], ("n2", e4));

        let unknown = store.acquire(n("n1"), c("nowhere"), 5_000).await;
        assert!(
            matches!(&unknown, Err(StoreError::Rejected(m)) if m.contains("nowhere")),
            "{unknown:?}"
        );
    }

    async fn racing_nodes_never_both_win(ctx: Ctx) {
        let store = ctx.store;
        fleet(&store).await;
        for round in 0..10 {
            let start = Arc::new(tokio::sync::Barrier::new(4));
            let racers: Vec<_> = (0..4)
                .map(|i| {
                    let (store, start) = (store.clone(), start.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        let node = n(&format!("racer{i}"));
                        store
                            .acquire(node.clone(), c("c1"), 60_000)
                            .await
                            .unwrap()
                            .map(|e| (node, e))
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for racer in racers {
                winners.extend(racer.await.unwrap());
            }
            assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
            let (node, _) = &winners[0];
            store.release(node.clone(), vec![c("c1")]).await.unwrap();
        }
    }

    async fn writes_under_an_older_epoch_are_refused(ctx: Ctx) {
        let store = ctx.store;
        fleet(&store).await;
        let moved = |gate: &str, seq| {
            event(
                gate,
                seq,
                1_000 + seq,
                EventKind::StateChanged {
                    from: GateState::Closed,
                },
                Cause::System,
            )
        };
        let e1 = store
            .acquire(n("n1"), c("c1"), 60_000)
            .await
            .unwrap()
            .unwrap();
        let fence = |node: &str, epoch| Fence {
            node: n(node),
            held: HashMap::from([(c("c1"), epoch)]),
        };
        let refused = store
            .append_fenced(vec![moved("g1", 1)], Vec::new(), fence("n1", e1))
            .await
            .unwrap();
        assert!(refused.is_empty());

        // n1 is paused; its lease moves to n2; n1 wakes up and writes under its old epoch.
        store.release(n("n1"), vec![c("c1")]).await.unwrap();
        let e2 = store
            .acquire(n("n2"), c("c1"), 60_000)
            .await
            .unwrap()
            .unwrap();
        let refused = store
            .append_fenced(
                vec![moved("g1", 2), moved("g2", 1)],
                Vec::new(),
                fence("n1", e1),
            )
            .await
            .unwrap();
        assert_eq!(refused.controllers, [c("c1")]);
        assert!(refused.gates.is_empty());
        // Nor may n2 write with n1's epoch, nor n1 with n2's.
        assert_eq!(
            store
                .append_fenced(vec![moved("g1", 2)], Vec::new(), fence("n2", e1))
                .await
                .unwrap()
                .controllers,
            [c("c1")]
        );
        assert_eq!(
            store
                .append_fenced(vec![moved("g1", 2)], Vec::new(), fence("n1", e2))
                .await
                .unwrap()
                .controllers,
            [c("c1")]
        );
        // A controller the fence does not name at all is refused too.
        let mut stranger = moved("g3", 1);
        Arc::make_mut(&mut stranger).controller = c("c2");
        assert_eq!(
            store
                .append_fenced(vec![stranger], Vec::new(), fence("n2", e2))
                .await
                .unwrap()
                .controllers,
            [c("c2")]
        );
        let refused = store
            .append_fenced(vec![moved("g1", 2)], Vec::new(), fence("n2", e2))
            .await
            .unwrap();
        assert!(refused.is_empty());
        let g1 = store
            .since(gatehouse_actors::ids::GateId::new("g1").unwrap(), 0, 10)
            .await
            .unwrap();
        assert_eq!(g1.iter().map(|e| e.event.seq).collect::<Vec<_>>(), [1, 2]);
        let g2 = store
            .since(gatehouse_actors::ids::GateId::new("g2").unwrap(), 0, 10)
            .await
            .unwrap();
        assert!(g2.is_empty(), "nothing of the stale writer: {g2:?}");

        // g1 moves to c2 (a fleet change made on another node): c1's holder, which has not
        // applied the change yet, may no longer write for it, under a good lease; its other
        // gates' events are written. c2's holder continues g1's sequence.
        store
            .apply(vec![crate::FleetChange::UpsertGate(crate::gate(
                "g1", "c2", 2,
            ))])
            .await
            .unwrap();
        let refused = store
            .append_fenced(
                vec![moved("g1", 3), moved("g2", 1)],
                Vec::new(),
                fence("n2", e2),
            )
            .await
            .unwrap();
        assert!(refused.controllers.is_empty(), "{refused:?}");
        assert_eq!(
            refused.gates,
            [gatehouse_actors::ids::GateId::new("g1").unwrap()]
        );
        let e3 = store
            .acquire(n("n1"), c("c2"), 60_000)
            .await
            .unwrap()
            .unwrap();
        let mut on_c2 = moved("g1", 3);
        Arc::make_mut(&mut on_c2).controller = c("c2");
        let refused = store
            .append_fenced(
                vec![on_c2],
                Vec::new(),
                Fence {
                    node: n("n1"),
                    held: HashMap::from([(c("c2"), e3)]),
                },
            )
            .await
            .unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        let seqs = |gate: &str| {
            let store = store.clone();
            let gate = gatehouse_actors::ids::GateId::new(gate).unwrap();
            async move {
                store
                    .since(gate, 0, 10)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| (e.event.seq, e.event.controller.to_string()))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            seqs("g1").await,
            [(1, "c1".into()), (2, "c1".into()), (3, "c2".into())]
        );
        assert_eq!(seqs("g2").await, [(1, "c1".into())]);
    }

    async fn sqlite_has_no_cluster(ctx: Ctx) {
        let store = ctx.store;
        fleet(&store).await;
        for result in [
            store.heartbeat(n("n1"), 5_000, false).await.map(|_| ()),
            store.acquire(n("n1"), c("c1"), 5_000).await.map(|_| ()),
            store
                .append_fenced(
                    Vec::new(),
                    Vec::new(),
                    Fence {
                        node: n("n1"),
                        held: HashMap::new(),
                    },
                )
                .await
                .map(|_| ()),
        ] {
            assert!(
                matches!(&result, Err(StoreError::Rejected(m)) if m.contains("PostgreSQL")),
                "{result:?}"
            );
        }
    }

    macro_rules! on_postgres {
        ($($name:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    run(Backend::Postgres, super::$name).await;
                }
            )*
        };
    }

    mod postgres {
        use super::{Backend, run};
        on_postgres!(
            one_holder_and_growing_epochs,
            racing_nodes_never_both_win,
            writes_under_an_older_epoch_are_refused,
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite_refuses_leases_and_fenced_writes() {
        run(Backend::Sqlite, sqlite_has_no_cluster).await;
    }
}

async fn a_command_id_is_claimed_once_across_gates_and_racing_stores(ctx: Ctx) {
    use gatehouse_actors::store::{Claimed, CommandClaim, CommandIdStore};
    let store = ctx.store;
    let claim = |id: CommandId, gate: &str, action: Action, at_ms: u64| CommandClaim {
        id,
        gate: GateId::new(gate).unwrap(),
        action,
        at_ms,
    };
    let (first, second) = (CommandId::random(), CommandId::random());
    // One batch: a new id, the same id again (a retry), the id for another gate, another
    // action, and a second new id.
    let answers = store
        .claim_commands(vec![
            claim(first, "front", Action::Open, 1_000),
            claim(first, "front", Action::Open, 1_001),
            claim(first, "back", Action::Open, 1_002),
            claim(first, "front", Action::Close, 1_003),
            claim(second, "back", Action::Stop, 1_004),
        ])
        .await
        .unwrap();
    assert_eq!(
        answers,
        vec![
            Claimed::New,
            Claimed::Same,
            Claimed::Other {
                gate: GateId::new("front").unwrap(),
                action: Action::Open
            },
            Claimed::Other {
                gate: GateId::new("front").unwrap(),
                action: Action::Open
            },
            Claimed::New,
        ]
    );
    // Another connection to the same database (another node) sees what this one took.
    let other = Store::connect(&ctx.url).await.unwrap();
    assert_eq!(
        other
            .claim_commands(vec![claim(second, "back", Action::Stop, 2_000)])
            .await
            .unwrap(),
        vec![Claimed::Same]
    );
    // Two stores racing for one fresh id, each for its own gate: exactly one gets it, and the
    // other is told whose it is.
    for round in 0..20 {
        let id = CommandId::random();
        let (a, b) = tokio::join!(
            store.claim_commands(vec![claim(id, "front", Action::Open, 3_000 + round)]),
            other.claim_commands(vec![claim(id, "back", Action::Open, 3_000 + round)]),
        );
        let (a, b) = (a.unwrap().remove(0), b.unwrap().remove(0));
        match (&a, &b) {
            (Claimed::New, Claimed::Other { gate, .. }) => assert_eq!(gate.as_str(), "front"),
            (Claimed::Other { gate, .. }, Claimed::New) => assert_eq!(gate.as_str(), "back"),
            _ => panic!("round {round}: both or neither got the id: {a:?} / {b:?}"),
        }
    }
    // What a starting node remembers: the newest claims since a time, oldest first.
    let recent = store.recent_commands(1_000, 100).await.unwrap();
    assert_eq!(recent.len(), 22, "two ids, then twenty raced");
    assert_eq!(
        (recent[0].id, recent[0].gate.as_str(), recent[0].action),
        (first, "front", Action::Open)
    );
    assert_eq!(recent[1].id, second);
    let newest = store.recent_commands(0, 3).await.unwrap();
    assert_eq!(
        newest.iter().map(|c| c.at_ms).collect::<Vec<_>>(),
        vec![3_017, 3_018, 3_019],
        "the newest, oldest first"
    );
    assert!(store.recent_commands(3_020, 10).await.unwrap().is_empty());
    // Forgetting goes by claim time: the first two ids (claimed at 1_000 and 1_004) go, the
    // raced ones (3_000 and later) stay.
    assert_eq!(store.forget_commands(3_000).await.unwrap(), 2);
    assert_eq!(
        store
            .claim_commands(vec![claim(first, "back", Action::Close, 4_000)])
            .await
            .unwrap(),
        vec![Claimed::New],
        "a forgotten id is free again"
    );
    other.close();
}
