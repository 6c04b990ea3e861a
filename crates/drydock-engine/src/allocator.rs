//! The allocator (spec §5): for a pending lease, find a free matching
//! resource, build one under the blueprint's limit, share a busy one, reclaim
//! an idle one, or wait — always with a reason and a wake-up edge.
//!
//! Ranking is deterministic (never random): among free resources, higher
//! blueprint rank (affinity) first, then fewer live leases, then older
//! resources; blueprints in id order; reclaim victims least recently used
//! first. Waiting leases are woken at their own rank (priority, then
//! creation time), so the queue serves them first come, first served within
//! a priority.

use crate::blueprint::{BlueprintError, BlueprintImpl, Context};
use crate::events::{self, WaitReason, log};
use crate::lease_worker::{Step, lease_log, record_wait, transition};
use crate::{ADMIN, Engine, Next, PassError, PassResult, Tail};
use drydock_model::{BlueprintId, CommandKind, LeaseStatus, ResourceId, ResourceStatus};
use drydock_store::authorization::BlueprintAuthState;
use drydock_store::blueprint::Blueprint;
use drydock_store::lease::Lease;
use drydock_store::log::NewLog;
use drydock_store::object_lock::ObjectLock;
use drydock_store::resource::{NewResource, Resource};
use drydock_store::{StoreError, now_ms};
use serde_json::{Value, json};
use std::sync::Arc;

type Candidate = (Blueprint, Arc<dyn BlueprintImpl>);

/// Resources built for one lease that may fail to activate before the
/// lease itself breaks.
const MAX_FAILED_ALLOCATIONS: usize = 3;

/// How an attempt to acquire a lease on one resource ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Acquire {
    Acquired,
    /// The resource has no room (lease limit reached, no longer active).
    Full,
    /// Lost a race for its slots: someone else is taking it right now.
    Contended,
}

/// Slot-lock key prefix of a blueprint's resource limit.
pub(crate) fn limit_prefix(bp: BlueprintId) -> String {
    format!("limit(blueprint:{bp}).")
}

/// Slot-lock key prefix of a resource's lease limit.
pub(crate) fn lease_limit_prefix(r: ResourceId) -> String {
    format!("lease-limit(resource:{r}).")
}

fn ids(list: &Value) -> Vec<ResourceId> {
    list.as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).map(ResourceId).collect())
        .unwrap_or_default()
}

fn push_id(lease: &mut Lease, key: &str, id: ResourceId) {
    let entry = lease
        .internal
        .entry(key.to_owned())
        .or_insert_with(|| json!([]));
    if let Some(a) = entry.as_array_mut()
        && !a.contains(&json!(id.0))
    {
        a.push(json!(id.0));
    }
}

impl Engine {
    /// Step 1: the enabled blueprints of the lease's type it allows, as
    /// of the blueprints' `version` (`None`: read now).
    async fn candidates(&self, lease: &Lease, version: Option<i64>) -> PassResult<Vec<Candidate>> {
        let mut candidates: Vec<Candidate> = Vec::new();
        for bp in self.blueprints_as_of(version).await?.iter() {
            if bp.disabled
                || !(lease.blueprint_ids.is_empty() || lease.blueprint_ids.contains(&bp.id))
            {
                continue;
            }
            if let Some(imp) = self.blueprints.get(&bp.kind)
                && imp.resource_type() == lease.resource_type
            {
                candidates.push((bp.clone(), imp.clone()));
            }
        }
        Ok(candidates)
    }

    /// Step 2: the candidates the lease's authorizing object may use, or
    /// the failure when every one of them was declined.
    async fn authorized(
        &self,
        lease: &Lease,
        candidates: &[Candidate],
    ) -> PassResult<Vec<Candidate>> {
        if lease.authorizing == ADMIN {
            return Ok(candidates.to_vec());
        }
        let mut authorized = Vec::new();
        for c in candidates {
            if self.store.is_authorized(&lease.authorizing, c.0.id).await? {
                authorized.push(c.clone());
            }
        }
        if authorized.is_empty() {
            // Every candidate declined: no decision is pending that could
            // ever serve it, so it fails with who decided.
            let decisions = self
                .store
                .authorizations(None, Some(&lease.authorizing))
                .await?;
            let declined: Vec<String> = candidates
                .iter()
                .filter_map(|c| {
                    decisions
                        .iter()
                        .find(|a| {
                            a.blueprint == c.0.id
                                && a.blueprint_state == BlueprintAuthState::Declined
                        })
                        .map(|a| {
                            format!(
                                "blueprint {} ({}) declined by {}",
                                c.0.id,
                                c.0.name,
                                a.decided_by.as_deref().unwrap_or("an administrator")
                            )
                        })
                })
                .collect();
            if !candidates.is_empty() && declined.len() == candidates.len() {
                return Err(PassError::Permanent(format!(
                    "{} is not authorized: {}",
                    lease.authorizing,
                    declined.join("; ")
                )));
            }
        }
        Ok(authorized)
    }

    /// One allocator pass over a pending lease. An acquisition's write is
    /// left open in `tail`.
    pub(crate) async fn allocate(
        &self,
        lease: &mut Lease,
        lock: &ObjectLock,
        tail: &mut Tail,
    ) -> PassResult<Step> {
        let candidates = self.candidates(lease, tail.blueprints_version).await?;
        let generic = vec![
            events::capacity(&lease.resource_type),
            events::BLUEPRINTS.to_owned(),
            events::authorization(&lease.authorizing),
        ];
        if candidates.is_empty() {
            let step = self
                .wait(lease, lock, WaitReason::NoBlueprints, generic, None)
                .await?;
            // Registered for `blueprints`; look again, so a blueprint
            // created between the first look and the registration is seen.
            if self.candidates(lease, None).await?.is_empty() {
                return Ok(step);
            }
            return Ok(Step::Progress);
        }
        let candidates = match self.authorized(lease, &candidates).await? {
            authorized if authorized.is_empty() => {
                let blueprints = candidates.iter().map(|c| c.0.id).collect();
                let step = self
                    .wait(
                        lease,
                        lock,
                        WaitReason::NotAuthorized { blueprints },
                        generic,
                        None,
                    )
                    .await?;
                // Registered for `authorization:<object>`; look again, so a
                // decision taken meanwhile is not missed (a decline fails
                // the lease here).
                if self.authorized(lease, &candidates).await?.is_empty() {
                    return Ok(step);
                }
                return Ok(Step::Progress);
            }
            authorized => authorized,
        };
        let mut usable = Vec::new();
        let mut refusals = Vec::new();
        for (bp, imp) in candidates {
            match imp.can_ever_allocate(&bp, lease) {
                Ok(true) => usable.push((bp, imp)),
                Ok(false) => refusals.push(format!(
                    "blueprint {} ({}) can never satisfy it",
                    bp.id, bp.name
                )),
                Err(e) => refusals.push(format!("blueprint {} ({}): {e}", bp.id, bp.name)),
            }
        }
        if usable.is_empty() {
            return Err(PassError::Permanent(format!(
                "no blueprint can ever allocate this lease: {}",
                refusals.join("; ")
            )));
        }

        // Fast path (step 4 alone): a free resource, without registering waits.
        if let Some(step) = self.lease_free_resource(lease, lock, &usable, tail).await? {
            return Ok(step);
        }
        // Slow path: register the generic wake-ups first, so capacity freed
        // while we look further is not missed, then look again.
        {
            let mut tx = self.store.begin().await?;
            tx.wait_on(lease.object(), lease.priority, lease.created_at, &generic)
                .await?;
            tx.check_fence(lock).await?;
            tx.commit().await?;
        }
        self.allocate_slow(lease, lock, &usable, generic, tail)
            .await
    }

    async fn acquirable(
        &self,
        lease: &Lease,
        candidates: &[Candidate],
    ) -> PassResult<Vec<(Resource, usize, i64)>> {
        // Resources at their lease limit are skipped in the database, so a
        // fleet of busy resources costs nothing here.
        let room: Vec<(BlueprintId, Option<i64>)> = candidates
            .iter()
            .map(|(bp, imp)| {
                let limit = imp
                    .lease_limit(bp)
                    .map(|l| i64::try_from(l).unwrap_or(i64::MAX));
                (bp.id, limit)
            })
            .collect();
        let resources = self.store.active_resources_with_room(&room).await?;
        let mut out = Vec::new();
        for (r, n) in resources {
            let Some(ci) = candidates.iter().position(|c| c.0.id == r.blueprint_id) else {
                continue;
            };
            let (bp, imp) = &candidates[ci];
            if imp.can_acquire(bp, &r, lease) {
                let rank = imp
                    .rank(
                        &Context {
                            store: &self.store,
                            blueprint: bp,
                        },
                        &r,
                        lease,
                    )
                    .await;
                out.push((r, ci, n, rank));
            }
        }
        // Deterministic ranking: affinity, then fewest leases, then oldest.
        out.sort_by_key(|(r, _, n, rank)| (-rank, *n, r.id));
        Ok(out.into_iter().map(|(r, ci, n, _)| (r, ci, n)).collect())
    }

    /// Steps 2–4: lease any free acquirable resource.
    async fn lease_free_resource(
        &self,
        lease: &mut Lease,
        lock: &ObjectLock,
        candidates: &[Candidate],
        tail: &mut Tail,
    ) -> PassResult<Option<Step>> {
        for (r, ci, n) in self.acquirable(lease, candidates).await? {
            let (bp, imp) = &candidates[ci];
            let free = n == 0 || !imp.should_allocate_supplemental(bp, &r, lease);
            if free
                && self
                    .try_acquire(lease, lock, bp, imp.as_ref(), &r, tail)
                    .await?
                    == Acquire::Acquired
            {
                return Ok(Some(Step::Progress));
            }
        }
        Ok(None)
    }

    async fn allocate_slow(
        &self,
        lease: &mut Lease,
        lock: &ObjectLock,
        candidates: &[Candidate],
        generic: Vec<String>,
        tail: &mut Tail,
    ) -> PassResult<Step> {
        let mut contention = false;
        let acquirable = self.acquirable(lease, candidates).await?;
        let (free, used): (Vec<_>, Vec<_>) = acquirable.into_iter().partition(|(r, ci, n)| {
            *n == 0
                || !candidates[*ci]
                    .1
                    .should_allocate_supplemental(&candidates[*ci].0, r, lease)
        });
        // Step 4 again, now that wake-ups are registered.
        for (r, ci, _) in &free {
            let (bp, imp) = &candidates[*ci];
            match self
                .try_acquire(lease, lock, bp, imp.as_ref(), r, tail)
                .await?
            {
                Acquire::Acquired => return Ok(Step::Progress),
                Acquire::Contended => contention = true,
                Acquire::Full => {}
            }
        }

        // Step 5: our own allocation is still activating. Resources built
        // for this lease that failed count against it: after a few, the
        // lease breaks with their reason instead of building forever.
        let mut failed = Vec::new();
        for rid in ids(lease.internal.get("allocated").unwrap_or(&Value::Null)) {
            let Ok(r) = self.store.resource(rid).await else {
                continue;
            };
            if r.status == ResourceStatus::Pending {
                let reason = WaitReason::WaitingForActivation { resource: rid };
                return self.wait_for_resource(lease, lock, reason, generic).await;
            }
            if let Some(f) = r.failure {
                failed.push(f);
            }
        }
        if failed.len() >= MAX_FAILED_ALLOCATIONS {
            return Err(PassError::Permanent(format!(
                "{} resources built for this lease failed to activate; the last: {}",
                failed.len(),
                failed.last().map(String::as_str).unwrap_or_default()
            )));
        }

        // Step 6: build a new resource under the blueprint's limit.
        let mut at_limit = Vec::new();
        for (bp, imp) in candidates {
            let ctx = Context {
                store: &self.store,
                blueprint: bp,
            };
            if !imp.can_allocate(&ctx, lease).await {
                continue;
            }
            let limit_slot = match imp.limit(bp) {
                Some(limit) => match self.pick_slot(&limit_prefix(bp.id), limit).await? {
                    Some(slot) => Some(slot),
                    None => {
                        at_limit.push(bp.id);
                        continue;
                    }
                },
                None => None,
            };
            let template = match imp.allocate(&ctx, lease).await {
                Ok(t) => t,
                Err(BlueprintError::Yield { .. }) => {
                    contention = true;
                    continue;
                }
                Err(e) => {
                    // Logged, not fatal: keep believing in the blueprint (T13073).
                    self.store
                        .log(
                            lease_log(lease, log::RESOURCE_ALLOCATION_FAILURE)
                                .blueprint(bp.id)
                                .data(json!({ "error": e.to_string() })),
                        )
                        .await?;
                    continue;
                }
            };
            let mut tx = self.store.begin().await?;
            let status = if template.activate_now {
                ResourceStatus::Active
            } else {
                ResourceStatus::Pending
            };
            let resource = tx
                .insert_resource(&NewResource {
                    blueprint_id: bp.id,
                    resource_type: imp.resource_type().to_owned(),
                    status,
                    attributes: template.attributes,
                    until: None,
                })
                .await?;
            let mut slots = template.slot_locks;
            slots.extend(limit_slot);
            match tx
                .acquire_slot_locks(&resource.object().key(), &slots)
                .await
            {
                Ok(()) => {}
                Err(StoreError::SlotLocked(c)) => {
                    tx.rollback().await?;
                    tracing::debug!(lease = %lease.id, "allocation lost a race for slots: {c}");
                    contention = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let mut next = lease.clone();
            push_id(&mut next, "allocated", resource.id);
            tx.log(
                NewLog::new(log::RESOURCE_ALLOCATED)
                    .lease(lease.id)
                    .resource(resource.id)
                    .blueprint(bp.id)
                    .data(json!({ "status": status })),
            )
            .await?;
            *lease = tx.save_lease(&next, lock).await?;
            if status == ResourceStatus::Pending {
                tx.wake(resource.object()).await?;
            }
            tx.commit().await?;
            if status == ResourceStatus::Active {
                if imp.can_acquire(bp, &resource, lease)
                    && self
                        .try_acquire(lease, lock, bp, imp.as_ref(), &resource, tail)
                        .await?
                        == Acquire::Acquired
                {
                    return Ok(Step::Progress);
                }
                contention = true;
            } else {
                return self
                    .wait_for_resource(
                        lease,
                        lock,
                        WaitReason::WaitingForActivation {
                            resource: resource.id,
                        },
                        generic,
                    )
                    .await;
            }
        }

        // Step 7: share a used resource.
        for (r, ci, _) in &used {
            let (bp, imp) = &candidates[*ci];
            match self
                .try_acquire(lease, lock, bp, imp.as_ref(), r, tail)
                .await?
            {
                Acquire::Acquired => return Ok(Step::Progress),
                Acquire::Contended => contention = true,
                Acquire::Full => {}
            }
        }

        // Steps 8–9: reclaim, but only when a limit is what blocks us.
        if !at_limit.is_empty()
            && let Some(step) = self.reclaim(lease, lock, &at_limit, &generic).await?
        {
            return Ok(step);
        }

        // Step 10: wait.
        let reason = if contention {
            WaitReason::Contention
        } else {
            WaitReason::AtLimit {
                blueprints: if at_limit.is_empty() {
                    candidates.iter().map(|c| c.0.id).collect()
                } else {
                    at_limit
                },
            }
        };
        let retry = if contention {
            Some(now_ms() + drydock_store::ms(self.cfg.contention_retry) * 5)
        } else {
            None
        };
        self.wait(lease, lock, reason, generic, retry).await
    }

    async fn reclaim(
        &self,
        lease: &mut Lease,
        lock: &ObjectLock,
        at_limit: &[BlueprintId],
        generic: &[String],
    ) -> PassResult<Option<Step>> {
        // Step 8: our own reclaim still in flight? A refused one (the
        // resource got a lease meanwhile) is forgotten, not waited on forever.
        let mut next = lease.clone();
        let mut forgot = false;
        for rid in ids(lease.internal.get("reclaimed").unwrap_or(&Value::Null)) {
            let r = self.store.resource(rid).await?;
            let in_flight = matches!(r.status, ResourceStatus::Released)
                || (r.status == ResourceStatus::Active
                    && self
                        .store
                        .has_pending_command(r.object(), CommandKind::Reclaim)
                        .await?);
            if in_flight {
                return self
                    .wait_for_resource(
                        lease,
                        lock,
                        WaitReason::WaitingForReclaim { resource: rid },
                        generic.to_vec(),
                    )
                    .await
                    .map(Some);
            }
            if let Some(a) = next
                .internal
                .get_mut("reclaimed")
                .and_then(Value::as_array_mut)
            {
                a.retain(|v| v.as_i64() != Some(rid.0));
                forgot = true;
            }
        }
        // Step 9: the least recently used idle resource past its grace period.
        let now = now_ms();
        let grace = drydock_store::ms(self.cfg.reclaim_grace);
        let no_lease: Vec<(BlueprintId, Option<i64>)> =
            at_limit.iter().map(|b| (*b, Some(1))).collect();
        let resources = self.store.active_resources_with_room(&no_lease).await?;
        let mut idle = Vec::new();
        for (r, _) in resources {
            let last = self
                .store
                .last_lease_activity(r.id)
                .await?
                .unwrap_or(0)
                .max(r.created_at);
            idle.push((last, r));
        }
        idle.sort_by_key(|(last, r)| (*last, r.id));
        if let Some((last, victim)) = idle.first() {
            if last + grace > now {
                // Reclaimable later: look again when its grace period ends.
                if forgot {
                    let mut tx = self.store.begin().await?;
                    *lease = tx.save_lease(&next, lock).await?;
                    tx.commit().await?;
                }
                let reason = WaitReason::AtLimit {
                    blueprints: at_limit.to_vec(),
                };
                return self
                    .wait(lease, lock, reason, generic.to_vec(), Some(last + grace))
                    .await
                    .map(Some);
            }
            push_id(&mut next, "reclaimed", victim.id);
            let mut tx = self.store.begin().await?;
            tx.enqueue_command(
                &lease.object().key(),
                victim.object(),
                CommandKind::Reclaim,
                json!({ "reclaimer": lease.object().key() }),
            )
            .await?;
            tx.log(lease_log(lease, log::LEASE_RECLAIM).data(json!({ "resource": victim.id.0 })))
                .await?;
            *lease = tx.save_lease(&next, lock).await?;
            tx.commit().await?;
            return self
                .wait_for_resource(
                    lease,
                    lock,
                    WaitReason::WaitingForReclaim {
                        resource: victim.id,
                    },
                    generic.to_vec(),
                )
                .await
                .map(Some);
        }
        if forgot {
            let mut tx = self.store.begin().await?;
            *lease = tx.save_lease(&next, lock).await?;
            tx.commit().await?;
        }
        Ok(None)
    }

    /// The first free slot `prefix<i>` for `i < limit`, or `None` at the limit.
    pub(crate) async fn pick_slot(&self, prefix: &str, limit: u64) -> PassResult<Option<String>> {
        let held: std::collections::HashSet<String> = self
            .store
            .slot_keys_with_prefix(prefix)
            .await?
            .into_iter()
            .collect();
        Ok((0..limit)
            .map(|i| format!("{prefix}{i}"))
            .find(|k| !held.contains(k)))
    }

    /// Acquire `lease` on `resource` (spec §5 "acquire on resource"): slot
    /// locks, resource id and status in one transaction, with the resource
    /// row shared so a concurrent release or reclaim either sees this lease
    /// or is seen by it. Acquired, the transaction is left open in `tail`.
    async fn try_acquire(
        &self,
        lease: &mut Lease,
        lock: &ObjectLock,
        bp: &Blueprint,
        imp: &dyn BlueprintImpl,
        resource: &Resource,
        tail: &mut Tail,
    ) -> PassResult<Acquire> {
        let acquisition = match imp.acquire(bp, resource, lease) {
            Ok(a) => a,
            Err(BlueprintError::Yield { .. } | BlueprintError::Temporary(_)) => {
                return Ok(Acquire::Contended);
            }
            Err(e) => return Err(e.into()),
        };
        let mut slots = acquisition.slot_locks;
        if let Some(limit) = imp.lease_limit(bp) {
            match self
                .pick_slot(&lease_limit_prefix(resource.id), limit)
                .await?
            {
                Some(slot) => slots.push(slot),
                None => return Ok(Acquire::Full),
            }
        }
        let mut tx = tail.begin(&self.store).await?;
        let fresh = tx.resource_to_acquire(resource.id).await?;
        let usable = fresh.status == ResourceStatus::Active
            || (fresh.status == ResourceStatus::Pending && !acquisition.activate_now);
        if !usable {
            tx.rollback().await?;
            return Ok(Acquire::Full);
        }
        match tx.acquire_slot_locks(&lease.object().key(), &slots).await {
            Ok(()) => {}
            Err(StoreError::SlotLocked(_)) => {
                tx.rollback().await?;
                return Ok(Acquire::Contended);
            }
            Err(e) => return Err(e.into()),
        }
        let now = now_ms();
        let mut next = lease.clone();
        next.resource_id = Some(resource.id);
        transition(
            &mut next,
            if acquisition.activate_now {
                LeaseStatus::Active
            } else {
                LeaseStatus::Acquired
            },
        )?;
        next.acquired_at = Some(now);
        if acquisition.activate_now {
            next.activated_at = Some(now);
        }
        next.waiting = None;
        tx.stop_waiting(lease.object()).await?;
        tx.log(lease_log(&next, log::LEASE_ACQUIRED).blueprint(bp.id))
            .await?;
        if acquisition.activate_now {
            tx.log(lease_log(&next, log::LEASE_ACTIVATED)).await?;
            crate::lease_worker::wake_owner(&mut tx, &next).await?;
        }
        if !acquisition.activate_now
            && fresh.status == ResourceStatus::Active
            && imp.lease_hooks_are_local(bp)
        {
            // Its activation joins this transaction next, and writes the
            // lease once for both steps (unless it fails first).
            tx.save_lease_at_commit(next.clone(), lock).await?;
            *lease = next;
        } else {
            *lease = tx.save_lease(&next, lock).await?;
        }
        tail.hold(tx);
        if acquisition.activate_now {
            crate::metrics::lease_activated(lease);
        } else {
            tail.lease_on(fresh, Some(bp.clone()));
        }
        Ok(Acquire::Acquired)
    }

    /// Wait for a specific resource to change, closing the race with a
    /// change that happened before the registration.
    async fn wait_for_resource(
        &self,
        lease: &mut Lease,
        lock: &ObjectLock,
        reason: WaitReason,
        mut events: Vec<String>,
    ) -> PassResult<Step> {
        let rid = match &reason {
            WaitReason::WaitingForActivation { resource }
            | WaitReason::WaitingForReclaim { resource } => *resource,
            _ => return self.wait(lease, lock, reason, events, None).await,
        };
        let before = self.store.resource(rid).await?.status;
        events.push(events::resource(rid));
        let step = self.wait(lease, lock, reason, events, None).await?;
        if self.store.resource(rid).await?.status != before {
            return Ok(Step::Progress);
        }
        Ok(step)
    }

    async fn wait(
        &self,
        lease: &mut Lease,
        lock: &ObjectLock,
        reason: WaitReason,
        events: Vec<String>,
        at: Option<i64>,
    ) -> PassResult<Step> {
        let mut tx = self.store.begin().await?;
        record_wait(&mut tx, lease, lock, &reason, &events).await?;
        tx.commit().await?;
        let poll = now_ms() + drydock_store::ms(self.cfg.safety_poll);
        Ok(Step::Wait(Next::At(at.map_or(poll, |a| a.min(poll)))))
    }
}
