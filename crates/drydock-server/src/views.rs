//! What the API returns: stable shapes built from store rows, so the
//! storage layout can change without breaking clients. Engine bookkeeping
//! (`internal`, versions) and blueprint-private resource state are left
//! out; secrets never reach a view.

use drydock_engine::events::describe_waiting;
use drydock_store::authorization::Authorization;
use drydock_store::blueprint::Blueprint;
use drydock_store::command::Command;
use drydock_store::lease::Lease;
use drydock_store::log::LogEntry;
use drydock_store::resource::Resource;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The cursor of the page after `rows`: its last id, if the page is full
/// (a short page is the last).
pub fn next_cursor<T>(rows: &[T], limit: i64, id: impl Fn(&T) -> i64) -> Option<i64> {
    if rows.len() as i64 == limit {
        rows.last().map(id)
    } else {
        None
    }
}

/// A lease. Times are Unix epoch milliseconds.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseView {
    pub id: i64,
    /// `pending`, `acquired`, `active`, `released`, `broken` or `destroyed`.
    pub status: String,
    /// The resource type asked for (`host`, `working-copy`).
    #[serde(rename = "type")]
    pub resource_type: String,
    pub resource_id: Option<i64>,
    /// Blueprints allowed to satisfy it (empty: any of the type).
    pub blueprint_ids: Vec<i64>,
    pub authorizing: String,
    pub owner: Option<String>,
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    pub priority: i64,
    pub until: Option<i64>,
    /// Why a pending lease waits: `{"reason": "at-limit", ...}`.
    #[schema(value_type = Option<Object>)]
    pub waiting: Option<Value>,
    /// The same, in words.
    pub waiting_description: Option<String>,
    pub failure: Option<String>,
    pub acquired_at: Option<i64>,
    pub activated_at: Option<i64>,
    pub created_at: i64,
    pub modified_at: i64,
}

impl From<&Lease> for LeaseView {
    fn from(l: &Lease) -> Self {
        Self {
            id: l.id.0,
            status: l.status.to_string(),
            resource_type: l.resource_type.clone(),
            resource_id: l.resource_id.map(|r| r.0),
            blueprint_ids: l.blueprint_ids.iter().map(|b| b.0).collect(),
            authorizing: l.authorizing.clone(),
            owner: l.owner.clone(),
            attributes: l.attributes.clone(),
            priority: l.priority,
            until: l.until,
            waiting: l.waiting.clone(),
            waiting_description: l.waiting.as_ref().map(describe_waiting),
            failure: l.failure.clone(),
            acquired_at: l.acquired_at,
            activated_at: l.activated_at,
            created_at: l.created_at,
            modified_at: l.modified_at,
        }
    }
}

/// A resource. Its blueprint-private state is not shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceView {
    pub id: i64,
    pub blueprint_id: i64,
    #[serde(rename = "type")]
    pub resource_type: String,
    /// `pending`, `active`, `released`, `broken` or `destroyed`.
    pub status: String,
    pub until: Option<i64>,
    pub failure: Option<String>,
    pub last_used_at: i64,
    pub created_at: i64,
    pub modified_at: i64,
}

impl From<&Resource> for ResourceView {
    fn from(r: &Resource) -> Self {
        Self {
            id: r.id.0,
            blueprint_id: r.blueprint_id.0,
            resource_type: r.resource_type.clone(),
            status: r.status.to_string(),
            until: r.until,
            failure: r.failure.clone(),
            last_used_at: r.last_used_at,
            created_at: r.created_at,
            modified_at: r.modified_at,
        }
    }
}

/// A blueprint and its configuration (references to credentials are ids;
/// secrets live elsewhere and are never returned).
#[derive(Debug, Serialize, ToSchema)]
pub struct BlueprintView {
    pub id: i64,
    pub name: String,
    /// The implementation: `host.local`, `host.ssh`, `working-copy`.
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    pub disabled: bool,
    pub version: i64,
    pub created_at: i64,
    pub modified_at: i64,
}

impl From<&Blueprint> for BlueprintView {
    fn from(b: &Blueprint) -> Self {
        Self {
            id: b.id.0,
            name: b.name.clone(),
            kind: b.kind.clone(),
            fields: b.fields.clone(),
            disabled: b.disabled,
            version: b.version,
            created_at: b.created_at,
            modified_at: b.modified_at,
        }
    }
}

/// A log event.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogView {
    pub id: i64,
    pub epoch: i64,
    pub lease_id: Option<i64>,
    pub resource_id: Option<i64>,
    pub blueprint_id: Option<i64>,
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: Value,
    /// The event in words.
    pub message: String,
}

impl From<&LogEntry> for LogView {
    fn from(e: &LogEntry) -> Self {
        Self {
            id: e.id.0,
            epoch: e.epoch,
            lease_id: e.lease.map(|l| l.0),
            resource_id: e.resource.map(|r| r.0),
            blueprint_id: e.blueprint.map(|b| b.0),
            kind: e.kind.clone(),
            data: e.data.clone(),
            message: drydock_engine::events::describe_log(&e.kind, &e.data),
        }
    }
}

/// A command sent to a lease or resource.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandView {
    pub id: i64,
    pub author: String,
    /// `release`, `reclaim` or `renew`.
    pub command: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Whether the object's worker has acted on it.
    pub consumed: bool,
    pub created_at: i64,
}

impl From<&Command> for CommandView {
    fn from(c: &Command) -> Self {
        Self {
            id: c.id.0,
            author: c.author.clone(),
            command: c.command.to_string(),
            payload: c.payload.clone(),
            consumed: c.consumed,
            created_at: c.created_at,
        }
    }
}

/// Permission for an object to use a blueprint.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorizationView {
    pub id: i64,
    pub blueprint_id: i64,
    /// The authorizing object (`ci:build-plan/42`, `blueprint:3`, ...).
    pub object: String,
    /// `requested`, `authorized` or `declined`.
    pub state: String,
    /// Whether the object still asks for the blueprint.
    pub object_active: bool,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub created_at: i64,
}

impl From<&Authorization> for AuthorizationView {
    fn from(a: &Authorization) -> Self {
        Self {
            id: a.id.0,
            blueprint_id: a.blueprint.0,
            object: a.object.clone(),
            state: a.blueprint_state.as_str().into(),
            object_active: a.object_active,
            decided_by: a.decided_by.clone(),
            decided_at: a.decided_at,
            created_at: a.created_at,
        }
    }
}

/// Fields of a blueprint type.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldView {
    pub name: String,
    /// `text`, `count`, `bool`, `list`, `pairs`, `credential`, `blueprints`.
    pub kind: String,
    pub required: bool,
    pub default: Option<String>,
    pub description: String,
}

/// A blueprint type (implementation) and what it builds.
#[derive(Debug, Serialize, ToSchema)]
pub struct BlueprintTypeView {
    #[serde(rename = "type")]
    pub kind: String,
    pub resource_type: String,
    pub fields: Vec<FieldView>,
}

pub fn blueprint_types(registry: &drydock_engine::blueprint::Registry) -> Vec<BlueprintTypeView> {
    registry
        .iter()
        .map(|imp| BlueprintTypeView {
            kind: imp.type_name().into(),
            resource_type: imp.resource_type().into(),
            fields: imp
                .fields()
                .iter()
                .map(|f| FieldView {
                    name: f.name.into(),
                    kind: f.kind.as_str().into(),
                    required: f.required,
                    default: f.default.map(Into::into),
                    description: f.description.into(),
                })
                .collect(),
        })
        .collect()
}
