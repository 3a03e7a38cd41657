//! Command ids taken (`CommandIdStore`), on both backends: one row per id with its gate and
//! action. A batch of claims is one write transaction; each claim is an insert that does
//! nothing on a taken id, then (only then) a read of who has it. On PostgreSQL two nodes
//! claiming one id at once serialize on its primary key: the second insert waits for the
//! first transaction, then finds the row.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use gatehouse_actors::gate::Action;
use gatehouse_actors::ids::{CommandId, GateId};
use gatehouse_actors::ports::BoxFuture;
use gatehouse_actors::store::{Claimed, CommandClaim, CommandIdStore, StoreError};

use super::Store;
use super::error::Error;
use super::schema::command_ids;

fn ms(at_ms: u64) -> Result<i64, Error> {
    i64::try_from(at_ms).map_err(|_| Error::Other(format!("time {at_ms} ms is out of range")))
}

/// What the stored row says of a claim's id, against the claim.
fn compare(claim: &CommandClaim, gate: &str, action: &str) -> Result<Claimed, Error> {
    if gate == claim.gate.as_str() && action == claim.action.as_str() {
        return Ok(Claimed::Same);
    }
    let gate = GateId::new(gate).map_err(|e| {
        Error::Other(format!(
            "command id {}: stored gate {gate:?}: {e}",
            claim.id
        ))
    })?;
    let action = action.parse::<Action>().map_err(|_| {
        Error::Other(format!(
            "command id {}: stored action {action:?} is unknown",
            claim.id
        ))
    })?;
    Ok(Claimed::Other { gate, action })
}

async fn claim(store: &Store, claims: Vec<CommandClaim>) -> Result<Vec<Claimed>, Error> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let rows = claims
        .iter()
        .map(|c| Ok((c.id.0.to_string(), ms(c.at_ms)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    let mut conn = store.conn().await?;
    write_tx!(&mut conn, |c| {
        let mut answers = Vec::with_capacity(claims.len());
        for (claim, (id, at)) in claims.iter().zip(&rows) {
            let inserted = diesel::insert_into(command_ids::table)
                .values((
                    command_ids::id.eq(id),
                    command_ids::gate_id.eq(claim.gate.as_str()),
                    command_ids::action.eq(claim.action.as_str()),
                    command_ids::claimed_at.eq(*at),
                ))
                .on_conflict_do_nothing()
                .execute(c)
                .await?;
            if inserted == 1 {
                answers.push(Claimed::New);
                continue;
            }
            let (gate, action): (String, String) = command_ids::table
                .find(id)
                .select((command_ids::gate_id, command_ids::action))
                .first(c)
                .await?;
            answers.push(compare(claim, &gate, &action)?);
        }
        Ok::<_, Error>(answers)
    })
}

async fn recent(store: &Store, since_ms: u64, limit: u32) -> Result<Vec<CommandClaim>, Error> {
    let since = ms(since_ms)?;
    let mut conn = store.conn().await?;
    let rows: Vec<(String, String, String, i64)> = with_conn!(&mut conn, |c| {
        command_ids::table
            .filter(command_ids::claimed_at.ge(since))
            .order(command_ids::claimed_at.desc())
            .limit(i64::from(limit))
            .select((
                command_ids::id,
                command_ids::gate_id,
                command_ids::action,
                command_ids::claimed_at,
            ))
            .load(c)
            .await
    })?;
    rows.into_iter()
        .rev()
        .map(|(id, gate, action, at)| {
            let bad = |what: &str| Error::Other(format!("command id {id}: stored {what}"));
            Ok(CommandClaim {
                id: CommandId(uuid::Uuid::parse_str(&id).map_err(|_| bad("id"))?),
                gate: GateId::new(&gate).map_err(|_| bad("gate"))?,
                action: action.parse::<Action>().map_err(|_| bad("action"))?,
                at_ms: u64::try_from(at).map_err(|_| bad("time"))?,
            })
        })
        .collect()
}

async fn forget(store: &Store, before_ms: u64) -> Result<u64, Error> {
    let before = ms(before_ms)?;
    let mut conn = store.conn().await?;
    let n = with_conn!(&mut conn, |c| {
        diesel::delete(command_ids::table.filter(command_ids::claimed_at.lt(before)))
            .execute(c)
            .await
    })?;
    Ok(n as u64)
}

impl CommandIdStore for Store {
    fn claim_commands(
        &self,
        claims: Vec<CommandClaim>,
    ) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
        Box::pin(async move { claim(self, claims).await.map_err(Error::into_store) })
    }

    fn forget_commands(&self, before_ms: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move { forget(self, before_ms).await.map_err(Error::into_store) })
    }

    fn recent_commands(
        &self,
        since_ms: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<CommandClaim>, StoreError>> {
        Box::pin(async move {
            recent(self, since_ms, limit)
                .await
                .map_err(Error::into_store)
        })
    }
}
