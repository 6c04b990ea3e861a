//! The lease update worker: the one writer of a lease from `pending` to
//! `destroyed` (spec §4.1, §6).

use crate::blueprint::{BlueprintImpl, Context};
use crate::events::{self, log};
use crate::{Engine, Next, PassError, PassResult, Tail};
use drydock_model::{CommandKind, LeaseId, LeaseStatus, ObjectRef, ResourceId};
use drydock_store::command::Command;
use drydock_store::lease::{Lease, LeaseForPass};
use drydock_store::log::NewLog;
use drydock_store::object_lock::ObjectLock;
use drydock_store::resource::Resource;
use drydock_store::{StoreError, Tx, now_ms};
use serde_json::json;
use std::sync::Arc;

/// Capacity a destroyed lease gives back: on a resource of this type, and
/// exactly one slot of `one_slot` when the resource has a lease limit.
pub(crate) struct Freed {
    resource_type: String,
    one_slot: Option<ResourceId>,
}

impl Freed {
    fn of(r: &Resource, lease_limited: bool) -> Freed {
        Freed {
            resource_type: r.resource_type.clone(),
            one_slot: lease_limited.then_some(r.id),
        }
    }
}

/// What one step of a pass achieved.
pub(crate) enum Step {
    /// The status changed: look at the lease again in this pass.
    Progress,
    /// Stop here.
    Wait(Next),
}

/// Change a lease's status, refusing any transition not in the model's table.
pub(crate) fn transition(lease: &mut Lease, to: LeaseStatus) -> PassResult<()> {
    if !lease.status.can_transition(to) {
        return Err(PassError::Permanent(format!(
            "internal error: lease {} cannot go from {} to {to}",
            lease.id, lease.status
        )));
    }
    lease.status = to;
    Ok(())
}

/// Wake the lease's owner if it is an object (a working copy waiting for
/// its host lease): the wake-up edge of nested leases.
pub(crate) async fn wake_owner(tx: &mut Tx, lease: &Lease) -> Result<(), StoreError> {
    if let Some(owner) = lease.owner.as_deref().and_then(ObjectRef::parse) {
        tx.wake(owner).await?;
    }
    Ok(())
}

pub(crate) fn lease_log(lease: &Lease, kind: &str) -> NewLog {
    let mut l = NewLog::new(kind).lease(lease.id);
    l.resource = lease.resource_id;
    l
}

impl Engine {
    /// One pass over a lease. Under `held` (a claimed task's lock) its
    /// last write may come back open, to commit with the task's completion.
    pub(crate) async fn lease_pass(
        &self,
        id: LeaseId,
        held: Option<&ObjectLock>,
    ) -> PassResult<(Next, Option<Tx>)> {
        let object = ObjectRef::lease(id);
        let done = self
            .locked(object, held, async |lock| {
                let LeaseForPass {
                    lease,
                    resource,
                    commands,
                    handed_over,
                    blueprints_version,
                } = self.store.lease_for_pass(id).await?;
                let mut tail = Tail {
                    blueprints_version: Some(blueprints_version),
                    ..Tail::default()
                };
                if let Some(resource) = resource {
                    tail.lease_on(resource, None);
                }
                let steps = self.lease_steps(lease, commands, lock, &mut tail).await;
                if steps.is_err()
                    && let Err(c) = tail.commit().await
                {
                    // What the steps wrote stays written (each step's write
                    // is valid on its own) unless the database failed too.
                    tracing::debug!(%object, "committing before a failure failed: {c}");
                }
                // Slots handed to this lease that it did not take go on to
                // the next waiter, whatever the pass did. (Slots handed over
                // after the pass's read come with a wake-up: the next pass
                // settles them.)
                if handed_over {
                    let read;
                    let lease = match &steps {
                        Ok((_, lease)) => lease,
                        Err(_) => {
                            read = self.store.lease(id).await?;
                            &read
                        }
                    };
                    let mut tx = tail.begin(&self.store).await?;
                    tx.settle_handoffs(object, lease.priority, lease.created_at, lease.holding())
                        .await?;
                    tail.hold(tx);
                }
                if held.is_none() {
                    tail.commit().await?;
                }
                steps.map(|(next, _)| (next, tail))
            })
            .await?;
        Ok(match done {
            Some((next, tail)) => (next, tail.into_tx()),
            None => (Next::Contended, None),
        })
    }

    /// The steps of one pass, under the lease's lock: what comes next, and
    /// the lease as the steps left it (the last write may be in `tail`).
    async fn lease_steps(
        &self,
        mut lease: Lease,
        commands: Vec<Command>,
        lock: &ObjectLock,
        tail: &mut Tail,
    ) -> PassResult<(Next, Lease)> {
        if lease.status.is_commandable() {
            lease = self.lease_commands(lease, commands, lock, tail).await?;
        }
        // A few steps per pass: pending -> acquired -> active, or
        // released -> destroyed, without another trip through the queue.
        for _ in 0..4 {
            let step = match lease.status {
                LeaseStatus::Pending => {
                    tail.commit().await?;
                    let started = std::time::Instant::now();
                    let step = self.allocate(&mut lease, lock, tail).await;
                    metrics::histogram!(crate::metrics::ALLOCATOR_PASS_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    step?
                }
                LeaseStatus::Acquired => self.activate_lease(&mut lease, lock, tail).await?,
                LeaseStatus::Active => Step::Wait(lease.until.map_or(Next::Idle, Next::At)),
                LeaseStatus::Released | LeaseStatus::Broken => {
                    self.destroy_lease(&mut lease, lock, tail).await?;
                    Step::Wait(Next::Idle)
                }
                LeaseStatus::Destroyed => Step::Wait(Next::Idle),
            };
            if let Step::Wait(next) = step {
                return Ok((next, lease));
            }
        }
        Ok((Next::At(now_ms()), lease))
    }

    /// Consume the lease's commands in order (and its expiry), in one
    /// transaction with the resulting write, left open in `tail` for the
    /// next step (a local teardown joins it: released -> destroyed in one
    /// commit). Idempotent: a release of a lease already released does
    /// nothing.
    async fn lease_commands(
        &self,
        lease: Lease,
        commands: Vec<Command>,
        lock: &ObjectLock,
        tail: &mut Tail,
    ) -> PassResult<Lease> {
        let now = now_ms();
        let expired = lease.until.is_some_and(|u| u <= now);
        if commands.is_empty() && !expired {
            return Ok(lease);
        }
        // A release is torn down next in this pass: what the teardown needs
        // (the resource, read with the lease, and its blueprint) is at hand
        // before the transaction begins, not read while it holds the writer.
        let mut teardown_is_local = lease.resource_id.is_none();
        if let Some(rid) = lease.resource_id
            && lease.status.is_live()
            && (expired || commands.iter().any(|c| c.command == CommandKind::Release))
        {
            let (resource, known) = self.resource_of_lease(tail, rid).await?;
            let bp = self
                .blueprint_of(&resource, known, tail.blueprints_version)
                .await?;
            if let Ok((bp, imp)) = self.implementation(bp) {
                teardown_is_local = imp.lease_hooks_are_local(&bp);
                tail.lease_on(resource, Some(bp));
            }
        }
        let mut tx = self.store.begin().await?;
        let mut next = lease.clone();
        let mut release_by: Option<String> = None;
        let mut reacquire = false;
        for c in &commands {
            match c.command {
                CommandKind::Release => {
                    match c.payload.get("resource_gone").and_then(|r| r.as_i64()) {
                        // Sent by the lease's resource as it went away:
                        // before activation the lease starts over.
                        Some(gone) if next.resource_id.map(|r| r.0) == Some(gone) => {
                            if next.status == LeaseStatus::Acquired {
                                reacquire = true;
                            } else {
                                release_by.get_or_insert_with(|| c.author.clone());
                            }
                        }
                        // Sent by a resource the lease has already left
                        // (reacquired elsewhere): stale, nothing to do.
                        Some(_) => {}
                        None => {
                            release_by.get_or_insert_with(|| c.author.clone());
                        }
                    }
                }
                CommandKind::Renew => {
                    if let Some(until) = c.payload.get("until").and_then(|u| u.as_i64())
                        && next.status.is_live()
                    {
                        next.until = Some(until);
                        tx.log(
                            lease_log(&next, log::LEASE_RENEWED)
                                .data(json!({ "until": until, "by": c.author })),
                        )
                        .await?;
                    }
                }
                CommandKind::Reclaim => {}
            }
            tx.mark_consumed(c.id).await?;
        }
        if release_by.is_none() && next.until.is_some_and(|u| u <= now) {
            tx.log(lease_log(&next, log::LEASE_EXPIRED).data(json!({ "until": next.until })))
                .await?;
            release_by = Some("expiry".into());
        }
        if reacquire && release_by.is_none() {
            // Spec §4.1 reacquire: the resource went away before the lease
            // was activated; start over instead of failing the requester.
            let gone = next.resource_id;
            transition(&mut next, LeaseStatus::Pending)?;
            next.resource_id = None;
            tx.free_slot_locks(&next.object().key()).await?;
            tx.log(
                lease_log(&lease, log::LEASE_REACQUIRE)
                    .data(json!({ "resource": gone.map(|r| r.0) })),
            )
            .await?;
        }
        if let Some(by) = release_by
            && next.status.is_live()
        {
            transition(&mut next, LeaseStatus::Released)?;
            next.waiting = None;
            // Its waits end with its destruction, next in this pass (if
            // that fails, a stale wake-up only brings the retry sooner).
            tx.log(lease_log(&next, log::LEASE_RELEASED).data(json!({ "by": by })))
                .await?;
        }
        let saved = if next == lease {
            tx.check_fence(lock).await?;
            next
        } else if next.status == LeaseStatus::Released && teardown_is_local {
            // Its destruction joins this transaction next, and writes the
            // lease once for both steps (unless the teardown fails first).
            tx.save_lease_at_commit(next.clone(), lock).await?;
            next
        } else {
            tx.save_lease(&next, lock).await?
        };
        tail.hold(tx);
        Ok(saved)
    }

    /// The implementation and context for a resource's blueprint.
    pub(crate) async fn implementation_of(
        &self,
        resource: &Resource,
    ) -> PassResult<(drydock_store::blueprint::Blueprint, Arc<dyn BlueprintImpl>)> {
        let bp = self.store.blueprint(resource.blueprint_id).await?;
        self.implementation(bp)
    }

    /// The implementation of a blueprint already read.
    pub(crate) fn implementation(
        &self,
        bp: drydock_store::blueprint::Blueprint,
    ) -> PassResult<(drydock_store::blueprint::Blueprint, Arc<dyn BlueprintImpl>)> {
        match self.blueprints.get(&bp.kind) {
            Some(imp) => Ok((bp, imp.clone())),
            None => Err(PassError::Blueprint(
                crate::blueprint::BlueprintError::Yield {
                    after: self.cfg.safety_poll,
                    reason: format!(
                        "blueprint type {:?} is not available in this process",
                        bp.kind
                    ),
                },
            )),
        }
    }

    /// `acquired` -> `active` (spec §6.2), or back to `pending` if the
    /// resource died in between. The acquiring write may still be open in
    /// `tail`: it is committed first unless the blueprint's activation is
    /// quick local work, which then joins it (pending -> active in one
    /// commit).
    async fn activate_lease(
        &self,
        lease: &mut Lease,
        lock: &ObjectLock,
        tail: &mut Tail,
    ) -> PassResult<Step> {
        let Some(rid) = lease.resource_id else {
            return Err(PassError::Permanent(
                "acquired lease has no resource".into(),
            ));
        };
        let (resource, blueprint) = self.resource_of_lease(tail, rid).await?;
        match resource.status {
            drydock_model::ResourceStatus::Pending => {
                let events = vec![events::resource(rid)];
                let mut tx = tail.begin(&self.store).await?;
                tx.wait_on(lease.object(), lease.priority, lease.created_at, &events)
                    .await?;
                tx.check_fence(lock).await?;
                tx.commit().await?;
                // Re-check after registering: an activation in between
                // would otherwise wake nobody.
                if self.store.resource(rid).await?.status != drydock_model::ResourceStatus::Pending
                {
                    return Ok(Step::Progress);
                }
                Ok(Step::Wait(Next::At(
                    now_ms() + drydock_store::ms(self.cfg.safety_poll),
                )))
            }
            drydock_model::ResourceStatus::Active => {
                let bp = self
                    .blueprint_of(&resource, blueprint, tail.blueprints_version)
                    .await?;
                let (bp, imp) = self.implementation(bp)?;
                if !imp.lease_hooks_are_local(&bp) {
                    tail.commit().await?;
                }
                let ctx = Context {
                    store: &self.store,
                    blueprint: &bp,
                };
                let attrs = match imp.activate_lease(&ctx, &resource, lease).await {
                    Ok(attrs) => attrs,
                    // The resource was released while we set the lease up,
                    // and its teardown is what failed us: start over on
                    // another one (the next step sees it gone) instead of
                    // breaking the lease.
                    Err(_)
                        if self.store.resource(rid).await?.status
                            != drydock_model::ResourceStatus::Active =>
                    {
                        return Ok(Step::Progress);
                    }
                    Err(e) => return Err(e.into()),
                };
                let mut next = lease.clone();
                next.attributes.extend(attrs);
                transition(&mut next, LeaseStatus::Active)?;
                next.activated_at = Some(now_ms());
                next.waiting = None;
                let mut tx = tail.begin(&self.store).await?;
                tx.log(lease_log(&next, log::LEASE_ACTIVATED)).await?;
                wake_owner(&mut tx, &next).await?;
                *lease = tx.save_lease(&next, lock).await?;
                tail.hold(tx);
                crate::metrics::lease_activated(lease);
                Ok(Step::Progress)
            }
            _ => {
                // Reacquire (spec §4.1): drop the dead resource, start over.
                let mut next = lease.clone();
                transition(&mut next, LeaseStatus::Pending)?;
                next.resource_id = None;
                let mut tx = tail.begin(&self.store).await?;
                tx.free_slot_locks(&lease.object().key()).await?;
                tx.log(
                    lease_log(lease, log::LEASE_REACQUIRE)
                        .data(json!({ "resource": rid.0, "status": resource.status })),
                )
                .await?;
                *lease = tx.save_lease(&next, lock).await?;
                tail.hold(tx);
                Ok(Step::Progress)
            }
        }
    }

    /// `released`/`broken` -> `destroyed` (spec §6.3, §6.5): blueprint hooks,
    /// then one transaction that frees the lease's slot locks and wakes
    /// whoever waits for the capacity. The release's write may still be
    /// open in `tail`: it is committed before the hooks run unless they are
    /// quick local work, which then joins it.
    async fn destroy_lease(
        &self,
        lease: &mut Lease,
        lock: &ObjectLock,
        tail: &mut Tail,
    ) -> PassResult<()> {
        let mut freed = None;
        if let Some(rid) = lease.resource_id {
            let (resource, known) = self.resource_of_lease(tail, rid).await?;
            let bp = self
                .blueprint_of(&resource, known, tail.blueprints_version)
                .await?;
            let (bp, imp) = self.implementation(bp)?;
            if !imp.lease_hooks_are_local(&bp) {
                tail.commit().await?;
            }
            let ctx = Context {
                store: &self.store,
                blueprint: &bp,
            };
            if lease.status == LeaseStatus::Released {
                imp.did_release_lease(&ctx, &resource, lease).await?;
            }
            imp.destroy_lease(&ctx, &resource, lease).await?;
            freed = Some(Freed::of(&resource, imp.lease_limit(&bp).is_some()));
        }
        self.finish_destroy(lease, lock, freed, None, tail).await
    }

    /// What a lease leaving its resource frees, when the caller has not
    /// read the resource and blueprint already.
    async fn freed_by(&self, lease: &Lease) -> PassResult<Option<Freed>> {
        let Some(rid) = lease.resource_id else {
            return Ok(None);
        };
        let r = self.store.resource(rid).await?;
        let limited = match self.implementation_of(&r).await {
            Ok((bp, imp)) => imp.lease_limit(&bp).is_some(),
            Err(_) => false,
        };
        Ok(Some(Freed::of(&r, limited)))
    }

    /// The destroy transaction: `destroyed`, slot locks freed, waiters for
    /// the capacity woken. Left open in `tail`.
    async fn finish_destroy(
        &self,
        lease: &mut Lease,
        lock: &ObjectLock,
        freed: Option<Freed>,
        cleanup_failure: Option<&str>,
        tail: &mut Tail,
    ) -> PassResult<()> {
        let mut next = lease.clone();
        transition(&mut next, LeaseStatus::Destroyed)?;
        next.waiting = None;
        let mut tx = tail.begin(&self.store).await?;
        tx.free_slot_locks(&lease.object().key()).await?;
        tx.stop_waiting(lease.object()).await?;
        tx.log(
            lease_log(&next, log::LEASE_DESTROYED)
                .data(json!({ "cleanup_failure": cleanup_failure })),
        )
        .await?;
        *lease = tx.save_lease(&next, lock).await?;
        // A slot freed on a resource with a lease limit goes to one waiter
        // (who hands it on if it cannot use it); other capacity wakes all.
        if let Some(f) = freed {
            let capacity = events::capacity(&f.resource_type);
            match f.one_slot {
                Some(rid) => tx.hand_over(&capacity, rid).await?,
                None => tx.fire(&capacity).await?,
            }
        }
        wake_owner(&mut tx, &next).await?;
        tail.hold(tx);
        Ok(())
    }

    /// Break a lease (spec §6.4), under its lock. Already finished leases are
    /// left as they are.
    pub(crate) async fn break_lease(
        &self,
        id: LeaseId,
        reason: &str,
        held: Option<&ObjectLock>,
    ) -> PassResult<Option<()>> {
        self.locked(ObjectRef::lease(id), held, async |lock| {
            let mut lease = self.store.lease(id).await?;
            if matches!(lease.status, LeaseStatus::Released | LeaseStatus::Broken) {
                // Its teardown kept failing: finish it, with the
                // failure logged, instead of retrying forever.
                let freed = self.freed_by(&lease).await?;
                let mut tail = Tail::default();
                self.finish_destroy(&mut lease, lock, freed, Some(reason), &mut tail)
                    .await?;
                return Ok(tail.commit().await?);
            }
            if !lease.status.is_live() {
                return Ok(());
            }
            let mut next = lease.clone();
            transition(&mut next, LeaseStatus::Broken)?;
            next.failure = Some(reason.to_owned());
            next.waiting = None;
            let mut tx = self.store.begin().await?;
            tx.stop_waiting(lease.object()).await?;
            tx.log(lease_log(&next, log::LEASE_BROKEN).data(json!({ "reason": reason })))
                .await?;
            wake_owner(&mut tx, &next).await?;
            tx.save_lease(&next, lock).await?;
            // Its next pass destroys it.
            tx.wake(lease.object()).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

/// Register `waiter` for `events` and record why it waits, writing the
/// lease only when the reason changed (no log spam while it waits).
pub(crate) async fn record_wait(
    tx: &mut Tx,
    lease: &mut Lease,
    lock: &ObjectLock,
    reason: &events::WaitReason,
    events: &[String],
) -> PassResult<()> {
    tx.wait_on(lease.object(), lease.priority, lease.created_at, events)
        .await?;
    let json = reason.to_json();
    if lease.waiting.as_ref() != Some(&json) {
        tx.log(lease_log(lease, log::LEASE_WAITING).data(json.clone()))
            .await?;
        let mut next = lease.clone();
        next.waiting = Some(json);
        *lease = tx.save_lease(&next, lock).await?;
    } else {
        tx.check_fence(lock).await?;
    }
    Ok(())
}
