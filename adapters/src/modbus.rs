//! Modbus TCP link (filled in below).
