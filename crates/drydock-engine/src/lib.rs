//! Drydock's lifecycle engine: the lease and resource update workers (the
//! single writers of their objects), the allocator, garbage collection and
//! the daemon loop.
//!
//! Every pass over an object takes the object's lock (contention is a short
//! yield, never a failure), consumes its commands in order, advances its
//! state machine (transitions checked against the model's tables) and writes
//! fenced on the lock token and row version. Blueprint implementations are
//! called through [`blueprint::BlueprintImpl`] and never write rows.
//!
//! This crate renders no output and parses no HTTP.

pub mod blueprint;
pub mod client;
pub mod daemon;
pub mod events;
pub mod metrics;

mod allocator;
mod lease_worker;
mod resource_worker;

use blueprint::{BlueprintError, Registry};
use drydock_model::{LeaseId, ObjectKind, ObjectRef, ResourceId};
use drydock_store::blueprint::Blueprint;
use drydock_store::object_lock::ObjectLock;
use drydock_store::queue::{
    ClaimGuard, ClaimedTask, DEFAULT_MAX_ATTEMPTS, Handled, Handler, Outcome,
};
use drydock_store::resource::Resource;
use drydock_store::{Store, StoreError, Tx, now_ms};
use std::sync::Arc;
use std::time::Duration;

/// The authorizing object of the Drydock administrator (CLI leases): not
/// checked against authorizations (spec §11).
pub const ADMIN: &str = "drydock";

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Identity written as lock and claim owner (`host:pid`).
    pub owner: String,
    /// Object locks expire after this unless renewed (they are renewed while
    /// a pass runs).
    pub lock_ttl: Duration,
    /// A waiting object is looked at again after this even if no event woke
    /// it: the safety net, not the mechanism.
    pub safety_poll: Duration,
    /// Retry delay when another worker holds the object's lock.
    pub contention_retry: Duration,
    /// Retry delay while the database is unavailable (not counted).
    pub store_retry: Duration,
    /// An idle resource is reclaimable only after no lease touched it for
    /// this long (spec §7.3: a hard-coded 3 minutes there).
    pub reclaim_grace: Duration,
    /// Logs and consumed commands of destroyed objects, and finished tasks,
    /// are deleted after this.
    pub retention: Duration,
    /// How often garbage collection runs.
    pub gc_interval: Duration,
    /// Temporary failures of one object retried this many times, then it breaks.
    pub max_attempts: i64,
}

impl EngineConfig {
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            lock_ttl: Duration::from_secs(30),
            safety_poll: Duration::from_secs(30),
            contention_retry: Duration::from_millis(20),
            store_retry: Duration::from_secs(1),
            reclaim_grace: Duration::from_secs(180),
            retention: Duration::from_secs(30 * 86_400),
            gc_interval: Duration::from_secs(300),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// The engine: runs update passes as the task queue hands them out.
pub struct Engine {
    pub store: Store,
    pub blueprints: Arc<Registry>,
    pub cfg: EngineConfig,
    /// The blueprints as last read, and the blueprints' version they were
    /// read at or after ([`Engine::blueprints_as_of`]).
    blueprint_cache: std::sync::Mutex<Option<(i64, Arc<Vec<Blueprint>>)>>,
}

/// What an update pass decided about the object's next pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing to do until a command or event arrives.
    Idle,
    /// Look again at this time (epoch ms) unless woken earlier.
    At(i64),
    /// Another worker holds the lock: try again shortly.
    Contended,
}

/// Why a pass stopped early.
#[derive(Debug)]
pub(crate) enum PassError {
    Store(StoreError),
    Blueprint(BlueprintError),
    /// The object cannot make progress: break it.
    Permanent(String),
}

impl From<StoreError> for PassError {
    fn from(e: StoreError) -> Self {
        PassError::Store(e)
    }
}

impl From<BlueprintError> for PassError {
    fn from(e: BlueprintError) -> Self {
        PassError::Blueprint(e)
    }
}

pub(crate) type PassResult<T> = Result<T, PassError>;

/// A pass's failed attempts so far (its task's count) and how many its
/// object gets before it breaks (the lower of the engine's and the task's
/// limits, so the object breaks before the queue gives up on its task).
#[derive(Clone, Copy, Debug)]
struct Attempts {
    failed: i64,
    limit: i64,
}

/// A pass's last write, held open so it commits with the pass's task
/// completion (one commit fewer per pass; see [`Handled`]). A step that
/// writes takes it with [`Tail::begin`] and leaves its transaction here
/// with [`Tail::hold`] instead of committing; anything that needs the
/// write committed — another transaction (on SQLite the one writer
/// connection is this one), remote work, the end of a pass outside the
/// queue — commits it first with [`Tail::commit`].
///
/// It also carries the resource a lease is on as the pass last read it
/// (with the lease, or in the acquiring transaction, with its blueprint),
/// so the step that follows does not read it again; a step takes it once.
#[derive(Default)]
pub(crate) struct Tail {
    tx: Option<Tx>,
    lease_on: Option<(Resource, Option<Blueprint>)>,
    /// The blueprints' version the pass read with its lease.
    pub(crate) blueprints_version: Option<i64>,
}

impl Tail {
    /// The held transaction, or a new one.
    pub(crate) async fn begin(&mut self, store: &Store) -> Result<Tx, StoreError> {
        match self.tx.take() {
            Some(tx) => Ok(tx),
            None => store.begin().await,
        }
    }

    pub(crate) fn hold(&mut self, tx: Tx) {
        debug_assert!(self.tx.is_none(), "a pass holds one transaction");
        self.tx = Some(tx);
    }

    pub(crate) async fn commit(&mut self) -> Result<(), StoreError> {
        match self.tx.take() {
            Some(tx) => tx.commit().await,
            None => Ok(()),
        }
    }

    pub(crate) fn into_tx(self) -> Option<Tx> {
        self.tx
    }

    /// Remember the resource a lease is on (and its blueprint, if read), as
    /// this pass read them.
    pub(crate) fn lease_on(&mut self, resource: Resource, blueprint: Option<Blueprint>) {
        self.lease_on = Some((resource, blueprint));
    }
}

impl Engine {
    pub fn new(store: Store, blueprints: Arc<Registry>, cfg: EngineConfig) -> Self {
        Self {
            store,
            blueprints,
            cfg,
            blueprint_cache: std::sync::Mutex::default(),
        }
    }

    /// Every blueprint, as of `version` (the blueprints' version a pass
    /// read with its lease, [`LeaseForPass`]): kept from an earlier read at
    /// that version, or read now (`None`: always read now). A read after
    /// the version was read is at least as new, so it is kept under it: a
    /// blueprint edit moves the version, and the next pass reads again.
    pub(crate) async fn blueprints_as_of(
        &self,
        version: Option<i64>,
    ) -> Result<Arc<Vec<Blueprint>>, StoreError> {
        let cache = || {
            self.blueprint_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if let Some(v) = version
            && let Some((at, list)) = cache().as_ref()
            && *at == v
        {
            return Ok(list.clone());
        }
        let list = Arc::new(self.store.blueprints(None).await?);
        if let Some(v) = version {
            *cache() = Some((v, list.clone()));
        }
        Ok(list)
    }

    /// The resource `rid` a lease is on, as this pass last read it (taken
    /// from `tail`), or else read now; and its blueprint if the pass read
    /// it too.
    pub(crate) async fn resource_of_lease(
        &self,
        tail: &mut Tail,
        rid: ResourceId,
    ) -> Result<(Resource, Option<Blueprint>), StoreError> {
        match tail.lease_on.take().filter(|(r, _)| r.id == rid) {
            Some(on) => Ok(on),
            None => Ok((self.store.resource(rid).await?, None)),
        }
    }

    /// The blueprint of `resource`: `known` if the pass has it, or else as
    /// of the blueprints' `version` the pass read.
    pub(crate) async fn blueprint_of(
        &self,
        resource: &Resource,
        known: Option<Blueprint>,
        version: Option<i64>,
    ) -> Result<Blueprint, StoreError> {
        match known {
            Some(bp) => Ok(bp),
            None => self.blueprint_as_of(resource.blueprint_id, version).await,
        }
    }

    /// Blueprint `id`, as of `version` (see [`Engine::blueprints_as_of`]).
    pub(crate) async fn blueprint_as_of(
        &self,
        id: drydock_model::BlueprintId,
        version: Option<i64>,
    ) -> Result<Blueprint, StoreError> {
        match self
            .blueprints_as_of(version)
            .await?
            .iter()
            .find(|b| b.id == id)
        {
            Some(bp) => Ok(bp.clone()),
            // Not there: read it, for the error that names it.
            None => self.store.blueprint(id).await,
        }
    }

    /// Run one update pass over `object` now, in this process (the CLI's
    /// `update-lease` / `update-resource`). Returns what the queue would do.
    pub async fn update_now(&self, object: ObjectRef) -> Outcome {
        // Without a claimed lock a pass commits everything itself.
        let attempts = Attempts {
            failed: 0,
            limit: self.cfg.max_attempts,
        };
        self.pass(object, attempts, None).await.outcome
    }

    /// One update pass, under `held` (the lock taken with the task's claim)
    /// or else a lock of its own. Under `held`, its last write may be left
    /// open to commit with the task's completion.
    async fn pass(
        &self,
        object: ObjectRef,
        attempts: Attempts,
        held: Option<&ObjectLock>,
    ) -> Handled {
        use futures_util::FutureExt as _;
        if object.kind == ObjectKind::Blueprint {
            return Outcome::Fail(format!("{object} has no update worker")).into();
        }
        // Boxed: a pass's future is large, and the panic guard around it
        // would move it about on the stack (debug builds overflowed a
        // worker's stack in the lifecycle tests without the box).
        let pass = Box::pin(async {
            if object.kind == ObjectKind::Lease {
                match self.lease_pass(LeaseId(object.id), held).await {
                    Ok((next, tail)) => (Ok(next), tail),
                    Err(e) => (Err(e), None),
                }
            } else {
                (self.resource_pass(ResourceId(object.id), held).await, None)
            }
        });
        // A panicking pass (a blueprint hook's bug) is a failed attempt of
        // its object, told in the object's log: retried, then broken —
        // never a dead worker or an object nobody looks at again. Whatever
        // it held is dropped on the way out (its transaction rolls back).
        let (result, tail) = match std::panic::AssertUnwindSafe(pass).catch_unwind().await {
            Ok(done) => done,
            Err(panic) => {
                let message = drydock_store::queue::panic_message(panic.as_ref());
                tracing::error!(%object, "update pass panicked: {message}");
                let mut log = drydock_store::log::NewLog::new(events::log::PASS_PANICKED)
                    .data(serde_json::json!({ "error": message }));
                match object.kind {
                    ObjectKind::Lease => log = log.lease(LeaseId(object.id)),
                    ObjectKind::Resource => log = log.resource(ResourceId(object.id)),
                    ObjectKind::Blueprint => {}
                }
                if let Err(e) = self.store.log(log).await {
                    tracing::warn!(%object, "logging the panic failed: {e}");
                }
                let reason = format!("the update pass panicked: {message}");
                (
                    Err(PassError::Blueprint(BlueprintError::Temporary(reason))),
                    None,
                )
            }
        };
        Handled {
            outcome: self.outcome(object, attempts, result, held).await,
            tail,
        }
    }

    /// Turn a pass result into a queue outcome: yields for waits and
    /// contention, bounded retries for temporary failures, and a break for
    /// permanent ones (spec §4.3, with transient errors retried instead of
    /// breaking at once).
    async fn outcome(
        &self,
        object: ObjectRef,
        attempts: Attempts,
        result: PassResult<Next>,
        held: Option<&ObjectLock>,
    ) -> Outcome {
        let now = now_ms();
        let reason = match result {
            Ok(Next::Idle) => return Outcome::Done,
            Ok(Next::At(t)) => {
                return Outcome::Yield(Duration::from_millis(u64::try_from(t - now).unwrap_or(0)));
            }
            Ok(Next::Contended) => return Outcome::Yield(self.cfg.contention_retry),
            Err(PassError::Store(StoreError::Stale { .. } | StoreError::LostClaim { .. })) => {
                return Outcome::Yield(self.cfg.contention_retry);
            }
            Err(PassError::Store(StoreError::SlotLocked(_))) => {
                return Outcome::Yield(self.cfg.contention_retry);
            }
            Err(PassError::Store(e)) if e.is_temporary() => {
                tracing::warn!(%object, "database unavailable, retrying: {e}");
                return Outcome::Yield(self.cfg.store_retry);
            }
            Err(PassError::Store(e @ StoreError::NotFound { .. })) => {
                return Outcome::Fail(e.to_string());
            }
            Err(PassError::Blueprint(BlueprintError::Yield { after, .. })) => {
                return Outcome::Yield(after);
            }
            Err(PassError::Store(e)) => Err(e.to_string()),
            Err(PassError::Blueprint(BlueprintError::Temporary(m))) => Err(m),
            Err(PassError::Blueprint(BlueprintError::Permanent(m)) | PassError::Permanent(m)) => {
                Ok(m)
            }
        };
        let reason = match reason {
            Ok(permanent) => permanent,
            Err(temporary) if attempts.failed + 1 < attempts.limit => {
                return Outcome::Retry(temporary);
            }
            Err(temporary) => format!(
                "gave up after {} attempts: {temporary}",
                attempts.failed + 1
            ),
        };
        match self.break_under(object, &reason, held).await {
            // Broken: the next pass destroys it.
            Ok(()) => Outcome::Yield(Duration::ZERO),
            Err(e) if e.is_temporary() => Outcome::Yield(self.cfg.store_retry),
            Err(e) => Outcome::Retry(format!("breaking {object} failed: {e}; cause: {reason}")),
        }
    }

    /// Break a lease or resource now, recording `reason` (for operators and
    /// health checks; the engine also calls it on permanent failures). A
    /// broken resource releases its leases; the next pass destroys it.
    pub async fn break_object(&self, object: ObjectRef, reason: &str) -> Result<(), StoreError> {
        self.break_under(object, reason, None).await
    }

    /// [`Engine::break_object`] under `held`, the lock of the pass that
    /// failed, if it has one.
    async fn break_under(
        &self,
        object: ObjectRef,
        reason: &str,
        held: Option<&ObjectLock>,
    ) -> Result<(), StoreError> {
        let result = match object.kind {
            ObjectKind::Lease => self.break_lease(LeaseId(object.id), reason, held).await,
            ObjectKind::Resource => {
                self.break_resource(ResourceId(object.id), reason, held)
                    .await
            }
            ObjectKind::Blueprint => return Ok(()),
        };
        match result {
            Ok(Some(())) => Ok(()),
            Ok(None) => Err(StoreError::Busy(format!(
                "{object} is locked by another worker"
            ))),
            Err(PassError::Store(e)) => Err(e),
            Err(PassError::Blueprint(e)) => Err(StoreError::Busy(e.to_string())),
            Err(PassError::Permanent(m)) => Err(StoreError::Invalid {
                what: "state change",
                reason: m,
            }),
        }
    }

    /// Run `work` under `held` (a lock the caller holds and renews, such as
    /// the one taken with a task's claim), or else take the object's lock,
    /// renewing it while `work` runs, and release it after; `None` when
    /// another worker holds it.
    pub(crate) async fn locked<T>(
        &self,
        object: ObjectRef,
        held: Option<&ObjectLock>,
        work: impl AsyncFnOnce(&ObjectLock) -> PassResult<T>,
    ) -> PassResult<Option<T>> {
        if let Some(lock) = held {
            return work(lock).await.map(Some);
        }
        let Some(lock) = self
            .store
            .try_lock(&object.key(), &self.cfg.owner, self.cfg.lock_ttl)
            .await?
        else {
            return Ok(None);
        };
        // Renewed from a task of its own (renewing inside a select! arm
        // would pause `work`, and on SQLite a paused transaction holds the
        // one writer connection the renewal needs — a deadlock); `work` is
        // stopped once the lock is lost or cannot be renewed in time.
        let renewal = {
            let (store, lock, ttl) = (self.store.clone(), lock.clone(), self.cfg.lock_ttl);
            ClaimGuard::keep(ttl, move || {
                let (store, mut lock) = (store.clone(), lock.clone());
                async move { store.renew_lock(&mut lock, ttl).await }
            })
        };
        let result = renewal.guard(work(&lock)).await;
        drop(renewal);
        if let Err(e) = self.store.unlock(lock).await {
            tracing::warn!(%object, "unlocking failed (it expires by itself): {e}");
        }
        match result {
            Ok(result) => result.map(Some),
            Err(why) => {
                tracing::warn!(%object, "stopped work under the object's lock: {why}");
                Ok(None)
            }
        }
    }
}

impl Handler for Engine {
    async fn handle(&self, task: &ClaimedTask) -> Handled {
        match task.kind.as_str() {
            "lease.update" | "resource.update" => {
                match task.object_key.as_deref().and_then(ObjectRef::parse) {
                    Some(object) => {
                        // One attempt counter (the task's), and the object
                        // breaks before the queue would give up on it.
                        let attempts = Attempts {
                            failed: task.attempts,
                            limit: self.cfg.max_attempts.min(task.max_attempts),
                        };
                        self.pass(object, attempts, task.lock.as_ref()).await
                    }
                    None => Outcome::Fail(format!(
                        "update task without a valid object: {:?}",
                        task.object_key
                    ))
                    .into(),
                }
            }
            daemon::GC_TASK => self.gc_pass().await.into(),
            other => Outcome::Fail(format!("unknown task kind {other:?}")).into(),
        }
    }
}

/// Structural proof of the single-writer rule: every status change goes
/// through a `transition` function that consults the model's table, lease
/// statuses are written only by the lease worker's files and resource
/// statuses only by the resource worker's, and the fenced row writes
/// (`save_lease`, `save_resource`) are called from nowhere else.
#[cfg(test)]
mod single_writer {
    const SOURCES: &[(&str, &str)] = &[
        ("lib.rs", include_str!("lib.rs")),
        ("client.rs", include_str!("client.rs")),
        ("daemon.rs", include_str!("daemon.rs")),
        ("events.rs", include_str!("events.rs")),
        ("blueprint.rs", include_str!("blueprint.rs")),
        ("allocator.rs", include_str!("allocator.rs")),
        ("lease_worker.rs", include_str!("lease_worker.rs")),
        ("resource_worker.rs", include_str!("resource_worker.rs")),
    ];
    const LEASE_WRITER: &[&str] = &["lease_worker.rs", "allocator.rs"];
    const RESOURCE_WRITER: &[&str] = &["resource_worker.rs"];

    fn code_lines() -> impl Iterator<Item = (&'static str, &'static str)> {
        SOURCES.iter().flat_map(|(file, text)| {
            text.lines()
                .take_while(|l| !l.contains("mod single_writer"))
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(move |l| (*file, l))
        })
    }

    #[test]
    fn statuses_change_only_through_the_transition_tables() {
        for (file, line) in code_lines() {
            if line.contains(".status = ") {
                assert!(
                    line.contains(".status = to;"),
                    "{file}: status written outside `transition`: {line}"
                );
            }
        }
    }

    #[test]
    fn each_status_has_one_writer() {
        for (file, line) in code_lines() {
            if (line.contains("transition(&mut") && line.contains("LeaseStatus::"))
                || line.contains("save_lease(")
            {
                assert!(
                    LEASE_WRITER.contains(&file),
                    "{file} writes lease state: {line}"
                );
            }
            if (line.contains("transition(&mut") && line.contains("ResourceStatus::"))
                || line.contains("save_resource(")
            {
                assert!(
                    RESOURCE_WRITER.contains(&file),
                    "{file} writes resource state: {line}"
                );
            }
        }
    }
}
