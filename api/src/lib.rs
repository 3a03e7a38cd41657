//! Gatehouse's people-facing layer: REST for admins, WebSocket sessions for phones,
//! authentication and authorization. It turns requests into messages to the actors and knows
//! nothing of SQL or Modbus.
//!
//! Empty in this build: it arrives with the people-facing issue. The crate exists so that its
//! place in the dependency graph (`api` → `actors`, never `adapters`) is fixed from the start.
