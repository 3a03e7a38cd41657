//! The gate: its vocabulary ([`types`]), its pure state machine ([`machine`]) and the event it
//! emits ([`event`]).

pub mod event;
pub mod machine;
pub mod types;

pub use event::GateEvent;
pub use machine::{
    Admission, Effect, GateConfig, GateMachine, Input, Write, WriteResult, WriteTag,
};
pub use types::*;
