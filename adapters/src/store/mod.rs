//! The SQL store: the `FleetStore`, `EventStore` and `AccessStore` ports on SQLite (bundled, the embedded
//! default) and PostgreSQL (pure-Rust tokio-postgres, no libpq, no TLS), with one query
//! codebase. diesel-async has no async multi-backend connection, so a [`Store`] holds a pool
//! of either kind and each query body is written once inside a dispatch macro that expands
//! it for both connection types. The one exception is the event append, written per backend
//! for speed (see `events::append`). Migrations are embedded per backend and applied by
//! [`Store::migrate`].

use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use diesel::SqliteConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, SimpleAsyncConnection,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use gatehouse_actors::ports::BoxFuture;
use gatehouse_actors::store::{
    EventStore, FinishedCommand, FleetChange, FleetRecords, FleetStore, GateHead, Refused,
    StoreError, StoredEvent,
};

use gatehouse_actors::access::AuditRecord;
use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::ids::{ControllerId, GateId};

use self::error::Error;

/// The async face of a SQLite connection: diesel's synchronous connection run on tokio's
/// blocking pool.
type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// Runs `$body` with `$c` bound to the concrete connection inside `$conn` (a `&mut Conn`).
/// The body is expanded once per backend, so it is type-checked against both: this is how
/// one query codebase serves two connection types without a common trait object.
macro_rules! with_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::Conn::Sqlite(object) => {
                let $c: &mut $crate::store::SqliteConn = &mut *object;
                $body
            }
            $crate::store::Conn::Postgres(object) => {
                let $c: &mut diesel_async::AsyncPgConnection = &mut *object;
                $body
            }
        }
    };
}

/// Like [`with_conn!`], inside a write transaction. On SQLite the transaction is `BEGIN
/// IMMEDIATE`: it takes the write lock up front, so two writers queue on `busy_timeout`
/// instead of one failing at once when it upgrades from reading to writing. The body is an
/// async block returning `Result<T, Error>`; any error rolls the transaction back.
macro_rules! write_tx {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::Conn::Sqlite(object) => {
                let conn: &mut $crate::store::SqliteConn = &mut *object;
                conn.immediate_transaction(async move |$c: &mut $crate::store::SqliteConn| $body)
                    .await
            }
            $crate::store::Conn::Postgres(object) => {
                let conn: &mut diesel_async::AsyncPgConnection = &mut *object;
                diesel_async::AsyncConnection::transaction(
                    conn,
                    async move |$c: &mut diesel_async::AsyncPgConnection| $body,
                )
                .await
            }
        }
    };
}

/// Like [`with_conn!`], inside a read-only transaction, so that several queries see one
/// snapshot: a deferred `BEGIN` on SQLite (it never takes the write lock), `REPEATABLE READ`
/// on PostgreSQL (its default isolation gives each statement its own snapshot).
macro_rules! read_tx {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::Conn::Sqlite(object) => {
                let conn: &mut $crate::store::SqliteConn = &mut *object;
                diesel_async::AsyncConnection::transaction(
                    conn,
                    async move |$c: &mut $crate::store::SqliteConn| $body,
                )
                .await
            }
            $crate::store::Conn::Postgres(object) => {
                let conn: &mut diesel_async::AsyncPgConnection = &mut *object;
                conn.build_transaction()
                    .read_only()
                    .repeatable_read()
                    .run(async move |$c: &mut diesel_async::AsyncPgConnection| $body)
                    .await
            }
        }
    };
}

/// The little SQL that differs between the two dialects.
trait Dialect {
    /// Postpones foreign-key checks to the end of the current transaction.
    const DEFER_FOREIGN_KEYS: &'static str;
}

impl Dialect for SqliteConn {
    // Resets itself at the end of the transaction.
    const DEFER_FOREIGN_KEYS: &'static str = "PRAGMA defer_foreign_keys = ON";
}

impl Dialect for AsyncPgConnection {
    // Applies to the constraints declared DEFERRABLE (the fleet's), for this transaction.
    const DEFER_FOREIGN_KEYS: &'static str = "SET CONSTRAINTS ALL DEFERRED";
}

/// [`Dialect::DEFER_FOREIGN_KEYS`] of a connection value: dispatch bodies have the value,
/// not a type name.
fn defer_foreign_keys<C: Dialect>(_: &C) -> &'static str {
    C::DEFER_FOREIGN_KEYS
}

/// Refuses with `Rejected($message)` unless `$query`, a select of one text id, finds a row.
/// A macro rather than a function: it runs inside a dispatch body, once per backend, and a
/// generic function would have to spell out diesel's query trait bounds for both.
macro_rules! require {
    ($c:expr, $query:expr, $message:expr) => {
        if $query.first::<String>($c).await.optional()?.is_none() {
            return Err(Error::Rejected($message));
        }
    };
}

mod access;
mod cluster;
mod command_ids;
mod error;
mod events;
mod fleet;
mod maintenance;
mod notify;
mod reports;
mod schema;

/// The SQLite schema history, compiled in.
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
/// The PostgreSQL schema history, compiled in.
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// How long a caller waits for a pooled connection (including opening a new one) before the
/// database counts as unavailable. Without it a black-holed PostgreSQL host would hang the
/// caller for the kernel's TCP timeout.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SQLite connection waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;
/// SQLite serializes writers anyway; a few connections let readers run beside a writer
/// (WAL) without holding many file handles.
const SQLITE_POOL_SIZE: usize = 4;
const POSTGRES_POOL_SIZE: usize = 8;
/// Any constant: the PostgreSQL advisory lock that keeps two processes booting at once from
/// running the same migration twice.
const MIGRATION_LOCK_KEY: i64 = 0x6761_7465_686f_7573; // "gatehous"

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pool of one backend.
#[derive(Clone)]
enum Pools {
    Sqlite(Pool<SqliteConn>),
    Postgres(Pool<AsyncPgConnection>),
}

/// A connection checked out of the pool; returns to it when dropped.
// One lives on the stack per call, briefly: boxing it would add an allocation per call to
// save a few hundred bytes of stack.
#[allow(clippy::large_enum_variant)]
enum Conn {
    Sqlite(Object<SqliteConn>),
    Postgres(Object<AsyncPgConnection>),
}

/// The durable store. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct Store {
    pools: Pools,
    /// The URL without credentials, for messages.
    target: Arc<str>,
    /// SQLite: the file opened, checked before each event commit and each ping.
    file: Option<Arc<DbFile>>,
}

/// The SQLite database file a store opened, by path and identity (device and inode).
///
/// SQLite in WAL mode does not notice its file being unlinked, renamed or replaced: every
/// connection keeps its descriptors and goes on committing into the old inode, which nobody
/// will ever open again (`SQLITE_READONLY_DBMOVED` covers rollback journals only). Outcomes
/// told from such commits would be lost, so the store checks the path itself.
#[derive(Debug)]
pub(crate) struct DbFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl DbFile {
    fn of(path: &Path) -> Result<DbFile, StoreError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot read {}: {e}", path.display())))?;
        Ok(DbFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Fails (transiently: putting the file back ends it) unless the path still names the
    /// file opened at start.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let path = self.path.display();
        match std::fs::metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => Ok(()),
            Ok(_) => Err(Error::Unavailable(format!(
                "the database file {path} was replaced while in use: nothing is committed \
                 (it would go to the old file); restart gatehouse to open the new one"
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Unavailable(format!(
                "the database file {path} was removed or moved away while in use: nothing \
                     is committed until it is back; a restart starts a new, empty database"
            ))),
            Err(e) => Err(Error::Unavailable(format!(
                "cannot check the database file {path}: {e}"
            ))),
        }
    }
}

/// A clearer account of a SQLite file this process may not write than SQLite's own ("attempt
/// to write a readonly database", "unable to open database file"): which file or directory.
/// Other errors pass through.
fn sqlite_open_error(path: &Path, e: StoreError) -> StoreError {
    let message = e.to_string();
    if !(message.contains("readonly database") || message.contains("unable to open database")) {
        return e;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (file, dir) = (path.display(), dir.display());
    let denied = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
        )
    };
    let what = if !path.exists() {
        format!("the database file {file} does not exist and cannot be created in {dir}")
    } else if std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .is_err_and(|e| denied(&e))
    {
        format!("the database file {file} is read-only for this process")
    } else {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        format!(
            "the directory {dir} is read-only for this process (SQLite creates {name}-wal \
             and {name}-shm beside the database)"
        )
    };
    StoreError::Other(format!(
        "{what}: gatehouse must be able to write the database file and its directory \
         ({message})"
    ))
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .field("target", &self.target)
            .finish()
    }
}

impl Store {
    /// Opens the database at `url` and checks that a connection can be made.
    ///
    /// - `sqlite://PATH` (`sqlite:///abs/path` or `sqlite://relative/path`): creates the
    ///   parent directory and the file. Every connection runs in WAL mode with `synchronous =
    ///   FULL` (an acknowledged outcome must survive a power loss), `foreign_keys = ON` and a
    ///   `busy_timeout`.
    /// - `postgres://...` or `postgresql://...`: a pool of tokio-postgres connections,
    ///   without TLS.
    ///
    /// An unreachable database is [`StoreError::Unavailable`]; a malformed URL is
    /// [`StoreError::Other`].
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let (mut store, sqlite) = if let Some(path) = url.strip_prefix("sqlite://") {
            (Store::open_sqlite(path).await?, Some(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Store::open_postgres(url)?, None)
        } else {
            return Err(StoreError::Other(format!(
                "unsupported database URL {:?}: expected sqlite://PATH or postgres://...",
                redact(url)
            )));
        };
        // Fail now rather than at the first query: a store that cannot reach its database is
        // better reported at boot.
        let mut conn = store.conn().await.map_err(Error::into_store);
        if let (Some(_), Ok(Conn::Sqlite(c))) = (&sqlite, &mut conn) {
            // SQLite opens a file it may not write read-only without a word, and a database
            // already in WAL mode needs no write to connect: write once (rolled back), so
            // that such a file is refused here, not at the first commit. (Taking the write
            // lock is not enough: `BEGIN IMMEDIATE` on a read-only database begins a read.)
            let probe = "BEGIN IMMEDIATE; CREATE TABLE gatehouse_write_probe (x); ROLLBACK;";
            if let Err(e) = c.batch_execute(probe).await {
                let _ = c.batch_execute("ROLLBACK;").await;
                conn = Err(Error::from(e).into_store());
            }
        }
        if let Some(path) = &sqlite {
            conn = conn.map_err(|e| sqlite_open_error(path, e));
        }
        drop(conn?);
        if let Some(path) = &sqlite {
            store.file = Some(Arc::new(DbFile::of(path)?));
        }
        Ok(store)
    }

    async fn open_sqlite(path: &str) -> Result<Store, StoreError> {
        if path.is_empty() {
            return Err(StoreError::Other("sqlite:// URL without a path".into()));
        }
        if path == ":memory:" || path.starts_with("file:") {
            // Each pooled connection would open a database of its own.
            return Err(StoreError::Other(format!(
                "sqlite://{path}: only a file path is supported"
            )));
        }
        let file = PathBuf::from(path);
        let parent = file.parent().map(Path::to_path_buf);
        // Blocking file-system calls belong on the blocking pool.
        tokio::task::spawn_blocking(move || match parent {
            Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display())),
            _ => Ok(()),
        })
        .await
        .map_err(|e| StoreError::Other(format!("directory creation task failed: {e}")))?
        .map_err(StoreError::Unavailable)?;

        let mut config = ManagerConfig::<SqliteConn>::default();
        // A local file does not go away between uses; skip the ping on every checkout.
        config.recycling_method = RecyclingMethod::Fast;
        config.custom_setup = Box::new(|url| {
            let url = url.to_owned();
            Box::pin(async move {
                let mut conn = SqliteConn::establish(&url).await?;
                // Per connection, because SQLite keeps these per connection (WAL is
                // persistent, but asking again is a cheap no-op). busy_timeout comes first so
                // that switching to WAL waits for a concurrent opener instead of failing.
                let pragmas = format!(
                    "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};
                     PRAGMA foreign_keys = ON;
                     PRAGMA journal_mode = WAL;
                     PRAGMA synchronous = FULL;"
                );
                conn.batch_execute(&pragmas)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(conn)
            })
        });
        let manager = AsyncDieselConnectionManager::<SqliteConn>::new_with_config(path, config);
        let pool = Pool::builder(manager)
            .max_size(SQLITE_POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Other(format!("cannot build the SQLite pool: {e}")))?;
        Ok(Store {
            pools: Pools::Sqlite(pool),
            target: Arc::from(format!("sqlite://{path}")),
            // Known once the first connection has created it (`connect`).
            file: None,
        })
    }

    fn open_postgres(url: &str) -> Result<Store, StoreError> {
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        // A pooled server connection may have been closed by the server or a proxy while
        // idle; a `SELECT 1` on checkout hands out only live ones.
        config.recycling_method = RecyclingMethod::Verified;
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
        let pool = Pool::builder(manager)
            .max_size(POSTGRES_POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Other(format!("cannot build the PostgreSQL pool: {e}")))?;
        Ok(Store {
            pools: Pools::Postgres(pool),
            target: Arc::from(redact(url)),
            file: None,
        })
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Sqlite(_) => Backend::Sqlite,
            Pools::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies the pending migrations of this backend and returns how many ran (0 when the
    /// schema is current).
    ///
    /// diesel's migration runner is synchronous; it runs here on the calling worker thread
    /// through `block_in_place`, which needs tokio's multi-thread runtime. On a
    /// current-thread runtime this returns an error instead of panicking.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread
        {
            return Err(StoreError::Other(
                "migrations need tokio's multi-thread runtime".into(),
            ));
        }
        let conn = self.conn().await.map_err(Error::into_store)?;
        match conn {
            Conn::Sqlite(object) => {
                let mut harness = AsyncMigrationHarness::new(object);
                let ran = harness
                    .run_pending_migrations(SQLITE_MIGRATIONS)
                    .map(|versions| versions.len())
                    .map_err(|e| Error::migration(e.as_ref()).into_store())?;
                drop(harness.into_inner());
                Ok(ran)
            }
            Conn::Postgres(mut object) => {
                // Session-level lock: held across the migrations' own transactions, released
                // explicitly below, and by the server if this connection dies.
                object
                    .batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
                    .await
                    .map_err(|e| Error::from(e).into_store())?;
                let mut harness = AsyncMigrationHarness::new(object);
                let ran = harness
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|versions| versions.len())
                    .map_err(|e| Error::migration(e.as_ref()));
                let mut object = harness.into_inner();
                let unlocked = object
                    .batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
                    .await;
                if unlocked.is_err() {
                    // A session that may still hold the lock must not go back to the pool,
                    // where it would keep other processes from migrating: closing it
                    // releases the lock.
                    drop(Object::take(object));
                }
                ran.map_err(Error::into_store)
            }
        }
    }

    /// Closes the pool: idle connections are dropped now, checked-out ones when returned,
    /// and later calls report [`StoreError::Unavailable`].
    pub fn close(&self) {
        match &self.pools {
            Pools::Sqlite(pool) => pool.close(),
            Pools::Postgres(pool) => pool.close(),
        }
    }

    /// A round trip to the database (`SELECT 1` on a pooled connection), for readiness.
    /// On SQLite, also that the database file is still the one opened ([`DbFile`]).
    pub async fn ping(&self) -> Result<(), StoreError> {
        async {
            if let Some(file) = &self.file {
                file.check()?;
            }
            let mut conn = self.conn().await?;
            with_conn!(&mut conn, |c| {
                diesel_async::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), c).await
            })?;
            Ok::<(), Error>(())
        }
        .await
        .map_err(Error::into_store)
    }

    /// Checks a connection out of the pool, waiting at most [`CHECKOUT_TIMEOUT`].
    async fn conn(&self) -> Result<Conn, Error> {
        let waited = match &self.pools {
            Pools::Sqlite(pool) => tokio::time::timeout(CHECKOUT_TIMEOUT, pool.get())
                .await
                .map(|r| r.map(Conn::Sqlite)),
            Pools::Postgres(pool) => tokio::time::timeout(CHECKOUT_TIMEOUT, pool.get())
                .await
                .map(|r| r.map(Conn::Postgres)),
        };
        match waited {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(Error::pool(&self.target, e)),
            Err(_) => Err(Error::Unavailable(format!(
                "no connection to {} within {} s",
                self.target,
                CHECKOUT_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// `url` with any password replaced, for messages and logs. (The userinfo ends at the last
/// `@` before the path, so an `@` in a path or query is not taken for one.)
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

impl FleetStore for Store {
    fn load_fleet(&self) -> BoxFuture<'_, Result<FleetRecords, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await.map_err(Error::into_store)?;
            fleet::load(&mut conn).await.map_err(Error::into_store)
        })
    }

    fn apply(&self, changes: Vec<FleetChange>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if changes.is_empty() {
                return Ok(());
            }
            let mut conn = self.conn().await.map_err(Error::into_store)?;
            fleet::apply(&mut conn, changes)
                .await
                .map_err(Error::into_store)
        })
    }
}

/// A batch's events and audit records as rows.
fn encode_batch(
    events: &[Arc<GateEvent>],
    audits: Vec<AuditRecord>,
) -> Result<(Vec<events::NewEvent>, Vec<access::NewAudit>), StoreError> {
    let rows = events::encode(events).map_err(Error::into_store)?;
    let audits = audits
        .into_iter()
        .map(access::audit_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::into_store)?;
    Ok((rows, audits))
}

impl EventStore for Store {
    fn append_batch(
        &self,
        events: Vec<Arc<GateEvent>>,
        audits: Vec<AuditRecord>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if events.is_empty() && audits.is_empty() {
                return Ok(());
            }
            // Encoding happens before a connection is taken, so the write lock is held only
            // for the inserts.
            let (rows, audits) = encode_batch(&events, audits)?;
            let mut conn = self.conn().await.map_err(Error::into_store)?;
            events::append(&mut conn, self.file.clone(), rows, audits)
                .await
                .map_err(Error::into_store)
        })
    }

    fn append_fenced(
        &self,
        events: Vec<Arc<GateEvent>>,
        audits: Vec<AuditRecord>,
        fence: gatehouse_actors::cluster::Fence,
    ) -> BoxFuture<'_, Result<Refused, StoreError>> {
        Box::pin(async move {
            let (rows, audits) = encode_batch(&events, audits)?;
            let mut conn = self.conn().await.map_err(Error::into_store)?;
            let refused = events::append_fenced(&mut conn, rows, audits, fence)
                .await
                .map_err(Error::into_store)?;
            let controllers = refused
                .controllers
                .iter()
                .map(|c| {
                    ControllerId::new(c)
                        .map_err(|e| StoreError::Other(format!("stored controller id {c:?}: {e}")))
                })
                .collect::<Result<_, _>>()?;
            let gates = refused
                .gates
                .iter()
                .map(|g| {
                    GateId::new(g)
                        .map_err(|e| StoreError::Other(format!("stored gate id {g:?}: {e}")))
                })
                .collect::<Result<_, _>>()?;
            Ok(Refused { controllers, gates })
        })
    }

    fn heads(&self) -> BoxFuture<'_, Result<Vec<(GateId, GateHead)>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await.map_err(Error::into_store)?;
            events::heads(&mut conn).await.map_err(Error::into_store)
        })
    }

    fn heads_of(
        &self,
        gates: Vec<GateId>,
    ) -> BoxFuture<'_, Result<Vec<(GateId, GateHead)>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await.map_err(Error::into_store)?;
            events::heads_of(&mut conn, &gates)
                .await
                .map_err(Error::into_store)
        })
    }

    fn head_seqs(
        &self,
        gates: Vec<GateId>,
    ) -> BoxFuture<'_, Result<Vec<(GateId, u64)>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await.map_err(Error::into_store)?;
            events::head_seqs(&mut conn, &gates)
                .await
                .map_err(Error::into_store)
        })
    }

    fn since(
        &self,
        gate: GateId,
        after: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await.map_err(Error::into_store)?;
            events::since(&mut conn, &gate, after, limit)
                .await
                .map_err(Error::into_store)
        })
    }

    fn latest(&self, gate: GateId) -> BoxFuture<'_, Result<Option<StoredEvent>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await.map_err(Error::into_store)?;
            events::latest(&mut conn, &gate)
                .await
                .map_err(Error::into_store)
        })
    }

    fn after(&self, after: i64, limit: u32) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await.map_err(Error::into_store)?;
            events::after(&mut conn, after, limit)
                .await
                .map_err(Error::into_store)
        })
    }

    fn newest_id(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await.map_err(Error::into_store)?;
            events::newest_id(&mut conn)
                .await
                .map_err(Error::into_store)
        })
    }

    fn finished_commands(
        &self,
        since_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<FinishedCommand>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn().await.map_err(Error::into_store)?;
            events::finished_commands(&mut conn, since_ms)
                .await
                .map_err(Error::into_store)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(
            redact("postgres://app:s3cret@db.example:5432/gh?sslmode=disable"),
            "postgres://app@db.example:5432/gh?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
        assert_eq!(redact("postgres://127.0.0.1/x"), "postgres://127.0.0.1/x");
        assert_eq!(redact("not a url"), "not a url");
    }
}
