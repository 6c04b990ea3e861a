//! Drydock's domain model: typed ids, object references, statuses with their
//! transition tables, commands, log types and the error taxonomy.
//!
//! This crate does no I/O (no database, no network, no clock reads): every
//! other crate consults it, and it can be tested in isolation.

mod ids;
pub mod input;
mod status;

pub use ids::{
    AuthorizationId, BlueprintId, CommandId, LeaseId, LogId, ObjectKind, ObjectRef, ResourceId,
    TaskId,
};
pub use status::{
    LEASE_TRANSITIONS, LeaseStatus, RESOURCE_TRANSITIONS, ResourceStatus, StatusParseError,
    Transition,
};

use serde::{Deserialize, Serialize};

/// A command sent to a lease or resource through the command queue (spec §9).
///
/// Only the target's update worker consumes commands; everybody else (web, API,
/// CLI, garbage collector, lease holders) sends them. That is the single-writer
/// invariant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandKind {
    /// Release the target (lease or resource).
    Release,
    /// Release a resource only if it is still reclaimable when consumed.
    Reclaim,
    /// Extend a lease's `until` (payload: `{"until": epoch_ms}`).
    Renew,
}

impl CommandKind {
    pub const ALL: [CommandKind; 3] = [Self::Release, Self::Reclaim, Self::Renew];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Reclaim => "reclaim",
            Self::Renew => "renew",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether this command may be sent to an object of `kind`.
    pub fn valid_for(self, kind: ObjectKind) -> bool {
        match self {
            Self::Release => matches!(kind, ObjectKind::Lease | ObjectKind::Resource),
            Self::Reclaim => kind == ObjectKind::Resource,
            Self::Renew => kind == ObjectKind::Lease,
        }
    }
}

impl std::fmt::Display for CommandKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch: the one time representation stored in
/// the database.
pub type EpochMs = i64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_kinds_round_trip_and_validate_targets() {
        for c in CommandKind::ALL {
            assert_eq!(CommandKind::parse(c.as_str()), Some(c));
        }
        assert_eq!(CommandKind::parse("explode"), None);
        assert!(CommandKind::Release.valid_for(ObjectKind::Lease));
        assert!(CommandKind::Release.valid_for(ObjectKind::Resource));
        assert!(!CommandKind::Release.valid_for(ObjectKind::Blueprint));
        assert!(!CommandKind::Reclaim.valid_for(ObjectKind::Lease));
        assert!(!CommandKind::Renew.valid_for(ObjectKind::Resource));
    }
}
