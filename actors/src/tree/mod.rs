//! The supervision tree: one module per node. The tree as a whole, its start order and each
//! node's restart policy are drawn in [`root`]; each module draws its own subtree.
//!
//! - [`root`]: the root supervisor and the order of its children;
//! - [`eventlog`]: the event log writer (durable, group-committed appends);
//! - [`bus`]: the bus port and the in-process bus (the hub that follows it is in `api/`);
//! - [`fleet`]: the fleet supervisor and [`Fleet`], the handle on it;
//! - [`controller`]: one controller subtree (its specs and supervision constants);
//! - [`gate`], [`link`]: the leaf actors, each with the messages it accepts;
//! - [`directory`]: where a gate's or link's running actor is;
//! - [`scheduler`]: maintenance plans against the gates' cycles and dates;
//! - [`notifier`]: rules, the mail outbox and its delivery.

pub mod bus;
pub mod controller;
pub mod directory;
pub mod eventlog;
pub mod fleet;
pub mod gate;
pub mod inspect;
pub mod keeper;
pub mod link;
pub mod notifier;
pub mod reports;
pub mod root;
pub mod scheduler;

pub use controller::{ControllerFactory, ControllerSpec, GateSlot, GateSpec, Restore};
pub use directory::Directory;
pub use fleet::{Fleet, FleetContext, FleetError};
