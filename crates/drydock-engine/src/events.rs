//! Names the engine writes: log event types, wake-up events, and the
//! machine-readable reasons a pending lease waits.

use drydock_model::{BlueprintId, ResourceId};
use serde_json::{Value, json};

/// Log event types (spec §12; plus the resource lifecycle, which the
/// original did not log).
pub mod log {
    pub const LEASE_QUEUED: &str = "lease.queued";
    pub const LEASE_WAITING: &str = "lease.waiting";
    pub const LEASE_ACQUIRED: &str = "lease.acquired";
    pub const LEASE_ACTIVATED: &str = "lease.activated";
    pub const LEASE_REACQUIRE: &str = "lease.reacquire";
    pub const LEASE_RECLAIM: &str = "lease.reclaim";
    pub const LEASE_RENEWED: &str = "lease.renewed";
    pub const LEASE_EXPIRED: &str = "lease.expired";
    pub const LEASE_RELEASED: &str = "lease.released";
    pub const LEASE_BROKEN: &str = "lease.broken";
    pub const LEASE_DESTROYED: &str = "lease.destroyed";
    pub const RESOURCE_ALLOCATED: &str = "resource.allocated";
    pub const RESOURCE_ALLOCATION_FAILURE: &str = "resource.allocation-failure";
    pub const RESOURCE_ACTIVATED: &str = "resource.activated";
    pub const RESOURCE_RECLAIMED: &str = "resource.reclaimed";
    pub const RESOURCE_RECLAIM_REFUSED: &str = "resource.reclaim-refused";
    pub const RESOURCE_RELEASED: &str = "resource.released";
    pub const RESOURCE_BROKEN: &str = "resource.broken";
    pub const RESOURCE_DESTROY_FAILURE: &str = "resource.destroy-failure";
    pub const RESOURCE_DESTROYED: &str = "resource.destroyed";
    /// An update pass panicked (the message in `data.error`); it is retried
    /// as a temporary failure and breaks its object after the last attempt.
    pub const PASS_PANICKED: &str = "pass.panicked";
}

/// Wake-up event: capacity for resources of a type may have freed up.
pub fn capacity(resource_type: &str) -> String {
    format!("capacity:{resource_type}")
}

/// Wake-up event: a resource changed state.
pub fn resource(id: ResourceId) -> String {
    format!("resource:{id}")
}

/// Wake-up event: blueprints were created, enabled or edited.
pub const BLUEPRINTS: &str = "blueprints";

/// Wake-up event: an authorization of `object` was decided.
pub fn authorization(object: &str) -> String {
    format!("authorization:{object}")
}

/// Why a pending lease waits. Stored on the lease as JSON
/// (`{"reason": "at-limit", "blueprints": [1]}`), shown by the CLI and API.
#[derive(Clone, Debug, PartialEq)]
pub enum WaitReason {
    /// No enabled blueprint of the requested type is allowed for the lease.
    NoBlueprints,
    /// Blueprints exist but the authorizing object is not authorized on any.
    NotAuthorized { blueprints: Vec<BlueprintId> },
    /// Every candidate blueprint is at its limit and nothing is reclaimable.
    AtLimit { blueprints: Vec<BlueprintId> },
    /// A resource this lease caused to be built is still activating.
    WaitingForActivation { resource: ResourceId },
    /// A resource this lease asked to reclaim is not destroyed yet.
    WaitingForReclaim { resource: ResourceId },
    /// Other leases are taking the same capacity right now.
    Contention,
}

impl WaitReason {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoBlueprints => "no-blueprints",
            Self::NotAuthorized { .. } => "not-authorized",
            Self::AtLimit { .. } => "at-limit",
            Self::WaitingForActivation { .. } => "waiting-for-activation",
            Self::WaitingForReclaim { .. } => "waiting-for-reclaim",
            Self::Contention => "contention",
        }
    }

    pub fn to_json(&self) -> Value {
        let ids = |b: &Vec<BlueprintId>| b.iter().map(|b| b.0).collect::<Vec<_>>();
        match self {
            Self::NoBlueprints | Self::Contention => json!({ "reason": self.code() }),
            Self::NotAuthorized { blueprints } | Self::AtLimit { blueprints } => {
                json!({ "reason": self.code(), "blueprints": ids(blueprints) })
            }
            Self::WaitingForActivation { resource } | Self::WaitingForReclaim { resource } => {
                json!({ "reason": self.code(), "resource": resource.0 })
            }
        }
    }
}

/// A one-line human description of a stored waiting reason.
pub fn describe_waiting(waiting: &Value) -> String {
    let code = waiting
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let list = |k: &str| {
        waiting.get(k).and_then(Value::as_array).map(|a| {
            a.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    match code {
        "no-blueprints" => "no enabled blueprint of this type is allowed for the lease".into(),
        "not-authorized" => format!(
            "not authorized to use blueprint(s) {}",
            list("blueprints").unwrap_or_default()
        ),
        "at-limit" => format!(
            "blueprint(s) {} at their limit; waiting for capacity",
            list("blueprints").unwrap_or_default()
        ),
        "waiting-for-activation" => {
            format!("waiting for resource {} to activate", waiting["resource"])
        }
        "waiting-for-reclaim" => format!(
            "waiting for resource {} to be reclaimed",
            waiting["resource"]
        ),
        "contention" => "other leases are taking the same capacity; retrying".into(),
        other => other.to_owned(),
    }
}

/// A one-line human rendering of a log event (CLI and web).
pub fn describe_log(kind: &str, data: &Value) -> String {
    let s = |k: &str| {
        data.get(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default()
    };
    match kind {
        log::LEASE_QUEUED => format!("queued for a {} resource", s("type")),
        log::LEASE_WAITING => format!("waiting: {}", describe_waiting(data)),
        log::LEASE_ACQUIRED => "acquired a resource".into(),
        log::LEASE_ACTIVATED => "active".into(),
        log::LEASE_REACQUIRE => format!(
            "resource {} went away before activation; finding another",
            s("resource")
        ),
        log::LEASE_RECLAIM => format!("asked to reclaim idle resource {}", s("resource")),
        log::LEASE_RENEWED => format!("renewed until {} by {}", s("until"), s("by")),
        log::LEASE_EXPIRED => "expired".into(),
        log::LEASE_RELEASED => format!("released by {}", s("by")),
        log::LEASE_BROKEN => format!("broken: {}", s("reason")),
        log::LEASE_DESTROYED => match data.get("cleanup_failure").and_then(Value::as_str) {
            Some(f) => format!("destroyed; its cleanup failed and was given up: {f}"),
            None => "destroyed".into(),
        },
        log::RESOURCE_ALLOCATED => format!("resource allocated ({})", s("status")),
        log::RESOURCE_ALLOCATION_FAILURE => format!("resource allocation failed: {}", s("error")),
        log::RESOURCE_ACTIVATED => "resource active".into(),
        log::RESOURCE_RECLAIMED => format!("resource reclaimed by {}", s("by")),
        log::RESOURCE_RECLAIM_REFUSED => format!(
            "reclaim by {} refused: resource in use or recently used",
            s("by")
        ),
        log::RESOURCE_RELEASED => format!(
            "resource released by {} ({} lease(s) released)",
            s("by"),
            s("leases")
        ),
        log::RESOURCE_BROKEN => format!("resource broken: {}", s("reason")),
        log::RESOURCE_DESTROY_FAILURE => {
            format!("resource cleanup failed (will retry): {}", s("error"))
        }
        log::RESOURCE_DESTROYED => "resource destroyed".into(),
        other => format!("{other} {data}"),
    }
}
