//! Implementations of the ports owned by `gatehouse-actors`: the Modbus link (TCP, RTU over TCP, RTU on a serial line) and the
//! register profiles that drive it, and the SQL store (SQLite and PostgreSQL). The only crate
//! that knows Modbus frames or SQL.

pub mod blob;
pub mod late_replies;
pub mod mail;
pub mod modbus;
pub mod profile;
pub mod quiet_line;
pub mod redis_bus;
pub mod redis_limits;
pub mod store;
pub mod toml_text;
