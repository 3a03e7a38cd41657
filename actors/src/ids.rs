//! Identifiers. Sites, controllers and gates carry admin-chosen slugs (the same string in the
//! fleet file, in REST paths and on the WebSocket); commands carry client-chosen UUIDs.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest slug we accept. Slugs appear in URLs, registry names and log lines.
pub const MAX_SLUG_LEN: usize = 64;

/// Why a string is not a valid slug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlugError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_SLUG_LEN} characters, got {0}")]
    TooLong(usize),
    #[error("must start with a lowercase letter or digit")]
    BadStart,
    #[error("may contain only lowercase letters, digits and '-', found {0:?}")]
    BadChar(char),
}

/// Checks `[a-z0-9][a-z0-9-]*`, at most [`MAX_SLUG_LEN`] characters.
pub fn validate_slug(s: &str) -> Result<(), SlugError> {
    let mut chars = s.chars();
    let first = chars.next().ok_or(SlugError::Empty)?;
    if s.len() > MAX_SLUG_LEN {
        return Err(SlugError::TooLong(s.len()));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(SlugError::BadStart);
    }
    match chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        Some(c) => Err(SlugError::BadChar(c)),
        None => Ok(()),
    }
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        /// Cheap to clone: the text is shared.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s` as a slug.
            pub fn new(s: &str) -> Result<Self, SlugError> {
                validate_slug(s)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = SlugError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(|e| serde::de::Error::custom(format!("invalid id {s:?}: {e}")))
            }
        }
    };
}

slug_id!(
    /// A site (a car park, a residence): groups controllers and carries a time zone.
    SiteId
);
slug_id!(
    /// A controller: one Modbus endpoint, one link actor.
    ControllerId
);
slug_id!(
    /// A gate: one gate actor, one unit id on its controller.
    GateId
);
slug_id!(
    /// A node of a cluster (`[cluster] node_id`): one `gatehouse serve` process.
    NodeId
);

/// A command's client-chosen id; the idempotency key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandId(pub uuid::Uuid);

impl CommandId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_the_contract() {
        assert!(GateId::new("north-barrier-2").is_ok());
        assert!(GateId::new("0gate").is_ok());
        assert_eq!(GateId::new(""), Err(SlugError::Empty));
        assert_eq!(GateId::new("-x"), Err(SlugError::BadStart));
        assert_eq!(GateId::new("Gate"), Err(SlugError::BadStart));
        assert_eq!(GateId::new("gate_1"), Err(SlugError::BadChar('_')));
        assert_eq!(GateId::new(&"a".repeat(65)), Err(SlugError::TooLong(65)));
        assert!(GateId::new(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn slug_deserialization_names_the_problem() {
        let err = serde_json::from_str::<GateId>("\"Bad Id\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid id \"Bad Id\""), "{err}");
    }
}
