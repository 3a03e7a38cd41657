//! The access half of the SQL store (users, refresh tokens, API keys, grants, audit) against
//! real databases. Every case runs on SQLite, in a temporary directory, and on PostgreSQL, in
//! a database created for it and dropped afterwards. The server is
//! `postgres://postgres@127.0.0.1:5432/` unless `GATEHOUSE_TEST_PG_URL` names another; an
//! unreachable server fails the tests, since a skipped backend would pass unnoticed.

use std::future::Future;
use std::sync::Arc;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use gatehouse_actors::access::{
    AccessStore, AccountLink, ApiKeyRecord, AuditRecord, Grant, GrantScope, LinkPurpose,
    RefreshUse, Role, UserId, UserRecord, WeeklyWindow,
};
use gatehouse_actors::ids::{ControllerId, GateId, SiteId};
use gatehouse_actors::store::{
    ControllerRecord, FleetChange, FleetStore, GateRecord, SiteRecord, StoreError,
};
use gatehouse_adapters::store::{Backend, Store};
use uuid::Uuid;

// ---- databases ------------------------------------------------------------------------------

/// The server's URL, pointing at the database named `db`.
fn pg_url(db: &str) -> String {
    let base = std::env::var("GATEHOUSE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/".to_owned());
    let (scheme, rest) = base
        .split_once("://")
        .expect("GATEHOUSE_TEST_PG_URL: scheme://...");
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let params = rest[host_end..].split_once('?').map(|(_, q)| q);
    match params {
        Some(q) => format!("{scheme}://{}/{db}?{q}", &rest[..host_end]),
        None => format!("{scheme}://{}/{db}", &rest[..host_end]),
    }
}

/// A session on the server's maintenance database, for creating and dropping test ones.
async fn maintenance() -> AsyncPgConnection {
    let url = pg_url("postgres");
    AsyncPgConnection::establish(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {url} ({e}); start it (pg_ctlcluster 15 main start) or \
             set GATEHOUSE_TEST_PG_URL"
            )
        })
}

/// A migrated store and what to remove once the test is over.
struct Fixture {
    store: Store,
    pg_database: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

async fn fixture(backend: Backend) -> Fixture {
    let (url, pg_database, dir) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let url = format!("sqlite://{}", dir.path().join("access.db").display());
            (url, None, Some(dir))
        }
        Backend::Postgres => {
            let db = format!("gh_access_{}", Uuid::new_v4().simple());
            maintenance()
                .await
                .batch_execute(&format!("CREATE DATABASE {db}"))
                .await
                .expect("CREATE DATABASE");
            (pg_url(&db), Some(db), None)
        }
    };
    let store = Store::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    Fixture {
        store,
        pg_database,
        _dir: dir,
    }
}

/// Runs `test` on a fresh store of `backend`. The test runs in a task of its own so that a
/// failing assertion still lets the database be dropped before the panic is passed on.
async fn on<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let fixture = fixture(backend).await;
    let result = tokio::spawn(test(fixture.store.clone())).await;
    fixture.store.close();
    if let Some(db) = &fixture.pg_database {
        maintenance()
            .await
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await
            .expect("DROP DATABASE");
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Each `async fn(Store)` named becomes a module with a `sqlite` and a `postgres` test.
macro_rules! each_backend {
    ($($test:ident),+ $(,)?) => {
        $(mod $test {
            use gatehouse_adapters::store::Backend;

            // Migrating goes through `block_in_place`: multi-thread runtime.
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::on(Backend::Sqlite, super::$test).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::on(Backend::Postgres, super::$test).await;
            }
        })+
    };
}

each_backend!(
    users_crud_and_duplicate_name,
    refresh_rotates_and_reuse_revokes_the_family,
    concurrent_uses_of_one_token_rotate_once,
    revoking_a_users_families,
    account_links_work_once_until_they_expire_or_are_replaced,
    concurrent_uses_of_one_link_set_one_password,
    api_key_lifecycle,
    grants_round_trip_and_die_with_their_user,
    grants_to_unknown_things_are_rejected,
    audit_reads_back_in_id_order,
);

// ---- fixtures -------------------------------------------------------------------------------

fn person(username: &str, role: Role) -> UserRecord {
    UserRecord {
        id: UserId(Uuid::new_v4()),
        username: username.to_owned(),
        password_hash: format!("$argon2id$v=19$m=8,t=1,p=1${username}"),
        role,
        created_at_ms: 1_700_000_000_000,
        disabled: false,
        email: None,
    }
}

async fn add_person(store: &Store, username: &str, role: Role) -> UserRecord {
    let user = person(username, role);
    store.create_user(user.clone()).await.unwrap();
    user
}

/// Site `hq` with controller `c1` and gate `service` on it.
async fn add_fleet(store: &Store) {
    store
        .apply(vec![
            FleetChange::UpsertSite(SiteRecord {
                id: SiteId::new("hq").unwrap(),
                name: "Headquarters".into(),
                timezone: "Europe/Berlin".into(),
            }),
            FleetChange::UpsertController(ControllerRecord {
                id: ControllerId::new("c1").unwrap(),
                site: SiteId::new("hq").unwrap(),
                profile: "came-zbx".into(),
                transport: gatehouse_actors::store::Transport::Tcp,
                endpoint: "127.0.0.1:5020".into(),
                serial: Default::default(),
                request_timeout_ms: None,
                inter_frame_delay_ms: None,
                poll_interval_ms: None,
                timeouts_before_down: None,
            }),
            FleetChange::UpsertGate(GateRecord {
                id: GateId::new("service").unwrap(),
                controller: ControllerId::new("c1").unwrap(),
                unit: 3,
                name: "Service entrance".into(),
                travel_timeout_s: 30,
                auto_close_after_s: None,
                left_open_alert_after_s: None,
            }),
        ])
        .await
        .unwrap();
}

fn assert_rejected<T: std::fmt::Debug>(result: Result<T, StoreError>, needle: &str) {
    match result {
        Err(StoreError::Rejected(message)) if message.contains(needle) => {}
        other => panic!("wanted a rejection mentioning {needle:?}, got {other:?}"),
    }
}

// ---- users ----------------------------------------------------------------------------------

async fn users_crud_and_duplicate_name(store: Store) {
    assert!(store.users().await.unwrap().is_empty());
    // Created out of name order: the list comes back sorted by username.
    let mut zoe = add_person(&store, "zoe", Role::Resident).await;
    let adam = add_person(&store, "adam", Role::Admin).await;

    assert_eq!(
        store.users().await.unwrap(),
        vec![adam.clone(), zoe.clone()]
    );
    assert_eq!(
        store.user_by_name("zoe".into()).await.unwrap(),
        Some(zoe.clone())
    );
    assert_eq!(store.user(adam.id).await.unwrap(), Some(adam.clone()));
    assert_eq!(store.user_by_name("nobody".into()).await.unwrap(), None);
    assert_eq!(store.user(UserId(Uuid::new_v4())).await.unwrap(), None);

    assert_rejected(
        store.create_user(person("zoe", Role::Viewer)).await,
        "taken",
    );

    zoe.role = Role::Operator;
    zoe.password_hash = "$argon2id$changed".into();
    zoe.disabled = true;
    store.update_user(zoe.clone()).await.unwrap();
    assert_eq!(store.user(zoe.id).await.unwrap(), Some(zoe.clone()));
    assert_rejected(
        store.update_user(person("ghost", Role::Viewer)).await,
        "no user",
    );

    assert!(store.delete_user(zoe.id).await.unwrap());
    assert!(!store.delete_user(zoe.id).await.unwrap(), "gone already");
    assert_eq!(store.user(zoe.id).await.unwrap(), None);
    assert_eq!(store.users().await.unwrap(), vec![adam]);
}

// ---- refresh tokens -------------------------------------------------------------------------

async fn refresh_rotates_and_reuse_revokes_the_family(store: Store) {
    let user = add_person(&store, "rita", Role::Operator).await.id;
    let family = store.start_family(user, "t1".into(), 1_000).await.unwrap();
    // Another session of the same user, which reuse in the first must leave alone.
    let other = store.start_family(user, "o1".into(), 1_000).await.unwrap();
    assert_ne!(family, other);

    let rotated = RefreshUse::Rotated { family, user };
    assert_eq!(
        store.use_refresh("t1".into(), 2_000).await.unwrap(),
        rotated
    );
    store.add_refresh(family, "t2".into(), 2_000).await.unwrap();
    assert_eq!(
        store.use_refresh("t2".into(), 3_000).await.unwrap(),
        rotated
    );
    store.add_refresh(family, "t3".into(), 3_000).await.unwrap();

    // A stolen t1 comes back: the family dies, the newest token with it.
    assert_eq!(
        store.use_refresh("t1".into(), 4_000).await.unwrap(),
        RefreshUse::Reused { family, user }
    );
    assert_eq!(
        store.use_refresh("t3".into(), 5_000).await.unwrap(),
        RefreshUse::Invalid
    );
    assert_eq!(
        store.use_refresh("t1".into(), 5_000).await.unwrap(),
        RefreshUse::Invalid,
        "once revoked, even the replayed token is merely invalid"
    );
    assert_rejected(
        store.add_refresh(family, "t4".into(), 5_000).await,
        "revoked",
    );

    assert_eq!(
        store
            .use_refresh("never-issued".into(), 5_000)
            .await
            .unwrap(),
        RefreshUse::Invalid
    );
    assert_rejected(
        store.add_refresh(Uuid::new_v4(), "x".into(), 5_000).await,
        "no refresh-token family",
    );
    assert_eq!(
        store.use_refresh("o1".into(), 6_000).await.unwrap(),
        RefreshUse::Rotated {
            family: other,
            user
        }
    );
    assert_rejected(
        store
            .start_family(UserId(Uuid::new_v4()), "z".into(), 1)
            .await,
        "no user",
    );
}

async fn concurrent_uses_of_one_token_rotate_once(store: Store) {
    let user = add_person(&store, "carl", Role::Resident).await.id;
    // Several rounds, each racing two presentations of a fresh token released together.
    for round in 0..8 {
        let hash = format!("race-{round}");
        let family = store.start_family(user, hash.clone(), 1).await.unwrap();
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (store, hash, start) = (store.clone(), hash.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    store.use_refresh(hash, 2).await.unwrap()
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for racer in racers {
            outcomes.push(racer.await.unwrap());
        }
        let rotated = RefreshUse::Rotated { family, user };
        let reused = RefreshUse::Reused { family, user };
        assert!(
            outcomes == [rotated.clone(), reused.clone()] || outcomes == [reused, rotated],
            "round {round}: {outcomes:?}"
        );
    }
}

async fn revoking_a_users_families(store: Store) {
    let ann = add_person(&store, "ann", Role::Viewer).await.id;
    let ben = add_person(&store, "ben", Role::Viewer).await.id;
    let a1 = store.start_family(ann, "a1".into(), 1).await.unwrap();
    store.start_family(ann, "a2".into(), 1).await.unwrap();
    let b1 = store.start_family(ben, "b1".into(), 1).await.unwrap();
    store.start_family(ben, "b2".into(), 1).await.unwrap();

    store.revoke_user_families(ann, 10).await.unwrap();
    for hash in ["a1", "a2"] {
        assert_eq!(
            store.use_refresh(hash.into(), 11).await.unwrap(),
            RefreshUse::Invalid,
            "{hash}"
        );
    }
    // A family started after the revocation is live.
    let a3 = store.start_family(ann, "a3".into(), 12).await.unwrap();
    assert_eq!(
        store.use_refresh("a3".into(), 13).await.unwrap(),
        RefreshUse::Rotated {
            family: a3,
            user: ann
        }
    );
    // Revoking twice is harmless.
    store.revoke_family(a1, 14).await.unwrap();

    store.revoke_family(b1, 15).await.unwrap();
    assert_eq!(
        store.use_refresh("b1".into(), 16).await.unwrap(),
        RefreshUse::Invalid
    );
    assert!(matches!(
        store.use_refresh("b2".into(), 16).await.unwrap(),
        RefreshUse::Rotated { user, .. } if user == ben
    ));
}

// ---- account links --------------------------------------------------------------------------

fn link(user: UserId, purpose: LinkPurpose, digest: &str, at_ms: u64) -> AccountLink {
    AccountLink {
        id: Uuid::new_v4(),
        user,
        purpose,
        digest: digest.into(),
        created_at_ms: at_ms,
        expires_at_ms: at_ms + 1000,
        used_at_ms: None,
    }
}

async fn account_links_work_once_until_they_expire_or_are_replaced(store: Store) {
    let dora = add_person(&store, "dora", Role::Resident).await;
    let family = store
        .start_family(dora.id, "d-session".into(), 1)
        .await
        .unwrap();

    // Read back as written, with its user.
    let first = link(dora.id, LinkPurpose::PasswordReset, "reset-1", 100);
    store.issue_link(first.clone()).await.unwrap();
    let (read, user) = store.link("reset-1".into()).await.unwrap().unwrap();
    assert_eq!((read, user.username.as_str()), (first.clone(), "dora"));
    assert!(store.link("nothing".into()).await.unwrap().is_none());

    // A newer reset link replaces it; an invitation of the same user does not.
    let invite = link(dora.id, LinkPurpose::Invitation, "invite-1", 150);
    store.issue_link(invite).await.unwrap();
    store
        .issue_link(link(dora.id, LinkPurpose::PasswordReset, "reset-2", 200))
        .await
        .unwrap();
    let (replaced, _) = store.link("reset-1".into()).await.unwrap().unwrap();
    assert_eq!(replaced.used_at_ms, Some(200));
    assert!(!replaced.usable(201));
    let (kept, _) = store.link("invite-1".into()).await.unwrap().unwrap();
    assert!(kept.usable(201), "{kept:?}");
    assert_eq!(
        store
            .redeem_link("reset-1".into(), "$argon2id$old".into(), 210)
            .await
            .unwrap(),
        None,
        "a replaced link"
    );

    // Past its expiry (created 200, good for 1000 ms): refused, and nothing changes.
    assert_eq!(
        store
            .redeem_link("reset-2".into(), "$argon2id$late".into(), 1200)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.user(dora.id).await.unwrap().unwrap().password_hash,
        dora.password_hash
    );
    assert!(matches!(
        store.use_refresh("d-session".into(), 1201).await.unwrap(),
        RefreshUse::Rotated { .. }
    ));
    store
        .add_refresh(family, "d-session-2".into(), 1201)
        .await
        .unwrap();

    // In time: the password is set, the sessions end, and the link is spent.
    let redeemed = store
        .redeem_link("invite-1".into(), "$argon2id$new".into(), 1100)
        .await
        .unwrap()
        .expect("a usable link");
    assert_eq!(redeemed.password_hash, "$argon2id$new");
    assert_eq!(
        store.user(dora.id).await.unwrap().unwrap().password_hash,
        "$argon2id$new"
    );
    assert_eq!(
        store.use_refresh("d-session-2".into(), 1101).await.unwrap(),
        RefreshUse::Invalid,
        "sessions of the old password"
    );
    assert_eq!(
        store
            .redeem_link("invite-1".into(), "$argon2id$again".into(), 1102)
            .await
            .unwrap(),
        None,
        "used once"
    );

    // A disabled user's link does nothing; a deleted user's link is gone with the user.
    store
        .issue_link(link(dora.id, LinkPurpose::PasswordReset, "reset-3", 2000))
        .await
        .unwrap();
    let mut off = store.user(dora.id).await.unwrap().unwrap();
    off.disabled = true;
    store.update_user(off).await.unwrap();
    assert_eq!(
        store
            .redeem_link("reset-3".into(), "$argon2id$x".into(), 2001)
            .await
            .unwrap(),
        None
    );
    assert!(store.delete_user(dora.id).await.unwrap());
    assert!(store.link("reset-3".into()).await.unwrap().is_none());
    assert_rejected(
        store
            .issue_link(link(dora.id, LinkPurpose::Invitation, "orphan", 3000))
            .await,
        "unknown user",
    );
}

async fn concurrent_uses_of_one_link_set_one_password(store: Store) {
    let eve = add_person(&store, "eve", Role::Viewer).await.id;
    for round in 0..8 {
        let digest = format!("link-{round}");
        store
            .issue_link(link(eve, LinkPurpose::PasswordReset, &digest, 10 * round))
            .await
            .unwrap();
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|racer| {
                let (store, digest, start) = (store.clone(), digest.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    store
                        .redeem_link(digest, format!("$argon2id${round}-{racer}"), 10 * round + 1)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut winners = Vec::new();
        for racer in racers {
            winners.extend(racer.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(
            store.user(eve).await.unwrap().unwrap().password_hash,
            winners[0].password_hash,
            "round {round}"
        );
    }
}

// ---- API keys -------------------------------------------------------------------------------

fn api_key(name: &str, site: Option<&str>, created_at_ms: u64) -> ApiKeyRecord {
    ApiKeyRecord {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        hash: format!("sha256:{name}"),
        role: Role::Operator,
        site: site.map(|s| SiteId::new(s).unwrap()),
        created_at_ms,
        revoked_at_ms: None,
    }
}

async fn api_key_lifecycle(store: Store) {
    add_fleet(&store).await;
    let scoped = api_key("dashboard", Some("hq"), 100);
    let global = api_key("backup", None, 200);
    store.create_api_key(scoped.clone()).await.unwrap();
    store.create_api_key(global.clone()).await.unwrap();
    assert_rejected(
        store
            .create_api_key(api_key("lost", Some("nowhere"), 300))
            .await,
        "unknown site nowhere",
    );
    let mut same_hash = api_key("copy", None, 300);
    same_hash.hash = scoped.hash.clone();
    assert!(matches!(
        store.create_api_key(same_hash).await,
        Err(StoreError::Rejected(_))
    ));

    assert_eq!(
        store.api_keys().await.unwrap(),
        vec![scoped.clone(), global.clone()]
    );
    assert_eq!(
        store.api_key_by_hash(scoped.hash.clone()).await.unwrap(),
        Some(scoped.clone())
    );
    assert_eq!(
        store
            .api_key_by_hash("sha256:unknown".into())
            .await
            .unwrap(),
        None
    );

    assert!(store.revoke_api_key(scoped.id, 5_000).await.unwrap());
    assert!(
        !store.revoke_api_key(scoped.id, 6_000).await.unwrap(),
        "revoked already"
    );
    assert!(!store.revoke_api_key(Uuid::new_v4(), 6_000).await.unwrap());
    // Still found, so that the caller can tell "revoked" from "unknown"; the first
    // revocation's time is kept.
    let revoked = ApiKeyRecord {
        revoked_at_ms: Some(5_000),
        ..scoped
    };
    assert_eq!(
        store.api_key_by_hash(revoked.hash.clone()).await.unwrap(),
        Some(revoked.clone())
    );
    assert_eq!(store.api_keys().await.unwrap(), vec![revoked, global]);
}

// ---- grants ---------------------------------------------------------------------------------

async fn grants_round_trip_and_die_with_their_user(store: Store) {
    add_fleet(&store).await;
    let cleaner = add_person(&store, "cleaner", Role::Resident).await.id;
    let mornings_and_friday_night = vec![
        WeeklyWindow {
            days: 0b001_1111,
            start: 6 * 60,
            end: 9 * 60,
        },
        WeeklyWindow {
            days: 1 << 4,
            start: 22 * 60,
            end: 2 * 60,
        },
    ];
    let gate_grant = Grant {
        id: Uuid::new_v4(),
        user: cleaner,
        scope: GrantScope::Gate(GateId::new("service").unwrap()),
        windows: mornings_and_friday_night,
    };
    let site_grant = Grant {
        id: Uuid::new_v4(),
        user: cleaner,
        scope: GrantScope::Site(SiteId::new("hq").unwrap()),
        windows: Vec::new(),
    };
    store.create_grant(gate_grant.clone(), 10).await.unwrap();
    store.create_grant(site_grant.clone(), 20).await.unwrap();
    assert_eq!(
        store.grants_of(cleaner).await.unwrap(),
        vec![gate_grant.clone(), site_grant.clone()]
    );
    assert!(
        store
            .grants_of(UserId(Uuid::new_v4()))
            .await
            .unwrap()
            .is_empty()
    );

    assert!(store.delete_grant(site_grant.id).await.unwrap());
    assert!(!store.delete_grant(site_grant.id).await.unwrap());
    assert_eq!(store.grants_of(cleaner).await.unwrap(), vec![gate_grant]);

    // Deleting the user takes the remaining grant and the sessions along.
    store.start_family(cleaner, "s1".into(), 30).await.unwrap();
    assert!(store.delete_user(cleaner).await.unwrap());
    assert!(store.grants_of(cleaner).await.unwrap().is_empty());
    assert_eq!(
        store.use_refresh("s1".into(), 40).await.unwrap(),
        RefreshUse::Invalid
    );
}

async fn grants_to_unknown_things_are_rejected(store: Store) {
    add_fleet(&store).await;
    let user = add_person(&store, "visitor", Role::Resident).await.id;
    let grant = |scope: GrantScope| Grant {
        id: Uuid::new_v4(),
        user,
        scope,
        windows: Vec::new(),
    };
    assert_rejected(
        store
            .create_grant(grant(GrantScope::Gate(GateId::new("moat").unwrap())), 1)
            .await,
        "unknown gate moat",
    );
    assert_rejected(
        store
            .create_grant(grant(GrantScope::Site(SiteId::new("mars").unwrap())), 1)
            .await,
        "unknown site mars",
    );
    let mut orphan = grant(GrantScope::Site(SiteId::new("hq").unwrap()));
    orphan.user = UserId(Uuid::new_v4());
    assert_rejected(store.create_grant(orphan, 1).await, "unknown user");
    let mut nonsense = grant(GrantScope::Site(SiteId::new("hq").unwrap()));
    nonsense.windows = vec![WeeklyWindow {
        days: 0,
        start: 0,
        end: 60,
    }];
    assert_rejected(store.create_grant(nonsense, 1).await, "window");
    assert!(store.grants_of(user).await.unwrap().is_empty());
}

// ---- audit ----------------------------------------------------------------------------------

async fn audit_reads_back_in_id_order(store: Store) {
    assert!(store.audit_after(0, 10).await.unwrap().is_empty());
    let records: Vec<AuditRecord> = (0..5u64)
        .map(|i| AuditRecord {
            // Timestamps out of order: the log's order is the order of appending.
            at_ms: 10_000 - i,
            actor: if i == 0 {
                "system".into()
            } else {
                format!("user:{}", Uuid::new_v4())
            },
            action: format!("action.{i}"),
            target: (i % 2 == 0).then(|| format!("gate:g{i}")),
            source_ip: (i % 2 == 1).then(|| "192.0.2.7".to_owned()),
            details: format!("{{\"n\":{i}}}"),
        })
        .collect();
    for record in &records {
        store.audit(record.clone()).await.unwrap();
    }

    let all = store.audit_after(0, 100).await.unwrap();
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    let read: Vec<AuditRecord> = all.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(read, records);

    let page = store.audit_after(all[1].0, 2).await.unwrap();
    assert_eq!(page, all[2..4].to_vec());
    assert!(store.audit_after(all[4].0, 10).await.unwrap().is_empty());
}
