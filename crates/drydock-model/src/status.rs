//! Lease and resource statuses and their transition tables (spec §3), as data.
//!
//! The engine asks [`LeaseStatus::can_transition`] /
//! [`ResourceStatus::can_transition`] before every status write, so a
//! transition that is not in these tables cannot happen. Every row names its
//! single writer: for every state of every object exactly one worker writes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A status string that names no known status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} status {value:?} (expected one of: {expected})")]
pub struct StatusParseError {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

/// One allowed status change, with the code path that performs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition<S: 'static> {
    pub from: S,
    pub to: S,
    /// The one writer of this transition.
    pub writer: &'static str,
    /// What causes it.
    pub trigger: &'static str,
}

macro_rules! status_enum {
    ($name:ident, $what:literal, [$($variant:ident => $s:literal),+ $(,)?]) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            pub fn parse(s: &str) -> Result<Self, StatusParseError> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(StatusParseError {
                        what: $what,
                        value: s.to_owned(),
                        expected: [$($s),+].join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = StatusParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

status_enum!(LeaseStatus, "lease", [
    Pending => "pending",
    Acquired => "acquired",
    Active => "active",
    Released => "released",
    Broken => "broken",
    Destroyed => "destroyed",
]);

status_enum!(ResourceStatus, "resource", [
    Pending => "pending",
    Active => "active",
    Released => "released",
    Broken => "broken",
    Destroyed => "destroyed",
]);

const LEASE_WORKER: &str = "lease update worker";
const RESOURCE_WORKER: &str = "resource update worker";

/// Every lease status change (spec §3.2, with our fixes: broken leases are
/// destroyed directly, releases are idempotent).
pub const LEASE_TRANSITIONS: &[Transition<LeaseStatus>] = {
    use LeaseStatus::*;
    &[
        Transition {
            from: Pending,
            to: Acquired,
            writer: LEASE_WORKER,
            trigger: "allocator acquired a resource that activates leases later",
        },
        Transition {
            from: Pending,
            to: Active,
            writer: LEASE_WORKER,
            trigger: "allocator acquired a resource that activates leases on acquisition",
        },
        Transition {
            from: Acquired,
            to: Active,
            writer: LEASE_WORKER,
            trigger: "blueprint activated the lease",
        },
        Transition {
            from: Acquired,
            to: Pending,
            writer: LEASE_WORKER,
            trigger: "resource died between acquisition and activation (reacquire)",
        },
        Transition {
            from: Pending,
            to: Released,
            writer: LEASE_WORKER,
            trigger: "release command consumed",
        },
        Transition {
            from: Acquired,
            to: Released,
            writer: LEASE_WORKER,
            trigger: "release command consumed",
        },
        Transition {
            from: Active,
            to: Released,
            writer: LEASE_WORKER,
            trigger: "release command consumed (holder, expiry, resource release)",
        },
        Transition {
            from: Pending,
            to: Broken,
            writer: LEASE_WORKER,
            trigger: "permanent failure while allocating",
        },
        Transition {
            from: Acquired,
            to: Broken,
            writer: LEASE_WORKER,
            trigger: "permanent failure while activating",
        },
        Transition {
            from: Active,
            to: Broken,
            writer: LEASE_WORKER,
            trigger: "permanent failure while active",
        },
        Transition {
            from: Released,
            to: Destroyed,
            writer: LEASE_WORKER,
            trigger: "destroy after release",
        },
        Transition {
            from: Broken,
            to: Destroyed,
            writer: LEASE_WORKER,
            trigger: "destroy after break",
        },
    ]
};

/// Every resource status change (spec §3.3, with our fix: a broken resource
/// releases its leases before it is destroyed).
pub const RESOURCE_TRANSITIONS: &[Transition<ResourceStatus>] = {
    use ResourceStatus::*;
    &[
        Transition {
            from: Pending,
            to: Active,
            writer: RESOURCE_WORKER,
            trigger: "blueprint activated the resource",
        },
        Transition {
            from: Pending,
            to: Released,
            writer: RESOURCE_WORKER,
            trigger: "release or reclaim command consumed",
        },
        Transition {
            from: Active,
            to: Released,
            writer: RESOURCE_WORKER,
            trigger: "release or reclaim command consumed, or expiry",
        },
        Transition {
            from: Pending,
            to: Broken,
            writer: RESOURCE_WORKER,
            trigger: "permanent failure while activating",
        },
        Transition {
            from: Active,
            to: Broken,
            writer: RESOURCE_WORKER,
            trigger: "permanent failure while active",
        },
        Transition {
            from: Released,
            to: Destroyed,
            writer: RESOURCE_WORKER,
            trigger: "destroy after release",
        },
        Transition {
            from: Broken,
            to: Destroyed,
            writer: RESOURCE_WORKER,
            trigger: "destroy after break",
        },
    ]
};

impl LeaseStatus {
    pub fn can_transition(self, to: LeaseStatus) -> bool {
        LEASE_TRANSITIONS
            .iter()
            .any(|t| t.from == self && t.to == to)
    }

    /// A release command may be sent (spec §3.1 "releasable").
    pub fn is_releasable(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::Acquired | Self::Active | Self::Broken
        )
    }

    /// The update worker consumes commands and checks expiry in this status.
    pub fn is_commandable(self) -> bool {
        self.is_releasable()
    }

    /// The lease still holds (or waits for) a resource.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Pending | Self::Acquired | Self::Active)
    }

    pub fn is_terminal(self) -> bool {
        self == Self::Destroyed
    }
}

impl ResourceStatus {
    pub fn can_transition(self, to: ResourceStatus) -> bool {
        RESOURCE_TRANSITIONS
            .iter()
            .any(|t| t.from == self && t.to == to)
    }

    /// A release command may be sent. Unlike the original (spec §19.9), a
    /// broken resource is not "releasable": its own worker already destroys it.
    pub fn is_releasable(self) -> bool {
        matches!(self, Self::Pending | Self::Active)
    }

    pub fn is_commandable(self) -> bool {
        self.is_releasable()
    }

    /// Counts against a blueprint's limit.
    pub fn is_live(self) -> bool {
        !matches!(self, Self::Destroyed)
    }

    pub fn is_terminal(self) -> bool {
        self == Self::Destroyed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_reject_unknown_values() {
        for s in LeaseStatus::ALL {
            assert_eq!(LeaseStatus::parse(s.as_str()), Ok(*s));
        }
        for s in ResourceStatus::ALL {
            assert_eq!(ResourceStatus::parse(s.as_str()), Ok(*s));
        }
        let err = LeaseStatus::parse("expired").unwrap_err();
        assert!(err.to_string().contains("\"expired\""), "{err}");
        assert!(err.to_string().contains("destroyed"), "{err}");
        assert!(ResourceStatus::parse("acquired").is_err());
    }

    #[test]
    fn tables_have_one_writer_per_source_state_and_terminal_states_have_none() {
        for t in LEASE_TRANSITIONS {
            assert_eq!(t.writer, LEASE_WORKER, "{t:?}");
            assert_ne!(t.from, LeaseStatus::Destroyed);
            assert_ne!(t.from, t.to);
        }
        for t in RESOURCE_TRANSITIONS {
            assert_eq!(t.writer, RESOURCE_WORKER, "{t:?}");
            assert_ne!(t.from, ResourceStatus::Destroyed);
        }
        // No duplicate rows.
        for (i, a) in LEASE_TRANSITIONS.iter().enumerate() {
            for b in &LEASE_TRANSITIONS[i + 1..] {
                assert!(!(a.from == b.from && a.to == b.to), "duplicate {a:?}");
            }
        }
    }

    #[test]
    fn every_non_terminal_status_can_reach_destroyed() {
        fn reaches<S: Copy + PartialEq>(from: S, goal: S, table: &[Transition<S>]) -> bool {
            let mut seen = vec![from];
            let mut i = 0;
            while i < seen.len() {
                let s = seen[i];
                for t in table.iter().filter(|t| t.from == s) {
                    if !seen.contains(&t.to) {
                        seen.push(t.to);
                    }
                }
                i += 1;
            }
            seen.contains(&goal)
        }
        for s in LeaseStatus::ALL {
            assert!(
                reaches(*s, LeaseStatus::Destroyed, LEASE_TRANSITIONS),
                "{s}"
            );
        }
        for s in ResourceStatus::ALL {
            assert!(
                reaches(*s, ResourceStatus::Destroyed, RESOURCE_TRANSITIONS),
                "{s}"
            );
        }
        assert!(!LeaseStatus::Destroyed.can_transition(LeaseStatus::Released));
        assert!(!LeaseStatus::Released.can_transition(LeaseStatus::Released));
    }
}
