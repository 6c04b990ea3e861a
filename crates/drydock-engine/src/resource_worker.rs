//! The resource update worker: the one writer of a resource from `pending`
//! to `destroyed` (spec §4.2, §7). Unlike the original, a broken resource
//! releases its leases (spec §19.8).

use crate::blueprint::Context;
use crate::events::{self, log};
use crate::{Engine, Next, PassError, PassResult};
use drydock_model::{CommandKind, ObjectRef, ResourceId, ResourceStatus};
use drydock_store::log::NewLog;
use drydock_store::object_lock::ObjectLock;
use drydock_store::resource::Resource;
use drydock_store::{StoreError, Tx, now_ms};
use serde_json::json;

fn transition(resource: &mut Resource, to: ResourceStatus) -> PassResult<()> {
    if !resource.status.can_transition(to) {
        return Err(PassError::Permanent(format!(
            "internal error: resource {} cannot go from {} to {to}",
            resource.id, resource.status
        )));
    }
    resource.status = to;
    Ok(())
}

fn resource_log(r: &Resource, kind: &str) -> NewLog {
    NewLog::new(kind).resource(r.id).blueprint(r.blueprint_id)
}

/// Send `release` to every live lease on the resource, inside `tx` (after
/// the resource row was written, so a lease acquiring concurrently is seen).
/// The command says it comes from the resource: a lease that was acquired
/// but not yet activated goes back to pending and finds another resource
/// (reacquire) instead of failing its requester.
async fn release_leases(tx: &mut Tx, r: &Resource) -> Result<usize, StoreError> {
    let leases = tx.live_leases_on(r.id).await?;
    for l in &leases {
        tx.enqueue_command(
            &r.object().key(),
            l.object(),
            CommandKind::Release,
            json!({ "resource_gone": r.id.0 }),
        )
        .await?;
    }
    Ok(leases.len())
}

impl Engine {
    pub(crate) async fn resource_pass(
        &self,
        id: ResourceId,
        held: Option<&ObjectLock>,
    ) -> PassResult<Next> {
        let next = self
            .locked(ObjectRef::resource(id), held, async |lock| {
                let mut r = self.store.resource(id).await?;
                if r.status.is_commandable() {
                    r = self.resource_commands(r, lock).await?;
                }
                for _ in 0..3 {
                    match r.status {
                        ResourceStatus::Pending => {
                            let (bp, imp) = self.implementation_of(&r).await?;
                            let attrs = imp
                                .activate_resource(
                                    &Context {
                                        store: &self.store,
                                        blueprint: &bp,
                                    },
                                    &r,
                                )
                                .await?;
                            let mut next = r.clone();
                            next.attributes.extend(attrs);
                            transition(&mut next, ResourceStatus::Active)?;
                            let mut tx = self.store.begin().await?;
                            tx.log(resource_log(&next, log::RESOURCE_ACTIVATED)).await?;
                            r = tx.save_resource(&next, lock).await?;
                            tx.fire(&events::resource(id)).await?;
                            // Others may use it only if it has room: with a
                            // lease limit, one hand-off per free slot (a
                            // resource built for a lease usually has none).
                            let capacity = events::capacity(&r.resource_type);
                            match imp.lease_limit(&bp) {
                                Some(limit) => {
                                    let live = tx.live_leases_on(id).await?.len() as u64;
                                    for _ in live..limit.min(live + 64) {
                                        tx.hand_over(&capacity, id).await?;
                                    }
                                }
                                None => tx.fire(&capacity).await?,
                            }
                            tx.commit().await?;
                        }
                        ResourceStatus::Active => return Ok(r.until.map_or(Next::Idle, Next::At)),
                        ResourceStatus::Released | ResourceStatus::Broken => {
                            self.destroy_resource(&mut r, lock).await?;
                        }
                        ResourceStatus::Destroyed => return Ok(Next::Idle),
                    }
                }
                Ok(Next::At(now_ms()))
            })
            .await?;
        Ok(next.unwrap_or(Next::Contended))
    }

    /// Consume the resource's commands (and expiry) in one transaction with
    /// the resulting write, holding the resource row so that no lease
    /// acquires it unseen.
    async fn resource_commands(
        &self,
        resource: Resource,
        lock: &ObjectLock,
    ) -> PassResult<Resource> {
        let now = now_ms();
        let expired = resource.until.is_some_and(|u| u <= now);
        // Read outside the transaction: only this resource's update worker
        // (the caller, under its lock) consumes them, and one sent after
        // this read has its own task and is consumed by the next pass.
        let commands = self.store.pending_commands(resource.object()).await?;
        if commands.is_empty() && !expired {
            return Ok(resource);
        }
        let mut tx = self.store.begin().await?;
        let r = tx.resource_for_update(resource.id).await?;
        let mut release_by: Option<String> = None;
        for c in &commands {
            match c.command {
                CommandKind::Release => {
                    release_by.get_or_insert_with(|| c.author.clone());
                }
                CommandKind::Reclaim if release_by.is_none() => {
                    // Re-checked here, under the row lock (spec §7.3).
                    let idle = tx.live_leases_on(r.id).await?.is_empty();
                    let last = tx
                        .last_lease_activity(r.id)
                        .await?
                        .unwrap_or(0)
                        .max(r.created_at);
                    let grace_over = last + drydock_store::ms(self.cfg.reclaim_grace) <= now;
                    if idle && grace_over {
                        tx.log(
                            resource_log(&r, log::RESOURCE_RECLAIMED)
                                .data(json!({ "by": c.author })),
                        )
                        .await?;
                        release_by = Some(c.author.clone());
                    } else {
                        tx.log(
                            resource_log(&r, log::RESOURCE_RECLAIM_REFUSED)
                                .data(json!({ "by": c.author, "idle": idle })),
                        )
                        .await?;
                    }
                }
                CommandKind::Reclaim | CommandKind::Renew => {}
            }
            tx.mark_consumed(c.id).await?;
        }
        if release_by.is_none() && expired {
            release_by = Some("expiry".into());
        }
        let saved = match release_by {
            Some(by) if r.status.is_releasable() => {
                let mut next = r.clone();
                transition(&mut next, ResourceStatus::Released)?;
                let saved = tx.save_resource(&next, lock).await?;
                let n = release_leases(&mut tx, &saved).await?;
                tx.log(
                    resource_log(&saved, log::RESOURCE_RELEASED)
                        .data(json!({ "by": by, "leases": n })),
                )
                .await?;
                saved
            }
            _ => {
                tx.check_fence(lock).await?;
                r
            }
        };
        // Whoever asked to reclaim learns the answer now.
        tx.fire(&events::resource(saved.id)).await?;
        tx.commit().await?;
        Ok(saved)
    }

    /// `released`/`broken` -> `destroyed` (spec §7.4): blueprint teardown
    /// (failures are retried and logged, never silently skipped), then free
    /// the slot locks and wake whoever waits for the capacity.
    async fn destroy_resource(&self, r: &mut Resource, lock: &ObjectLock) -> PassResult<()> {
        let (bp, imp) = self.implementation_of(r).await?;
        if let Err(e) = imp
            .destroy_resource(
                &Context {
                    store: &self.store,
                    blueprint: &bp,
                },
                r,
            )
            .await
        {
            self.store
                .log(
                    resource_log(r, log::RESOURCE_DESTROY_FAILURE)
                        .data(json!({ "error": e.to_string() })),
                )
                .await?;
            return Err(match e {
                crate::blueprint::BlueprintError::Permanent(m) => PassError::Blueprint(
                    crate::blueprint::BlueprintError::Temporary(format!("cleanup failed: {m}")),
                ),
                other => other.into(),
            });
        }
        self.mark_destroyed(r, lock, None).await
    }

    async fn mark_destroyed(
        &self,
        r: &mut Resource,
        lock: &ObjectLock,
        failure: Option<&str>,
    ) -> PassResult<()> {
        let mut next = r.clone();
        transition(&mut next, ResourceStatus::Destroyed)?;
        let mut tx = self.store.begin().await?;
        tx.free_slot_locks(&r.object().key()).await?;
        tx.log(
            resource_log(&next, log::RESOURCE_DESTROYED)
                .data(json!({ "cleanup_failure": failure })),
        )
        .await?;
        *r = tx.save_resource(&next, lock).await?;
        tx.fire(&events::resource(r.id)).await?;
        tx.fire(&events::capacity(&r.resource_type)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Break a resource (spec §7.5) and release its leases. A resource that
    /// is already released or broken and keeps failing to be torn down is
    /// marked destroyed with the failure logged, instead of retrying forever.
    pub(crate) async fn break_resource(
        &self,
        id: ResourceId,
        reason: &str,
        held: Option<&ObjectLock>,
    ) -> PassResult<Option<()>> {
        self.locked(ObjectRef::resource(id), held, async |lock| {
            let mut r = self.store.resource(id).await?;
            match r.status {
                ResourceStatus::Pending | ResourceStatus::Active => {
                    let mut tx = self.store.begin().await?;
                    let fresh = tx.resource_for_update(id).await?;
                    let mut next = fresh.clone();
                    transition(&mut next, ResourceStatus::Broken)?;
                    next.failure = Some(reason.to_owned());
                    let saved = tx.save_resource(&next, lock).await?;
                    let n = release_leases(&mut tx, &saved).await?;
                    tx.log(
                        resource_log(&saved, log::RESOURCE_BROKEN)
                            .data(json!({ "reason": reason, "leases": n })),
                    )
                    .await?;
                    tx.fire(&events::resource(id)).await?;
                    // Its next pass destroys it.
                    tx.wake(saved.object()).await?;
                    tx.commit().await?;
                    Ok(())
                }
                ResourceStatus::Released | ResourceStatus::Broken => {
                    self.mark_destroyed(&mut r, lock, Some(reason)).await
                }
                ResourceStatus::Destroyed => Ok(()),
            }
        })
        .await
    }
}
