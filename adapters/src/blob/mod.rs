//! The blob port's implementations: a local directory (the default) and S3.

pub mod local;
