//! Implementations of the ports owned by `gatehouse-actors`: the Modbus TCP link and the
//! register profiles that drive it, and the SQL store (SQLite and PostgreSQL). The only crate
//! that knows Modbus frames or SQL.

pub mod late_replies;
pub mod modbus;
pub mod profile;
pub mod store;
pub mod toml_text;
