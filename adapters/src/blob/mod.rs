//! The blob port's implementations (`gatehouse_actors::blob`): a local directory (the
//! default) and S3.

pub mod local;
pub mod s3;
