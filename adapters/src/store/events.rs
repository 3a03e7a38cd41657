//! The event log table (`gate_events`): group-committed appends and the reads that resume
//! from it.
//!
//! Each row carries the event twice: typed columns (gate, seq, kind, command, state, cycles)
//! that queries filter and group on, and `payload`, the whole event as JSON, which is what
//! readers decode. The payload makes reads exact whatever the columns summarise, and lets
//! the event type grow without a migration for every field.

use std::sync::Arc;

use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text};
use diesel_async::RunQueryDsl;
use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::gate::{Cause, CommandStatus, EventKind};
use gatehouse_actors::ids::GateId;
use gatehouse_actors::store::{FinishedCommand, GateHead, StoredEvent};

use super::access::NewAudit;
use super::error::Error;
use super::fleet::{from_db, to_db};
use super::schema::{audit_log, gate_events};
use super::{Conn, DbFile};

/// Rows per INSERT statement on SQLite. Each row binds 13 values and SQLite allows 32,766
/// bound parameters per statement; 500 rows keep well under that.
const ROWS_PER_STATEMENT: usize = 500;

/// The `kind` column value of a `command_finished` event.
const COMMAND_FINISHED: &str = "command_finished";
/// The predicate of the partial index `gate_events_finished`, as both migrations spell it.
const FINISHED_PREDICATE: &str = "kind = 'command_finished'";

/// One event as a row. Owned, because on SQLite the rows move to a blocking task.
// `treat_none_as_default_value = false`: NULL instead of DEFAULT for absent values. SQLite
// has no DEFAULT keyword in VALUES, so diesel builds its multi-row INSERT ... ON CONFLICT
// only for rows that cannot contain one.
#[derive(Insertable)]
#[diesel(table_name = gate_events)]
#[diesel(treat_none_as_default_value = false)]
pub(super) struct NewEvent {
    gate: String,
    controller: String,
    seq: i64,
    at_ms: i64,
    kind: &'static str,
    cause: &'static str,
    command_id: Option<String>,
    action: Option<&'static str>,
    status: Option<&'static str>,
    reason: Option<&'static str>,
    state: &'static str,
    cycles: Option<i64>,
    payload: String,
}

/// Turns events into rows (JSON payload included).
pub(super) fn encode(events: &[Arc<GateEvent>]) -> Result<Vec<NewEvent>, Error> {
    events.iter().map(|e| encode_one(e)).collect()
}

fn encode_one(event: &GateEvent) -> Result<NewEvent, Error> {
    let what = |field: &str| format!("event {} #{}: {field}", event.gate, event.seq);
    let payload = serde_json::to_string(event)
        .map_err(|e| Error::Other(format!("{}: {e}", what("cannot encode"))))?;
    let (cause, caused_by) = match event.cause {
        Cause::Command(id) => ("command", Some(id)),
        Cause::Local => ("local", None),
        Cause::System => ("system", None),
    };
    let (command, action, status) = match event.kind {
        EventKind::CommandFinished {
            command,
            action,
            status,
        } => (Some(command), Some(action.as_str()), Some(status)),
        _ => (caused_by, None, None),
    };
    let (status, reason) = match status {
        Some(s) => {
            let (status, reason) = status_columns(s);
            (Some(status), reason)
        }
        None => (None, None),
    };
    Ok(NewEvent {
        gate: event.gate.as_str().to_owned(),
        controller: event.controller.as_str().to_owned(),
        seq: to_db(event.seq, || what("seq"))?,
        at_ms: to_db(event.at_ms, || what("at_ms"))?,
        kind: kind_name(&event.kind),
        cause,
        // The command the event is about: the one that finished, else the one that caused it.
        command_id: command.map(|id| id.to_string()),
        action,
        status,
        reason,
        state: event.snapshot.state.as_str(),
        cycles: event
            .snapshot
            .cycles
            .map(|c| to_db(c, || what("cycles")))
            .transpose()?,
        payload,
    })
}

/// The wire name of an event kind (serde's tag). Spelled out rather than read back from
/// serde so that encoding stays cheap; a unit test keeps the two in step.
fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::StateChanged { .. } => "state_changed",
        EventKind::Obstruction { .. } => "obstruction",
        EventKind::AutoCloseWarning { .. } => "auto_close_warning",
        EventKind::LeftOpen { .. } => "left_open",
        EventKind::LockedOut => "locked_out",
        EventKind::Unlocked => "unlocked",
        EventKind::HeldOpen => "held_open",
        EventKind::Released => "released",
        EventKind::MaintenanceDue { .. } => "maintenance_due",
        EventKind::MaintenanceOverdue { .. } => "maintenance_overdue",
        EventKind::CommandFinished { .. } => COMMAND_FINISHED,
    }
}

/// A command status as `status` and `reason` columns.
fn status_columns(status: CommandStatus) -> (&'static str, Option<&'static str>) {
    match status {
        CommandStatus::Accepted => ("accepted", None),
        CommandStatus::Completed => ("completed", None),
        CommandStatus::Rejected(r) => ("rejected", Some(r.as_str())),
        CommandStatus::Failed(r) => ("failed", Some(r.as_str())),
        CommandStatus::TimedOut => ("timed_out", None),
    }
}

/// Inserts `rows`, and the command audit records `audits` that came with them, in one
/// transaction. A row whose `(gate, seq)` is stored already is skipped, so a retried batch is
/// never stored twice. (An audit record has no natural key; a batch that failed is rolled
/// back whole, so a retry does not store it twice either.) On SQLite, `file` is checked just
/// before the commit, which is refused (rolled back) when the path no longer names the file
/// the store opened: it would commit into a file nobody will read again.
///
/// This is the one query written per backend, for speed:
/// - SQLite: diesel-async cannot send a multi-row INSERT to SQLite (diesel builds those in
///   its synchronous `ExecuteDsl`, not as a query fragment the async wrapper could ship),
///   and a statement per row would cost a statement per event. So the whole transaction runs
///   as one blocking task on the wrapped synchronous connection, in multi-row statements.
/// - PostgreSQL: a multi-row VALUES statement binds 13 parameters per row and is prepared
///   afresh for each batch of a new size; measured here, it managed about 28,000 events/s
///   (release build, batches of 500) where one statement over 13 arrays (`UNNEST`) managed
///   45,000 to 70,000, close to what the server alone does with the same rows. Being a
///   single statement, it is atomic without BEGIN/COMMIT round trips.
pub(super) async fn append(
    conn: &mut Conn,
    file: Option<Arc<DbFile>>,
    rows: Vec<NewEvent>,
    audits: Vec<NewAudit>,
) -> Result<(), Error> {
    match conn {
        Conn::Sqlite(object) => {
            let checked = file.clone();
            let done = object
                .spawn_blocking(move |c| {
                    c.immediate_transaction(|c| {
                        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                            let insert = diesel::insert_into(gate_events::table)
                                .values(chunk)
                                .on_conflict_do_nothing();
                            diesel::RunQueryDsl::execute(insert, c)?;
                        }
                        for chunk in audits.chunks(AUDIT_ROWS_PER_STATEMENT) {
                            let insert = diesel::insert_into(audit_log::table).values(chunk);
                            diesel::RunQueryDsl::execute(insert, c)?;
                        }
                        if checked.as_ref().is_some_and(|f| f.check().is_err()) {
                            return Err(diesel::result::Error::RollbackTransaction);
                        }
                        Ok(())
                    })
                })
                .await;
            match (done, file) {
                (Err(diesel::result::Error::RollbackTransaction), Some(file)) => {
                    file.check()?;
                    // Back in place already: the next attempt commits.
                    return Err(Error::Unavailable(
                        "the database file changed during a commit".into(),
                    ));
                }
                (done, _) => done?,
            }
        }
        Conn::Postgres(object) => {
            let c: &mut diesel_async::AsyncPgConnection = &mut *object;
            if audits.is_empty() {
                pg_insert_events(c, rows).await?;
            } else {
                diesel_async::AsyncConnection::transaction(c, async move |c| {
                    if !rows.is_empty() {
                        pg_insert_events(c, rows).await?;
                    }
                    for chunk in audits.chunks(AUDIT_ROWS_PER_STATEMENT) {
                        diesel::insert_into(audit_log::table)
                            .values(chunk)
                            .execute(c)
                            .await?;
                    }
                    Ok::<_, diesel::result::Error>(())
                })
                .await?;
            }
        }
    }
    Ok(())
}

/// What [`append_fenced`] refused: controllers (lease not the fence's) and gates (moved to
/// another controller), as stored ids.
pub(super) struct FencedOut {
    pub controllers: Vec<String>,
    pub gates: Vec<String>,
}

/// [`append`] under a fence (PostgreSQL only): in one transaction, reads and share-locks the
/// leases the fence names that are still its node's with its epochs and the rows of the
/// batch's gates, writes the events of those controllers whose gate is still theirs and every
/// audit record, and answers what it refused. The share locks make a concurrent takeover (an
/// update of the lease row) or a gate's move (an update of its row) wait for this commit, so
/// the new holder starts after the last event written under the old epoch or controller; an
/// event written after the takeover or the move is refused.
pub(super) async fn append_fenced(
    conn: &mut Conn,
    rows: Vec<NewEvent>,
    audits: Vec<NewAudit>,
    fence: gatehouse_actors::cluster::Fence,
) -> Result<FencedOut, Error> {
    let Conn::Postgres(object) = conn else {
        return Err(Error::Rejected(
            "fenced writes need PostgreSQL ([cluster])".into(),
        ));
    };
    let c: &mut diesel_async::AsyncPgConnection = &mut *object;
    let (controllers, epochs): (Vec<String>, Vec<i64>) = fence
        .held
        .iter()
        .map(|(c, e)| (c.to_string(), *e as i64))
        .unzip();
    let node = fence.node.to_string();
    let refused = diesel_async::AsyncConnection::transaction(c, async move |c| {
        let valid: Vec<FencedRow> = diesel::sql_query(
            "SELECT l.controller_id FROM controller_leases l \
             JOIN UNNEST($2::text[], $3::bigint[]) AS h(controller_id, epoch) \
               ON l.controller_id = h.controller_id AND l.epoch = h.epoch \
             WHERE l.node_id = $1 FOR SHARE OF l",
        )
        .bind::<Text, _>(&node)
        .bind::<Array<Text>, _>(&controllers)
        .bind::<Array<BigInt>, _>(&epochs)
        .load(c)
        .await?;
        let valid: std::collections::HashSet<String> =
            valid.into_iter().map(|r| r.controller_id).collect();
        let (kept, dropped): (Vec<NewEvent>, Vec<NewEvent>) = rows
            .into_iter()
            .partition(|r| valid.contains(&r.controller));
        // Each gate's controller now, share-locked like the leases: a fleet change moving a
        // gate waits for this commit, or this one sees the move. A gate no longer in the
        // fleet keeps its last events.
        let mut gates: Vec<String> = kept.iter().map(|r| r.gate.clone()).collect();
        gates.sort();
        gates.dedup();
        let placed: Vec<PlacedRow> = if gates.is_empty() {
            Vec::new()
        } else {
            diesel::sql_query(
                "SELECT id, controller FROM gates WHERE id = ANY($1::text[]) FOR SHARE",
            )
            .bind::<Array<Text>, _>(&gates)
            .load(c)
            .await?
        };
        let placed: std::collections::HashMap<String, String> =
            placed.into_iter().map(|r| (r.id, r.controller)).collect();
        let (kept, elsewhere): (Vec<NewEvent>, Vec<NewEvent>) = kept
            .into_iter()
            .partition(|r| placed.get(&r.gate).is_none_or(|now| *now == r.controller));
        if !kept.is_empty() {
            pg_insert_events(c, kept).await?;
        }
        for chunk in audits.chunks(AUDIT_ROWS_PER_STATEMENT) {
            diesel::insert_into(audit_log::table)
                .values(chunk)
                .execute(c)
                .await?;
        }
        let mut controllers: Vec<String> = dropped.into_iter().map(|r| r.controller).collect();
        controllers.sort();
        controllers.dedup();
        let mut gates: Vec<String> = elsewhere.into_iter().map(|r| r.gate).collect();
        gates.sort();
        gates.dedup();
        Ok::<_, diesel::result::Error>(FencedOut { controllers, gates })
    })
    .await?;
    Ok(refused)
}

#[derive(QueryableByName)]
struct FencedRow {
    #[diesel(sql_type = Text)]
    controller_id: String,
}

#[derive(QueryableByName)]
struct PlacedRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    controller: String,
}

/// Audit rows per INSERT: 6 parameters each, well under SQLite's 32,766 and PostgreSQL's
/// 65,535 bind parameters.
const AUDIT_ROWS_PER_STATEMENT: usize = 1_000;

async fn pg_insert_events(
    c: &mut diesel_async::AsyncPgConnection,
    rows: Vec<NewEvent>,
) -> Result<(), diesel::result::Error> {
    let cols = Columns::from(rows);
    diesel::sql_query(PG_UNNEST_INSERT)
        .bind::<Array<Text>, _>(cols.gate)
        .bind::<Array<Text>, _>(cols.controller)
        .bind::<Array<BigInt>, _>(cols.seq)
        .bind::<Array<BigInt>, _>(cols.at_ms)
        .bind::<Array<Text>, _>(cols.kind)
        .bind::<Array<Text>, _>(cols.cause)
        .bind::<Array<Nullable<Text>>, _>(cols.command_id)
        .bind::<Array<Nullable<Text>>, _>(cols.action)
        .bind::<Array<Nullable<Text>>, _>(cols.status)
        .bind::<Array<Nullable<Text>>, _>(cols.reason)
        .bind::<Array<Text>, _>(cols.state)
        .bind::<Array<Nullable<BigInt>>, _>(cols.cycles)
        .bind::<Array<Text>, _>(cols.payload)
        .execute(c)
        .await?;
    Ok(())
}

/// The PostgreSQL append: rows zipped from one array per column, in array order (so ids
/// follow the batch's order).
const PG_UNNEST_INSERT: &str = "\
    INSERT INTO gate_events \
        (gate, controller, seq, at_ms, kind, cause, command_id, action, status, reason, \
         state, cycles, payload) \
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], \
        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
        $12::bigint[], $13::text[]) \
    ON CONFLICT DO NOTHING";

/// Rows turned into columns, for [`PG_UNNEST_INSERT`].
#[derive(Default)]
struct Columns {
    gate: Vec<String>,
    controller: Vec<String>,
    seq: Vec<i64>,
    at_ms: Vec<i64>,
    kind: Vec<&'static str>,
    cause: Vec<&'static str>,
    command_id: Vec<Option<String>>,
    action: Vec<Option<&'static str>>,
    status: Vec<Option<&'static str>>,
    reason: Vec<Option<&'static str>>,
    state: Vec<&'static str>,
    cycles: Vec<Option<i64>>,
    payload: Vec<String>,
}

impl From<Vec<NewEvent>> for Columns {
    fn from(rows: Vec<NewEvent>) -> Columns {
        let mut c = Columns::default();
        for row in rows {
            c.gate.push(row.gate);
            c.controller.push(row.controller);
            c.seq.push(row.seq);
            c.at_ms.push(row.at_ms);
            c.kind.push(row.kind);
            c.cause.push(row.cause);
            c.command_id.push(row.command_id);
            c.action.push(row.action);
            c.status.push(row.status);
            c.reason.push(row.reason);
            c.state.push(row.state);
            c.cycles.push(row.cycles);
            c.payload.push(row.payload);
        }
        c
    }
}

#[derive(QueryableByName)]
struct HeadRow {
    #[diesel(sql_type = Text)]
    gate: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    cycles: Option<i64>,
}

/// Per gate: the highest seq, and the cycles of its latest event that carried one. Runs at
/// boot. `MAX(seq)` reads the `(gate, seq)` index (or the table) once; the cycles lookup
/// walks that index backwards from the gate's newest event, which is quick when recent
/// events carry cycles and walks a gate's whole history when none does.
const HEADS_SQL: &str = "\
    SELECT h.gate AS gate, h.seq AS seq, \
        (SELECT c.cycles FROM gate_events c \
         WHERE c.gate = h.gate AND c.cycles IS NOT NULL \
         ORDER BY c.seq DESC LIMIT 1) AS cycles \
    FROM (SELECT gate, MAX(seq) AS seq FROM gate_events GROUP BY gate) h \
    ORDER BY h.gate";

pub(super) async fn heads(conn: &mut Conn) -> Result<Vec<(GateId, GateHead)>, Error> {
    let rows: Vec<HeadRow> = with_conn!(conn, |c| diesel::sql_query(HEADS_SQL).load(c).await)?;
    rows.into_iter()
        .map(|row| {
            let gate = GateId::new(&row.gate).map_err(|e| {
                Error::Other(format!("stored gate id {:?} is invalid: {e}", row.gate))
            })?;
            let what = |field: &str| format!("gate {}: {field}", row.gate);
            let head = GateHead {
                seq: from_db(row.seq, || what("seq"))?,
                cycles: row
                    .cycles
                    .map(|c| from_db(c, || what("cycles")))
                    .transpose()?,
            };
            Ok((gate, head))
        })
        .collect()
}

/// [`heads`] of `gates` only: per gate, its highest seq and the cycles of its latest event
/// that carried one, each an index lookup on `(gate, seq)`, in one read snapshot.
pub(super) async fn heads_of(
    conn: &mut Conn,
    gates: &[GateId],
) -> Result<Vec<(GateId, GateHead)>, Error> {
    let found: Vec<(GateId, i64, Option<i64>)> = read_tx!(conn, |c| {
        let mut found = Vec::with_capacity(gates.len());
        for gate in gates {
            let seq: Option<i64> = gate_events::table
                .filter(gate_events::gate.eq(gate.as_str()))
                .order(gate_events::seq.desc())
                .select(gate_events::seq)
                .first(c)
                .await
                .optional()?;
            let Some(seq) = seq else { continue };
            let cycles: Option<Option<i64>> = gate_events::table
                .filter(gate_events::gate.eq(gate.as_str()))
                .filter(gate_events::cycles.is_not_null())
                .order(gate_events::seq.desc())
                .select(gate_events::cycles)
                .first(c)
                .await
                .optional()?;
            found.push((gate.clone(), seq, cycles.flatten()));
        }
        Ok::<_, Error>(found)
    })?;
    found
        .into_iter()
        .map(|(gate, seq, cycles)| {
            let what = |field: &str| format!("gate {gate}: {field}");
            let head = GateHead {
                seq: from_db(seq, || what("seq"))?,
                cycles: cycles.map(|c| from_db(c, || what("cycles"))).transpose()?,
            };
            Ok((gate, head))
        })
        .collect()
}

/// The highest seq of each of `gates` that has events, in one grouped query (`MAX(seq)` per
/// gate reads the `(gate, seq)` index): what sessions check against after a loss of events.
pub(super) async fn head_seqs(
    conn: &mut Conn,
    gates: &[GateId],
) -> Result<Vec<(GateId, u64)>, Error> {
    let names: Vec<&str> = gates.iter().map(GateId::as_str).collect();
    let rows: Vec<(String, Option<i64>)> = with_conn!(conn, |c| {
        gate_events::table
            .filter(gate_events::gate.eq_any(&names))
            .group_by(gate_events::gate)
            .select((gate_events::gate, diesel::dsl::max(gate_events::seq)))
            .load(c)
            .await
    })?;
    rows.into_iter()
        .filter_map(|(gate, seq)| seq.map(|seq| (gate, seq)))
        .map(|(gate, seq)| {
            let id = GateId::new(&gate)
                .map_err(|e| Error::Other(format!("stored gate id {gate:?} is invalid: {e}")))?;
            Ok((id, from_db(seq, || format!("gate {gate}: seq"))?))
        })
        .collect()
}

/// A gate's events with `seq > after`, oldest first.
pub(super) async fn since(
    conn: &mut Conn,
    gate: &GateId,
    after: u64,
    limit: u32,
) -> Result<Vec<StoredEvent>, Error> {
    // Nothing stored can lie beyond the largest BIGINT.
    let Ok(after) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    let rows: Vec<(i64, String)> = with_conn!(conn, |c| {
        gate_events::table
            .filter(gate_events::gate.eq(gate.as_str()))
            .filter(gate_events::seq.gt(after))
            .order(gate_events::seq.asc())
            .limit(i64::from(limit))
            .select((gate_events::id, gate_events::payload))
            .load(c)
            .await
    })?;
    decode_all(rows)
}

/// The gate's newest event (its head), if it has any.
pub(super) async fn latest(conn: &mut Conn, gate: &GateId) -> Result<Option<StoredEvent>, Error> {
    let rows: Vec<(i64, String)> = with_conn!(conn, |c| {
        gate_events::table
            .filter(gate_events::gate.eq(gate.as_str()))
            .order(gate_events::seq.desc())
            .limit(1)
            .select((gate_events::id, gate_events::payload))
            .load(c)
            .await
    })?;
    Ok(decode_all(rows)?.pop())
}

/// Every event with global id `> after`, in id order.
pub(super) async fn after(
    conn: &mut Conn,
    after: i64,
    limit: u32,
) -> Result<Vec<StoredEvent>, Error> {
    let rows: Vec<(i64, String)> = with_conn!(conn, |c| {
        gate_events::table
            .filter(gate_events::id.gt(after))
            .order(gate_events::id.asc())
            .limit(i64::from(limit))
            .select((gate_events::id, gate_events::payload))
            .load(c)
            .await
    })?;
    decode_all(rows)
}

/// The newest event's global id, 0 when there is none.
pub(super) async fn newest_id(conn: &mut Conn) -> Result<i64, Error> {
    let newest: Option<i64> = with_conn!(conn, |c| {
        gate_events::table
            .select(diesel::dsl::max(gate_events::id))
            .first(c)
            .await
    })?;
    Ok(newest.unwrap_or(0))
}

/// Commands that finished at or after `since_ms`, in the order they were stored.
pub(super) async fn finished_commands(
    conn: &mut Conn,
    since_ms: u64,
) -> Result<Vec<FinishedCommand>, Error> {
    let Ok(since_ms) = i64::try_from(since_ms) else {
        return Ok(Vec::new());
    };
    let rows: Vec<(i64, String)> = with_conn!(conn, |c| {
        gate_events::table
            // A literal, not a bound parameter: the partial index `gate_events_finished`
            // is used only when the query's predicate visibly matches its own.
            .filter(sql::<Bool>(FINISHED_PREDICATE))
            .filter(gate_events::at_ms.ge(since_ms))
            .select((gate_events::id, gate_events::payload))
            .load(c)
            .await
    })?;
    // Sorted here: with `ORDER BY id`, SQLite (without statistics) prefers walking the whole
    // table in id order over the partial index and a sort of the few rows it yields.
    let mut rows = rows;
    rows.sort_unstable_by_key(|(id, _)| *id);
    rows.into_iter()
        .map(|(id, payload)| {
            let event = decode(id, &payload)?;
            match event.kind {
                EventKind::CommandFinished {
                    command,
                    action,
                    status,
                } => Ok(FinishedCommand {
                    gate: event.gate,
                    seq: event.seq,
                    at_ms: event.at_ms,
                    id: command,
                    action,
                    status,
                }),
                other => Err(Error::Other(format!(
                    "event {id} is stored as {COMMAND_FINISHED} but its payload is {}",
                    kind_name(&other)
                ))),
            }
        })
        .collect()
}

fn decode(id: i64, payload: &str) -> Result<GateEvent, Error> {
    serde_json::from_str(payload)
        .map_err(|e| Error::Other(format!("event {id}: undecodable payload: {e}")))
}

fn decode_all(rows: Vec<(i64, String)>) -> Result<Vec<StoredEvent>, Error> {
    rows.into_iter()
        .map(|(id, payload)| {
            Ok(StoredEvent {
                id,
                event: decode(id, &payload)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_actors::gate::{Action, FailReason, GateState};
    use gatehouse_actors::ids::CommandId;

    #[test]
    fn kind_names_match_the_serde_tag() {
        let kinds = [
            EventKind::StateChanged {
                from: GateState::Closed,
            },
            EventKind::Obstruction { obstructed: true },
            EventKind::AutoCloseWarning { closes_in_ms: 1 },
            EventKind::LeftOpen { open_for_ms: 1 },
            EventKind::LockedOut,
            EventKind::Unlocked,
            EventKind::HeldOpen,
            EventKind::Released,
            EventKind::MaintenanceDue {
                plan: uuid::Uuid::new_v4(),
            },
            EventKind::MaintenanceOverdue {
                plan: uuid::Uuid::new_v4(),
            },
            EventKind::CommandFinished {
                command: CommandId::random(),
                action: Action::Open,
                status: CommandStatus::Failed(FailReason::TravelTimeout),
            },
        ];
        for kind in kinds {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json["kind"], kind_name(&kind), "{json}");
        }
    }

    #[test]
    fn sqlite_appends_in_multi_row_statements() {
        // diesel may run a SQLite batch insert as one statement per row (it does so when a
        // value may be DEFAULT); counting the statements it starts tells which form it took.
        let events: Vec<Arc<GateEvent>> = (1..=3)
            .map(|seq| {
                Arc::new(GateEvent {
                    gate: GateId::new("g1").unwrap(),
                    controller: gatehouse_actors::ids::ControllerId::new("c1").unwrap(),
                    seq,
                    at_ms: seq,
                    kind: EventKind::LockedOut,
                    cause: Cause::System,
                    snapshot: Default::default(),
                })
            })
            .collect();
        let rows = encode(&events).unwrap();

        use diesel::connection::{Connection, InstrumentationEvent, SimpleConnection};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut conn = diesel::SqliteConnection::establish(":memory:").unwrap();
        conn.batch_execute(include_str!(
            "../../../migrations/sqlite/2026-11-22-000000_initial/up.sql"
        ))
        .unwrap();
        let statements = Arc::new(AtomicUsize::new(0));
        let counter = statements.clone();
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { .. } = event {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let insert = diesel::insert_into(gate_events::table)
            .values(&rows[..])
            .on_conflict_do_nothing();
        assert_eq!(diesel::RunQueryDsl::execute(insert, &mut conn).unwrap(), 3);
        // Spelled out: diesel_async::RunQueryDsl, in scope above, also has a `load`.
        assert_eq!(AtomicUsize::load(&statements, Ordering::SeqCst), 1);
    }

    #[test]
    fn status_columns_use_the_wire_spelling() {
        let json = serde_json::to_value(CommandStatus::Failed(FailReason::TravelTimeout)).unwrap();
        assert_eq!(
            status_columns(CommandStatus::Failed(FailReason::TravelTimeout)),
            ("failed", Some("travel_timeout"))
        );
        assert_eq!(json["status"], "failed");
        assert_eq!(json["reason"], "travel_timeout");
        let json = serde_json::to_value(CommandStatus::TimedOut).unwrap();
        assert_eq!(json["status"], status_columns(CommandStatus::TimedOut).0);
    }
}
