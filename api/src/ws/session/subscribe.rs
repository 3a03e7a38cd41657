//! Following gates: `subscribe` (a snapshot at the committed seq, the replay after `since`,
//! then live events, per gate in that order), `unsubscribe`, and the store reads that fill a
//! gap in a live stream or resynchronise every stream after the hub lost events.

use std::collections::BTreeMap;

use gatehouse_actors::access::{Denial, Operation};
use gatehouse_actors::gate::GateSnapshot;
use gatehouse_actors::ids::{GateId, SiteId};
use serde_json::{Value, json};

use super::{SessionState, Sub};
use crate::policy::{self, forbidden};
use crate::wire;
use crate::ws::outbox::Release;
use crate::ws::protocol;

impl SessionState {
    pub(super) fn unsubscribe(&mut self, id: Option<&str>, gates: &[String], sites: &[String]) {
        let mut gone: Vec<GateId> = gates
            .iter()
            .filter_map(|g| g.parse::<GateId>().ok())
            .filter(|g| self.subs.contains_key(g))
            .collect();
        gone.extend(
            self.subs
                .iter()
                .filter(|(_, s)| sites.iter().any(|site| site == s.site.as_str()))
                .map(|(g, _)| g.clone()),
        );
        self.hub.unsubscribe(self.me.get_id(), gone.iter());
        for g in &gone {
            self.subs.remove(g);
            self.outbox.forget(g);
        }
        self.send(protocol::bare("ok", id));
    }

    pub(super) async fn subscribe(
        &mut self,
        id: Option<&str>,
        gates: Vec<String>,
        sites: Vec<String>,
        since: BTreeMap<String, u64>,
    ) {
        // Everything is checked before anything changes.
        let mut wanted: Vec<(GateId, SiteId)> = Vec::new();
        for name in &gates {
            let Some((gate, site)) = name
                .parse::<GateId>()
                .ok()
                .and_then(|g| policy::locate(&self.app, &g).map(|at| (g, at.site)))
            else {
                return self.error(
                    id,
                    "unknown_gate",
                    &format!("no gate {name}"),
                    Some(json!({ "gate": name })),
                );
            };
            if let Err(denial) = self.may_read(&gate, &site) {
                let e = forbidden(denial);
                let mut details = e.details.clone();
                details["gate"] = json!(name);
                return self.error(id, "forbidden", "not allowed", Some(details));
            }
            wanted.push((gate, site));
        }
        if !sites.is_empty() {
            let places = self.app.fleet.places();

            for name in &sites {
                // The site limit first, so that a limited key cannot probe other sites' names.
                if let Some(limit) = &self.caller().principal.site
                    && limit.as_str() != name
                {
                    let e = forbidden(Denial::OtherSite);
                    let mut details = e.details.clone();
                    details["site"] = json!(name);
                    return self.error(id, "forbidden", "not allowed", Some(details));
                }
                let exists = name
                    .parse::<SiteId>()
                    .is_ok_and(|site| self.app.fleet.site_timezone(&site).is_some())
                    || places.iter().any(|(_, p)| p.site.as_str() == name);
                if !exists {
                    return self.error(
                        id,
                        "unknown_site",
                        &format!("no site {name}"),
                        Some(json!({ "site": name })),
                    );
                }
                for (gate, place) in places.iter().filter(|(_, p)| p.site.as_str() == name) {
                    // A site brings the gates of it the caller may read.
                    if self.may_read(gate, &place.site).is_ok() {
                        wanted.push((gate.clone(), place.site.clone()));
                    }
                }
            }
        }
        wanted.sort_by(|a, b| a.0.cmp(&b.0));
        wanted.dedup_by(|a, b| a.0 == b.0);
        let total = wanted
            .iter()
            .filter(|(g, _)| !self.subs.contains_key(g))
            .count()
            + self.subs.len();
        if total > self.config.max_subscriptions {
            return self.error(
                id,
                "too_many_gates",
                &format!(
                    "a session follows at most {} gates",
                    self.config.max_subscriptions
                ),
                None,
            );
        }
        if let Some(stray) = since
            .keys()
            .find(|g| !wanted.iter().any(|(w, _)| w.as_str() == g.as_str()))
        {
            return self.error(
                id,
                "invalid_message",
                &format!("since: gate {stray} is not subscribed by this request"),
                Some(json!({ "gate": stray })),
            );
        }

        let ids: Vec<GateId> = wanted.iter().map(|(g, _)| g.clone()).collect();
        // Held first, so that live events wait behind the snapshot and the replay; recorded
        // first, so that a session stopped half way still deregisters them.
        for (gate, site) in &wanted {
            self.outbox.hold(gate);
            self.subs.insert(gate.clone(), Sub { site: site.clone() });
        }
        let latest = self.hub.subscribe(self.me.get_id(), &self.outbox, &ids);
        let mut entries = Vec::with_capacity(ids.len());
        let mut replays = Vec::new();
        let mut heads = Vec::with_capacity(ids.len());
        let mut budget = self.config.max_replay;
        for ((gate, site), latest) in wanted.into_iter().zip(latest) {
            let (seq, snapshot): (u64, GateSnapshot) = match latest {
                Some(l) => (l.event.seq, l.event.snapshot),
                None => match policy::gate_view(&self.app, &gate).await {
                    Some(view) => (view.committed, view.snapshot),
                    // Removed a moment ago: nothing to follow.
                    None => {
                        self.hub
                            .unsubscribe(self.me.get_id(), std::iter::once(&gate));
                        self.outbox.forget(&gate);
                        self.subs.remove(&gate);
                        continue;
                    }
                },
            };
            let mut entry = wire::gate_state(gate.as_str(), seq, &snapshot);
            entry.insert("site".into(), site.as_str().into());
            if let Some(&after) = since.get(gate.as_str())
                && after < seq
            {
                // The newest missed events, within the per-request budget.
                let missed = seq - after;
                let take = missed.min(self.config.max_replay_per_gate).min(budget);
                budget -= take;
                // `replay_from` above `since + 1` tells the client what it must fetch over
                // REST; with the budget spent it is `seq + 1`: nothing replayed.
                let from = seq - take + 1;
                entry.insert("replay_from".into(), from.into());
                if take > 0 {
                    replays.push((gate.clone(), from, seq));
                }
            }
            entries.push(Value::Object(entry));
            heads.push((gate, seq));
        }
        self.send(protocol::frame(
            "snapshot",
            id,
            protocol::fields(json!({ "gates": entries })),
        ));
        let mut unavailable = Vec::new();
        for (gate, from, to) in replays {
            if self.replay(&gate, from, to).await.is_err() {
                unavailable.push(gate.to_string());
            }
        }
        for (gate, seq) in heads {
            self.release(&gate, seq).await;
        }
        if !unavailable.is_empty() {
            self.error(
                id,
                "replay_unavailable",
                "the event store is unavailable; these gates continue live without the replay (fetch it later from /api/v1/gates/{gate}/events)",
                Some(json!({ "gates": unavailable })),
            );
        }
    }

    pub(super) fn may_read(&self, gate: &GateId, site: &SiteId) -> Result<(), Denial> {
        policy::may(&self.app, self.caller(), Operation::Read, gate, site)
    }

    /// Queues the committed events `from..=to` of `gate` (`to` may be `u64::MAX`: everything
    /// stored). Answers the last seq queued (`from - 1` when none), or an error when the
    /// store failed.
    async fn replay(&mut self, gate: &GateId, from: u64, to: u64) -> Result<u64, ()> {
        let mut after = from.saturating_sub(1);
        while after < to {
            let limit = (to - after).min(500) as u32;
            let page = match self.app.events.since(gate.clone(), after, limit).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(%gate, error = %e, "replay from the event store failed");
                    return Err(());
                }
            };
            if page.is_empty() {
                break;
            }
            for stored in page {
                if stored.event.seq > to {
                    return Ok(after);
                }
                after = stored.event.seq;
                let frame = protocol::frame("event", None, wire::event(&stored.event));
                self.send(frame);
            }
        }
        Ok(after)
    }

    /// Lets `gate`'s held live events go, everything up to `last` being queued; fills any gap
    /// they show from the store first. A gap the store cannot fill (it is away) is skipped:
    /// the client sees the seq jump and may fetch it later over REST.
    pub(super) async fn release(&mut self, gate: &GateId, mut last: u64) {
        loop {
            match self.outbox.release(gate, last) {
                Release::Live | Release::Unknown => return,
                Release::Gap { after, before } => {
                    let _ = self.replay(gate, after + 1, before - 1).await;
                    last = before - 1;
                }
            }
        }
    }

    /// The hub lost events: hold the gate, queue whatever the store has after the last seq
    /// sent, and go live again.
    pub(super) async fn resync(&mut self, gate: &GateId) {
        if self.outbox.last(gate).is_none() {
            return;
        }
        let last = self.outbox.hold(gate);
        let newest = self.replay(gate, last + 1, u64::MAX).await.unwrap_or(last);
        self.release(gate, newest).await;
    }
}
