//! Controller leases and node liveness (`cluster::LeaseStore`), on PostgreSQL only: a cluster
//! shares one database, and the event insert fences on the same rows. SQLite answers that
//! scale-out needs PostgreSQL.
//!
//! Every time is the database's clock (`clock_timestamp()`, in milliseconds), so that nodes
//! never compare their own clocks. Each decision is one statement:
//! - acquire: an upsert whose `DO UPDATE ... WHERE` only fires on an expired lease, with an
//!   epoch from one sequence. Two nodes racing for a controller serialize on its row; the
//!   second sees the first's unexpired lease and gets nothing.
//! - renew: an update matching node, controller, epoch and "not yet expired"; a lease that
//!   expired is never revived (it may have changed hands and back), it is acquired anew with
//!   a new epoch.
//! - release: expires the lease now.

use diesel::sql_types::{Array, BigInt, Bool, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use gatehouse_actors::cluster::{Lease, LeaseStore, NodeInfo};
use gatehouse_actors::ids::{ControllerId, NodeId};
use gatehouse_actors::ports::BoxFuture;
use gatehouse_actors::store::StoreError;

use super::error::Error;
use super::{Conn, Store};

/// The database's clock in milliseconds.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

fn postgres_only() -> Error {
    Error::Rejected("scale-out ([cluster]) needs PostgreSQL: the nodes share its leases".into())
}

fn ttl(ttl_ms: u64) -> Result<i64, Error> {
    i64::try_from(ttl_ms).map_err(|_| Error::Other(format!("lease TTL {ttl_ms} ms")))
}

fn node_id(raw: &str) -> Result<NodeId, Error> {
    NodeId::new(raw).map_err(|e| Error::Other(format!("stored node id {raw:?}: {e}")))
}

fn controller_id(raw: &str) -> Result<ControllerId, Error> {
    ControllerId::new(raw).map_err(|e| Error::Other(format!("stored controller id {raw:?}: {e}")))
}

#[derive(QueryableByName)]
struct NodeRow {
    #[diesel(sql_type = Text)]
    node_id: String,
    #[diesel(sql_type = Bool)]
    draining: bool,
}

#[derive(QueryableByName)]
struct LeaseRow {
    #[diesel(sql_type = Text)]
    controller_id: String,
    #[diesel(sql_type = Text)]
    node_id: String,
    #[diesel(sql_type = BigInt)]
    epoch: i64,
    #[diesel(sql_type = BigInt)]
    left_ms: i64,
}

#[derive(QueryableByName)]
struct EpochRow {
    #[diesel(sql_type = BigInt)]
    epoch: i64,
}

#[derive(QueryableByName)]
struct ControllerRow {
    #[diesel(sql_type = Text)]
    controller_id: String,
}

async fn heartbeat(
    store: &Store,
    node: NodeId,
    ttl_ms: u64,
    draining: bool,
) -> Result<Vec<NodeInfo>, Error> {
    let ttl = ttl(ttl_ms)?;
    let Conn::Postgres(mut c) = store.conn().await? else {
        return Err(postgres_only());
    };
    sql_query(format!(
        "INSERT INTO cluster_nodes (node_id, expires_at, draining) VALUES ($1, {NOW_MS} + $2, $3) \
         ON CONFLICT (node_id) DO UPDATE SET expires_at = EXCLUDED.expires_at, \
         draining = EXCLUDED.draining"
    ))
    .bind::<Text, _>(node.as_str())
    .bind::<BigInt, _>(ttl)
    .bind::<Bool, _>(draining)
    .execute(&mut *c)
    .await?;
    let rows: Vec<NodeRow> = sql_query(format!(
        "SELECT node_id, draining FROM cluster_nodes WHERE expires_at > {NOW_MS} ORDER BY node_id"
    ))
    .load(&mut *c)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(NodeInfo {
                node: node_id(&r.node_id)?,
                draining: r.draining,
            })
        })
        .collect()
}

async fn leases(store: &Store) -> Result<Vec<Lease>, Error> {
    let Conn::Postgres(mut c) = store.conn().await? else {
        return Err(postgres_only());
    };
    let rows: Vec<LeaseRow> = sql_query(format!(
        "SELECT controller_id, node_id, epoch, GREATEST(expires_at - {NOW_MS}, 0) AS left_ms \
         FROM controller_leases ORDER BY controller_id"
    ))
    .load(&mut *c)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Lease {
                controller: controller_id(&r.controller_id)?,
                node: node_id(&r.node_id)?,
                epoch: r.epoch as u64,
                left_ms: r.left_ms as u64,
            })
        })
        .collect()
}

async fn acquire(
    store: &Store,
    node: NodeId,
    controller: ControllerId,
    ttl_ms: u64,
) -> Result<Option<u64>, Error> {
    let ttl = ttl(ttl_ms)?;
    let Conn::Postgres(mut c) = store.conn().await? else {
        return Err(postgres_only());
    };
    // (`nextval` is drawn even when the row is not updated: epochs have gaps, never repeats.)
    let won: Vec<EpochRow> = sql_query(format!(
        "INSERT INTO controller_leases (controller_id, node_id, epoch, expires_at) \
         VALUES ($1, $2, nextval('lease_epochs'), {NOW_MS} + $3) \
         ON CONFLICT (controller_id) DO UPDATE SET node_id = EXCLUDED.node_id, \
         epoch = EXCLUDED.epoch, expires_at = EXCLUDED.expires_at \
         WHERE controller_leases.expires_at <= {NOW_MS} \
         RETURNING epoch"
    ))
    .bind::<Text, _>(controller.as_str())
    .bind::<Text, _>(node.as_str())
    .bind::<BigInt, _>(ttl)
    .load(&mut *c)
    .await
    .map_err(|e| match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ForeignKeyViolation,
            _,
        ) => Error::Rejected(format!("lease: unknown controller {controller}")),
        other => Error::from(other),
    })?;
    Ok(won.into_iter().next().map(|r| r.epoch as u64))
}

async fn renew(
    store: &Store,
    node: NodeId,
    held: Vec<(ControllerId, u64)>,
    ttl_ms: u64,
) -> Result<Vec<ControllerId>, Error> {
    let ttl = ttl(ttl_ms)?;
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let Conn::Postgres(mut c) = store.conn().await? else {
        return Err(postgres_only());
    };
    let (controllers, epochs): (Vec<String>, Vec<i64>) = held
        .into_iter()
        .map(|(c, e)| (c.to_string(), e as i64))
        .unzip();
    let rows: Vec<ControllerRow> = sql_query(format!(
        "UPDATE controller_leases AS l SET expires_at = {NOW_MS} + $2 \
         FROM UNNEST($3::text[], $4::bigint[]) AS h(controller_id, epoch) \
         WHERE l.node_id = $1 AND l.controller_id = h.controller_id AND l.epoch = h.epoch \
         AND l.expires_at > {NOW_MS} \
         RETURNING l.controller_id"
    ))
    .bind::<Text, _>(node.as_str())
    .bind::<BigInt, _>(ttl)
    .bind::<Array<Text>, _>(controllers)
    .bind::<Array<BigInt>, _>(epochs)
    .load(&mut *c)
    .await?;
    rows.iter()
        .map(|r| controller_id(&r.controller_id))
        .collect()
}

async fn release(store: &Store, node: NodeId, controllers: Vec<ControllerId>) -> Result<(), Error> {
    if controllers.is_empty() {
        return Ok(());
    }
    let Conn::Postgres(mut c) = store.conn().await? else {
        return Err(postgres_only());
    };
    let controllers: Vec<String> = controllers.iter().map(|c| c.to_string()).collect();
    sql_query(
        "UPDATE controller_leases SET expires_at = 0 \
         WHERE node_id = $1 AND controller_id = ANY($2::text[])",
    )
    .bind::<Text, _>(node.as_str())
    .bind::<Array<Text>, _>(controllers)
    .execute(&mut *c)
    .await?;
    Ok(())
}

impl LeaseStore for Store {
    fn heartbeat(
        &self,
        node: NodeId,
        ttl_ms: u64,
        draining: bool,
    ) -> BoxFuture<'_, Result<Vec<NodeInfo>, StoreError>> {
        Box::pin(async move {
            heartbeat(self, node, ttl_ms, draining)
                .await
                .map_err(Error::into_store)
        })
    }

    fn leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>> {
        Box::pin(async move { leases(self).await.map_err(Error::into_store) })
    }

    fn acquire(
        &self,
        node: NodeId,
        controller: ControllerId,
        ttl_ms: u64,
    ) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            acquire(self, node, controller, ttl_ms)
                .await
                .map_err(Error::into_store)
        })
    }

    fn renew(
        &self,
        node: NodeId,
        held: Vec<(ControllerId, u64)>,
        ttl_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<ControllerId>, StoreError>> {
        Box::pin(async move {
            renew(self, node, held, ttl_ms)
                .await
                .map_err(Error::into_store)
        })
    }

    fn release(
        &self,
        node: NodeId,
        controllers: Vec<ControllerId>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            release(self, node, controllers)
                .await
                .map_err(Error::into_store)
        })
    }
}
