//! The fleet configuration tables (sites, controllers, gates): loading them, and applying a
//! batch of changes in one transaction.
//!
//! Changes apply in order, with the same rules as `FleetRecords::apply` in the actors crate:
//! removing something that does not exist, or that still has children, is refused at that
//! point. Foreign keys are deferred to the end of the transaction so that upserts may come
//! in any order (a gate before its new controller); before committing, the store checks the
//! references of everything the batch upserted itself, so that a bad reference is refused
//! with a message naming it rather than a bare constraint error. Any refusal rolls the
//! whole batch back.

use std::collections::BTreeSet;

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use gatehouse_actors::ids::{ControllerId, GateId, SiteId, SlugError};
use gatehouse_actors::store::{
    ControllerRecord, FleetChange, FleetRecords, GateRecord, Parity, SerialSettings, SiteRecord,
    Transport,
};

use super::error::Error;
use super::schema::{controllers, gates, sites};
use super::{Conn, defer_foreign_keys};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = sites)]
struct SiteRow {
    id: String,
    name: String,
    timezone: String,
}

// `treat_none_as_null`: an upsert that clears an optional setting must write NULL, not
// leave the old value. `treat_none_as_default_value = false`: the same for inserts.
#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = controllers)]
#[diesel(treat_none_as_null = true, treat_none_as_default_value = false)]
struct ControllerRow {
    id: String,
    site: String,
    profile: String,
    endpoint: String,
    request_timeout_ms: Option<i64>,
    inter_frame_delay_ms: Option<i64>,
    poll_interval_ms: Option<i64>,
    timeouts_before_down: Option<i64>,
    transport: String,
    serial_device: Option<String>,
    serial_baud: Option<i64>,
    serial_parity: Option<String>,
    serial_data_bits: Option<i64>,
    serial_stop_bits: Option<i64>,
}

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = gates)]
#[diesel(treat_none_as_null = true, treat_none_as_default_value = false)]
struct GateRow {
    id: String,
    controller: String,
    unit: i32,
    name: String,
    travel_timeout_s: i64,
    auto_close_after_s: Option<i64>,
    left_open_alert_after_s: Option<i64>,
}

/// The whole fleet, each list ordered by id, read from one snapshot.
pub(super) async fn load(conn: &mut Conn) -> Result<FleetRecords, Error> {
    let (sites, controllers, gates) = read_tx!(conn, |c| {
        let sites = sites::table
            .select(SiteRow::as_select())
            .order(sites::id.asc())
            .load(c)
            .await?;
        let controllers = controllers::table
            .select(ControllerRow::as_select())
            .order(controllers::id.asc())
            .load(c)
            .await?;
        let gates = gates::table
            .select(GateRow::as_select())
            .order(gates::id.asc())
            .load(c)
            .await?;
        Ok::<_, Error>((sites, controllers, gates))
    })?;
    Ok(FleetRecords {
        sites: sites
            .into_iter()
            .map(SiteRow::decode)
            .collect::<Result<_, _>>()?,
        controllers: controllers
            .into_iter()
            .map(ControllerRow::decode)
            .collect::<Result<_, _>>()?,
        gates: gates
            .into_iter()
            .map(GateRow::decode)
            .collect::<Result<_, _>>()?,
    })
}

/// Applies `changes` in one transaction: all or nothing.
pub(super) async fn apply(conn: &mut Conn, changes: Vec<FleetChange>) -> Result<(), Error> {
    // Encode first: a value the database cannot hold refuses the batch before it starts.
    let changes = changes
        .into_iter()
        .map(Encoded::new)
        .collect::<Result<Vec<_>, _>>()?;
    let changes = &changes;
    write_tx!(conn, |c| {
        c.batch_execute(defer_foreign_keys(&*c)).await?;
        let mut upserted_controllers = BTreeSet::new();
        let mut upserted_gates = BTreeSet::new();
        for change in changes {
            match change {
                Encoded::UpsertSite(row) => {
                    diesel::insert_into(sites::table)
                        .values(row)
                        .on_conflict(sites::id)
                        .do_update()
                        .set(row)
                        .execute(c)
                        .await?;
                }
                Encoded::RemoveSite(id) => {
                    let children: Vec<String> = controllers::table
                        .filter(controllers::site.eq(id))
                        .select(controllers::id)
                        .order(controllers::id.asc())
                        .load(c)
                        .await?;
                    if !children.is_empty() {
                        return Err(Error::Rejected(format!(
                            "site {id} still has controllers: {}",
                            children.join(", ")
                        )));
                    }
                    let removed = diesel::delete(sites::table.filter(sites::id.eq(id)))
                        .execute(c)
                        .await?;
                    if removed == 0 {
                        return Err(Error::Rejected(format!("no site {id}")));
                    }
                }
                Encoded::UpsertController(row) => {
                    diesel::insert_into(controllers::table)
                        .values(row)
                        .on_conflict(controllers::id)
                        .do_update()
                        .set(row)
                        .execute(c)
                        .await?;
                    upserted_controllers.insert(row.id.as_str());
                }
                Encoded::RemoveController(id) => {
                    let children: Vec<String> = gates::table
                        .filter(gates::controller.eq(id))
                        .select(gates::id)
                        .order(gates::id.asc())
                        .load(c)
                        .await?;
                    if !children.is_empty() {
                        return Err(Error::Rejected(format!(
                            "controller {id} still has gates: {}",
                            children.join(", ")
                        )));
                    }
                    let removed = diesel::delete(controllers::table.filter(controllers::id.eq(id)))
                        .execute(c)
                        .await?;
                    if removed == 0 {
                        return Err(Error::Rejected(format!("no controller {id}")));
                    }
                }
                Encoded::UpsertGate(row) => {
                    diesel::insert_into(gates::table)
                        .values(row)
                        .on_conflict(gates::id)
                        .do_update()
                        .set(row)
                        .execute(c)
                        .await?;
                    upserted_gates.insert(row.id.as_str());
                }
                Encoded::RemoveGate(id) => {
                    let removed = diesel::delete(gates::table.filter(gates::id.eq(id)))
                        .execute(c)
                        .await?;
                    if removed == 0 {
                        return Err(Error::Rejected(format!("no gate {id}")));
                    }
                }
            }
        }

        // References of what this batch wrote, as they stand at the end of it.
        if !upserted_controllers.is_empty() {
            let parents: Vec<(String, String)> = controllers::table
                .filter(controllers::id.eq_any(upserted_controllers.iter().copied()))
                .select((controllers::id, controllers::site))
                .load(c)
                .await?;
            let wanted: BTreeSet<&str> = parents.iter().map(|(_, s)| s.as_str()).collect();
            let found: BTreeSet<String> = sites::table
                .filter(sites::id.eq_any(wanted.iter().copied()))
                .select(sites::id)
                .load::<String>(c)
                .await?
                .into_iter()
                .collect();
            if let Some((id, site)) = parents.iter().find(|(_, s)| !found.contains(s)) {
                return Err(Error::Rejected(format!(
                    "controller {id} refers to unknown site {site}"
                )));
            }
        }
        if !upserted_gates.is_empty() {
            let parents: Vec<(String, String)> = gates::table
                .filter(gates::id.eq_any(upserted_gates.iter().copied()))
                .select((gates::id, gates::controller))
                .load(c)
                .await?;
            let wanted: BTreeSet<&str> = parents.iter().map(|(_, s)| s.as_str()).collect();
            let found: BTreeSet<String> = controllers::table
                .filter(controllers::id.eq_any(wanted.iter().copied()))
                .select(controllers::id)
                .load::<String>(c)
                .await?
                .into_iter()
                .collect();
            if let Some((id, controller)) = parents.iter().find(|(_, s)| !found.contains(s)) {
                return Err(Error::Rejected(format!(
                    "gate {id} refers to unknown controller {controller}"
                )));
            }
        }
        Ok::<_, Error>(())
    })
}

/// A change with its values in the database's types.
enum Encoded {
    UpsertSite(SiteRow),
    RemoveSite(String),
    UpsertController(ControllerRow),
    RemoveController(String),
    UpsertGate(GateRow),
    RemoveGate(String),
}

impl Encoded {
    fn new(change: FleetChange) -> Result<Encoded, Error> {
        Ok(match change {
            FleetChange::UpsertSite(s) => Encoded::UpsertSite(SiteRow {
                id: s.id.as_str().to_owned(),
                name: s.name,
                timezone: s.timezone,
            }),
            FleetChange::RemoveSite(id) => Encoded::RemoveSite(id.as_str().to_owned()),
            FleetChange::UpsertController(c) => {
                let what = |field: &str| format!("controller {}: {field}", c.id);
                Encoded::UpsertController(ControllerRow {
                    id: c.id.as_str().to_owned(),
                    site: c.site.as_str().to_owned(),
                    request_timeout_ms: opt_to_db(c.request_timeout_ms, || {
                        what("request_timeout_ms")
                    })?,
                    inter_frame_delay_ms: opt_to_db(c.inter_frame_delay_ms, || {
                        what("inter_frame_delay_ms")
                    })?,
                    poll_interval_ms: opt_to_db(c.poll_interval_ms, || what("poll_interval_ms"))?,
                    timeouts_before_down: opt_to_db(c.timeouts_before_down, || {
                        what("timeouts_before_down")
                    })?,
                    transport: c.transport.as_str().to_owned(),
                    serial_device: c.serial.device,
                    serial_baud: c.serial.baud.map(i64::from),
                    serial_parity: c.serial.parity.map(|p| p.as_str().to_owned()),
                    serial_data_bits: c.serial.data_bits.map(i64::from),
                    serial_stop_bits: c.serial.stop_bits.map(i64::from),
                    profile: c.profile,
                    endpoint: c.endpoint,
                })
            }
            FleetChange::RemoveController(id) => Encoded::RemoveController(id.as_str().to_owned()),
            FleetChange::UpsertGate(g) => {
                let what = |field: &str| format!("gate {}: {field}", g.id);
                Encoded::UpsertGate(GateRow {
                    id: g.id.as_str().to_owned(),
                    controller: g.controller.as_str().to_owned(),
                    unit: i32::from(g.unit),
                    travel_timeout_s: to_db(g.travel_timeout_s, || what("travel_timeout_s"))?,
                    auto_close_after_s: opt_to_db(g.auto_close_after_s, || {
                        what("auto_close_after_s")
                    })?,
                    left_open_alert_after_s: opt_to_db(g.left_open_alert_after_s, || {
                        what("left_open_alert_after_s")
                    })?,
                    name: g.name,
                })
            }
            FleetChange::RemoveGate(id) => Encoded::RemoveGate(id.as_str().to_owned()),
        })
    }
}

impl SiteRow {
    fn decode(self) -> Result<SiteRecord, Error> {
        Ok(SiteRecord {
            id: slug(SiteId::new(&self.id), "site", &self.id)?,
            name: self.name,
            timezone: self.timezone,
        })
    }
}

impl ControllerRow {
    fn decode(self) -> Result<ControllerRecord, Error> {
        let what = |field: &str| format!("controller {}: {field}", self.id);
        Ok(ControllerRecord {
            id: slug(ControllerId::new(&self.id), "controller", &self.id)?,
            site: slug(SiteId::new(&self.site), "site", &self.site)?,
            request_timeout_ms: opt_from_db(self.request_timeout_ms, || {
                what("request_timeout_ms")
            })?,
            inter_frame_delay_ms: opt_from_db(self.inter_frame_delay_ms, || {
                what("inter_frame_delay_ms")
            })?,
            poll_interval_ms: opt_from_db(self.poll_interval_ms, || what("poll_interval_ms"))?,
            timeouts_before_down: opt_from_db(self.timeouts_before_down, || {
                what("timeouts_before_down")
            })?,
            transport: self
                .transport
                .parse::<Transport>()
                .map_err(|e| Error::Other(what(&e)))?,
            serial: SerialSettings {
                baud: narrow(self.serial_baud, || what("serial_baud"))?,
                parity: self
                    .serial_parity
                    .map(|p| p.parse::<Parity>())
                    .transpose()
                    .map_err(|e| Error::Other(what(&e)))?,
                data_bits: narrow(self.serial_data_bits, || what("serial_data_bits"))?,
                stop_bits: narrow(self.serial_stop_bits, || what("serial_stop_bits"))?,
                device: self.serial_device,
            },
            profile: self.profile,
            endpoint: self.endpoint,
        })
    }
}

impl GateRow {
    fn decode(self) -> Result<GateRecord, Error> {
        let what = |field: &str| format!("gate {}: {field}", self.id);
        Ok(GateRecord {
            id: slug(GateId::new(&self.id), "gate", &self.id)?,
            controller: slug(
                ControllerId::new(&self.controller),
                "controller",
                &self.controller,
            )?,
            unit: u8::try_from(self.unit).map_err(|_| {
                Error::Other(format!("{}: {} is not a unit id", what("unit"), self.unit))
            })?,
            travel_timeout_s: from_db(self.travel_timeout_s, || what("travel_timeout_s"))?,
            auto_close_after_s: opt_from_db(self.auto_close_after_s, || {
                what("auto_close_after_s")
            })?,
            left_open_alert_after_s: opt_from_db(self.left_open_alert_after_s, || {
                what("left_open_alert_after_s")
            })?,
            name: self.name,
        })
    }
}

fn slug<T>(parsed: Result<T, SlugError>, kind: &str, raw: &str) -> Result<T, Error> {
    parsed.map_err(|e| Error::Other(format!("stored {kind} id {raw:?} is invalid: {e}")))
}

/// A u64 setting into a BIGINT column. Values past i64::MAX cannot be stored: refused.
pub(super) fn to_db(v: u64, what: impl Fn() -> String) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::Rejected(format!("{}: {v} is too large to store", what())))
}

fn opt_to_db(v: Option<u64>, what: impl Fn() -> String) -> Result<Option<i64>, Error> {
    v.map(|v| to_db(v, what)).transpose()
}

/// A BIGINT column back into a u64: a negative value was not written by us.
pub(super) fn from_db(v: i64, what: impl Fn() -> String) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| Error::Other(format!("{}: stored value {v} is negative", what())))
}

/// A BIGINT column back into a smaller integer; a value that does not fit was not written
/// by us.
fn narrow<T: TryFrom<i64>>(v: Option<i64>, what: impl Fn() -> String) -> Result<Option<T>, Error> {
    v.map(|v| {
        T::try_from(v)
            .map_err(|_| Error::Other(format!("{}: stored value {v} is out of range", what())))
    })
    .transpose()
}

fn opt_from_db(v: Option<i64>, what: impl Fn() -> String) -> Result<Option<u64>, Error> {
    v.map(|v| from_db(v, what)).transpose()
}
