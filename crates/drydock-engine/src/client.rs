//! What requesters and administrators do (CLI, API, web): queue leases and
//! send commands. Nothing here writes a lease's or resource's state after
//! creation — it enqueues a command and wakes the object's worker.

use crate::blueprint::{
    FieldError, FieldKind, FieldSpec, Registry, blueprint_list, validate_fields,
};
use crate::events::{self, log};
use drydock_model::{
    BlueprintId, CommandId, CommandKind, LeaseId, LeaseStatus, ObjectRef, ResourceId,
    ResourceStatus,
};
use drydock_store::blueprint::Blueprint;
use drydock_store::lease::{Lease, NewLease};
use drydock_store::log::NewLog;
use drydock_store::{Store, StoreError, now_ms};
use serde_json::{Map, Value, json};

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{what} {id} cannot be released: it is {status}")]
    NotReleasable {
        what: &'static str,
        id: i64,
        status: String,
    },
    #[error("lease {id} cannot be renewed: it is {status}")]
    NotRenewable { id: i64, status: String },
    #[error("unknown blueprint type {0:?} (known: {1})")]
    UnknownType(String, String),
    #[error("invalid blueprint fields: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    InvalidFields(Vec<FieldError>),
    #[error("invalid lease request: {0}")]
    InvalidRequest(String),
    #[error("lease {id} is {status}, not active: commands run only on active leases")]
    NotActive { id: i64, status: String },
    #[error("{0}")]
    Interface(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An active lease with its resource, blueprint and implementation: what
/// an interface is built from.
struct ActiveLease<'r> {
    lease: Lease,
    resource: drydock_store::resource::Resource,
    blueprint: Blueprint,
    imp: &'r std::sync::Arc<dyn crate::blueprint::BlueprintImpl>,
}

async fn active_lease<'r>(
    store: &Store,
    registry: &'r Registry,
    id: LeaseId,
) -> Result<ActiveLease<'r>, ClientError> {
    let lease = store.lease(id).await?;
    let (true, Some(rid)) = (
        lease.status == drydock_model::LeaseStatus::Active,
        lease.resource_id,
    ) else {
        return Err(ClientError::NotActive {
            id: id.0,
            status: lease.status.to_string(),
        });
    };
    let resource = store.resource(rid).await?;
    let blueprint = store.blueprint(resource.blueprint_id).await?;
    let imp = registry
        .get(&blueprint.kind)
        .ok_or_else(|| ClientError::UnknownType(blueprint.kind.clone(), known(registry)))?;
    Ok(ActiveLease {
        lease,
        resource,
        blueprint,
        imp,
    })
}

/// The command interface of an active lease.
pub async fn command_interface(
    store: &Store,
    registry: &Registry,
    id: LeaseId,
) -> Result<std::sync::Arc<dyn crate::blueprint::CommandInterface>, ClientError> {
    let a = active_lease(store, registry, id).await?;
    let ctx = crate::blueprint::Context {
        store,
        blueprint: &a.blueprint,
    };
    a.imp
        .command_interface(&ctx, &a.resource, &a.lease)
        .await
        .map_err(|e| ClientError::Interface(e.to_string()))
}

/// The filesystem interface of an active lease.
pub async fn filesystem_interface(
    store: &Store,
    registry: &Registry,
    id: LeaseId,
) -> Result<std::sync::Arc<dyn crate::blueprint::FilesystemInterface>, ClientError> {
    let a = active_lease(store, registry, id).await?;
    let ctx = crate::blueprint::Context {
        store,
        blueprint: &a.blueprint,
    };
    a.imp
        .filesystem_interface(&ctx, &a.resource, &a.lease)
        .await
        .map_err(|e| ClientError::Interface(e.to_string()))
}

fn known(registry: &Registry) -> String {
    registry
        .iter()
        .map(|i| i.type_name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Replace references by name with ids in `Credential` and `Blueprints`
/// fields, refusing ones that do not exist.
async fn resolve_references(
    store: &Store,
    specs: &[FieldSpec],
    fields: &mut Map<String, Value>,
) -> Result<(), ClientError> {
    let invalid = |field: &str, message: String| {
        ClientError::InvalidFields(vec![FieldError {
            field: field.into(),
            message,
        }])
    };
    for spec in specs {
        match (spec.kind, fields.get(spec.name).cloned()) {
            (FieldKind::Credential, Some(Value::String(c))) if !c.is_empty() => {
                let cred = store.credential(&c).await.map_err(|_| {
                    invalid(
                        spec.name,
                        format!("no credential {c:?} (see drydock credential list)"),
                    )
                })?;
                fields.insert(spec.name.into(), Value::String(cred.id.to_string()));
            }
            (FieldKind::Blueprints, Some(Value::Array(list))) => {
                let mut ids = Vec::new();
                for item in list.iter().filter_map(Value::as_str) {
                    let found = match item.parse::<i64>() {
                        Ok(id) => store.blueprint(BlueprintId(id)).await,
                        Err(_) => store.blueprint_by_name(item).await,
                    };
                    let bp =
                        found.map_err(|_| invalid(spec.name, format!("no blueprint {item:?}")))?;
                    ids.push(Value::String(bp.id.to_string()));
                }
                fields.insert(spec.name.into(), Value::Array(ids));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a requester asks for, before checking: blueprints by id or name.
#[derive(Clone, Debug, Default)]
pub struct LeaseRequest {
    pub resource_type: String,
    pub blueprints: Vec<String>,
    pub authorizing: String,
    pub owner: Option<String>,
    pub attributes: Map<String, Value>,
    pub priority: i64,
    pub until: Option<i64>,
}

/// Find a blueprint by id or name.
pub async fn find_blueprint(store: &Store, text: &str) -> Result<Blueprint, ClientError> {
    let found = match text.parse::<i64>() {
        Ok(id) => store.blueprint(BlueprintId(id)).await,
        Err(_) => store.blueprint_by_name(text).await,
    };
    found.map_err(|e| match e {
        StoreError::NotFound { .. } => {
            ClientError::InvalidRequest(format!("no blueprint {text:?} (give an id or a name)"))
        }
        e => e.into(),
    })
}

/// Check a request and queue it. Like the original (spec §13), a lease
/// nothing could ever satisfy is refused at once: an unknown resource
/// type, a named blueprint of another type, or no enabled blueprint.
pub async fn queue_lease(
    store: &Store,
    registry: &Registry,
    req: &LeaseRequest,
) -> Result<Lease, ClientError> {
    let kind = req.resource_type.as_str();
    if registry.for_resource_type(kind).is_empty() {
        let mut known: Vec<&str> = registry.iter().map(|i| i.resource_type()).collect();
        known.dedup();
        return Err(ClientError::InvalidRequest(format!(
            "no blueprint type builds {kind:?} resources (known resource types: {})",
            known.join(", ")
        )));
    }
    let of_type: Vec<Blueprint> = store
        .blueprints(None)
        .await?
        .into_iter()
        .filter(|b| {
            registry
                .get(&b.kind)
                .is_some_and(|i| i.resource_type() == kind)
        })
        .collect();
    let mut blueprint_ids = Vec::new();
    for b in &req.blueprints {
        // Named as `find_blueprint` reads them: a number is an id.
        let known = of_type.iter().find(|bp| match b.parse::<i64>() {
            Ok(id) => bp.id.0 == id,
            Err(_) => bp.name == *b,
        });
        let id = match known {
            Some(bp) => bp.id,
            None => find_blueprint(store, b).await?.id,
        };
        if !of_type.iter().any(|bp| bp.id == id) {
            return Err(ClientError::InvalidRequest(format!(
                "blueprint {b:?} does not build {kind:?} resources"
            )));
        }
        if blueprint_ids.contains(&id) {
            return Err(ClientError::InvalidRequest(format!(
                "blueprint {b:?} given twice"
            )));
        }
        blueprint_ids.push(id);
    }
    if blueprint_ids.is_empty() && !of_type.iter().any(|b| !b.disabled) {
        return Err(ClientError::InvalidRequest(format!(
            "no enabled blueprint builds {kind:?} resources; create one first"
        )));
    }
    if req.authorizing != crate::ADMIN {
        // Ask for what the lease needs (spec §11): an administrator sees a
        // `requested` authorization per blueprint; a decision already taken
        // (approved or declined) stays as it is.
        let wanted: Vec<BlueprintId> = if blueprint_ids.is_empty() {
            of_type
                .iter()
                .filter(|b| !b.disabled)
                .map(|b| b.id)
                .collect()
        } else {
            blueprint_ids.clone()
        };
        for bp in wanted {
            store.request_authorization(&req.authorizing, bp).await?;
        }
    }
    request_lease(
        store,
        &NewLease {
            resource_type: req.resource_type.clone(),
            blueprint_ids,
            authorizing: req.authorizing.clone(),
            owner: req.owner.clone(),
            attributes: req.attributes.clone(),
            priority: req.priority,
            until: req.until,
        },
    )
    .await
}

/// Wait until lease `id` satisfies `done` or `timeout` passes, and return
/// it as last read. Woken by commits (this process's, or another's through
/// the store's listener), with a short poll as the safety net.
pub async fn wait_for_lease(
    store: &Store,
    id: LeaseId,
    timeout: std::time::Duration,
    done: impl Fn(&Lease) -> bool,
) -> Result<Lease, ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut signal = store.lease_signal(id).await;
    let mut lease = store.lease(id).await?;
    loop {
        let now = tokio::time::Instant::now();
        if done(&lease) || now >= deadline {
            return Ok(lease);
        }
        let by_write = signal
            .wait((deadline - now).min(std::time::Duration::from_millis(250)))
            .await;
        // The next signal is taken before the last is let go (it keeps
        // what this process wrote); a write here needs no read back.
        signal = store.lease_signal(id).await;
        lease = match signal.written().filter(|_| by_write) {
            Some(written) => written.clone(),
            None => store.lease(id).await?,
        };
    }
}

/// What an administrator decides about an authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    /// Decline (or revoke an approval): no new lease of the object gets the
    /// blueprint; with `release_leases`, its live leases on the blueprint's
    /// resources are released too.
    Decline {
        release_leases: bool,
    },
}

/// Approve or decline an authorization, recording who decided and when,
/// and wake the object's waiting leases (an approval serves them; a
/// decline makes those with no other blueprint fail with the reason).
/// Returns the authorization and how many live leases were sent `release`.
pub async fn decide_authorization(
    store: &Store,
    id: drydock_model::AuthorizationId,
    decision: Decision,
    by: &str,
) -> Result<(drydock_store::authorization::Authorization, usize), ClientError> {
    use drydock_store::authorization::BlueprintAuthState;
    let state = match decision {
        Decision::Approve => BlueprintAuthState::Authorized,
        Decision::Decline { .. } => BlueprintAuthState::Declined,
    };
    let auth = store.decide_authorization(id, state, by).await?;
    let mut released = 0;
    if let Decision::Decline {
        release_leases: true,
    } = decision
    {
        let live = store
            .leases(&drydock_store::lease::LeaseFilter {
                statuses: vec![
                    drydock_model::LeaseStatus::Acquired,
                    drydock_model::LeaseStatus::Active,
                ],
                authorizing: Some(auth.object.clone()),
                limit: Some(10_000),
                ..Default::default()
            })
            .await?;
        for lease in live {
            let Some(rid) = lease.resource_id else {
                continue;
            };
            if store.resource(rid).await?.blueprint_id != auth.blueprint {
                continue;
            }
            match release_lease(store, lease.id, by).await {
                Ok(_) => released += 1,
                Err(ClientError::NotReleasable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    store.fire(&events::authorization(&auth.object)).await?;
    Ok((auth, released))
}

/// Longest `until` accepted: one year from now.
pub const MAX_LEASE_MS: i64 = 366 * 86_400_000;

/// Queue a lease for allocation: insert it, log it and schedule its update
/// task in one transaction (spec §6.1).
pub async fn request_lease(store: &Store, new: &NewLease) -> Result<Lease, ClientError> {
    if let Some(until) = new.until
        && (until <= now_ms() || until > now_ms() + MAX_LEASE_MS)
    {
        return Err(ClientError::InvalidRequest(format!(
            "until {until} must be in the future and within a year"
        )));
    }
    let queued = NewLog::new(log::LEASE_QUEUED).data(json!({ "type": new.resource_type }));
    Ok(store.request_lease(new, queued).await?)
}

/// Ask a lease's worker to release it. Refused for leases that cannot be
/// released (released, destroyed); a second request while one is pending
/// is accepted and does nothing more when consumed.
pub async fn release_lease(
    store: &Store,
    id: LeaseId,
    author: &str,
) -> Result<CommandId, ClientError> {
    let releasable = LeaseStatus::ALL.iter().filter(|s| s.is_releasable());
    send_release(
        store,
        ObjectRef::lease(id),
        releasable.map(|s| s.as_str()).collect(),
        author,
    )
    .await
}

/// Ask a resource's worker to release it (and so its leases).
pub async fn release_resource(
    store: &Store,
    id: ResourceId,
    author: &str,
) -> Result<CommandId, ClientError> {
    let releasable = ResourceStatus::ALL.iter().filter(|s| s.is_releasable());
    send_release(
        store,
        ObjectRef::resource(id),
        releasable.map(|s| s.as_str()).collect(),
        author,
    )
    .await
}

/// Send `release` to `target` if its status is one of `releasable`
/// (checked with the write).
async fn send_release(
    store: &Store,
    target: ObjectRef,
    releasable: Vec<&'static str>,
    author: &str,
) -> Result<CommandId, ClientError> {
    let sent = store
        .enqueue_command_if(author, target, CommandKind::Release, json!({}), &releasable)
        .await?;
    sent.map_err(|status| ClientError::NotReleasable {
        what: target.kind.as_str(),
        id: target.id,
        status,
    })
}

/// Ask a lease's worker to move its expiry to `until` (epoch ms).
pub async fn renew_lease(
    store: &Store,
    id: LeaseId,
    until: i64,
    author: &str,
) -> Result<CommandId, ClientError> {
    let lease = store.lease(id).await?;
    if !lease.status.is_live() {
        return Err(ClientError::NotRenewable {
            id: id.0,
            status: lease.status.to_string(),
        });
    }
    if until <= now_ms() || until > now_ms() + MAX_LEASE_MS {
        return Err(ClientError::InvalidRequest(format!(
            "until {until} must be in the future and within a year"
        )));
    }
    Ok(store
        .enqueue_command(
            author,
            lease.object(),
            CommandKind::Renew,
            json!({ "until": until }),
        )
        .await?)
}

/// Send `reclaim` to every active resource (of one blueprint, if given).
/// Each resource's worker decides whether it is still reclaimable.
pub async fn reclaim(
    store: &Store,
    blueprint: Option<BlueprintId>,
    author: &str,
) -> Result<Vec<ResourceId>, ClientError> {
    let mut sent = Vec::new();
    for r in store
        .resources(blueprint, Some(ResourceStatus::Active), 10_000)
        .await?
    {
        store
            .enqueue_command(
                author,
                r.object(),
                CommandKind::Reclaim,
                json!({ "reclaimer": author }),
            )
            .await?;
        sent.push(r.id);
    }
    Ok(sent)
}

/// Create a blueprint after validating its fields against its type's
/// declaration, then wake leases waiting for blueprints.
pub async fn create_blueprint(
    store: &Store,
    registry: &Registry,
    author: &str,
    name: &str,
    kind: &str,
    fields: &Map<String, Value>,
) -> Result<Blueprint, ClientError> {
    let imp = registry.get(kind).ok_or_else(|| {
        ClientError::UnknownType(
            kind.to_owned(),
            registry
                .iter()
                .map(|i| i.type_name())
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    let mut fields = validate_fields(imp.fields(), fields).map_err(ClientError::InvalidFields)?;
    resolve_references(store, imp.fields(), &mut fields).await?;
    let bp = store.create_blueprint(author, name, kind, fields).await?;
    authorize_uses(store, imp.fields(), &bp, author).await?;
    store.fire(events::BLUEPRINTS).await?;
    Ok(bp)
}

/// Change a blueprint's fields (validated as a whole after the change).
pub async fn edit_blueprint(
    store: &Store,
    registry: &Registry,
    author: &str,
    id: BlueprintId,
    name: Option<&str>,
    changes: &Map<String, Value>,
) -> Result<Blueprint, ClientError> {
    let bp = store.blueprint(id).await?;
    let imp = registry.get(&bp.kind).ok_or_else(|| {
        ClientError::UnknownType(
            bp.kind.clone(),
            registry
                .iter()
                .map(|i| i.type_name())
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    let mut merged = bp.fields.clone();
    for (k, v) in changes {
        // `null` puts a field back to its default (or unset).
        if v.is_null() {
            merged.remove(k);
        } else {
            merged.insert(k.clone(), v.clone());
        }
    }
    let mut valid = validate_fields(imp.fields(), &merged).map_err(ClientError::InvalidFields)?;
    resolve_references(store, imp.fields(), &mut valid).await?;
    let mut delta = Map::new();
    for k in bp.fields.keys() {
        if !valid.contains_key(k) {
            delta.insert(k.clone(), Value::Null);
        }
    }
    for (k, v) in valid {
        if bp.fields.get(&k) != Some(&v) {
            delta.insert(k, v);
        }
    }
    let bp = store
        .edit_blueprint(author, id, Some(bp.version), name, &delta)
        .await?;
    authorize_uses(store, imp.fields(), &bp, author).await?;
    store.fire(events::BLUEPRINTS).await?;
    Ok(bp)
}

/// The authorizing object of leases a blueprint takes for its own resources
/// (a working copy's host lease): the blueprint itself (spec §11).
pub fn blueprint_object(id: BlueprintId) -> String {
    format!("blueprint:{id}")
}

/// A blueprint that leases from other blueprints (its `Blueprints` fields)
/// is checked against authorizations as itself (spec §11, transitive).
/// Naming them is a request; the administrator configuring it approves it at
/// the same time — the CLI acts as the administrator — and the decision is
/// recorded with who made it. Blueprints it no longer names become inactive.
async fn authorize_uses(
    store: &Store,
    specs: &[FieldSpec],
    bp: &Blueprint,
    author: &str,
) -> Result<(), ClientError> {
    let fields: Vec<&str> = specs
        .iter()
        .filter(|s| s.kind == FieldKind::Blueprints)
        .map(|s| s.name)
        .collect();
    if fields.is_empty() {
        return Ok(());
    }
    let object = blueprint_object(bp.id);
    let used: Vec<BlueprintId> = fields.iter().flat_map(|f| blueprint_list(bp, f)).collect();
    for auth in store.authorizations(None, Some(&object)).await? {
        if !used.contains(&auth.blueprint) && auth.object_active {
            store
                .set_authorization_object_active(auth.id, false)
                .await?;
        }
    }
    for host in used {
        let auth = store.request_authorization(&object, host).await?;
        if auth.blueprint_state == drydock_store::authorization::BlueprintAuthState::Requested {
            store
                .decide_authorization(
                    auth.id,
                    drydock_store::authorization::BlueprintAuthState::Authorized,
                    author,
                )
                .await?;
        }
    }
    store.fire(&events::authorization(&object)).await?;
    Ok(())
}

/// Disable or enable a blueprint. Enabling wakes waiting leases.
pub async fn set_blueprint_disabled(
    store: &Store,
    author: &str,
    id: BlueprintId,
    disabled: bool,
) -> Result<Blueprint, ClientError> {
    let bp = store.set_blueprint_disabled(author, id, disabled).await?;
    if !disabled {
        store.fire(events::BLUEPRINTS).await?;
    }
    Ok(bp)
}
