//! Lease rows. A lease is inserted by its requester (status `pending`);
//! after that only its update worker writes it, through
//! [`Tx::save_lease`], which is conditional on the row version and on the
//! worker's object-lock token.

use crate::command::Command;
use crate::db::{Row, query, query_as, query_scalar};
use crate::log::{LOGS_INSERT_SQL, NewLog, PendingLog};
use crate::object_lock::{ObjectLock, fence_condition};
use crate::queue::{NewTask, TASK_INSERT_SQL};
use crate::row::{get, json, opt_json, parsed, to_json};
use crate::{Result, Store, StoreError, Tx, now_ms};
use drydock_model::{BlueprintId, LeaseId, LeaseStatus, ObjectKind, ObjectRef, ResourceId};
use serde_json::{Map, Value};

/// Largest serialized attribute map, in bytes.
pub const MAX_ATTRIBUTES_LEN: usize = 64 * 1024;

/// What a requester asks for.
#[derive(Clone, Debug, Default)]
pub struct NewLease {
    pub resource_type: String,
    /// Blueprints allowed to satisfy the lease (empty: any of the type).
    pub blueprint_ids: Vec<BlueprintId>,
    /// The object whose authorizations are checked.
    pub authorizing: String,
    pub owner: Option<String>,
    pub attributes: Map<String, Value>,
    /// Higher is served first; equal priorities first come, first served.
    pub priority: i64,
    /// Epoch ms at which the lease is released.
    pub until: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Lease {
    pub id: LeaseId,
    pub resource_type: String,
    pub status: LeaseStatus,
    pub resource_id: Option<ResourceId>,
    pub blueprint_ids: Vec<BlueprintId>,
    pub authorizing: String,
    pub owner: Option<String>,
    pub attributes: Map<String, Value>,
    /// Engine bookkeeping (allocated / reclaimed resources, ...).
    pub internal: Map<String, Value>,
    pub priority: i64,
    pub until: Option<i64>,
    /// Why a pending lease waits, machine-readable (`{"reason": ...}`).
    pub waiting: Option<Value>,
    pub failure: Option<String>,
    pub acquired_at: Option<i64>,
    pub activated_at: Option<i64>,
    pub version: i64,
    pub created_at: i64,
    pub modified_at: i64,
}

impl Lease {
    pub fn object(&self) -> ObjectRef {
        ObjectRef::lease(self.id)
    }

    /// The resource the lease holds while it is live.
    pub fn holding(&self) -> Option<ResourceId> {
        self.resource_id.filter(|_| self.status.is_live())
    }
}

/// The lease, the resource it is on, its unconsumed commands (one row
/// each, or one row without any), whether slots were handed to it, and the
/// blueprints' version. The resource's columns are named `r_…`.
static PASS_READ_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let lease_columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("l.{c}")).collect();
    let resource_columns: Vec<String> = crate::resource::COLUMNS
        .split(", ")
        .map(|c| format!("r.{c} AS r_{c}"))
        .collect();
    format!(
        "SELECT {}, {}, {}, \
           EXISTS (SELECT 1 FROM handoffs WHERE waiter = $2) AS handed_over, \
           (SELECT CAST(COALESCE(SUM(version), 0) AS BIGINT) FROM blueprints) AS blueprints_version \
         FROM leases l LEFT JOIN resources r ON r.id = l.resource_id \
         LEFT JOIN commands c \
           ON c.target_kind = 'lease' AND c.target_id = l.id AND c.consumed = 0 \
         WHERE l.id = $1 ORDER BY c.id",
        lease_columns.join(", "),
        resource_columns.join(", "),
        crate::command::JOINED_COLUMNS,
    )
});

/// Lease `id`, read on `db` (a transaction's connection or a reader).
async fn by_id(db: &mut crate::db::Db, id: LeaseId) -> Result<Lease> {
    crate::row::by_id(db, COLUMNS, "leases", "lease", id.0, from_row).await
}

/// Insert a pending lease: `$1..$8` bound by [`bind_new`].
const INSERT_SQL: &str = "INSERT INTO leases (resource_type, status, blueprint_ids, authorizing, owner, \
       attributes, internal, priority, until_at, version, fence, created_at, modified_at) \
     VALUES ($1, 'pending', $2, $3, $4, $5, '{}', $6, $7, 1, 0, $8, $8)";

/// Check a new lease and bind it as `$1..$8` of [`INSERT_SQL`], created
/// `now`.
fn bind_new(q: crate::db::Query, new: &NewLease, now: i64) -> Result<crate::db::Query> {
    if new.resource_type.is_empty() || new.resource_type.len() > 64 {
        return Err(StoreError::invalid(
            "resource type",
            format!("{:?}", new.resource_type),
        ));
    }
    if new.authorizing.is_empty() || new.authorizing.len() > 255 {
        return Err(StoreError::invalid(
            "authorizing object",
            format!("{:?}", new.authorizing),
        ));
    }
    let attributes = check_map("lease attributes", &new.attributes)?;
    let blueprints: Vec<i64> = new.blueprint_ids.iter().map(|b| b.0).collect();
    Ok(q.bind(&new.resource_type)
        .bind(to_json(&blueprints))
        .bind(&new.authorizing)
        .bind(&new.owner)
        .bind(attributes)
        .bind(new.priority)
        .bind(new.until)
        .bind(now))
}

/// PostgreSQL: a new lease, its update task and its `queued` event in one
/// statement ([`Store::request_lease`]): the lease `$1..$8`, the task
/// `$9..$12` (kind, key prefix, max attempts, payload), the event
/// `$13..$17` (epoch, blueprint, resource, type, data). The task's key is
/// the lease's ([`ObjectRef::key`]); a new lease has no queued task to
/// fold into. The workers are told after it commits
/// ([`Store::write_alone`]).
static REQUEST_ALONE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH l AS ({INSERT_SQL} RETURNING {COLUMNS}), \
         t AS ({TASK_INSERT_SQL} \
               SELECT $9, $10::text || l.id, 'queued', l.priority, l.created_at, 0, $11, 0, $12, $8 FROM l), \
         g AS ({LOGS_INSERT_SQL} SELECT $13, $14, $15, l.id, $16, $17 FROM l) \
         SELECT l.* FROM l"
    )
});

/// What a lease's update pass starts from ([`Store::lease_for_pass`]).
#[derive(Clone, Debug)]
pub struct LeaseForPass {
    pub lease: Lease,
    /// The resource it is on, if any, read with it.
    pub resource: Option<crate::resource::Resource>,
    /// Its unconsumed commands, oldest first.
    pub commands: Vec<Command>,
    /// Whether capacity was handed to it and not yet settled.
    pub handed_over: bool,
    /// The blueprints' version: it moves whenever a blueprint is created
    /// or edited (every write bumps the blueprint's own version, and
    /// blueprints are never deleted), so blueprints read at this version
    /// can be reused while it stays.
    pub blueprints_version: i64,
}

const COLUMNS: &str = "id, resource_type, status, resource_id, blueprint_ids, authorizing, owner, attributes, internal, \
     priority, until_at, waiting, failure, acquired_at, activated_at, version, created_at, modified_at";

fn from_row(row: &Row) -> Result<Lease> {
    Ok(Lease {
        id: LeaseId(get(row, "id")?),
        resource_type: get(row, "resource_type")?,
        status: parsed(row, "status")?,
        resource_id: get::<Option<i64>>(row, "resource_id")?.map(ResourceId),
        blueprint_ids: json::<Vec<i64>>(row, "blueprint_ids")?
            .into_iter()
            .map(BlueprintId)
            .collect(),
        authorizing: get(row, "authorizing")?,
        owner: get(row, "owner")?,
        attributes: json(row, "attributes")?,
        internal: json(row, "internal")?,
        priority: get(row, "priority")?,
        until: get(row, "until_at")?,
        waiting: opt_json(row, "waiting")?,
        failure: get(row, "failure")?,
        acquired_at: get(row, "acquired_at")?,
        activated_at: get(row, "activated_at")?,
        version: get(row, "version")?,
        created_at: get(row, "created_at")?,
        modified_at: get(row, "modified_at")?,
    })
}

pub(crate) fn check_map(what: &'static str, map: &Map<String, Value>) -> Result<String> {
    let text = to_json(map);
    if text.len() > MAX_ATTRIBUTES_LEN {
        return Err(StoreError::invalid(
            what,
            format!("{} bytes (at most {MAX_ATTRIBUTES_LEN})", text.len()),
        ));
    }
    Ok(text)
}

/// Which leases to list. Unset fields do not filter.
#[derive(Clone, Debug, Default)]
pub struct LeaseFilter {
    pub statuses: Vec<LeaseStatus>,
    pub ids: Vec<LeaseId>,
    /// Leases on any of these resources.
    pub resources: Vec<ResourceId>,
    /// Leases of any of these owners.
    pub owners: Vec<String>,
    /// Leases made on behalf of this authorizing object.
    pub authorizing: Option<String>,
    /// Only leases with an id below this (paging newest first).
    pub before: Option<LeaseId>,
    /// Only leases with an id above this.
    pub after: Option<LeaseId>,
    /// Oldest first instead of newest first.
    pub ascending: bool,
    pub limit: Option<i64>,
}

impl Tx {
    /// Insert a new pending lease. The caller schedules its update task in
    /// the same transaction.
    pub async fn insert_lease(&mut self, new: &NewLease) -> Result<Lease> {
        let sql = format!("{INSERT_SQL} RETURNING {COLUMNS}");
        let row = bind_new(query(sql), new, now_ms())?
            .fetch_one(self.conn().await?)
            .await?;
        from_row(&row)
    }

    pub async fn lease(&mut self, id: LeaseId) -> Result<Lease> {
        self.write_unsaved_lease().await?;
        by_id(self.conn().await?, id).await
    }

    /// Write every mutable field of `lease`, fenced: only if the row is
    /// still at `lease.version` and `lock` is still the current grant of the
    /// lease's lock. Returns the lease as stored (version bumped).
    ///
    /// It supersedes a write of the same lease put off in this transaction
    /// ([`Tx::save_lease_at_commit`]) from the same version: one `UPDATE`
    /// for both.
    pub async fn save_lease(&mut self, lease: &Lease, lock: &ObjectLock) -> Result<Lease> {
        match self.unsaved_lease.take() {
            Some((unsaved, _)) if unsaved.id == lease.id && unsaved.version == lease.version => {}
            Some(other) => {
                self.unsaved_lease = Some(other);
                self.write_unsaved_lease().await?;
            }
            None => {}
        }
        self.write_lease(lease, lock).await
    }

    /// Write `lease` (as [`Tx::save_lease`]) when this transaction commits,
    /// unless a later `save_lease` of it in this transaction supersedes the
    /// write: a pass that moves a lease two steps in one transaction
    /// (acquired then active, released then destroyed) writes its row once.
    /// Checked now; the row's version is unchanged until then, so the
    /// caller keeps `lease` as its copy. Until the write, reads of the
    /// lease in this transaction ([`Tx::lease`], [`Tx::live_leases_on`])
    /// write it first.
    pub async fn save_lease_at_commit(&mut self, lease: Lease, lock: &ObjectLock) -> Result<()> {
        check_map("lease attributes", &lease.attributes)?;
        check_map("lease bookkeeping", &lease.internal)?;
        if self
            .unsaved_lease
            .as_ref()
            .is_some_and(|(l, _)| l.id != lease.id || l.version != lease.version)
        {
            self.write_unsaved_lease().await?;
        }
        self.unsaved_lease = Some((lease, lock.clone()));
        Ok(())
    }

    /// Write the lease put off by [`Tx::save_lease_at_commit`], if any.
    pub(crate) async fn write_unsaved_lease(&mut self) -> Result<()> {
        if let Some((lease, lock)) = self.unsaved_lease.take() {
            self.write_lease(&lease, &lock).await?;
        }
        Ok(())
    }

    async fn write_lease(&mut self, lease: &Lease, lock: &ObjectLock) -> Result<Lease> {
        let attributes = check_map("lease attributes", &lease.attributes)?;
        let internal = check_map("lease bookkeeping", &lease.internal)?;
        // The resources' live-lease counts follow in the same statement
        // (triggers, migration 0007).
        let sql = format!(
            "UPDATE leases SET status = $1, resource_id = $2, attributes = $3, internal = $4, until_at = $5, \
               waiting = $6, failure = $7, acquired_at = $8, activated_at = $9, version = version + 1, fence = $10, \
               modified_at = $11 \
             WHERE id = $12 AND version = $13 AND {} RETURNING {COLUMNS}",
            fence_condition(14, 10)
        );
        let q = query(sql)
            .bind(lease.status.as_str())
            .bind(lease.resource_id.map(|r| r.0))
            .bind(attributes)
            .bind(internal)
            .bind(lease.until)
            .bind(lease.waiting.as_ref().map(to_json))
            .bind(&lease.failure)
            .bind(lease.acquired_at)
            .bind(lease.activated_at)
            .bind(lock.token)
            .bind(now_ms())
            .bind(lease.id.0)
            .bind(lease.version)
            .bind(&lock.name);
        let saved = self.with_side_writes(q).fetch_optional(self.raw()).await?;
        let Some(saved) = saved else {
            return Err(StoreError::Stale {
                object: lease.object().key(),
                token: lock.token,
            });
        };
        let saved = from_row(&saved)?;
        self.lease_changed(&saved);
        Ok(saved)
    }
}

impl Store {
    /// Queue a new lease: insert it (pending), record `queued` about it
    /// (its lease is set to the new one) and schedule its update task at
    /// the lease's rank, in one transaction — on PostgreSQL one statement
    /// ([`Store::write_alone`]).
    pub async fn request_lease(&self, new: &NewLease, queued: NewLog) -> Result<Lease> {
        let now = now_ms();
        let task = |lease: &Lease| {
            NewTask::update(lease.object())
                .priority(lease.priority)
                .run_at(lease.created_at)
        };
        if self.dialect() != crate::Dialect::Postgres {
            let mut tx = self.begin().await?;
            let lease = tx.insert_lease(new).await?;
            tx.log(queued.lease(lease.id)).await?;
            tx.schedule(task(&lease)).await?;
            tx.commit().await?;
            return Ok(lease);
        }
        // The task's kind and settings as for any lease; its key and rank
        // are the new lease's, filled in by the statement.
        let model = NewTask::update(ObjectRef::lease(LeaseId(0)));
        let event = PendingLog::checked(queued)?;
        let q = bind_new(query(REQUEST_ALONE_SQL.as_str()), new, now)?
            .bind(&model.kind)
            .bind(format!("{}:", ObjectKind::Lease.as_str()))
            .bind(model.max_attempts)
            .bind(to_json(&model.payload));
        let q = event.bind_without_lease(q);
        let rows = self.write_alone(q, |_| true).await?;
        from_row(
            rows.first()
                .ok_or_else(|| StoreError::Database("the lease was not stored".into()))?,
        )
    }

    /// Insert a lease in its own transaction (without scheduling it).
    pub async fn insert_lease(&self, new: &NewLease) -> Result<Lease> {
        let mut tx = self.begin().await?;
        let lease = tx.insert_lease(new).await?;
        tx.commit().await?;
        Ok(lease)
    }

    pub async fn lease(&self, id: LeaseId) -> Result<Lease> {
        by_id(&mut self.reader().await?.raw, id).await
    }

    /// What a lease's update pass starts from, in one read: the lease, the
    /// resource it is on, its unconsumed commands (oldest first), whether
    /// capacity was handed to it ([`Tx::settle_handoffs`]) and the
    /// blueprints' version. Read outside any transaction: only
    /// the lease's update worker (the caller, under its lock) writes the
    /// lease and consumes its commands, and a command sent or a slot handed
    /// over after this read wakes the lease for another pass.
    pub async fn lease_for_pass(&self, id: LeaseId) -> Result<LeaseForPass> {
        let object = ObjectRef::lease(id);
        let rows = query(PASS_READ_SQL.as_str())
            .bind(id.0)
            .bind(object.key())
            .fetch_all(&mut self.reader().await?.raw)
            .await?;
        let Some(first) = rows.first() else {
            return Err(StoreError::NotFound {
                what: "lease",
                id: id.0.to_string(),
            });
        };
        let mut commands = Vec::new();
        for row in &rows {
            commands.extend(crate::command::joined(row, object)?);
        }
        Ok(LeaseForPass {
            lease: from_row(first)?,
            commands,
            resource: match get::<Option<i64>>(first, "r_id")? {
                Some(_) => Some(crate::resource::from_row(&first.part("r_"))?),
                None => None,
            },
            handed_over: get(first, "handed_over")?,
            blueprints_version: get(first, "blueprints_version")?,
        })
    }

    /// Leases matching `filter`, newest first (or oldest first).
    pub async fn leases(&self, filter: &LeaseFilter) -> Result<Vec<Lease>> {
        let limit = filter.limit.unwrap_or(100).clamp(1, 10_000);
        let mut q = crate::row::Select::new(format!(
            "SELECT {COLUMNS} FROM leases WHERE {}",
            crate::row::status_in(filter.statuses.iter().map(|s| s.as_str()))
        ));
        q.any_of("id", filter.ids.iter().map(|i| i.0));
        q.any_of("resource_id", filter.resources.iter().map(|r| r.0));
        q.any_of("owner", filter.owners.iter().cloned());
        q.any_of("authorizing", filter.authorizing.iter().cloned());
        q.below("id", filter.before.map(|b| b.0));
        q.above("id", filter.after.map(|a| a.0));
        let rows = q
            .page(if filter.ascending { "id" } else { "id DESC" }, limit)
            .fetch_all(&mut self.reader().await?.raw)
            .await?;
        rows.iter().map(from_row).collect()
    }
}

impl Tx {
    /// Leases on `resource` that still hold or wait for it, read inside the
    /// transaction (after the resource row was written or locked, so a lease
    /// acquiring concurrently is either seen here or sees the new status).
    pub async fn live_leases_on(&mut self, resource: ResourceId) -> Result<Vec<Lease>> {
        self.write_unsaved_lease().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM leases WHERE resource_id = $1 AND status IN ('pending', 'acquired', 'active') ORDER BY id"
        );
        let rows = query(sql)
            .bind(resource.0)
            .fetch_all(self.conn().await?)
            .await?;
        rows.iter().map(from_row).collect()
    }
}

/// When a lease on `$1` (a resource) last changed.
const LAST_LEASE_ACTIVITY_SQL: &str = "SELECT MAX(modified_at) FROM leases WHERE resource_id = $1";

impl Store {
    /// When a lease on `resource` last changed (acquired, released,
    /// destroyed): the resource's "last used" time for reclaim.
    pub async fn last_lease_activity(&self, resource: ResourceId) -> Result<Option<i64>> {
        query_scalar(LAST_LEASE_ACTIVITY_SQL)
            .bind(resource.0)
            .fetch_one(&mut self.reader().await?.raw)
            .await
    }

    /// Number of leases in each status.
    pub async fn lease_status_counts(&self) -> Result<Vec<(String, i64)>> {
        query_as("SELECT status, COUNT(*) FROM leases GROUP BY status ORDER BY status")
            .fetch_all(&mut self.reader().await?.raw)
            .await
    }
}

impl Tx {
    /// When a lease on `resource` last changed, read inside the transaction.
    pub async fn last_lease_activity(&mut self, resource: ResourceId) -> Result<Option<i64>> {
        query_scalar(LAST_LEASE_ACTIVITY_SQL)
            .bind(resource.0)
            .fetch_one(self.conn().await?)
            .await
    }
}
