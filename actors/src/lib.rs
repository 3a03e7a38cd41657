//! Gatehouse's domain and actor tree: the pure gate state machine, the supervision toolkit,
//! and the actors (root, event log, fleet, controller, link, gate). No I/O of its own: the
//! outside world is reached through the traits in [`ports`], implemented in
//! `gatehouse-adapters`.

pub mod access;
pub mod blob;
pub mod clock;
pub mod cluster;
pub mod fleet_config;
pub mod gate;
pub mod ids;
pub mod maintenance;
pub mod notify;
pub mod ports;
pub mod report;
pub mod stats;
pub mod store;
pub mod supervision;
pub mod telemetry;
pub mod tree;
