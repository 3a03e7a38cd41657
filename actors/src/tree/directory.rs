//! The directory of this node's gate and link actors. Gate and link actors enter themselves
//! when they start and leave when they stop, so a restarted actor is found without anyone
//! being told. A per-fleet table rather than ractor's global registry, so that several fleets
//! (tests) live in one process.

use std::collections::HashMap;
use std::sync::RwLock;

use ractor::ActorId;

use super::gate::GateRef;
use super::link::LinkRef;
use crate::ids::{ControllerId, GateId};

/// Who is where, for the actors of this node. Gate and link actors enter themselves when they
/// start and leave when they stop, so a restarted actor is found without anyone being told.
#[derive(Default)]
pub struct Directory {
    gates: RwLock<HashMap<GateId, GateRef>>,
    links: RwLock<HashMap<ControllerId, LinkRef>>,
}

impl Directory {
    pub fn gate(&self, id: &GateId) -> Option<GateRef> {
        self.gates.read().ok()?.get(id).cloned()
    }

    pub fn link(&self, id: &ControllerId) -> Option<LinkRef> {
        self.links.read().ok()?.get(id).cloned()
    }

    pub fn gate_ids(&self) -> Vec<GateId> {
        self.gates
            .read()
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn insert_gate(&self, id: GateId, r: GateRef) {
        if let Ok(mut g) = self.gates.write() {
            g.insert(id, r);
        }
    }

    pub(crate) fn remove_gate(&self, id: &GateId, actor: ActorId) {
        if let Ok(mut g) = self.gates.write()
            && g.get(id).is_some_and(|r| r.get_id() == actor)
        {
            g.remove(id);
        }
    }

    pub(crate) fn insert_link(&self, id: ControllerId, r: LinkRef) {
        if let Ok(mut l) = self.links.write() {
            l.insert(id, r);
        }
    }

    pub(crate) fn remove_link(&self, id: &ControllerId) {
        if let Ok(mut l) = self.links.write() {
            l.remove(id);
        }
    }
}
