//! A whole Gatehouse in one process for end-to-end tests and benchmarks: a SQLite store in a
//! temporary directory, users in it, a runtime booted from a fleet file over real Modbus TCP
//! (simulated controllers, in this process or another), and the real route table served on
//! an ephemeral loopback port, WebSocket sessions included.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gatehouse_actors::access::{AccessStore, Role, UserId, UserRecord};
use gatehouse_actors::gate::GateState;
use gatehouse_actors::ids::GateId;
use gatehouse_actors::store::EventStore;
use gatehouse_actors::tree::bus::LocalBus;
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_adapters::store::Store;
use gatehouse_api::app::App;
use gatehouse_api::auth::password::Passwords;
use gatehouse_api::auth::tokens::TokenKeys;
use gatehouse_api::changes::AccessChanges;
use gatehouse_api::ws::{Sessions, WsConfig};
use gatehouse_api::{ApiConfig, ApiState, Check, Readiness};
use gatehouse_runtime::Runtime;
use gatehouse_runtime::fleet_file::FleetFile;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The password every stack user gets: `<name>-correct-horse-battery`.
pub fn password_of(user: &str) -> String {
    format!("{user}-correct-horse-battery")
}

pub use gatehouse_actors::clock::wall_ms as now_ms;

/// What to build.
pub struct StackSpec {
    /// The fleet file's text (controllers' endpoints already filled in).
    pub fleet: String,
    pub users: Vec<(&'static str, Role)>,
    pub ws: WsConfig,
    /// Wait for every gate to come up closed before answering.
    pub wait_closed: bool,
    /// How far a bus subscriber may fall behind (default: the runtime's); a tiny bus makes
    /// the session hub lose events, to test that sessions recover them.
    pub bus_capacity: Option<usize>,
    /// Time between the scheduler's maintenance rounds.
    pub maintenance_check: std::time::Duration,
    /// Notifications (none: no notifier).
    pub notify: Option<gatehouse_runtime::boot::NotifySetup>,
    /// Where files go (none: a directory in the stack's temporary one).
    pub blobs: Option<Arc<dyn gatehouse_actors::blob::BlobStore>>,
    /// Queue each site's previous month.
    pub monthly_reports: bool,
}

/// The scheduler's round in test stacks: short, so that due events come quickly.
pub const TEST_MAINTENANCE_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

pub struct Stack {
    pub runtime: Runtime,
    pub store: Arc<Store>,
    pub app: App,
    pub keys: Arc<TokenKeys>,
    pub users: HashMap<&'static str, (UserId, Role)>,
    pub addr: SocketAddr,
    /// (method, path) of every route served.
    pub routes: Vec<(String, String)>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
    /// The PostgreSQL database of a stack on PostgreSQL, dropped with it.
    _db: Option<crate::ScratchDatabase>,
}

/// Set to `postgres` to run every stack on a scratch PostgreSQL database (on
/// `GATEHOUSE_TEST_PG_URL`, see [`crate::pg_server`]) instead of SQLite: `.ci/run` runs the
/// REST and WebSocket suites both ways.
pub const STACK_DB_VAR: &str = "GATEHOUSE_TEST_STACK_DB";

impl Stack {
    pub async fn start(spec: StackSpec) -> anyhow::Result<Stack> {
        let profiles = ProfileSet::builtin()?;
        let fleet = FleetFile::parse("stack fleet", &spec.fleet, &profiles)?;
        let dir = tempfile::tempdir()?;
        let (url, db) = match std::env::var(STACK_DB_VAR).as_deref() {
            Ok("postgres") => {
                let db = crate::ScratchDatabase::create(&crate::pg_server(), "stack")?;
                (db.url(), Some(db))
            }
            Ok("sqlite") | Err(_) => (
                format!("sqlite://{}/gatehouse.db", dir.path().display()),
                None,
            ),
            Ok(other) => anyhow::bail!("{STACK_DB_VAR}={other}: use sqlite or postgres"),
        };
        let store = Arc::new(Store::connect(&url).await?);
        store.migrate().await?;

        let passwords = Passwords::cheap_for_tests()?;
        let mut users = HashMap::new();
        for (name, role) in spec.users {
            let id = UserId(uuid::Uuid::new_v4());
            store
                .create_user(UserRecord {
                    id,
                    username: name.to_string(),
                    password_hash: passwords.hash(&password_of(name)).await?,
                    role,
                    created_at_ms: now_ms(),
                    disabled: false,
                    email: Some(format!("{name}@stack.test")),
                })
                .await?;
            users.insert(name, (id, role));
        }
        let bus = spec
            .bus_capacity
            .map_or_else(LocalBus::default, LocalBus::with_capacity);
        let changes = AccessChanges::default();
        let (sessions, tree) = Sessions::new(bus.clone(), &changes, spec.ws);
        let runtime = Runtime::boot_tree(
            store.clone(),
            profiles,
            Some(&fleet),
            bus,
            Some(tree),
            gatehouse_runtime::boot::TreeOptions {
                maintenance_check: spec.maintenance_check,
                notify: spec.notify.clone(),
                blobs: Some(match &spec.blobs {
                    Some(b) => b.clone(),
                    None => Arc::new(gatehouse_adapters::blob::local::LocalBlobs::new(
                        &dir.path().join("blobs"),
                    )?),
                }),
                monthly_reports: spec.monthly_reports,
                ..Default::default()
            },
        )
        .await?;
        if spec.wait_closed {
            for gate in &fleet.gates {
                wait_closed(&runtime, &gate.id).await?;
            }
        }

        let keys = Arc::new(TokenKeys::ephemeral()?);
        let access: Arc<dyn AccessStore> = store.clone();
        let events: Arc<dyn EventStore> = store.clone();
        let app = App {
            fleet: runtime.fleet.clone(),
            access,
            events,
            maintenance: store.clone(),
            notify: store.clone(),
            alerts: runtime.alerts.clone(),
            reports: store.clone(),
            blobs: runtime.blobs.clone(),
            scheduler: runtime.scheduler.clone(),
            max_attachment: 4 * 1024 * 1024,
            public_url: spec.notify.as_ref().and_then(|n| n.public_url.clone()),
            keys: keys.clone(),
            passwords,
            changes,
            sessions,
            // As the product: command ids claimed in the store.
            limits: Arc::new(gatehouse_api::ratelimit::RateLimits::default().claiming_in(
                gatehouse_api::command_ids::CommandIds::start(
                    store.clone(),
                    gatehouse_api::command_ids::Claiming::Record,
                ),
            )),
            root: Some(runtime.root().clone()),
        };
        app.limits.load_recent_ids().await?;
        let readiness: Arc<dyn Readiness> = Arc::new(Vec::<Check>::new);
        let state = ApiState {
            readiness,
            app: Some(app.clone()),
            metrics: None,
            console: Default::default(),
        };
        let table = gatehouse_api::route_table(&state)?;
        let routes = table
            .entries()
            .into_iter()
            .map(|(method, path)| (method.as_str().to_string(), path))
            .collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ApiConfig {
            large_bodies: vec![(
                gatehouse_api::v1::maintenance::ATTACHMENTS_TEMPLATE.to_owned(),
                gatehouse_api::v1::maintenance::upload_cap(4 * 1024 * 1024),
            )],
            listen: ([127, 0, 0, 1], 0).into(),
            ..ApiConfig::default()
        };
        let sessions = app.sessions.clone();
        let (addr, server) = gatehouse_api::serve(config, table, async move {
            let _ = stopped.await;
            sessions.shutdown(Duration::from_secs(2)).await;
        })
        .await?;
        Ok(Stack {
            runtime,
            store,
            app,
            keys,
            users,
            addr,
            routes,
            stop: Some(stop),
            server: Some(server),
            _dir: dir,
            _db: db,
        })
    }

    /// An access token for `user`, minted directly (no Argon2 round).
    pub fn token(&self, user: &str) -> String {
        self.token_at(user, now_ms() / 1000)
    }

    /// A token for `user` issued at `issued_at` (seconds since the epoch): one from the past
    /// is expired or about to expire.
    pub fn token_at(&self, user: &str, issued_at: u64) -> String {
        let (id, role) = self.users[user];
        let (token, _) = self
            .keys
            .issue(&id.to_string(), role, issued_at)
            .expect("a token");
        token
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/v1/ws", self.addr)
    }

    /// Stops the server (sessions get 4500), then the runtime.
    pub async fn shutdown(self) {
        let _ = self.try_shutdown(Duration::from_secs(30)).await;
    }

    /// [`Stack::shutdown`], saying whether the server stopped within `bound` and its task
    /// ended cleanly (the runtime is shut down either way).
    pub async fn try_shutdown(mut self, bound: Duration) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let server = match self.server.take() {
            Some(server) => match tokio::time::timeout(bound, server).await {
                Ok(ended) => ended.context("the server task ends cleanly"),
                Err(_) => Err(anyhow::anyhow!("the server did not stop within {bound:?}")),
            },
            None => Ok(()),
        };
        self.runtime.shutdown(Duration::from_secs(10)).await;
        server
    }
}

/// A fleet file's text, a record at a time.
#[derive(Default)]
pub struct FleetText(String);

impl FleetText {
    pub fn site(mut self, id: &str, name: &str, timezone: &str) -> Self {
        self.0.push_str(&format!(
            "\n[[site]]\nid = \"{id}\"\nname = \"{name}\"\ntimezone = \"{timezone}\"\n"
        ));
        self
    }

    /// A controller polled every 200 ms.
    pub fn controller(mut self, id: &str, site: &str, profile: &str, endpoint: SocketAddr) -> Self {
        self.0.push_str(&format!(
            "\n[[controller]]\nid = \"{id}\"\nsite = \"{site}\"\nprofile = \"{profile}\"\n\
             endpoint = \"{endpoint}\"\npoll_interval_ms = 200\n"
        ));
        self
    }

    pub fn gate(mut self, id: &str, name: &str, controller: &str, unit: u8) -> Self {
        self.0.push_str(&format!(
            "\n[[gate]]\nid = \"{id}\"\nname = \"{name}\"\ncontroller = \"{controller}\"\nunit = {unit}\n"
        ));
        self
    }

    pub fn text(self) -> String {
        self.0
    }
}

/// Waits (bounded) until `gate` reads closed.
pub async fn wait_closed(runtime: &Runtime, gate: &GateId) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(view) = runtime.fleet.view(gate).await
            && view.snapshot.state == GateState::Closed
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(anyhow::anyhow!("{gate} never came up closed")).context("booting");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
