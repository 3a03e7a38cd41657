//! Implementations of the ports owned by `gatehouse-actors`: the Modbus TCP link and the
//! register profiles that drive it. The only crate that knows Modbus frames.

pub mod modbus;
pub mod profile;
