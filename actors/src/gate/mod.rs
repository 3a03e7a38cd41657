//! The gate: its vocabulary ([`types`]) and its pure state machine ([`machine`]).

pub mod machine;
pub mod types;

pub use machine::{
    Admission, Effect, GateConfig, GateMachine, Input, Write, WriteResult, WriteTag,
};
pub use types::*;
