//! Typed ids, so a lease id can never be passed where a resource id is meant,
//! and object references (`lease:5`) used as task keys, lock names and
//! command targets.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

typed_id!(
    /// Id of a blueprint (a configured blueprint implementation).
    BlueprintId
);
typed_id!(
    /// Id of a resource built from a blueprint.
    ResourceId
);
typed_id!(
    /// Id of a lease on a resource.
    LeaseId
);
typed_id!(
    /// Id of a command in the command queue.
    CommandId
);
typed_id!(
    /// Id of a task in the durable task queue.
    TaskId
);
typed_id!(
    /// Id of a log event.
    LogId
);
typed_id!(
    /// Id of an authorization (object X may use blueprint B).
    AuthorizationId
);

/// The kinds of object that have update workers, locks and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Lease,
    Resource,
    Blueprint,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lease => "lease",
            Self::Resource => "resource",
            Self::Blueprint => "blueprint",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "lease" => Some(Self::Lease),
            "resource" => Some(Self::Resource),
            "blueprint" => Some(Self::Blueprint),
            _ => None,
        }
    }
}

/// A reference to one lease, resource or blueprint.
///
/// Its string form `kind:id` is the key of the object's update task (at most
/// one queued per object), the name of its object lock and the owner name of
/// its slot locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub id: i64,
}

impl ObjectRef {
    pub fn lease(id: LeaseId) -> Self {
        Self {
            kind: ObjectKind::Lease,
            id: id.0,
        }
    }

    pub fn resource(id: ResourceId) -> Self {
        Self {
            kind: ObjectKind::Resource,
            id: id.0,
        }
    }

    pub fn blueprint(id: BlueprintId) -> Self {
        Self {
            kind: ObjectKind::Blueprint,
            id: id.0,
        }
    }

    /// Key of this object's update task, object lock and slot-lock owner.
    pub fn key(self) -> String {
        self.to_string()
    }

    /// Task kind of this object's update worker.
    pub fn update_task_kind(self) -> &'static str {
        match self.kind {
            ObjectKind::Lease => "lease.update",
            ObjectKind::Resource => "resource.update",
            ObjectKind::Blueprint => "blueprint.update",
        }
    }

    /// Parse `kind:id`.
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, id) = s.split_once(':')?;
        Some(Self {
            kind: ObjectKind::parse(kind)?,
            id: id.parse().ok().filter(|i| *i > 0)?,
        })
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_refs_round_trip_through_their_key() {
        for r in [
            ObjectRef::lease(LeaseId(5)),
            ObjectRef::resource(ResourceId(17)),
            ObjectRef::blueprint(BlueprintId(1)),
        ] {
            assert_eq!(ObjectRef::parse(&r.key()), Some(r));
        }
        assert_eq!(ObjectRef::lease(LeaseId(5)).key(), "lease:5");
        for bad in [
            "", "lease", "lease:", "lease:x", "lease:-1", "lease:0", "task:3", ":3",
        ] {
            assert_eq!(ObjectRef::parse(bad), None, "{bad:?} must not parse");
        }
    }
}
