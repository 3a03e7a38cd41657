//! Implementations of the blob port (`gatehouse_actors::blob`).

pub mod s3;
